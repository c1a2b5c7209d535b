"""The VRA-Adapter's relation operator for a batch of images with P prompts each.

All prompts of an image share its embedding E, so their image tokens go through one
relation-attention call per image (stacked along the feature axis), all images in
one batched call. See `spt_jax.kernels.relation_attention` for the exact formula.
"""

import jax

from spt_jax.kernels import relation_attention_shared


def relate_prompt_tokens(image_tokens: jax.Array, keys: jax.Array, *, alpha: float,
                         impl: str) -> jax.Array:
  """Relation-weighted image tokens, S @ K, for every prompt.

  Args:
    image_tokens: (B, N, C) image embedding E of each image.
    keys: (B * P, N, D) image tokens of P prompts per image (prompt-major per image).
    alpha: relation sparsification (0 = dense).
    impl: relation attention implementation (see `spt_jax.kernels.IMPLS`).

  Returns:
    (B * P, N, D).
  """
  batch, tokens, _ = image_tokens.shape
  per_image = keys.reshape(batch, -1, tokens, keys.shape[-1])
  return relation_attention_shared(image_tokens, per_image, alpha=alpha,
                                   impl=impl).reshape(keys.shape)
