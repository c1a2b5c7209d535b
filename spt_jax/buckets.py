"""Fixed program shapes for varying counts: a few bucket sizes, padding by repetition.

A compiled (or exported) program takes a fixed number of images or prompts. A count
runs in the smallest bucket that holds it, or in chunks of the largest; the missing
rows repeat the last real one (valid inputs, whose outputs are dropped).
"""

from typing import Sequence

import numpy as np


def chunks(count: int, sizes: Sequence[int]) -> list[tuple[int, int, int]]:
  """[(start, stop, padded size)] covering 0..count-1 (module docstring)."""
  size = next((s for s in sorted(sizes) if s >= count), max(sizes))
  return [(start, min(start + size, count), size) for start in range(0, count, size)]


def pad_repeating(x: np.ndarray, size: int, axis: int = 0) -> np.ndarray:
  """x padded along `axis` to `size` with copies of its last entry there."""
  missing = size - x.shape[axis]
  if missing <= 0:
    return x
  last = np.take(x, [x.shape[axis] - 1], axis=axis)
  return np.concatenate([x, np.repeat(last, missing, axis=axis)], axis=axis)
