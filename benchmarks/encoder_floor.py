r"""How fast can the SAM image encoder be here? Its matmuls alone, timed, against the goal.

    python -m benchmarks.encoder_floor --model vit_b [--runs 3] [--goal 1.5] \
        [--host-malloc keep|system|auto]

Lists every matmul of one encoder forward (from the model's spec: patch embedding,
qkv, projection, MLP, the attention's score and value products of windowed and global
blocks, the neck), times each distinct shape alone in JAX (jit, min of runs) and in
PyTorch (same threads), and adds them up with their counts: the time an encoder would
take if everything else (softmax, LayerNorm, GELU, rel-pos bias, layout changes) were
free. It then measures both whole encoders (Meta's and ours, same weights) in the same
run and prints the encoder time the goal asks for (Meta's time / goal) beside the JAX
matmul floor: a goal below the floor cannot be met by any arrangement of XLA's ops on
this machine, only by faster matrix multiplication.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import (compare_encoders, meta_sam_with_variables, min_time,
                               reference_benchmark_parser, start_reference_benchmark)
from spt_jax.models.config import EncoderSpec, sam_preset
from spt_jax.models.sam import Sam


@dataclasses.dataclass(frozen=True)
class MatmulShape:
  """A batched matmul (batch, m, k) @ (batch, k, n) that the encoder runs `count` times."""
  name: str
  batch: int
  m: int
  k: int
  n: int
  count: int

  @property
  def flops(self) -> float:
    return 2.0 * self.batch * self.m * self.k * self.n


def encoder_matmuls(spec: EncoderSpec) -> list[MatmulShape]:
  """Every matmul of one forward of `spec`'s encoder on one image (Meta's arithmetic).

  Windowed blocks work on the padded grid (Meta pads to whole windows before qkv), so
  their qkv, projection and attention run on `windows * window**2` tokens.
  """
  grid, dim, heads = spec.grid_size, spec.embed_dim, spec.num_heads
  head_dim, mlp = dim // heads, int(dim * spec.mlp_ratio)
  tokens = grid * grid
  per_side = -(-grid // spec.window_size)
  windows, window_tokens = per_side ** 2, spec.window_size ** 2
  num_global = len(spec.global_attn_indexes)
  num_windowed = spec.depth - num_global
  padded = windows * window_tokens
  shapes = [
      MatmulShape("patch embedding", 1, tokens, 3 * spec.patch_size ** 2, dim, 1),
      MatmulShape("MLP lin1", 1, tokens, dim, mlp, spec.depth),
      MatmulShape("MLP lin2", 1, tokens, mlp, dim, spec.depth),
      MatmulShape("neck 1x1 conv", 1, tokens, dim, spec.out_chans, 1),
      MatmulShape("neck 3x3 conv", 1, tokens, 9 * spec.out_chans, spec.out_chans, 1),
  ]
  if num_windowed:
    shapes += [
        MatmulShape("windowed qkv", 1, padded, dim, 3 * dim, num_windowed),
        MatmulShape("windowed proj", 1, padded, dim, dim, num_windowed),
        MatmulShape("windowed q k^T", windows * heads, window_tokens, head_dim,
                    window_tokens, num_windowed),
        MatmulShape("windowed p v", windows * heads, window_tokens, window_tokens,
                    head_dim, num_windowed),
    ]
  if num_global:
    shapes += [
        MatmulShape("global qkv", 1, tokens, dim, 3 * dim, num_global),
        MatmulShape("global proj", 1, tokens, dim, dim, num_global),
        MatmulShape("global q k^T", heads, tokens, head_dim, tokens, num_global),
        MatmulShape("global p v", heads, tokens, tokens, head_dim, num_global),
    ]
  return shapes


def time_jax(shape: MatmulShape, runs: int) -> float:
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.standard_normal((shape.batch, shape.m, shape.k), np.float32))
  b = jnp.asarray(rng.standard_normal((shape.batch, shape.k, shape.n), np.float32))
  matmul = jax.jit(jnp.matmul).lower(a, b).compile()
  return min_time(lambda: matmul(a, b).block_until_ready(), runs)


def time_torch(torch, shape: MatmulShape, runs: int) -> float:
  generator = torch.Generator().manual_seed(0)
  a = torch.randn(shape.batch, shape.m, shape.k, generator=generator)
  b = torch.randn(shape.batch, shape.k, shape.n, generator=generator)
  with torch.no_grad():
    return min_time(lambda: torch.bmm(a, b), runs)


def main():
  parser = reference_benchmark_parser(__doc__, runs=3)
  parser.add_argument("--goal", type=float, default=1.5, help="torch / jax goal")
  args, malloc_note, reference = start_reference_benchmark(parser)
  torch = reference.torch
  spec = sam_preset(args.model)
  shapes = encoder_matmuls(spec.encoder)
  total_flops = sum(s.flops * s.count for s in shapes)
  print(f"{args.model} encoder, one {spec.encoder.image_size}px image, float32, "
        f"devices {jax.devices()}, torch threads {torch.get_num_threads()}, {malloc_note}")
  print(f"{'matmul':16s} {'(batch, m, k, n)':>24s} {'count':>5s} "
        f"{'jax s':>7s} {'GF/s':>6s} {'torch s':>8s} {'GF/s':>6s}")
  jax_floor = torch_floor = 0.0
  for shape in shapes:
    jax_time, torch_time = time_jax(shape, args.runs), time_torch(torch, shape, args.runs)
    jax_floor += jax_time * shape.count
    torch_floor += torch_time * shape.count
    dims = f"({shape.batch}, {shape.m}, {shape.k}, {shape.n})"
    print(f"{shape.name:16s} {dims:>24s} {shape.count:5d} {jax_time * shape.count:7.3f} "
          f"{shape.flops / jax_time / 1e9:6.1f} {torch_time * shape.count:8.3f} "
          f"{shape.flops / torch_time / 1e9:6.1f}")
  print(f"all matmuls: {total_flops / 1e12:.3f} TFLOP; floor (matmuls only): "
        f"jax {jax_floor:.2f} s, torch {torch_floor:.2f} s")

  meta_model, variables = meta_sam_with_variables(reference, spec)
  result = compare_encoders(reference, meta_model, Sam(spec), variables, args.runs)
  torch_time, jax_time = result.torch_seconds, result.jax_seconds
  target = torch_time / args.goal
  print(f"whole encoder: torch (Meta) {torch_time:.2f} s ({torch_time / torch_floor:.2f}x its "
        f"matmul floor), jax (spt_jax) {jax_time:.2f} s ({jax_time / jax_floor:.2f}x its floor); "
        f"torch / jax {torch_time / jax_time:.2f}; max |jax - torch| on the embedding "
        f"{result.max_abs_diff:.2e}")
  print(f"goal torch / jax >= {args.goal}: jax encoder <= {target:.2f} s, which is "
        f"{target / jax_floor:.2f}x the jax matmul floor "
        f"({'below the floor: not reachable by arranging XLA ops' if target < jax_floor else 'above the floor'})")


if __name__ == "__main__":
  main()
