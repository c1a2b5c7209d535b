"""The one exception type for mistakes a user can fix (bad file, bad key, bad config).

Entry points (`spt_jax.main`, the converters) catch it, print its message on one line
and exit with code 2; everything else is a bug and keeps its traceback.
"""

USER_ERROR_EXIT_CODE = 2


class SptUserError(Exception):
  """A user-fixable problem; the message names the file/key/field and what was expected."""
