"""Attention cores of SAM's encoder: softmax attention over a token grid with rel-pos bias.

The global blocks attend over all 64 x 64 tokens: a (heads, 4096, 4096) score tensor if
materialised at once. Queries are processed in chunks of whole grid rows so the live
score block stays `heads x chunk x 4096`; the result is the same function.
"""

import jax
import jax.numpy as jnp


def _attend_rows(q_rows, k, v, table_rows_h, table_w, scale, extra_kv):
  """Attention of a block of query grid rows against all keys.

  Args:
    q_rows: (B, r, w, H, C) queries of r grid rows.
    k, v: (B, h * w, H, C).
    table_rows_h: (r, h, C) vertical rel-pos table rows of these queries.
    table_w: (w, w, C) horizontal rel-pos table.
    scale: C ** -0.5.
    extra_kv: None or (k, v) each (T, H, C): keys/values every query also attends to,
      without position bias (visual prompt tokens).

  Returns:
    (B, r, w, H, C).
  """
  batch, rows, width, heads, _ = q_rows.shape
  height = table_rows_h.shape[1]
  bias_h = jnp.einsum("byxnc,ykc->bnyxk", q_rows, table_rows_h)
  bias_w = jnp.einsum("byxnc,xkc->bnyxk", q_rows, table_w)
  scores = jnp.einsum("byxnc,bknc->bnyxk", q_rows * scale, k)
  scores = scores.reshape(batch, heads, rows, width, height, width)
  scores = scores + bias_h[..., :, None] + bias_w[..., None, :]
  scores = scores.reshape(batch, heads, rows, width, height * width)
  if extra_kv is not None:
    extra_scores = jnp.einsum("byxnc,tnc->bnyxt", q_rows * scale, extra_kv[0])
    scores = jnp.concatenate([scores, extra_scores], axis=-1)
  probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
  out = jnp.einsum("bnyxk,bknc->byxnc", probs[..., :height * width], v)
  if extra_kv is not None:
    out = out + jnp.einsum("bnyxt,tnc->byxnc", probs[..., height * width:], extra_kv[1])
  return out


def grid_attention_with_rel_pos(q: jax.Array, k: jax.Array, v: jax.Array,
                                table_h: jax.Array, table_w: jax.Array, *,
                                query_chunk: int, extra_kv=None) -> jax.Array:
  """softmax(q k^T / sqrt(C) + rel_h + rel_w) v over an (h, w) token grid.

  rel_h[(y, x), (y', x')] = q[y, x] . table_h[y, y'] and likewise rel_w with x, x'
  (Meta's `add_decomposed_rel_pos`; the bias uses the unscaled q).

  Args:
    q, k, v: (B, h, w, H, C).
    table_h: (h, h, C); table_w: (w, w, C).
    query_chunk: about how many query tokens to process at once (rounded to whole
      grid rows; the grid is processed at once when it is not larger or rows do not
      divide evenly).
    extra_kv: None or (k, v) each (T, H, C), see `_attend_rows`.

  Returns:
    (B, h, w, H, C).
  """
  batch, height, width, heads, channels = q.shape
  scale = channels ** -0.5
  k = k.reshape(batch, height * width, heads, channels)
  v = v.reshape(batch, height * width, heads, channels)
  rows = max(1, query_chunk // width)
  if rows >= height or height % rows:
    return _attend_rows(q, k, v, table_h, table_w, scale, extra_kv)
  num_chunks = height // rows
  q_chunks = q.reshape(batch, num_chunks, rows, width, heads, channels).swapaxes(0, 1)
  table_chunks = table_h.reshape(num_chunks, rows, height, channels)
  out = jax.lax.map(
      lambda args: _attend_rows(args[0], k, v, args[1], table_w, scale, extra_kv),
      (q_chunks, table_chunks))
  return out.swapaxes(0, 1).reshape(batch, height, width, heads, channels)
