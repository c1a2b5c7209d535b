"""The one exception type for mistakes a user can fix (bad file, bad key, bad config).

Entry points (`spt_jax.main`, the converters) catch it, print its message on one line
and exit with code 2; everything else is a bug and keeps its traceback.
"""

import sys

USER_ERROR_EXIT_CODE = 2


class SptUserError(Exception):
  """A user-fixable problem; the message names the file/key/field and what was expected."""


def exit_code(fn, *args, **kwargs) -> int:
  """Runs fn; a SptUserError becomes one 'error: ...' line on stderr and exit code 2."""
  try:
    fn(*args, **kwargs)
  except SptUserError as error:
    print(f"error: {error}", file=sys.stderr, flush=True)
    return USER_ERROR_EXIT_CODE
  return 0
