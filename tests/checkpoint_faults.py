"""Damaging saved checkpoints on purpose, for the tests of their fallbacks."""

import os


def corrupt_step(step_dir) -> None:
  """Truncates every file of a step's saved state to half (a torn write, a bad disk)."""
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
