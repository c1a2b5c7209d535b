r"""The encoder's global attention (decomposed rel-pos): materialised reference vs fused.

    python -m benchmarks.global_attention [--grid 64] [--heads 12] [--channels 64] \
        [--dtype float32,bfloat16] [--runs 5] [--gpu-blocks 64x64x4x2,128x64x4x3]

One image's global block as the encoder calls it (`attention_from_qkv`: token-major
qkv in, the heads' output out; vit_b's by default: 12 heads x 64 channels over the
64 x 64 grid), forward and forward + backward (the vjp for a random cotangent: d qkv
and both rel-pos tables). For each implementation: the compiled temp memory (XLA's
memory_analysis), the minimum wall time over interleaved runs, both as ratios to the
reference in the same run, and the matrix rate, counting 4 N^2 C FLOP per head for
the forward (q k^T and p v) and 14 N^2 C for forward + backward (flash attention's
count: the backward's five N x N products, none of the kernels' recomputation).

The platform's Pallas kernel runs where it runs natively (pallas_gpu on a GPU, once
per `--gpu-blocks` entry: block_q x block_k x num_warps x num_stages, a row saying so
where an entry does not compile, e.g. blocks beyond the shared memory; pallas_tpu on
a TPU); on a CPU Pallas runs only in interpret mode, which measures nothing of the
kernel, so it is listed as skipped.
"""

import argparse
import functools

import jax
import jax.numpy as jnp

from benchmarks.common import interleaved_min_times
from spt_jax.kernels import global_attention as ga

_NATIVE_KERNEL = {"tpu": "pallas_tpu", "gpu": "pallas_gpu"}
MIB = 2 ** 20


def _gpu_options(entry):
  block_q, block_k, num_warps, num_stages = (int(x) for x in entry.split("x"))
  return dict(block_q=block_q, block_k=block_k, num_warps=num_warps,
              num_stages=num_stages)


def _candidates(platform, gpu_blocks):
  """(label, impl, options) per implementation measured here."""
  rows = [("reference", "reference", {}), ("xla", "xla", {})]
  if platform == "gpu":
    rows += [(f"pallas_gpu {entry}", "pallas_gpu", _gpu_options(entry))
             for entry in gpu_blocks.split(",")]
  elif platform == "tpu":
    rows.append(("pallas_tpu", "pallas_tpu", {}))
  return rows


def _programs(impl, options, heads):
  attend = functools.partial(ga.attention_from_qkv, num_heads=heads, impl=impl, **options)

  def forward_backward(qkv, table_h, table_w, d_out):
    _, vjp = jax.vjp(attend, qkv, table_h, table_w)
    return vjp(d_out)

  return {"fwd": jax.jit(attend), "fwd+bwd": jax.jit(forward_backward)}


def _inputs(grid, heads, channels, dtype):
  keys = jax.random.split(jax.random.key(0), 4)
  width = heads * channels
  qkv = jax.random.normal(keys[0], (1, grid, grid, 3 * width), dtype)
  table_h, table_w = (jax.random.normal(key, (grid, grid, channels), dtype)
                      for key in keys[1:3])
  d_out = jax.random.normal(keys[3], (1, grid, grid, width), dtype)
  return {"fwd": (qkv, table_h, table_w), "fwd+bwd": (qkv, table_h, table_w, d_out)}


def _measure(candidates, args, dtype):
  """(temp bytes, seconds) per (label, pass) that compiled, and the others' errors."""
  inputs = _inputs(args.grid, args.heads, args.channels, dtype)
  memory, calls, failed = {}, {}, {}
  for label, impl, options in candidates:
    for pass_name, program in _programs(impl, options, args.heads).items():
      try:
        compiled = program.lower(*inputs[pass_name]).compile()
      except jax.errors.JaxRuntimeError as error:  # e.g. blocks beyond shared memory
        failed[label, pass_name] = str(error).splitlines()[0]
        continue
      memory[label, pass_name] = compiled.memory_analysis().temp_size_in_bytes
      calls[label, pass_name] = functools.partial(compiled, *inputs[pass_name])
      jax.block_until_ready(calls[label, pass_name]())  # warm-up
  return memory, interleaved_min_times(calls, args.runs), failed


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--grid", type=int, default=64, help="h = w of the token grid")
  parser.add_argument("--heads", type=int, default=12)
  parser.add_argument("--channels", type=int, default=64, help="channels per head")
  parser.add_argument("--dtype", default="float32,bfloat16", help="comma list")
  parser.add_argument("--runs", type=int, default=5)
  parser.add_argument("--gpu-blocks", default="64x64x4x2",
                      help="pallas_gpu options to measure, comma list of "
                      "block_q x block_k x num_warps x num_stages")
  args = parser.parse_args()

  platform = jax.default_backend()
  candidates = _candidates(platform, args.gpu_blocks)
  n = args.grid ** 2
  flop = {"fwd": 4 * n * n * args.channels * args.heads,
          "fwd+bwd": 14 * n * n * args.channels * args.heads}
  print(f"devices {jax.devices()}, grid {args.grid} x {args.grid} (N = {n}), "
        f"{args.heads} heads x {args.channels} channels, one image, time: min of "
        f"{args.runs} interleaved runs, float32 products at "
        f"{jax.config.jax_default_matmul_precision or 'the default precision'}")
  if platform not in _NATIVE_KERNEL:
    print(f"pallas_tpu / pallas_gpu: skipped (on {platform} Pallas runs only in "
          "interpret mode; tests cover its numerics)")
  print("| dtype | impl | pass | temp MiB | x ref | time ms | x ref | TFLOP/s |")
  print("|---|---|---|---|---|---|---|---|")
  for dtype in args.dtype.split(","):
    memory, times, failed = _measure(candidates, args, jnp.dtype(dtype))
    for label, _, _ in candidates:
      for pass_name in ("fwd", "fwd+bwd"):
        if (label, pass_name) in failed:
          print(f"| {dtype} | {label} | {pass_name} | did not compile: "
                f"{failed[label, pass_name]} |||||")
          continue
        mem, sec = memory[label, pass_name], times[label, pass_name]
        ref_mem, ref_sec = memory["reference", pass_name], times["reference", pass_name]
        print(f"| {dtype} | {label} | {pass_name} | {mem / MIB:,.1f} | "
              f"{mem / max(ref_mem, 1):.3f} | {sec * 1e3:.2f} | {sec / ref_sec:.3f} | "
              f"{flop[pass_name] / sec / 1e12:.1f} |", flush=True)


if __name__ == "__main__":
  main()
