"""The model's two programs as the evaluator and the serving export compile them.

`embed` (padded images -> image embeddings) and `decode` (embeddings + prompts ->
every SDT step's masks at original resolution). The evaluator runs both inside its
per-batch program; `spt_jax.export` serializes each alone. Being the same functions,
they give the same numbers at the same batch size (on CPU, XLA's matmul blocking
depends on the batch size: other batch sizes agree to float32 rounding).

Original resolution: rows (B, H, l) and cols (B, W, l) map each image's (l, l) low-res
logits to an H x W canvas (`spt_jax.transforms.postprocess_matrix`: SAM's upsampling,
crop of the padding and resize to the original size; rows and columns past the
image's own size are zero). Masks are where the logits are > 0; scores their sigmoid.
"""

from typing import Any

import jax
import jax.numpy as jnp

from spt_jax.models.prompts import Prompts
from spt_jax.models.sam import normalize_and_mask
from spt_jax.spt.model import Spt


def embed(model: Spt, variables: dict[str, Any], images: jax.Array,
          input_sizes: jax.Array) -> jax.Array:
  """(B, S, S, 3) uint8 padded images, (B, 2) int (h, w) inside -> (B, h, w, D) float32."""
  return model.apply(variables, normalize_and_mask(images, input_sizes),
                     method=Spt.embed_images)


def decode(model: Spt, variables: dict[str, Any], embeddings: jax.Array,
           prompts: Prompts, rows: jax.Array, cols: jax.Array) -> dict[str, jax.Array]:
  """Embeddings (B, h, w, D) + prompts (B, P) -> every step's logits.

  Returns:
    low_res_logits (B, steps, P, l, l); iou (B, P): the predicted IoU (the draft
    step's); logits (B, steps, P, H, W) at original resolution (module docstring).
  """
  output = model.apply(variables, embeddings, prompts, method=Spt.decode)
  low_res = output.logits[:, :, :, 0]
  at_original = jnp.einsum("bhl,sbplm,bwm->sbphw", rows, low_res, cols,
                           precision=jax.lax.Precision.HIGHEST)
  batch_first = lambda x: jnp.moveaxis(x, 0, 1)  # noqa: E731
  return {"low_res_logits": batch_first(low_res), "iou": output.iou[..., 0],
          "logits": batch_first(at_original)}
