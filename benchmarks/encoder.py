r"""SAM image encoder forward: Meta's PyTorch vs spt_jax, same weights, same image.

    python -m benchmarks.encoder --model vit_b [--runs 3] [--query-chunk 1024] \
        [--host-malloc keep|system|auto]

Prints the minimum time of several runs after a warm-up for each, the JAX compile
time, the max abs difference of the embeddings, and the ratio torch / jax.
"""

import jax
import jax.numpy as jnp

from benchmarks.common import (compare_encoders, meta_sam_with_variables,
                               reference_benchmark_parser, start_reference_benchmark)
from spt_jax.models.config import sam_preset
from spt_jax.models.sam import Sam


def main():
  parser = reference_benchmark_parser(__doc__, runs=3)
  parser.add_argument("--query-chunk", type=int, default=Sam.query_chunk)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args, malloc_note, reference = start_reference_benchmark(parser)

  torch = reference.torch
  spec = sam_preset(args.model)
  meta_model, variables = meta_sam_with_variables(reference, spec)
  model = Sam(spec, dtype=jnp.dtype(args.dtype), query_chunk=args.query_chunk)

  result = compare_encoders(reference, meta_model, model, variables, args.runs)
  size = spec.image_size
  print(f"model {args.model}, image {size}x{size}, dtype {args.dtype}, "
        f"query_chunk {args.query_chunk}, devices {jax.devices()}, "
        f"torch threads {torch.get_num_threads()}, {malloc_note}")
  print(f"torch (Meta) encoder forward: {result.torch_seconds:8.2f} s (min of {args.runs})")
  print(f"jax  (spt_jax) encoder forward: {result.jax_seconds:8.2f} s (min of {args.runs}); "
        f"compile {result.compile_seconds:.1f} s")
  print(f"max |jax - torch| on the embedding: {result.max_abs_diff:.2e}")
  print(f"ratio torch / jax: {result.torch_seconds / result.jax_seconds:.2f}")


if __name__ == "__main__":
  main()
