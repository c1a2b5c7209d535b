"""Helpers shared by the benchmarks: timing, Meta's reference code, converted weights."""

import argparse
import os
import sys
import time
from typing import Callable

from spt_jax import host_memory

_TESTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")


def import_meta_reference():
  """The tests' `meta_reference` module (Meta's segment_anything with the shim)."""
  if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
  import meta_reference  # pylint: disable=g-import-not-at-top
  return meta_reference


def add_host_malloc_flag(parser: argparse.ArgumentParser) -> None:
  """--host-malloc: the process's malloc policy, shared by both frameworks measured."""
  parser.add_argument(
      "--host-malloc", default="keep", choices=host_memory.POLICIES,
      help="'keep' (as spt_jax's jobs run on a CPU: freed memory stays in the process), "
           "'system' (the C library's defaults) or 'auto' (the jobs' rule); applies to "
           "PyTorch and JAX alike")


def apply_host_malloc(args: argparse.Namespace) -> str:
  """Applies --host-malloc before any framework allocates; returns a line for the header."""
  policy = host_memory.resolve_policy(args.host_malloc)
  applied = host_memory.keep_freed_memory(policy)
  return f"host malloc {policy}" + ("" if applied or policy == "system"
                                    else " (not applicable here)")


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
