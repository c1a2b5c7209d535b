"""Relation attention as the plain materialised formula (the test oracle).

Builds the full (B, N, N) weight matrix, exactly as the authors' `extract_relation`
followed by a row-wise `thresholding` and the product with V. Its gradients are
plain autodiff; the fused implementations are checked against them.
"""

import jax
import jax.numpy as jnp

from spt_jax.kernels import relation_common as rc


def relation_weights_reference(e, *, alpha=0.0):
  """The relation matrix: (B, N, C) -> (B, N, N) float32, rows sum to 1 (or 0)."""
  n = e.shape[1]
  en = rc.normalize_rows(e)
  s = jnp.einsum("bic,bjc->bij", en, en, precision=jax.lax.Precision.HIGHEST)
  p = jax.nn.softmax(s + jnp.eye(n, dtype=jnp.float32) * rc.SELF_SCORE, axis=-1)
  if alpha > 0:
    kept = p * (p > rc.threshold_for(alpha, n))
    z = jnp.sum(kept, axis=-1, keepdims=True)
    p = kept / jnp.where(z == 0, 1.0, z)
  return p


def relation_attention_reference(e, v, *, alpha=0.0):
  """softmax_row(cos(E_i, E_j), self excluded [, alpha]) @ V.

  Args:
    e: (B, N, C) image embedding.
    v: (B, N, D) values (image tokens).
    alpha: sparsification strength, >= 0 (0 disables it).

  Returns:
    (B, N, D) in v's dtype, computed in float32.
  """
  p = relation_weights_reference(e, alpha=alpha)
  out = jnp.einsum("bij,bjd->bid", p, v.astype(jnp.float32),
                   precision=jax.lax.Precision.HIGHEST)
  return out.astype(v.dtype)
