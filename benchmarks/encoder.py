r"""SAM image encoder forward: Meta's PyTorch vs spt_jax, same weights, same image.

    python -m benchmarks.encoder --model vit_b [--runs 3] [--query-chunk 1024] \
        [--host-malloc keep|system|auto]

Prints the minimum time of several runs after a warm-up for each, the JAX compile
time, the max abs difference of the embeddings, and the ratio torch / jax.
"""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import (meta_sam_with_variables, min_time, reference_benchmark_parser,
                               start_reference_benchmark, timed)
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

  size = spec.image_size
  image = np.random.default_rng(0).standard_normal((1, size, size, 3)).astype(np.float32)
  image_torch = torch.from_numpy(image).permute(0, 3, 1, 2).contiguous()

  with torch.no_grad():
    torch_embedding = meta_model.image_encoder(image_torch)
    torch_time = min_time(lambda: meta_model.image_encoder(image_torch), args.runs)

  embed = jax.jit(lambda v, x: model.apply(v, x, method=Sam.embed_images))
  compiled, compile_time = timed(lambda: embed.lower(variables, image).compile())
  jax_embedding = compiled(variables, image).block_until_ready()
  jax_time = min_time(lambda: compiled(variables, image).block_until_ready(), args.runs)

  diff = np.abs(np.asarray(jax_embedding) -
                torch_embedding.permute(0, 2, 3, 1).numpy()).max()
  print(f"model {args.model}, image {size}x{size}, dtype {args.dtype}, "
        f"query_chunk {args.query_chunk}, devices {jax.devices()}, "
        f"torch threads {torch.get_num_threads()}, {malloc_note}")
  print(f"torch (Meta) encoder forward: {torch_time:8.2f} s (min of {args.runs})")
  print(f"jax  (spt_jax) encoder forward: {jax_time:8.2f} s (min of {args.runs}); "
        f"compile {compile_time:.1f} s")
  print(f"max |jax - torch| on the embedding: {diff:.2e}")
  print(f"ratio torch / jax: {torch_time / jax_time:.2f}")


if __name__ == "__main__":
  main()
