"""What happens to a bad input file: a clear error, or a skip that is counted and reported.

Every data problem a user can fix (an unreadable image, a missing mask, a mask whose size
differs from its image) goes through one `BadInputLog`. With the policy "error" it raises
`SptUserError` naming the file and what was expected; with "skip" it records the file and
the reason, logs a warning, and `summary()` reports all skips at the end. Nothing is ever
dropped silently.
"""

import dataclasses

from absl import logging

from spt_jax.errors import SptUserError

POLICIES = ("error", "skip")


def check_policy(policy: str) -> str:
  """Returns `policy` if it is one of POLICIES, else raises SptUserError."""
  if policy not in POLICIES:
    raise SptUserError(f"on_bad_input={policy!r}: expected one of {POLICIES}")
  return policy


@dataclasses.dataclass(frozen=True)
class Skip:
  """One skipped input file and the message saying why."""
  path: str
  message: str


class BadInputLog:
  """Applies the bad-input policy and keeps the list of skipped files."""

  def __init__(self, policy: str, context: str):
    """`context` names the job in messages, e.g. "mvtec_ad/test"."""
    self.policy = check_policy(policy)
    self.context = context
    self.skipped: list[Skip] = []

  def bad(self, path: str, message: str) -> None:
    """Raises (policy "error") or records (policy "skip") a problem with `path`.

    message: names the file(s) and what was expected.
    """
    if self.policy == "error":
      raise SptUserError(message)
    self.skipped.append(Skip(str(path), message))
    logging.warning("%s: skipping: %s", self.context, message)

  def summary(self) -> str:
    """One line per skipped file after a count; empty when nothing was skipped."""
    if not self.skipped:
      return ""
    lines = [f"{self.context}: skipped {len(self.skipped)} bad input file(s) "
             "(on_bad_input='skip'):"]
    lines += [f"  {s.message}" for s in self.skipped]
    return "\n".join(lines)
