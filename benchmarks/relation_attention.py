r"""Relation attention: the materialised reference vs the fused implementations.

    python -m benchmarks.relation_attention [--sizes 4096 16384] [--d 256]
        [--runs 5] [--dtype float32]

For each N, forward and forward+backward (the vjp for a given cotangent, which
yields dE and dV): the compiled temp memory (XLA's memory_analysis, i.e. the
scratch beyond inputs and outputs) and the minimum wall time over interleaved
runs, with both as ratios to the reference measured in the same run. The
Pallas kernel of the platform (pallas_tpu on TPU, pallas_gpu on GPU) is
measured where it runs natively; on CPU Pallas only runs in interpret mode,
whose time and memory say nothing about the kernel, so it is listed as skipped.
"""

import argparse
import os
import sys

if __package__ in (None, ""):  # Run as a script: make the repository importable.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from benchmarks.common import interleaved_min_times  # pylint: disable=g-import-not-at-top
from spt_jax.kernels import relation_attention  # pylint: disable=g-import-not-at-top

C = 256
_NATIVE_KERNEL = {"tpu": "pallas_tpu", "gpu": "pallas_gpu"}
MIB = 2**20


def _functions(impl):
  """Jitted forward and forward+backward of one implementation."""
  attend = lambda e, v: relation_attention(e, v, impl=impl)

  def forward_backward(e, v, d_out):
    _, vjp = jax.vjp(attend, e, v)
    return vjp(d_out)

  return {"fwd": jax.jit(attend), "fwd+bwd": jax.jit(forward_backward)}


def _measure(n, d, dtype, impls, runs):
  keys = jax.random.split(jax.random.key(0), 3)
  e = jax.random.normal(keys[0], (1, n, C), dtype)
  v = jax.random.normal(keys[1], (1, n, d), dtype)
  d_out = jax.random.normal(keys[2], (1, n, d), dtype)
  args = {"fwd": (e, v), "fwd+bwd": (e, v, d_out)}
  memory, calls = {}, {}
  for impl in impls:
    for pass_name, fn in _functions(impl).items():
      compiled = fn.lower(*args[pass_name]).compile()
      memory[impl, pass_name] = compiled.memory_analysis().temp_size_in_bytes
      calls[impl, pass_name] = (
          lambda c=compiled, a=args[pass_name]: c(*a))
      jax.block_until_ready(calls[impl, pass_name]())  # Warm-up.
  return memory, interleaved_min_times(calls, runs)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
  parser.add_argument("--d", type=int, default=256)
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16"))
  args = parser.parse_args()

  platform = jax.default_backend()
  impls = ["reference", "xla"]
  if platform in _NATIVE_KERNEL:
    impls.append(_NATIVE_KERNEL[platform])
  print(f"devices {jax.devices()}, C={C}, D={args.d}, dtype {args.dtype}, "
        f"time: min of {args.runs} interleaved runs")
  if platform not in _NATIVE_KERNEL:
    print(f"pallas_tpu / pallas_gpu: skipped (on {platform} Pallas runs only "
          "in interpret mode; tests cover its numerics)")
  header = (f"{'N':>6} {'impl':<11} {'pass':<8} {'temp MiB':>9} "
            f"{'x ref':>7} {'time s':>8} {'x ref':>7}")
  print(header)
  print("-" * len(header))
  for n in args.sizes:
    memory, times = _measure(n, args.d, jnp.dtype(args.dtype), impls,
                             args.runs)
    for impl in impls:
      for pass_name in ("fwd", "fwd+bwd"):
        mem, sec = memory[impl, pass_name], times[impl, pass_name]
        ref_mem = memory["reference", pass_name]
        ref_sec = times["reference", pass_name]
        print(f"{n:>6} {impl:<11} {pass_name:<8} {mem / MIB:>9.2f} "
              f"{mem / ref_mem:>7.3f} {sec:>8.3f} {sec / ref_sec:>7.3f}")


if __name__ == "__main__":
  main()
