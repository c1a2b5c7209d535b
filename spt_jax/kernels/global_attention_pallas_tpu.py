"""SAM's global attention with decomposed rel-pos as Pallas TPU (Mosaic) kernels.

Flash attention over (image x head, query block, key block) grids, the key (or
query) axis sequential, running statistics and accumulators in VMEM scratch; no
N x N buffer exists. The rel-pos bias of a block is two small matrix products,
    bias = rel_h[q rows] @ onehot_h[key block] + rel_w[q rows] @ onehot_w[key block]
with the (h, block_k) and (w, block_k) one-hot maps of the keys' grid rows and
columns (built outside, constant): the MXU does the gathers that an expanded bias
would, and their transposes give the gradients of rel_h and rel_w. Kernels:

  forward:        `_forward_kernel` (online softmax; out and lse), grid (BH, q, k);
  backward, rows: `_query_grad_kernel` (dq, d rel_h, d rel_w), grid (BH, q, k);
  backward, keys: `_key_grad_kernel` (dk, dv), grid (BH, k, q).

Block sizes are multiples of 128 (lanes); N is padded to them (padded keys are
masked, padded queries dropped). Per-row statistics are (rows, 128) lane-broadcast
tiles. Operands are tiny next to the score blocks (C <= 80 for SAM), so the default
512 x 512 blocks fit every chip's default scoped VMEM.
"""

import functools
import math

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp

from spt_jax.errors import SptUserError
from spt_jax.kernels import relation_common as rc

DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 512
_LANES = 128


def _column(ref):
  return ref[...][:, :1]


def _store_column(ref, x):
  ref[...] = jnp.broadcast_to(x, ref.shape)


def _scores(q_ref, k_ref, rel_h_ref, rel_w_ref, onehot_h_ref, onehot_w_ref, scale,
            k_start, n_keys):
  """Scores of a (query block, key block): (bq, bk) float32, padded keys masked."""
  scores = rc.dot_nt(q_ref[...], k_ref[...]) * scale
  scores += rc.dot_nn(rel_h_ref[...], onehot_h_ref[...].astype(rel_h_ref.dtype))
  scores += rc.dot_nn(rel_w_ref[...], onehot_w_ref[...].astype(rel_w_ref.dtype))
  if n_keys is not None:
    keys = k_start + jax.lax.broadcasted_iota(jnp.int32, scores.shape, 1)
    scores = jnp.where(keys < n_keys, scores, rc.PAD_SCORE)
  return scores


def _forward_kernel(q_ref, k_ref, v_ref, rel_h_ref, rel_w_ref, onehot_h_ref,
                    onehot_w_ref, out_ref, lse_ref, m_ref, l_ref, acc_ref, *, scale,
                    n_keys):
  """Online softmax over key blocks; grid (BH, query blocks, key blocks)."""
  j = pl.program_id(2)

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  s = _scores(q_ref, k_ref, rel_h_ref, rel_w_ref, onehot_h_ref, onehot_w_ref, scale,
              j * k_ref.shape[0], n_keys)
  m, l, p, corr = rc.online_softmax_update(_column(m_ref), _column(l_ref), s)
  _store_column(m_ref, m)
  _store_column(l_ref, l)
  acc_ref[...] = acc_ref[...] * corr + rc.dot_nn(p.astype(v_ref.dtype), v_ref[...])

  @pl.when(j == pl.num_programs(2) - 1)
  def _finish():
    _store_column(lse_ref, m + jnp.log(l))
    out_ref[...] = (acc_ref[...] / l).astype(out_ref.dtype)


def _weights_and_score_grads(q_ref, k_ref, v_ref, rel_h_ref, rel_w_ref, onehot_h_ref,
                             onehot_w_ref, do_ref, lse_ref, delta_ref, scale, k_start,
                             n_keys):
  """Recomputed weights p and score gradients dS of a block: (bq, bk) each."""
  s = _scores(q_ref, k_ref, rel_h_ref, rel_w_ref, onehot_h_ref, onehot_w_ref, scale,
              k_start, n_keys)
  p = jnp.exp(s - _column(lse_ref))
  ds = rc.score_grad(p, rc.dot_nt(do_ref[...], v_ref[...]), _column(delta_ref))
  return p, ds


def _query_grad_kernel(q_ref, k_ref, v_ref, rel_h_ref, rel_w_ref, onehot_h_ref,
                       onehot_w_ref, do_ref, lse_ref, delta_ref, dq_ref, d_rel_h_ref,
                       d_rel_w_ref, dq_acc, d_rel_h_acc, d_rel_w_acc, *, scale, n_keys):
  """dq = scale dS K, d rel_h = dS onehot_h^T, d rel_w = dS onehot_w^T; grid (BH, q, k)."""
  j = pl.program_id(2)

  @pl.when(j == 0)
  def _init():
    for acc in (dq_acc, d_rel_h_acc, d_rel_w_acc):
      acc[...] = jnp.zeros(acc.shape, jnp.float32)

  _, ds = _weights_and_score_grads(
      q_ref, k_ref, v_ref, rel_h_ref, rel_w_ref, onehot_h_ref, onehot_w_ref, do_ref,
      lse_ref, delta_ref, scale, j * k_ref.shape[0], n_keys)
  dq_acc[...] += scale * rc.dot_nn(ds.astype(k_ref.dtype), k_ref[...])
  d_rel_h_acc[...] += rc.dot_nt(ds, onehot_h_ref[...])
  d_rel_w_acc[...] += rc.dot_nt(ds, onehot_w_ref[...])

  @pl.when(j == pl.num_programs(2) - 1)
  def _finish():
    for ref, acc in ((dq_ref, dq_acc), (d_rel_h_ref, d_rel_h_acc),
                     (d_rel_w_ref, d_rel_w_acc)):
      ref[...] = acc[...].astype(ref.dtype)


def _key_grad_kernel(k_ref, v_ref, onehot_h_ref, onehot_w_ref, q_ref, rel_h_ref,
                     rel_w_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, dk_acc,
                     dv_acc, *, scale, n_keys):
  """dk = scale dS^T Q, dv = P^T dO; grid (BH, key blocks, query blocks)."""
  j, i = pl.program_id(1), pl.program_id(2)

  @pl.when(i == 0)
  def _init():
    dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
    dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

  p, ds = _weights_and_score_grads(
      q_ref, k_ref, v_ref, rel_h_ref, rel_w_ref, onehot_h_ref, onehot_w_ref, do_ref,
      lse_ref, delta_ref, scale, j * k_ref.shape[0], n_keys)
  dv_acc[...] += rc.dot_tn(p.astype(do_ref.dtype), do_ref[...])
  dk_acc[...] += scale * rc.dot_tn(ds.astype(q_ref.dtype), q_ref[...])

  @pl.when(i == pl.num_programs(2) - 1)
  def _finish():
    dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


class _Layout:
  """Padded sizes, one-hot maps and block specs of one call (grid (BH, outer, inner))."""

  def __init__(self, n, height, width, block_q, block_k):
    for name, block in (("block_q", block_q), ("block_k", block_k)):
      if block <= 0 or block % _LANES:
        raise SptUserError(f"global_attention (pallas_tpu): {name} must be a positive "
                           f"multiple of {_LANES}, got {block}")
    cap = rc.round_up(n, _LANES)
    self.block_q, self.block_k = min(block_q, cap), min(block_k, cap)
    self.n_pad = rc.round_up(n, math.lcm(self.block_q, self.block_k))
    self.n_keys = n if self.n_pad != n else None
    self.height, self.width = height, width

  def onehots(self, dtype):
    """(key blocks, h, bk) and (key blocks, w, bk): the keys' grid row and column."""
    keys = jnp.arange(self.n_pad).reshape(-1, 1, self.block_k)
    valid = keys < (self.n_keys or self.n_pad)
    rows = jnp.arange(self.height)[None, :, None]
    cols = jnp.arange(self.width)[None, :, None]
    return ((valid & (keys // self.width == rows)).astype(dtype),
            (valid & (keys % self.width == cols)).astype(dtype))

  @staticmethod
  def outer(block, width):
    return pl.BlockSpec((None, block, width), lambda b, o, i: (b, o, 0))

  @staticmethod
  def inner(block, width):
    return pl.BlockSpec((None, block, width), lambda b, o, i: (b, i, 0))

  @staticmethod
  def onehot(block, width, key_axis):
    """A key block's one-hot map; key_axis 1 (outer) or 2 (inner) of the grid."""
    return pl.BlockSpec((None, width, block),
                        lambda b, o, i: (o if key_axis == 1 else i, 0, 0))

  def call(self, kernel, *, grid, in_specs, out_specs, out_shape, scratch_shapes,
           cost, interpret, **params):
    return pl.pallas_call(
        functools.partial(kernel, n_keys=self.n_keys, **params),
        grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
        scratch_shapes=scratch_shapes,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        cost_estimate=cost, interpret=interpret)


def _flat(x, n_pad):
  """(B, H, N, X) -> (B * H, n_pad, X), zero-padded rows."""
  return rc.pad_axis(x.reshape((-1,) + x.shape[2:]), 1, n_pad)


def _lanes(stat, n_pad):
  """(B, H, N) -> (B * H, n_pad, 128) lane-broadcast."""
  stat = rc.pad_axis(stat.reshape(-1, stat.shape[-1]), 1, n_pad)
  return jnp.broadcast_to(stat[..., None], stat.shape + (_LANES,))


def _cost(bh, lay, channels, passes, itemsize):
  """One call over bh (image, head) pairs: `passes` products of N x N x (C or h + w)."""
  n = lay.n_pad
  width = channels + lay.height + lay.width
  blocks = n // min(lay.block_q, lay.block_k)
  return pl.CostEstimate(flops=int(bh * 2 * n * n * passes * width),
                         transcendentals=int(bh * n * n),
                         bytes_accessed=int(bh * n * width * blocks * 4 * itemsize))


def forward(q, k, v, rel_h, rel_w, *, scale, block_q=DEFAULT_BLOCK_Q,
            block_k=DEFAULT_BLOCK_K, interpret=False):
  """q, k, v (B, H, N, C), rel_h (B, H, N, h), rel_w (B, H, N, w) -> out (B, H, N, C),
  lse (B, H, N) float32."""
  batch, heads, n, channels = q.shape
  height, width = rel_h.shape[-1], rel_w.shape[-1]
  lay = _Layout(n, height, width, block_q, block_k)
  bq, bk, bh = lay.block_q, lay.block_k, batch * heads
  onehot_h, onehot_w = lay.onehots(rel_h.dtype)
  out, lse = lay.call(
      _forward_kernel, scale=scale, grid=(bh, lay.n_pad // bq, lay.n_pad // bk),
      in_specs=[lay.outer(bq, channels), lay.inner(bk, channels), lay.inner(bk, channels),
                lay.outer(bq, height), lay.outer(bq, width),
                lay.onehot(bk, height, 2), lay.onehot(bk, width, 2)],
      out_specs=[lay.outer(bq, channels), lay.outer(bq, _LANES)],
      out_shape=[jax.ShapeDtypeStruct((bh, lay.n_pad, channels), v.dtype),
                 jax.ShapeDtypeStruct((bh, lay.n_pad, _LANES), jnp.float32)],
      scratch_shapes=[pltpu.VMEM((bq, _LANES), jnp.float32),
                      pltpu.VMEM((bq, _LANES), jnp.float32),
                      pltpu.VMEM((bq, channels), jnp.float32)],
      cost=_cost(bh, lay, channels, 2, q.dtype.itemsize), interpret=interpret,
  )(*(_flat(x, lay.n_pad) for x in (q, k, v, rel_h, rel_w)), onehot_h, onehot_w)
  return (out[:, :n].reshape(q.shape),
          lse[:, :n, 0].reshape(batch, heads, n))


def backward(q, k, v, rel_h, rel_w, out, lse, d_out, *, scale, block_q=DEFAULT_BLOCK_Q,
             block_k=DEFAULT_BLOCK_K, interpret=False):
  """Residuals of `forward` and dO -> dq, dk, dv, d_rel_h, d_rel_w (inputs' shapes)."""
  batch, heads, n, channels = q.shape
  height, width = rel_h.shape[-1], rel_w.shape[-1]
  lay = _Layout(n, height, width, block_q, block_k)
  bq, bk, bh, n_pad = lay.block_q, lay.block_k, batch * heads, lay.n_pad
  onehot_h, onehot_w = lay.onehots(jnp.float32)
  q_, k_, v_, rel_h_, rel_w_, do_ = (_flat(x, n_pad)
                                     for x in (q, k, v, rel_h, rel_w, d_out))
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  lse_, delta_ = _lanes(lse, n_pad), _lanes(delta, n_pad)
  cost = _cost(bh, lay, channels, 3, q.dtype.itemsize)
  stat = lambda spec: spec(bq, _LANES)
  dq, d_rel_h, d_rel_w = lay.call(
      _query_grad_kernel, scale=scale, grid=(bh, n_pad // bq, n_pad // bk),
      in_specs=[lay.outer(bq, channels), lay.inner(bk, channels), lay.inner(bk, channels),
                lay.outer(bq, height), lay.outer(bq, width),
                lay.onehot(bk, height, 2), lay.onehot(bk, width, 2),
                lay.outer(bq, channels), stat(lay.outer), stat(lay.outer)],
      out_specs=[lay.outer(bq, channels), lay.outer(bq, height), lay.outer(bq, width)],
      out_shape=[jax.ShapeDtypeStruct((bh, n_pad, x.shape[-1]), x.dtype)
                 for x in (q, rel_h, rel_w)],
      scratch_shapes=[pltpu.VMEM((bq, x), jnp.float32) for x in (channels, height, width)],
      cost=cost, interpret=interpret,
  )(q_, k_, v_, rel_h_, rel_w_, onehot_h, onehot_w, do_, lse_, delta_)
  # Grid (BH, key blocks, query blocks): outer specs tile keys now.
  dk, dv = lay.call(
      _key_grad_kernel, scale=scale, grid=(bh, n_pad // bk, n_pad // bq),
      in_specs=[lay.outer(bk, channels), lay.outer(bk, channels),
                lay.onehot(bk, height, 1), lay.onehot(bk, width, 1),
                lay.inner(bq, channels), lay.inner(bq, height), lay.inner(bq, width),
                lay.inner(bq, channels), stat(lay.inner), stat(lay.inner)],
      out_specs=[lay.outer(bk, channels), lay.outer(bk, channels)],
      out_shape=[jax.ShapeDtypeStruct((bh, n_pad, channels), x.dtype) for x in (k, v)],
      scratch_shapes=[pltpu.VMEM((bk, channels), jnp.float32)] * 2,
      cost=cost, interpret=interpret,
  )(k_, v_, onehot_h, onehot_w, q_, rel_h_, rel_w_, do_, lse_, delta_)
  unflat = lambda x, like: x[:, :n].reshape(like.shape)
  return (unflat(dq, q), unflat(dk, k), unflat(dv, v), unflat(d_rel_h, rel_h),
          unflat(d_rel_w, rel_w))
