"""Host memory policy of the command-line jobs: freed blocks stay in the process.

XLA on CPU takes its buffers from malloc. glibc serves large blocks with mmap and
unmaps them on free, so each call of a compiled program faults its large buffers in
again, page by page, and the kernel zeroes every page: on the 2-core machine an
805 MB score tensor of a vit_b global block costs about 0.25 s of faults per call,
as much as computing it. Keeping freed memory in the malloc heap (one arena, no mmap
for large blocks, no trimming) lets the next call reuse the same pages. The cost is
that the process keeps its peak memory until it exits, which a training or
evaluation job does anyway. PyTorch in the same process gains as much (benchmarks/).

The setting is per process and only takes hold before the first thread allocates,
so the jobs apply it first thing, before JAX starts its backend. It pays where the
host runs the model: SPT_JAX_HOST_MALLOC=auto (the default) applies it when JAX can
only use the CPU (JAX_PLATFORMS=cpu, or no accelerator plugin installed) and leaves
accelerator hosts, whose host memory serves the many threads of the input pipeline, on
the C library's defaults; 'keep' and 'system' force one or the other.
"""

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os

from spt_jax.errors import SptUserError

ENV_VAR = "SPT_JAX_HOST_MALLOC"
POLICIES = ("auto", "keep", "system")

# mallopt parameters of glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER = -1  # M_TRIM_THRESHOLD -1: never give the top of the heap back


def _cpu_only() -> bool:
  """Whether JAX can only use the CPU, decided without starting a backend."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
  if platforms:
    return platforms == "cpu"
  return not (importlib.metadata.entry_points(group="jax_plugins")
              or importlib.util.find_spec("jax_plugins")
              or importlib.util.find_spec("libtpu"))


def resolve_policy(policy: str | None = None) -> str:
  """'keep' or 'system': `policy`, else SPT_JAX_HOST_MALLOC (default 'auto'), resolved."""
  if policy is None:
    policy = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
  if policy not in POLICIES:
    raise SptUserError(f"{ENV_VAR}={policy!r}: expected one of {', '.join(POLICIES)}")
  if policy == "auto":
    return "keep" if _cpu_only() else "system"
  return policy


def keep_freed_memory(policy: str | None = None) -> bool:
  """Applies the 'keep' policy to glibc's malloc if it is chosen; True if applied.

  Args:
    policy: 'auto', 'keep' or 'system'; None reads SPT_JAX_HOST_MALLOC.

  Returns False (and changes nothing) for 'system', and where the C library is not
  glibc (macOS, musl), which manage large blocks their own way.
  """
  if resolve_policy(policy) == "system":
    return False
  libc_name = ctypes.util.find_library("c")
  if not libc_name:
    return False
  libc = ctypes.CDLL(libc_name)
  if not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
    return False
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER))
  return all(libc.mallopt(parameter, value) == 1 for parameter, value in settings)
