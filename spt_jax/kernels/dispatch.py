"""Which kernel implementation runs: chosen for the platform a program is lowered for.

`impl='auto'` is not resolved from `jax.default_backend()` when the program is
traced: the traced program holds one branch per platform
(`jax.lax.platform_dependent`), and lowering keeps the branch of the platform it
lowers for. A program traced on a CPU host and compiled ahead of time for a TPU
slice, or exported for CUDA, carries the TPU or GPU kernel, not the CPU path.
"""

import functools
from typing import Callable, Collection

from jax import lax

# Platform (as jax lowers for it) -> implementation; every other platform: DEFAULT.
BY_PLATFORM = {"tpu": "pallas_tpu", "cuda": "pallas_gpu"}
DEFAULT = "xla"


def run(impl: str, available: Collection[str], call: Callable, *args):
  """call(impl, *args), or for impl 'auto' the call of the lowering platform's impl.

  Args:
    impl: an implementation name or 'auto'.
    available: the implementations the op has (a platform whose own is missing gets
      DEFAULT's).
    call: (implementation name, *args) -> outputs; every implementation must give
      outputs of the same shapes and dtypes.
    *args: arrays.
  """
  if impl != "auto":
    return call(impl, *args)
  branches = {platform: functools.partial(call, name)
              for platform, name in BY_PLATFORM.items() if name in available}
  return lax.platform_dependent(*args, default=functools.partial(call, DEFAULT),
                                **branches)
