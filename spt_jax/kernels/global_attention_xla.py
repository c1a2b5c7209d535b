"""SAM's global attention with decomposed rel-pos as blocked XLA: the lean path for CPU.

Both passes loop over query blocks; a step holds its block's full rows of scores,
(B, H, block_q, N), never the (B, H, N, N) tensor. The forward keeps each row's
log-sum-exp; the backward recomputes a block's weights from it and accumulates, in
one loop, dV and dK (all rows) and writes dQ and the rel-pos terms' gradients for the
block's rows. The bias of key j for query i, rel_h[i, row(j)] + rel_w[i, col(j)], is
added to a block of scores as an (h, w) broadcast, and its gradient is the score
gradient summed over the key grid's columns (rel_h) or rows (rel_w).
"""

import functools

import jax.numpy as jnp

from spt_jax.kernels import blocked
from spt_jax.kernels import relation_common as rc
from spt_jax.kernels.global_attention_reference import expand_bias

# Query rows per step: the encoder's former query chunk (a vit_b global block holds
# 12 x 1024 x 4096 float32 scores per image at once, 201 MB).
DEFAULT_BLOCK_Q = 1024
DEFAULT_BLOCK_Q_BWD = 1024


def _einsum(spec, a, b):
  return jnp.einsum(spec, a, b, precision=rc.dot_precision(a.dtype),
                    preferred_element_type=jnp.float32)


def _scores(q_rows, k, rel_h_rows, rel_w_rows, scale):
  """Scores of a query block: (B, H, r, C), (B, H, N, C), (B, H, r, h), (B, H, r, w)
  -> (B, H, r, N) float32."""
  scores = _einsum("bhqc,bhkc->bhqk", q_rows, k) * scale
  return scores + expand_bias(rel_h_rows.astype(jnp.float32),
                              rel_w_rows.astype(jnp.float32))


def forward(q, k, v, rel_h, rel_w, *, scale, block_q=DEFAULT_BLOCK_Q,
            block_q_bwd=DEFAULT_BLOCK_Q_BWD):
  """q, k, v (B, H, N, C), rel_h (B, H, N, h), rel_w (B, H, N, w) -> out (B, H, N, C)
  in v's dtype, lse (B, H, N) float32. block_q_bwd is the backward's (accepted here
  so that both passes share one set of options)."""
  del block_q_bwd
  n = q.shape[2]
  block = min(block_q, n)

  def body(start, _, carry):
    out, lse = carry
    rows = functools.partial(blocked.rows, start=start, block=block, axis=2)
    scores = _scores(rows(q), k, rows(rel_h), rows(rel_w), scale)
    peak = scores.max(axis=-1, keepdims=True)
    weights = jnp.exp(scores - peak)
    total = weights.sum(axis=-1, keepdims=True)
    out_rows = _einsum("bhqk,bhkc->bhqc", weights.astype(v.dtype), v) / total
    return (blocked.put_rows(out, start, out_rows, axis=2),
            blocked.put_rows(lse, start, peak + jnp.log(total), axis=2))

  init = (jnp.zeros(q.shape[:3] + v.shape[-1:], v.dtype),
          jnp.zeros(q.shape[:3] + (1,), jnp.float32))
  out, lse = blocked.block_loop(n, block, body, init)
  return out, lse[..., 0]


def backward(q, k, v, rel_h, rel_w, out, lse, d_out, *, scale,
             block_q=DEFAULT_BLOCK_Q, block_q_bwd=DEFAULT_BLOCK_Q_BWD):
  """Residuals of `forward` and dO -> dq, dk, dv (B, H, N, C), d_rel_h (B, H, N, h),
  d_rel_w (B, H, N, w), each in its input's dtype."""
  del block_q
  batch, heads, n, _ = q.shape
  height, width = rel_h.shape[-1], rel_w.shape[-1]
  block = min(block_q_bwd, n)
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1,
                  keepdims=True)
  lse = lse[..., None]

  def body(start, fresh, carry):
    dq, dk, dv, d_rel_h, d_rel_w = carry
    rows = functools.partial(blocked.rows, start=start, block=block, axis=2)
    put = lambda x, new: blocked.put_rows(x, start, rows(x) + new, axis=2)
    # Rows the previous block already did get zero cotangent, hence zero dS.
    fresh_rows = lambda x: jnp.where(fresh.reshape(1, 1, block, 1), rows(x), 0)
    q_rows, d_out_rows = rows(q), fresh_rows(d_out)
    weights = jnp.exp(_scores(q_rows, k, rows(rel_h), rows(rel_w), scale) - rows(lse))
    dv = dv + _einsum("bhqk,bhqc->bhkc", weights.astype(d_out.dtype), d_out_rows)
    d_scores = rc.score_grad(weights, _einsum("bhqc,bhkc->bhqk", d_out_rows, v),
                             fresh_rows(delta))
    dk = dk + scale * _einsum("bhqk,bhqc->bhkc", d_scores.astype(q.dtype), q_rows)
    dq = put(dq, scale * _einsum("bhqk,bhkc->bhqc", d_scores.astype(k.dtype), k))
    d_grid = d_scores.reshape(batch, heads, block, height, width)
    return dq, dk, dv, put(d_rel_h, d_grid.sum(-1)), put(d_rel_w, d_grid.sum(-2))

  init = tuple(jnp.zeros(x.shape, jnp.float32) for x in (q, k, v, rel_h, rel_w))
  grads = blocked.block_loop(n, block, body, init)
  return tuple(g.astype(x.dtype) for g, x in zip(grads, (q, k, v, rel_h, rel_w)))
