"""Relation attention as blocked XLA: the memory-lean path for CPU.

The forward scans over query blocks; each step holds full rows of scores
(block_q, N), so the row statistics (lse, zinv) come out directly. The backward
runs two scans that mirror the Pallas kernels: one over query blocks for the row
term dS En of dEn, one over key blocks for the column term dS^T En and dV, whose
last step also chains through the L2 normalisation. Live memory is O(N * block)
for the score blocks plus O(N * C) for the row term: never N x N.

The normalised embedding is never materialised: a block of cosines is the raw
product of E rows scaled by both rows' inverse norms, and gradients w.r.t. En
are formed the same way.
"""

import functools

import jax
import jax.numpy as jnp

from spt_jax.kernels import relation_common as rc

DEFAULT_BLOCK_Q = 64
DEFAULT_BLOCK_K = 64


def _blocks(x, block):
  """(N, ...) -> (N_pad / block, block, ...), zero rows appended."""
  n_pad = rc.round_up(x.shape[0], block)
  x = rc.pad_axis(x, 0, n_pad)
  return x.reshape(n_pad // block, block, *x.shape[1:])


def _unblock(x, n):
  """(blocks, block, ...) -> (n, ...)."""
  return x.reshape(-1, *x.shape[2:])[:n]


def _scores(e_q, inv_q, q_start, e_k, inv_k, k_start, n_keys=None):
  """Masked cosine scores of e_q (m, C) against e_k (n, C) -> (m, n) f32."""
  g = rc.dot_nt(e_q, e_k) * inv_q * inv_k.T
  return rc.mask_scores(g, q_start, k_start, n_keys)


def _forward_one(e, v, *, threshold, block_q):
  """One image: e (N, C), v (N, D) -> out (N, D), lse (N,), zinv (N,)."""
  n = e.shape[0]
  block_q = min(block_q, n)
  inv = rc.inverse_row_norm(e)

  def step(_, xs):
    start, e_q, inv_q = xs
    s = _scores(e_q, inv_q, start, e, inv, 0)
    lse = jax.nn.logsumexp(s, axis=-1, keepdims=True)
    p = rc.probs_from_stats(s, lse, 1.0, threshold)
    zinv = (rc.kept_mass_inverse(jnp.sum(p, axis=-1, keepdims=True))
            if threshold else jnp.ones_like(lse))
    out = rc.dot_nn(p.astype(v.dtype), v) * zinv
    return None, (out.astype(v.dtype), lse[:, 0], zinv[:, 0])

  e_blocks = _blocks(e, block_q)
  starts = jnp.arange(e_blocks.shape[0], dtype=jnp.int32) * block_q
  _, (out, lse, zinv) = jax.lax.scan(
      step, None, (starts, e_blocks, _blocks(inv, block_q)))
  return _unblock(out, n), _unblock(lse, n), _unblock(zinv, n)


def _backward_one(e, v, out, lse, zinv, d_out, *, threshold, block_q,
                  block_k):
  """One image: residuals and dO (N, D) -> de (N, C), dv (N, D)."""
  n = e.shape[0]
  block_q, block_k = min(block_q, n), min(block_k, n)
  inv = rc.inverse_row_norm(e)
  delta = rc.output_grad_dot(out, d_out)[:, None]
  lse, zinv = lse[:, None], zinv[:, None]

  def row_step(_, xs):
    start, e_q, inv_q, lse_q, zinv_q, delta_q, d_out_q = xs
    s = _scores(e_q, inv_q, start, e, inv, 0)
    p = rc.probs_from_stats(s, lse_q, zinv_q, threshold)
    ds = rc.score_grad(p, rc.dot_nt(d_out_q, v), delta_q)
    return None, rc.dot_nn((ds * inv.T).astype(e.dtype), e)

  q_blocks = [_blocks(x, block_q) for x in (e, inv, lse, zinv, delta, d_out)]
  starts = jnp.arange(q_blocks[0].shape[0], dtype=jnp.int32) * block_q
  _, d_en_row = jax.lax.scan(row_step, None, (starts, *q_blocks))
  d_en_row = _unblock(d_en_row, n)

  def column_step(_, xs):
    start, e_k, inv_k, v_k, d_en_row_k = xs
    s = _scores(e, inv, 0, e_k, inv_k, start, n)
    p = rc.probs_from_stats(s, lse, zinv, threshold)
    dv = rc.dot_tn(p.astype(d_out.dtype), d_out)
    ds = rc.score_grad(p, rc.dot_nt(d_out, v_k), delta)
    d_en = d_en_row_k + rc.dot_tn((ds * inv).astype(e.dtype), e)
    de = rc.normalize_rows_vjp(e_k, d_en)
    return None, (de.astype(e.dtype), dv.astype(v.dtype))

  k_blocks = [_blocks(x, block_k) for x in (e, inv, v, d_en_row)]
  starts = jnp.arange(k_blocks[0].shape[0], dtype=jnp.int32) * block_k
  _, (de, dv) = jax.lax.scan(column_step, None, (starts, *k_blocks))
  return _unblock(de, n), _unblock(dv, n)


def forward(e, v, *, threshold, block_q=DEFAULT_BLOCK_Q,
            block_k=DEFAULT_BLOCK_K):
  """Batched forward: (B, N, C), (B, N, D) -> out (B, N, D), lse, zinv (B, N).

  block_k is unused here (it sizes the backward's key blocks); it is accepted
  so that forward and backward take the same options.
  """
  del block_k
  fn = functools.partial(_forward_one, threshold=threshold, block_q=block_q)
  return jax.vmap(fn)(e, v)


def backward(e, v, out, lse, zinv, d_out, *, threshold,
             block_q=DEFAULT_BLOCK_Q, block_k=DEFAULT_BLOCK_K):
  """Batched backward: residuals of `forward` and dO -> (de, dv)."""
  fn = functools.partial(_backward_one, threshold=threshold, block_q=block_q,
                         block_k=block_k)
  return jax.vmap(fn)(e, v, out, lse, zinv, d_out)
