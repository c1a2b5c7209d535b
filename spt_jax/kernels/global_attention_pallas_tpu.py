"""SAM's global attention with decomposed rel-pos as Pallas TPU (Mosaic) kernels.

Flash attention over (image x head, query block, key block) grids, the key (or
query) axis sequential, running statistics and accumulators in VMEM scratch; no
N x N buffer exists. The rel-pos bias of a block is two small matrix products,
    bias = rel_h[q rows] @ onehot_h + rel_w[q rows] @ onehot_w
with the (h, bk) and (w, bk) one-hot maps of the key block's grid rows and columns,
built in the kernel from the keys' int32 (row, col) ids (8 bytes a key instead of
(h + w) one-hot values read from HBM at every step): the MXU does the gathers an
expanded bias would, and their transposes give the gradients of rel_h and rel_w.
Kernels:

  forward:        `_forward_kernel` (online softmax; out and lse), grid (BH, q, k);
  backward, rows: `_query_grad_kernel` (dq, d rel_h, d rel_w), grid (BH, q, k);
  backward, keys: `_key_grad_kernel` (dk, dv), grid (BH, k, q), on transposed
                  (bk, bq) blocks: the queries' statistics enter as lane rows (4
                  bytes a query at each step, not a 128-lane tile) and every
                  product is a plain or right-transposed matmul (no tile transpose).

Block sizes are multiples of 128 (lanes); N is padded to them (padded keys are
masked, padded queries dropped). Per-query statistics (the log-sum-exp, delta) live
in HBM as (1, N) lane rows, 4 bytes a query (a (N, 128) lane-broadcast array would
be 512); the forward and the query-gradient pass turn them between rows and the
(rows, 128) columns their blocks use with one transpose per query block. Operands
are tiny next to the score blocks (C <= 80 for SAM), so the default 512 x 512 blocks
fit every chip's default scoped VMEM.
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
_ID_BYTES = 2 * 4  # a key's int32 grid row and column


def _column(ref):
  return ref[...][:, :1]


def _store_column(ref, x):
  ref[...] = jnp.broadcast_to(x, ref.shape)


def _row_to_lanes(row):
  """(1, rows) lane row -> (rows, 128) lane-broadcast tile (one 128 x rows transpose)."""
  return jnp.broadcast_to(row, (_LANES, row.shape[1])).T


def _column_to_row(column):
  """(rows, 1) column -> (1, rows) lane row (one rows x 128 transpose)."""
  return jnp.broadcast_to(column, (column.shape[0], _LANES)).T[:1]


def _onehot(ids, size, axis, dtype):
  """The one-hot map of grid ids along `axis` of a (size, bk) or (bk, size) block:
  ids (1, bk) -> (size, bk) for axis 0, ids (bk, 1) -> (bk, size) for axis 1; ids
  of padded keys (-1) give zero columns (rows)."""
  shape = (size, ids.shape[1]) if axis == 0 else (ids.shape[0], size)
  hit = ids == jax.lax.broadcasted_iota(jnp.int32, shape, axis)
  return jnp.where(hit, 1.0, 0.0).astype(dtype)


def _scores(q_ref, k_ref, rel_h_ref, rel_w_ref, ids_ref, scale, k_start, n_keys):
  """Scores of a (query block, key block): (bq, bk) float32, padded keys masked.
  ids_ref: (2, bk) the keys' grid rows and columns."""
  rel_h, rel_w = rel_h_ref[...], rel_w_ref[...]
  ids = ids_ref[...]
  scores = rc.dot_nt(q_ref[...], k_ref[...]) * scale
  scores += rc.dot_nn(rel_h, _onehot(ids[0:1], rel_h.shape[1], 0, rel_h.dtype))
  scores += rc.dot_nn(rel_w, _onehot(ids[1:2], rel_w.shape[1], 0, rel_w.dtype))
  if n_keys is not None:
    keys = k_start + jax.lax.broadcasted_iota(jnp.int32, scores.shape, 1)
    scores = jnp.where(keys < n_keys, scores, rc.PAD_SCORE)
  return scores


def _forward_kernel(q_ref, k_ref, v_ref, rel_h_ref, rel_w_ref, ids_ref, out_ref, lse_ref,
                    m_ref, l_ref, acc_ref, *, scale, n_keys):
  """Online softmax over key blocks; grid (BH, query blocks, key blocks)."""
  j = pl.program_id(2)

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  s = _scores(q_ref, k_ref, rel_h_ref, rel_w_ref, ids_ref, scale, j * k_ref.shape[0],
              n_keys)
  m, l, p, corr = rc.online_softmax_update(_column(m_ref), _column(l_ref), s)
  _store_column(m_ref, m)
  _store_column(l_ref, l)
  acc_ref[...] = acc_ref[...] * corr + rc.dot_nn(p.astype(v_ref.dtype), v_ref[...])

  @pl.when(j == pl.num_programs(2) - 1)
  def _finish():
    lse_ref[...] = _column_to_row(m + jnp.log(l))
    out_ref[...] = (acc_ref[...] / l).astype(out_ref.dtype)


def _query_grad_kernel(q_ref, k_ref, v_ref, rel_h_ref, rel_w_ref, ids_ref, do_ref,
                       lse_ref, delta_ref, dq_ref, d_rel_h_ref, d_rel_w_ref, dq_acc,
                       d_rel_h_acc, d_rel_w_acc, lse_lanes, delta_lanes, *, scale,
                       n_keys):
  """dq = scale dS K, d rel_h = dS onehot_h^T, d rel_w = dS onehot_w^T; grid (BH, q, k).

  lse_ref and delta_ref: (1, bq) lane rows, turned once per query block into the
  (bq, 128) tiles lse_lanes and delta_lanes in VMEM."""
  j = pl.program_id(2)

  @pl.when(j == 0)
  def _init():
    for acc in (dq_acc, d_rel_h_acc, d_rel_w_acc):
      acc[...] = jnp.zeros(acc.shape, jnp.float32)
    lse_lanes[...] = _row_to_lanes(lse_ref[...])
    delta_lanes[...] = _row_to_lanes(delta_ref[...])

  s = _scores(q_ref, k_ref, rel_h_ref, rel_w_ref, ids_ref, scale, j * k_ref.shape[0],
              n_keys)
  p = jnp.exp(s - _column(lse_lanes))
  ds = rc.score_grad(p, rc.dot_nt(do_ref[...], v_ref[...]), _column(delta_lanes))
  ids = ids_ref[...]
  dq_acc[...] += scale * rc.dot_nn(ds.astype(k_ref.dtype), k_ref[...])
  d_rel_h_acc[...] += rc.dot_nt(ds, _onehot(ids[0:1], d_rel_h_acc.shape[1], 0,
                                            jnp.float32))
  d_rel_w_acc[...] += rc.dot_nt(ds, _onehot(ids[1:2], d_rel_w_acc.shape[1], 0,
                                            jnp.float32))

  @pl.when(j == pl.num_programs(2) - 1)
  def _finish():
    for ref, acc in ((dq_ref, dq_acc), (d_rel_h_ref, d_rel_h_acc),
                     (d_rel_w_ref, d_rel_w_acc)):
      ref[...] = acc[...].astype(ref.dtype)


def _key_grad_kernel(k_ref, v_ref, ids_ref, q_ref, rel_h_ref, rel_w_ref, do_ref, lse_ref,
                     delta_ref, dk_ref, dv_ref, dk_acc, dv_acc, *, scale, n_keys):
  """dk = scale dS^T Q, dv = P^T dO; grid (BH, key blocks, query blocks).

  Works on the transposed block s^T (bk, bq) = scale K Q^T + onehot_h^T rel_h^T +
  onehot_w^T rel_w^T; ids_ref (bk, 2), lse_ref and delta_ref (1, bq) lane rows."""
  j, i = pl.program_id(1), pl.program_id(2)

  @pl.when(i == 0)
  def _init():
    dk_acc[...] = jnp.zeros(dk_acc.shape, jnp.float32)
    dv_acc[...] = jnp.zeros(dv_acc.shape, jnp.float32)

  rel_h, rel_w = rel_h_ref[...], rel_w_ref[...]
  ids = ids_ref[...]
  s_t = rc.dot_nt(k_ref[...], q_ref[...]) * scale
  s_t += rc.dot_nt(_onehot(ids[:, 0:1], rel_h.shape[1], 1, rel_h.dtype), rel_h)
  s_t += rc.dot_nt(_onehot(ids[:, 1:2], rel_w.shape[1], 1, rel_w.dtype), rel_w)
  if n_keys is not None:
    keys = j * k_ref.shape[0] + jax.lax.broadcasted_iota(jnp.int32, s_t.shape, 0)
    s_t = jnp.where(keys < n_keys, s_t, rc.PAD_SCORE)
  p_t = jnp.exp(s_t - lse_ref[...])
  ds_t = rc.score_grad(p_t, rc.dot_nt(v_ref[...], do_ref[...]), delta_ref[...])
  dv_acc[...] += rc.dot_nn(p_t.astype(do_ref.dtype), do_ref[...])
  dk_acc[...] += scale * rc.dot_nn(ds_t.astype(q_ref.dtype), q_ref[...])

  @pl.when(i == pl.num_programs(2) - 1)
  def _finish():
    dk_ref[...] = dk_acc[...].astype(dk_ref.dtype)
    dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


class _Layout:
  """Padded sizes, key ids, block specs and HBM traffic of one call (grid (BH, outer,
  inner))."""

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

  def key_ids(self):
    """(2, n_pad) int32: each key's grid row and column; -1 for padded keys."""
    keys = jnp.arange(self.n_pad)
    valid = keys < (self.n_keys or self.n_pad)
    ids = jnp.stack([keys // self.width, keys % self.width])
    return jnp.where(valid, ids, -1).astype(jnp.int32)

  @staticmethod
  def outer(block, width):
    return pl.BlockSpec((None, block, width), lambda b, o, i: (b, o, 0))

  @staticmethod
  def inner(block, width):
    return pl.BlockSpec((None, block, width), lambda b, o, i: (b, i, 0))

  @staticmethod
  def inner_row(block):
    """A (1, block) lane row of a (BH, 1, n_pad) array, along the inner grid axis."""
    return pl.BlockSpec((None, 1, block), lambda b, o, i: (b, 0, i))

  @staticmethod
  def outer_row(block):
    """A (1, block) lane row of a (BH, 1, n_pad) array, along the outer grid axis."""
    return pl.BlockSpec((None, 1, block), lambda b, o, i: (b, 0, o))

  @staticmethod
  def ids_row(block):
    """The (2, block) ids of the inner grid axis' key block."""
    return pl.BlockSpec((2, block), lambda b, o, i: (0, i))

  @staticmethod
  def ids_column(block):
    """The (block, 2) ids of the outer grid axis' key block (of the ids' transpose)."""
    return pl.BlockSpec((block, 2), lambda b, o, i: (o, 0))

  def hbm_bytes(self, bh, once, per_step, blocks):
    """Bytes one call moves: `once` bytes a row for operands read or written once,
    `per_step` bytes a row for those the inner axis reads again for each of the
    outer axis' `blocks` blocks."""
    return int(bh * self.n_pad * (once + per_step * blocks))

  def call(self, kernel, *, grid, in_specs, out_specs, out_shape, scratch_shapes,
           flops, bytes_accessed, interpret, **params):
    return pl.pallas_call(
        functools.partial(kernel, n_keys=self.n_keys, **params),
        grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
        scratch_shapes=scratch_shapes,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")),
        cost_estimate=pl.CostEstimate(flops=flops, transcendentals=grid[0]
                                      * self.n_pad * self.n_pad,
                                      bytes_accessed=bytes_accessed),
        interpret=interpret)


def _flat(x, n_pad):
  """(B, H, N, X) -> (B * H, n_pad, X), zero-padded rows."""
  return rc.pad_axis(x.reshape((-1,) + x.shape[2:]), 1, n_pad)


def _row(stat, n_pad):
  """(B, H, N) -> (B * H, 1, n_pad) float32 lane rows."""
  return rc.pad_axis(stat.reshape(-1, 1, stat.shape[-1]).astype(jnp.float32), 2, n_pad)


def forward(q, k, v, rel_h, rel_w, *, scale, block_q=DEFAULT_BLOCK_Q,
            block_k=DEFAULT_BLOCK_K, interpret=False):
  """q, k, v (B, H, N, C), rel_h (B, H, N, h), rel_w (B, H, N, w) -> out (B, H, N, C),
  lse (B, H, N) float32."""
  batch, heads, n, channels = q.shape
  height, width = rel_h.shape[-1], rel_w.shape[-1]
  lay = _Layout(n, height, width, block_q, block_k)
  bq, bk, bh, n_pad = lay.block_q, lay.block_k, batch * heads, lay.n_pad
  size = q.dtype.itemsize
  out, lse = lay.call(
      _forward_kernel, scale=scale, grid=(bh, n_pad // bq, n_pad // bk),
      in_specs=[lay.outer(bq, channels), lay.inner(bk, channels), lay.inner(bk, channels),
                lay.outer(bq, height), lay.outer(bq, width), lay.ids_row(bk)],
      out_specs=[lay.outer(bq, channels), lay.outer_row(bq)],
      out_shape=[jax.ShapeDtypeStruct((bh, n_pad, channels), v.dtype),
                 jax.ShapeDtypeStruct((bh, 1, n_pad), jnp.float32)],
      scratch_shapes=[pltpu.VMEM((bq, _LANES), jnp.float32),
                      pltpu.VMEM((bq, _LANES), jnp.float32),
                      pltpu.VMEM((bq, channels), jnp.float32)],
      flops=2 * bh * n_pad * n_pad * (2 * channels + height + width),
      bytes_accessed=lay.hbm_bytes(
          bh, once=(2 * channels + height + width) * size + 4,
          per_step=2 * channels * size + _ID_BYTES, blocks=n_pad // bq),
      interpret=interpret,
  )(*(_flat(x, n_pad) for x in (q, k, v, rel_h, rel_w)), lay.key_ids())
  return (out[:, :n].reshape(q.shape),
          lse[:, 0, :n].reshape(batch, heads, n))


def backward(q, k, v, rel_h, rel_w, out, lse, d_out, *, scale, block_q=DEFAULT_BLOCK_Q,
             block_k=DEFAULT_BLOCK_K, interpret=False):
  """Residuals of `forward` and dO -> dq, dk, dv, d_rel_h, d_rel_w (inputs' shapes)."""
  batch, heads, n, channels = q.shape
  height, width = rel_h.shape[-1], rel_w.shape[-1]
  lay = _Layout(n, height, width, block_q, block_k)
  bq, bk, bh, n_pad = lay.block_q, lay.block_k, batch * heads, lay.n_pad
  size, grid_hw = q.dtype.itemsize, height + width
  q_, k_, v_, rel_h_, rel_w_, do_ = (_flat(x, n_pad)
                                     for x in (q, k, v, rel_h, rel_w, d_out))
  rows = [_row(x, n_pad) for x in (lse, rc.output_grad_dot(out, d_out))]
  ids = lay.key_ids()
  dq, d_rel_h, d_rel_w = lay.call(
      _query_grad_kernel, scale=scale, grid=(bh, n_pad // bq, n_pad // bk),
      in_specs=[lay.outer(bq, channels), lay.inner(bk, channels), lay.inner(bk, channels),
                lay.outer(bq, height), lay.outer(bq, width), lay.ids_row(bk),
                lay.outer(bq, channels), lay.outer_row(bq), lay.outer_row(bq)],
      out_specs=[lay.outer(bq, channels), lay.outer(bq, height), lay.outer(bq, width)],
      out_shape=[jax.ShapeDtypeStruct((bh, n_pad, x.shape[-1]), x.dtype)
                 for x in (q, rel_h, rel_w)],
      scratch_shapes=[pltpu.VMEM((bq, x), jnp.float32)
                      for x in (channels, height, width, _LANES, _LANES)],
      flops=2 * bh * n_pad * n_pad * (3 * channels + 2 * grid_hw),
      bytes_accessed=lay.hbm_bytes(
          bh, once=2 * (2 * channels + grid_hw) * size + 2 * 4,
          per_step=2 * channels * size + _ID_BYTES, blocks=n_pad // bq),
      interpret=interpret,
  )(q_, k_, v_, rel_h_, rel_w_, ids, do_, *rows)
  # Grid (BH, key blocks, query blocks): outer specs tile keys now.
  dk, dv = lay.call(
      _key_grad_kernel, scale=scale, grid=(bh, n_pad // bk, n_pad // bq),
      in_specs=[lay.outer(bk, channels), lay.outer(bk, channels), lay.ids_column(bk),
                lay.inner(bq, channels), lay.inner(bq, height), lay.inner(bq, width),
                lay.inner(bq, channels), lay.inner_row(bq), lay.inner_row(bq)],
      out_specs=[lay.outer(bk, channels), lay.outer(bk, channels)],
      out_shape=[jax.ShapeDtypeStruct((bh, n_pad, channels), x.dtype) for x in (k, v)],
      scratch_shapes=[pltpu.VMEM((bk, channels), jnp.float32)] * 2,
      flops=2 * bh * n_pad * n_pad * (4 * channels + grid_hw),
      bytes_accessed=lay.hbm_bytes(
          bh, once=4 * channels * size + _ID_BYTES,
          per_step=(2 * channels + grid_hw) * size + 2 * 4, blocks=n_pad // bk),
      interpret=interpret,
  )(k_, v_, ids.T, q_, rel_h_, rel_w_, do_, *rows)
  unflat = lambda x, like: x[:, :n].reshape(like.shape)
  return (unflat(dq, q), unflat(dk, k), unflat(dv, v), unflat(d_rel_h, rel_h),
          unflat(d_rel_w, rel_w))
