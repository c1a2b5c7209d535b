"""SAM's global attention with decomposed relative position, materialised (the oracle).

    out = softmax(scale q k^T + rel_h[i, row(j)] + rel_w[i, col(j)]) v

over the tokens of an (h, w) grid (row-major: token j sits in row j // w, column
j % w), per image and head. rel_h (N, h) and rel_w (N, w) are the per-query terms
Meta's `add_decomposed_rel_pos` computes (q . table_h[row(i)]^T and q . table_w[
col(i)]^T); here they are inputs, so their own gradient to q and the tables is
plain autodiff outside. Builds the (B, H, N, N) scores; gradients are autodiff.
"""

import jax
import jax.numpy as jnp


def expand_bias(rel_h: jax.Array, rel_w: jax.Array) -> jax.Array:
  """(..., N, h), (..., N, w) -> (..., N, h * w): rel_h[i, row(j)] + rel_w[i, col(j)]."""
  bias = rel_h[..., :, None] + rel_w[..., None, :]
  return bias.reshape(*bias.shape[:-2], -1)


def global_attention_reference(q, k, v, rel_h, rel_w, *, scale):
  """q, k, v (B, H, N, C), rel_h (B, H, N, h), rel_w (B, H, N, w) -> (B, H, N, C).

  Computed in float32, returned in v's dtype.
  """
  scores = jnp.einsum("bhqc,bhkc->bhqk", q, k, preferred_element_type=jnp.float32,
                      precision=jax.lax.Precision.HIGHEST)
  scores = scores * scale + expand_bias(rel_h.astype(jnp.float32),
                                        rel_w.astype(jnp.float32))
  probs = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum("bhqk,bhkc->bhqc", probs, v.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  return out.astype(v.dtype)
