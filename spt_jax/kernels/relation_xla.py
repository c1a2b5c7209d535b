"""Relation attention as blocked XLA: the memory-lean path for CPU.

Both passes loop over query blocks, each step holding full rows of scores
(block_q, N), never the N x N matrix. The forward produces the row statistics
(lse, zinv) directly. The backward recomputes the weights of the block from
them and accumulates, in one loop, dV (N, D), the row term dS En of dEn (the
block's rows) and the column term dS^T En (all rows); it ends with the chain
through the L2 normalisation. Live memory is O(N * block_q) for the score
blocks plus the O(N * (C + D)) accumulators, the size of the gradients.

The normalised embedding is never materialised: a block of cosines is the raw
product of E rows scaled by both rows' inverse norms, and gradients w.r.t. En
are formed the same way.
"""

import functools

import jax
import jax.numpy as jnp

from spt_jax.kernels import blocked
from spt_jax.kernels import relation_common as rc

DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_Q_BWD = 256


def _row_scores(e, inv, start, block):
  """Masked cosine scores of rows [start, start + block) against all rows.

  Args:
    e: (N, C) embedding; inv: (N, 1) its inverse row norms.

  Returns:
    s (block, N) float32, and the block's e_q (block, C), inv_q (block, 1).
  """
  e_q, inv_q = blocked.rows(e, start, block), blocked.rows(inv, start, block)
  s = rc.mask_scores(rc.dot_nt(e_q, e) * inv_q * inv.T, start, 0)
  return s, e_q, inv_q


def _forward_one(e, v, *, threshold, block_q):
  """One image: e (N, C), v (N, D) -> out (N, D), lse (N,), zinv (N,)."""
  n = e.shape[0]
  block_q = min(block_q, n)
  inv = rc.inverse_row_norm(e)

  def body(start, _, carry):
    out, lse, zinv = carry
    s, _, _ = _row_scores(e, inv, start, block_q)
    # One online-softmax step over whole rows; p = exp(s - m), unnormalised.
    m, l, p, _ = rc.online_softmax_update(-jnp.inf, 0.0, s)
    lse_q = m + jnp.log(l)
    if threshold:
      p = rc.probs_from_stats(s, lse_q, 1.0, threshold)
      zinv_q = rc.kept_mass_inverse(jnp.sum(p, axis=-1, keepdims=True))
      scale = zinv_q
    else:
      zinv_q, scale = jnp.ones_like(l), 1.0 / l
    out_q = rc.dot_nn(p.astype(v.dtype), v) * scale
    return (blocked.put_rows(out, start, out_q), blocked.put_rows(lse, start, lse_q),
            blocked.put_rows(zinv, start, zinv_q))

  init = (jnp.zeros(v.shape, v.dtype), jnp.zeros((n, 1), jnp.float32),
          jnp.zeros((n, 1), jnp.float32))
  out, lse, zinv = blocked.block_loop(n, block_q, body, init)
  return out, lse[:, 0], zinv[:, 0]


def _backward_one(e, v, out, lse, zinv, d_out, *, threshold, block_q):
  """One image: residuals and dO (N, D) -> de (N, C), dv (N, D)."""
  n = e.shape[0]
  block_q = min(block_q, n)
  inv = rc.inverse_row_norm(e)
  delta = rc.output_grad_dot(out, d_out)[:, None]
  lse, zinv = lse[:, None], zinv[:, None]

  def body(start, fresh, carry):
    d_en, dv = carry
    rows = functools.partial(blocked.rows, start=start, block=block_q)
    s, e_q, inv_q = _row_scores(e, inv, start, block_q)
    p = rc.probs_from_stats(s, rows(lse), rows(zinv), threshold)
    # Rows the previous block already did get zero cotangent, hence ds = 0.
    fresh_rows = lambda x: jnp.where(fresh, rows(x), 0)
    d_out_q = fresh_rows(d_out)
    ds = rc.score_grad(p, rc.dot_nt(d_out_q, v), fresh_rows(delta))
    # Column term dS^T En_q for all rows, row term dS En for the block's rows.
    d_en += rc.dot_tn((ds * inv_q).astype(e.dtype), e_q)
    d_en = blocked.put_rows(d_en, start, rows(d_en) + rc.dot_nn(
        (ds * inv.T).astype(e.dtype), e))
    return d_en, dv + rc.dot_tn(p.astype(d_out.dtype), d_out_q)

  init = (jnp.zeros(e.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
  d_en, dv = blocked.block_loop(n, block_q, body, init)
  return rc.normalize_rows_vjp(e, d_en).astype(e.dtype), dv.astype(v.dtype)


def forward(e, v, *, threshold, block_q=DEFAULT_BLOCK_Q,
            block_q_bwd=DEFAULT_BLOCK_Q_BWD):
  """Batched forward: (B, N, C), (B, N, D) -> out (B, N, D), lse, zinv (B, N).

  block_q: query rows per forward step (a (block_q, N) score block).
  block_q_bwd: the same for the backward, which it takes instead (accepted
    here so that both passes share one set of options).
  """
  del block_q_bwd
  fn = functools.partial(_forward_one, threshold=threshold, block_q=block_q)
  return jax.vmap(fn)(e, v)


def backward(e, v, out, lse, zinv, d_out, *, threshold,
             block_q=DEFAULT_BLOCK_Q, block_q_bwd=DEFAULT_BLOCK_Q_BWD):
  """Batched backward: residuals of `forward` and dO -> (de, dv).

  Uses block_q_bwd (larger by default: each step also adds into the
  (N, C + D) accumulators, whose traffic larger blocks amortise).
  """
  del block_q
  fn = functools.partial(_backward_one, threshold=threshold,
                         block_q=block_q_bwd)
  return jax.vmap(fn)(e, v, out, lse, zinv, d_out)
