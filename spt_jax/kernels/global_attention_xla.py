"""SAM's global attention with decomposed rel-pos as blocked XLA: the lean path for CPU.

The forward loops over query blocks, a step holding its block's full rows of scores,
(B, H, block_q, N), never the (B, H, N, N) tensor, and keeps each row's
log-sum-exp. The backward loops over key blocks of whole grid rows and recomputes
their weights from it (see `backward`). The bias of key j for query i,
rel_h[i, row(j)] + rel_w[i, col(j)], is added to a block of scores as an (h, w)
broadcast, and its gradient is the score gradient summed over the key grid's
columns (rel_h) or rows (rel_w).
"""

import functools

import jax.numpy as jnp

from spt_jax.kernels import blocked
from spt_jax.kernels import relation_common as rc
from spt_jax.kernels.global_attention_reference import expand_bias

# Query rows per forward step: the encoder's former query chunk (a vit_b global block
# holds 12 x 1024 x 4096 float32 scores per image at once, 201 MB); keys per backward
# step (measured on vit_b's global block here: 512 and 1024 equally fast, 2048 slower).
DEFAULT_BLOCK_Q = 1024
DEFAULT_BLOCK_Q_BWD = 512


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
  d_rel_w (B, H, N, w), each in its input's dtype.

  Loops over key blocks of whole grid rows (about block_q_bwd keys), each step holding
  the transposed scores of its keys against every query, (B, H, keys, N): dK and dV of
  its keys come out of untransposed products, and dQ (kept transposed) from one with
  the small key block transposed: XLA's CPU matmul runs a large transposed operand
  2-3x slower (measured on vit_b's global block: 2.4 s forward + backward this way,
  3.1 s over query blocks); dQ and the rel-pos gradients accumulate.
  """
  del block_q
  batch, heads, n, _ = q.shape
  width = rel_w.shape[-1]
  block = min(n, max(width, block_q_bwd // width * width))
  rows = block // width
  delta = rc.output_grad_dot(out, d_out)[:, :, None]
  lse = lse[:, :, None]
  # The rel-pos terms with queries last: (B, H, h, N) and (B, H, w, N).
  rel_h_t, rel_w_t = (jnp.swapaxes(x, 2, 3).astype(jnp.float32) for x in (rel_h, rel_w))

  def body(start, fresh, carry):
    dq_t, dk, dv, d_rel_h_t, d_rel_w_t = carry
    keys = functools.partial(blocked.rows, start=start, block=block, axis=2)
    k_rows, v_rows = keys(k), keys(v)
    row_start = start // width
    bias = (blocked.rows(rel_h_t, row_start, rows, axis=2)[:, :, :, None]
            + rel_w_t[:, :, None]).reshape(batch, heads, block, n)
    weights = jnp.exp(_einsum("bhkc,bhqc->bhkq", k_rows, q) * scale + bias - lse)
    dv = blocked.put_rows(dv, start, _einsum("bhkq,bhqc->bhkc",
                                             weights.astype(d_out.dtype), d_out), axis=2)
    d_scores = rc.score_grad(weights, _einsum("bhkc,bhqc->bhkq", v_rows, d_out), delta)
    dk = blocked.put_rows(dk, start, scale * _einsum(
        "bhkq,bhqc->bhkc", d_scores.astype(q.dtype), q), axis=2)
    # Keys the previous block already did must not be counted twice.
    d_scores = jnp.where(fresh.reshape(1, 1, block, 1), d_scores, 0.0)
    dq_t = dq_t + scale * _einsum("bhkc,bhkq->bhcq", k_rows, d_scores.astype(k.dtype))
    d_grid = d_scores.reshape(batch, heads, rows, width, n)
    d_rel_h_t = blocked.put_rows(
        d_rel_h_t, row_start,
        blocked.rows(d_rel_h_t, row_start, rows, axis=2) + d_grid.sum(3), axis=2)
    return dq_t, dk, dv, d_rel_h_t, d_rel_w_t + d_grid.sum(2)

  init = tuple(jnp.zeros(x.shape, jnp.float32)
               for x in (jnp.swapaxes(q, 2, 3), k, v, rel_h_t, rel_w_t))
  dq_t, dk, dv, d_rel_h_t, d_rel_w_t = blocked.block_loop(n, block, body, init)
  queries_third = lambda x: jnp.swapaxes(x, 2, 3)
  grads = (queries_third(dq_t), dk, dv, queries_third(d_rel_h_t),
           queries_third(d_rel_w_t))
  return tuple(g.astype(x.dtype) for g, x in zip(grads, (q, k, v, rel_h, rel_w)))
