"""The one exception type for mistakes a user can fix (bad file, bad key, bad config).

Entry points (`spt_jax.main`, the converters) catch it, print its message on one line
and exit with code 2; everything else is a bug and keeps its traceback.
"""

import sys

USER_ERROR_EXIT_CODE = 2


class SptUserError(Exception):
  """A user-fixable problem; the message names the file/key/field and what was expected."""


def describe(error: BaseException) -> str:
  """'<type>: <first line of its message>', for one-line reports of a caught error."""
  lines = str(error).splitlines()
  return f"{type(error).__name__}: {lines[0] if lines else ''}"


def exit_code(fn, *args, **kwargs) -> int:
  """Runs fn; a SptUserError becomes one 'error: ...' line on stderr and exit code 2."""
  try:
    fn(*args, **kwargs)
  except SptUserError as error:
    print(f"error: {error}", file=sys.stderr, flush=True)
    return USER_ERROR_EXIT_CODE
  return 0
