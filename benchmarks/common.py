"""Helpers shared by the benchmarks: timing, Meta's reference code, converted weights."""

import os
import sys
import time
from typing import Callable

_TESTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")


def import_meta_reference():
  """The tests' `meta_reference` module (Meta's segment_anything with the shim)."""
  if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
  import meta_reference  # pylint: disable=g-import-not-at-top
  return meta_reference


def min_time(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
  """Minimum wall time of `fn()` over `runs` calls after `warmup` calls (seconds)."""
  for _ in range(warmup):
    fn()
  best = float("inf")
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def timed(fn: Callable[[], object]) -> tuple[object, float]:
  """(fn(), seconds)."""
  start = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - start
