"""Relation attention as Pallas TPU (Mosaic) kernels.

Flash-style: the grid walks (batch, row block, inner block) with the inner axis
sequential ("arbitrary"), carrying running statistics and accumulators in VMEM
scratch; no N x N buffer exists in HBM or VMEM. Four kernels:

  forward, alpha == 0: `_softmax_kernel` (online softmax, writes out and lse);
  forward, alpha > 0:  `_softmax_kernel` without values (lse only), then
                       `_kept_kernel` (thresholded weights, out and zinv);
  backward:            `_row_grad_kernel` over query blocks (dS En -> dEn rows),
                       `_column_grad_kernel` over key blocks (dS^T En and dV,
                       then the chain through the L2 normalisation -> dE).

Per-row statistics live in (rows, 128) lane-broadcast tiles, the TPU idiom for
row vectors. N is padded to the block size; padded keys are masked, padded
queries are dropped. Block sizes must be multiples of 128 (lanes). Each grid
step keeps a few (block, C) and (block, D) tiles in VMEM: with D in the
thousands, lower the blocks.
"""

import functools
import math

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp

from spt_jax.errors import SptUserError
from spt_jax.kernels import relation_common as rc

DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 256
_LANES = 128


def _column(ref):
  """A (rows, 128) lane-broadcast statistic as a (rows, 1) column."""
  return ref[...][:, :1]


def _store_column(ref, x):
  ref[...] = jnp.broadcast_to(x, ref.shape)


def _softmax_kernel(eq_ref, ek_ref, *refs, n_keys, with_values):
  """Online softmax over key blocks; grid (B, query blocks, key blocks)."""
  if with_values:
    v_ref, out_ref, lse_ref, m_ref, l_ref, acc_ref = refs
  else:
    lse_ref, m_ref, l_ref = refs
  i, j = pl.program_id(1), pl.program_id(2)

  @pl.when(j == 0)
  def _init():
    m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, jnp.float32)
    l_ref[...] = jnp.zeros(l_ref.shape, jnp.float32)
    if with_values:
      acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  s, _, _ = rc.block_scores(eq_ref[...], ek_ref[...], i * eq_ref.shape[0],
                            j * ek_ref.shape[0], n_keys)
  m, l, p, corr = rc.online_softmax_update(_column(m_ref), _column(l_ref), s)
  _store_column(m_ref, m)
  _store_column(l_ref, l)
  if with_values:
    acc_ref[...] = acc_ref[...] * corr + rc.dot_nn(
        p.astype(v_ref.dtype), v_ref[...])

  @pl.when(j == pl.num_programs(2) - 1)
  def _finish():
    _store_column(lse_ref, m + jnp.log(l))
    if with_values:
      out_ref[...] = (acc_ref[...] / l).astype(out_ref.dtype)


def _kept_kernel(eq_ref, ek_ref, v_ref, lse_ref, out_ref, zinv_ref, z_ref,
                 acc_ref, *, n_keys, threshold):
  """Thresholded, renormalised weights @ V; grid (B, query, key blocks)."""
  i, j = pl.program_id(1), pl.program_id(2)

  @pl.when(j == 0)
  def _init():
    z_ref[...] = jnp.zeros(z_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  s, _, _ = rc.block_scores(eq_ref[...], ek_ref[...], i * eq_ref.shape[0],
                            j * ek_ref.shape[0], n_keys)
  p = rc.probs_from_stats(s, _column(lse_ref), 1.0, threshold)
  z = _column(z_ref) + jnp.sum(p, axis=-1, keepdims=True)
  _store_column(z_ref, z)
  acc_ref[...] += rc.dot_nn(p.astype(v_ref.dtype), v_ref[...])

  @pl.when(j == pl.num_programs(2) - 1)
  def _finish():
    zinv = rc.kept_mass_inverse(z)
    _store_column(zinv_ref, zinv)
    out_ref[...] = (acc_ref[...] * zinv).astype(out_ref.dtype)


def _row_grad_kernel(eq_ref, ek_ref, vk_ref, do_ref, lse_ref, zinv_ref,
                     delta_ref, d_en_ref, acc_ref, *, n_keys, threshold):
  """dEn row term sum_j dS_ij En_j; grid (B, query blocks, key blocks)."""
  i, j = pl.program_id(1), pl.program_id(2)

  @pl.when(j == 0)
  def _init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  s, _, en_k = rc.block_scores(eq_ref[...], ek_ref[...], i * eq_ref.shape[0],
                               j * ek_ref.shape[0], n_keys)
  p = rc.probs_from_stats(s, _column(lse_ref), _column(zinv_ref), threshold)
  ds = rc.score_grad(p, rc.dot_nt(do_ref[...], vk_ref[...]),
                     _column(delta_ref))
  acc_ref[...] += rc.dot_nn(ds.astype(en_k.dtype), en_k)

  @pl.when(j == pl.num_programs(2) - 1)
  def _finish():
    d_en_ref[...] = acc_ref[...]


def _column_grad_kernel(ek_ref, vk_ref, d_en_row_ref, eq_ref, do_ref, lse_ref,
                        zinv_ref, delta_ref, de_ref, dv_ref, d_en_acc_ref,
                        dv_acc_ref, *, n_keys, threshold):
  """dV, dEn column term and dE; grid (B, key blocks, query blocks)."""
  j, i = pl.program_id(1), pl.program_id(2)

  @pl.when(i == 0)
  def _init():
    d_en_acc_ref[...] = jnp.zeros(d_en_acc_ref.shape, jnp.float32)
    dv_acc_ref[...] = jnp.zeros(dv_acc_ref.shape, jnp.float32)

  s, en_q, _ = rc.block_scores(eq_ref[...], ek_ref[...], i * eq_ref.shape[0],
                               j * ek_ref.shape[0], n_keys)
  p = rc.probs_from_stats(s, _column(lse_ref), _column(zinv_ref), threshold)
  d_out = do_ref[...]
  dv_acc_ref[...] += rc.dot_tn(p.astype(d_out.dtype), d_out)
  ds = rc.score_grad(p, rc.dot_nt(d_out, vk_ref[...]), _column(delta_ref))
  d_en_acc_ref[...] += rc.dot_tn(ds.astype(en_q.dtype), en_q)

  @pl.when(i == pl.num_programs(2) - 1)
  def _finish():
    d_en = d_en_row_ref[...] + d_en_acc_ref[...]
    de_ref[...] = rc.normalize_rows_vjp(ek_ref[...], d_en).astype(de_ref.dtype)
    dv_ref[...] = dv_acc_ref[...].astype(dv_ref.dtype)


class _Layout:
  """Padded sizes, grid and block specs of one call.

  Grid axes are (batch, outer blocks, inner blocks); `outer` / `inner` specs
  tile rows by the outer / inner block of the current grid step.
  """

  def __init__(self, n, block_q, block_k):
    for name, block in (("block_q", block_q), ("block_k", block_k)):
      if block <= 0 or block % _LANES:
        raise SptUserError(
            f"relation_attention (pallas_tpu): {name} must be a positive "
            f"multiple of {_LANES}, got {block}")
    cap = rc.round_up(n, _LANES)
    self.block_q, self.block_k = min(block_q, cap), min(block_k, cap)
    self.n_pad = rc.round_up(n, math.lcm(self.block_q, self.block_k))
    self.n_keys = n if self.n_pad != n else None

  def grid(self, batch, outer, inner):
    return (batch, self.n_pad // outer, self.n_pad // inner)

  @staticmethod
  def outer(block, width):
    return pl.BlockSpec((None, block, width), lambda b, i, j: (b, i, 0))

  @staticmethod
  def inner(block, width):
    return pl.BlockSpec((None, block, width), lambda b, i, j: (b, j, 0))


def _call(kernel, layout, *, grid, in_specs, out_specs, out_shape,
          scratch_shapes, interpret):
  return pl.pallas_call(
      functools.partial(kernel, n_keys=layout.n_keys),
      grid=grid,
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      scratch_shapes=scratch_shapes,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=interpret,
  )


def _lanes(stat, n_pad):
  """(B, N) statistic -> (B, n_pad, 128) lane-broadcast, zero-padded rows."""
  stat = rc.pad_axis(stat, 1, n_pad)
  return jnp.broadcast_to(stat[..., None], (*stat.shape, _LANES))


def forward(e, v, *, threshold, block_q=DEFAULT_BLOCK_Q,
            block_k=DEFAULT_BLOCK_K, interpret=False):
  """e (B, N, C), v (B, N, D) -> out (B, N, D), lse (B, N), zinv (B, N)."""
  b, n, c = e.shape
  d = v.shape[-1]
  lay = _Layout(n, block_q, block_k)
  bq, bk = lay.block_q, lay.block_k
  e_p, v_p = rc.pad_axis(e, 1, lay.n_pad), rc.pad_axis(v, 1, lay.n_pad)
  grid = lay.grid(b, bq, bk)
  stat = jax.ShapeDtypeStruct((b, lay.n_pad, _LANES), jnp.float32)
  out = jax.ShapeDtypeStruct((b, lay.n_pad, d), v.dtype)
  row_stat = pltpu.VMEM((bq, _LANES), jnp.float32)
  acc = pltpu.VMEM((bq, d), jnp.float32)
  e_specs = [lay.outer(bq, c), lay.inner(bk, c)]
  if threshold:
    lse = _call(
        functools.partial(_softmax_kernel, with_values=False), lay,
        grid=grid, in_specs=e_specs, out_specs=lay.outer(bq, _LANES),
        out_shape=stat, scratch_shapes=[row_stat, row_stat],
        interpret=interpret)(e_p, e_p)
    out, zinv = _call(
        functools.partial(_kept_kernel, threshold=threshold), lay, grid=grid,
        in_specs=[*e_specs, lay.inner(bk, d), lay.outer(bq, _LANES)],
        out_specs=[lay.outer(bq, d), lay.outer(bq, _LANES)],
        out_shape=[out, stat], scratch_shapes=[row_stat, acc],
        interpret=interpret)(e_p, e_p, v_p, lse)
    zinv = zinv[:, :n, 0]
  else:
    out, lse = _call(
        functools.partial(_softmax_kernel, with_values=True), lay, grid=grid,
        in_specs=[*e_specs, lay.inner(bk, d)],
        out_specs=[lay.outer(bq, d), lay.outer(bq, _LANES)],
        out_shape=[out, stat], scratch_shapes=[row_stat, row_stat, acc],
        interpret=interpret)(e_p, e_p, v_p)
    zinv = jnp.ones((b, n), jnp.float32)
  return out[:, :n], lse[:, :n, 0], zinv


def backward(e, v, out, lse, zinv, d_out, *, threshold,
             block_q=DEFAULT_BLOCK_Q, block_k=DEFAULT_BLOCK_K,
             interpret=False):
  """Residuals of `forward` and dO (B, N, D) -> de (B, N, C), dv (B, N, D)."""
  b, n, c = e.shape
  d = v.shape[-1]
  lay = _Layout(n, block_q, block_k)
  bq, bk = lay.block_q, lay.block_k
  e_p, v_p, do_p = (rc.pad_axis(x, 1, lay.n_pad) for x in (e, v, d_out))
  stats = [_lanes(x, lay.n_pad)
           for x in (lse, zinv, rc.output_grad_dot(out, d_out))]
  stat_q = lay.outer(bq, _LANES)
  d_en_row = _call(
      functools.partial(_row_grad_kernel, threshold=threshold), lay,
      grid=lay.grid(b, bq, bk),
      in_specs=[lay.outer(bq, c), lay.inner(bk, c), lay.inner(bk, d),
                lay.outer(bq, d), stat_q, stat_q, stat_q],
      out_specs=lay.outer(bq, c),
      out_shape=jax.ShapeDtypeStruct((b, lay.n_pad, c), jnp.float32),
      scratch_shapes=[pltpu.VMEM((bq, c), jnp.float32)],
      interpret=interpret)(e_p, e_p, v_p, do_p, *stats)

  # Grid (batch, key blocks, query blocks): outer specs tile keys now.
  stat_q = lay.inner(bq, _LANES)
  de, dv = _call(
      functools.partial(_column_grad_kernel, threshold=threshold), lay,
      grid=lay.grid(b, bk, bq),
      in_specs=[lay.outer(bk, c), lay.outer(bk, d), lay.outer(bk, c),
                lay.inner(bq, c), lay.inner(bq, d), stat_q, stat_q, stat_q],
      out_specs=[lay.outer(bk, c), lay.outer(bk, d)],
      out_shape=[jax.ShapeDtypeStruct((b, lay.n_pad, c), e.dtype),
                 jax.ShapeDtypeStruct((b, lay.n_pad, d), v.dtype)],
      scratch_shapes=[pltpu.VMEM((bk, c), jnp.float32),
                      pltpu.VMEM((bk, d), jnp.float32)],
      interpret=interpret)(e_p, v_p, d_en_row, e_p, do_p, *stats)
  return de[:, :n], dv[:, :n]
