"""Relation attention as Pallas GPU (Triton) kernels.

Each program owns one row block and loops over the other axis inside the kernel
(Triton programs keep no state between grid steps), reading the looped operand
from HBM block by block; no N x N buffer exists. V, dO and the output are tiled
over features by `block_d` so that the accumulators fit in registers; products
that contract over all features (dO . V) loop over the feature tiles. Kernels:

  forward, alpha == 0: `_softmax_kernel` (online softmax, writes out and lse);
  forward, alpha > 0:  `_softmax_kernel` without values (lse only), then
                       `_kept_kernel` (thresholded weights, out and zinv);
  backward:            `_row_grad_kernel` (dS En -> dEn rows, per query block),
                       `_column_grad_kernel` (dS^T En and the chain through the
                       L2 normalisation -> dE, per key block),
                       `_value_grad_kernel` (dV tiles, per key block).

Triton needs power-of-two tiles: N is padded to the row blocks (padded keys are
masked), C to a power of two and D to a multiple of block_d, all with zeros,
which change no norm, score or product.
"""

import functools

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
import jax.numpy as jnp

from spt_jax.errors import SptUserError
from spt_jax.kernels import relation_common as rc

DEFAULT_BLOCK_Q = 64
DEFAULT_BLOCK_K = 64
DEFAULT_BLOCK_D = 128
DEFAULT_NUM_WARPS = 4
DEFAULT_NUM_STAGES = 2


def _column(ref, rows=slice(None)):
  """Rows of a per-row statistic (n,) as a (rows, 1) column."""
  return ref[rows][:, None]


def _feature_dot_nt(a_ref, a_rows, b_ref, b_rows, shape, block_d):
  """a[a_rows] (m, D) @ b[b_rows] (n, D).T -> shape (m, n) f32.

  Loops over feature tiles of block_d so that no (rows, D) tile is loaded.
  """
  def tile(t, acc):
    cols = pl.ds(t * block_d, block_d)
    return acc + rc.triton_dot_nt(a_ref[a_rows, cols], b_ref[b_rows, cols])
  return lax.fori_loop(0, a_ref.shape[1] // block_d, tile,
                       jnp.zeros(shape, jnp.float32))


def _softmax_kernel(eq_ref, e_ref, *refs, n_keys, block_k, with_values):
  """Online softmax over key blocks; grid (query blocks, feature tiles, B)."""
  if with_values:
    v_ref, out_ref, lse_ref = refs
  else:
    (lse_ref,) = refs
  i, bq = pl.program_id(0), eq_ref.shape[0]
  e_q = eq_ref[...]

  def body(j, carry):
    m, l, acc = carry
    keys = pl.ds(j * block_k, block_k)
    s, _, _ = rc.block_scores(e_q, e_ref[keys, :], i * bq, j * block_k,
                              n_keys, rc.triton_dot_precision)
    m, l, p, corr = rc.online_softmax_update(m, l, s)
    if with_values:
      acc = acc * corr + rc.triton_dot_nn(p.astype(v_ref.dtype), v_ref[keys, :])
    return m, l, acc

  init = (jnp.full((bq, 1), -jnp.inf, jnp.float32),
          jnp.zeros((bq, 1), jnp.float32),
          jnp.zeros((bq, v_ref.shape[1]), jnp.float32) if with_values else None)
  m, l, acc = lax.fori_loop(0, e_ref.shape[0] // block_k, body, init)
  if with_values:
    out_ref[...] = (acc / l).astype(out_ref.dtype)

  @pl.when(pl.program_id(1) == 0)
  def _store_stats():
    lse_ref[...] = (m + jnp.log(l))[:, 0]


def _kept_kernel(eq_ref, e_ref, v_ref, lse_ref, out_ref, zinv_ref, *, n_keys,
                 block_k, threshold):
  """Thresholded, renormalised weights @ V; grid (query, feature tiles, B)."""
  i, bq = pl.program_id(0), eq_ref.shape[0]
  e_q, lse = eq_ref[...], _column(lse_ref)

  def body(j, carry):
    z, acc = carry
    keys = pl.ds(j * block_k, block_k)
    s, _, _ = rc.block_scores(e_q, e_ref[keys, :], i * bq, j * block_k,
                              n_keys, rc.triton_dot_precision)
    p = rc.probs_from_stats(s, lse, 1.0, threshold)
    return (z + jnp.sum(p, axis=-1, keepdims=True),
            acc + rc.triton_dot_nn(p.astype(v_ref.dtype), v_ref[keys, :]))

  init = (jnp.zeros((bq, 1), jnp.float32),
          jnp.zeros((bq, v_ref.shape[1]), jnp.float32))
  z, acc = lax.fori_loop(0, e_ref.shape[0] // block_k, body, init)
  zinv = rc.kept_mass_inverse(z)
  out_ref[...] = (acc * zinv).astype(out_ref.dtype)

  @pl.when(pl.program_id(1) == 0)
  def _store_stats():
    zinv_ref[...] = zinv[:, 0]


def _row_grad_kernel(eq_ref, e_ref, v_ref, do_ref, lse_ref, zinv_ref,
                     delta_ref, d_en_ref, *, n_keys, block_k, block_d,
                     threshold):
  """dEn row term sum_j dS_ij En_j; grid (query blocks, B)."""
  i, bq = pl.program_id(0), eq_ref.shape[0]
  e_q = eq_ref[...]
  lse, zinv, delta = (_column(r) for r in (lse_ref, zinv_ref, delta_ref))

  def body(j, acc):
    keys = pl.ds(j * block_k, block_k)
    s, _, en_k = rc.block_scores(e_q, e_ref[keys, :], i * bq, j * block_k,
                                 n_keys, rc.triton_dot_precision)
    p = rc.probs_from_stats(s, lse, zinv, threshold)
    dp = _feature_dot_nt(do_ref, slice(None), v_ref, keys, (bq, block_k),
                         block_d)
    ds = rc.score_grad(p, dp, delta)
    return acc + rc.triton_dot_nn(ds.astype(en_k.dtype), en_k)

  d_en_ref[...] = lax.fori_loop(0, e_ref.shape[0] // block_k, body,
                                jnp.zeros(d_en_ref.shape, jnp.float32))


def _column_grad_kernel(ek_ref, d_en_row_ref, vk_ref, e_ref, do_ref, lse_ref,
                        zinv_ref, delta_ref, de_ref, *, n_keys, block_q,
                        block_d, threshold):
  """dEn column term sum_i dS_ij En_i, then dE; grid (key blocks, B)."""
  j, bk = pl.program_id(0), ek_ref.shape[0]
  e_k = ek_ref[...]

  def body(i, acc):
    queries = pl.ds(i * block_q, block_q)
    s, en_q, _ = rc.block_scores(e_ref[queries, :], e_k, i * block_q, j * bk,
                                 n_keys, rc.triton_dot_precision)
    p = rc.probs_from_stats(s, _column(lse_ref, queries),
                            _column(zinv_ref, queries), threshold)
    dp = _feature_dot_nt(do_ref, queries, vk_ref, slice(None),
                         (block_q, bk), block_d)
    ds = rc.score_grad(p, dp, _column(delta_ref, queries))
    return acc + rc.triton_dot_tn(ds.astype(en_q.dtype), en_q)

  d_en_col = lax.fori_loop(0, e_ref.shape[0] // block_q, body,
                           jnp.zeros(de_ref.shape, jnp.float32))
  de = rc.normalize_rows_vjp(e_k, d_en_row_ref[...] + d_en_col)
  de_ref[...] = de.astype(de_ref.dtype)


def _value_grad_kernel(ek_ref, e_ref, do_ref, lse_ref, zinv_ref, dv_ref, *,
                       n_keys, block_q, threshold):
  """dV_j = sum_i p_ij dO_i; grid (key blocks, feature tiles, B)."""
  j, bk = pl.program_id(0), ek_ref.shape[0]
  e_k = ek_ref[...]

  def body(i, acc):
    queries = pl.ds(i * block_q, block_q)
    s, _, _ = rc.block_scores(e_ref[queries, :], e_k, i * block_q, j * bk,
                              n_keys, rc.triton_dot_precision)
    p = rc.probs_from_stats(s, _column(lse_ref, queries),
                            _column(zinv_ref, queries), threshold)
    return acc + rc.triton_dot_tn(p.astype(do_ref.dtype), do_ref[queries, :])

  dv = lax.fori_loop(0, e_ref.shape[0] // block_q, body,
                     jnp.zeros(dv_ref.shape, jnp.float32))
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _is_power_of_two(x):
  return x > 0 and not x & (x - 1)


class _Layout:
  """Padded sizes and block specs of one call.

  Grid axes are (row blocks, [feature tiles,] batch). `rows` tiles rows by the
  program's row block, `whole` hands the kernel all (padded) rows.
  """

  def __init__(self, n, c, d, block_q, block_k, block_d):
    for name, block in (("block_q", block_q), ("block_k", block_k),
                        ("block_d", block_d)):
      if not _is_power_of_two(block):
        raise SptUserError(
            f"relation_attention (pallas_gpu): {name} must be a power of two,"
            f" got {block}")
    cap = pl.next_power_of_2(n)
    self.block_q, self.block_k = min(block_q, cap), min(block_k, cap)
    self.n_pad = rc.round_up(n, max(self.block_q, self.block_k))
    self.n_keys = n if self.n_pad != n else None
    self.c_pad = pl.next_power_of_2(c)
    self.block_d = min(block_d, pl.next_power_of_2(d))
    self.d_pad = rc.round_up(d, self.block_d)

  @staticmethod
  def rows(block, width, tiled=False):
    return pl.BlockSpec((None, block, width), lambda r, *rest: (
        rest[-1], r, rest[0] if tiled else 0))

  def whole(self, width, tiled=False):
    return pl.BlockSpec((None, self.n_pad, width), lambda r, *rest: (
        rest[-1], 0, rest[0] if tiled else 0))

  def whole_stat(self):
    return pl.BlockSpec((None, self.n_pad), lambda r, *rest: (rest[-1], 0))

  @staticmethod
  def rows_stat(block):
    return pl.BlockSpec((None, block), lambda r, *rest: (rest[-1], r))


def _call(kernel, *, grid, in_specs, out_specs, out_shape, cost, num_warps,
          num_stages, interpret):
  return pl.pallas_call(
      kernel,
      grid=grid,
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=plgpu.CompilerParams(
          num_warps=num_warps, num_stages=num_stages),
      cost_estimate=cost,
      interpret=interpret,
  )


def _cost(batch, lay, *, score_passes, value_width, rows_read, itemsize):
  """pl.CostEstimate of a call over `batch` images.

  score_passes: how often the call computes the (N x N) scores (once per
  feature tile where the grid has them); value_width: the feature columns
  multiplied against the weights (per N x N entry); rows_read: (N, width)
  operands each row block streams whole, as their total width.
  """
  n, c = lay.n_pad, lay.c_pad
  blocks = n // min(lay.block_q, lay.block_k)
  return pl.CostEstimate(
      flops=int(batch * 2 * n * n * (score_passes * c + value_width)),
      transcendentals=int(batch * score_passes * n * n),
      bytes_accessed=int(batch * n * rows_read * blocks * itemsize))


def _pad(x, n_pad, width):
  return rc.pad_axis(rc.pad_axis(x, 1, n_pad), 2, width)


def forward(e, v, *, threshold, block_q=DEFAULT_BLOCK_Q,
            block_k=DEFAULT_BLOCK_K, block_d=DEFAULT_BLOCK_D,
            num_warps=DEFAULT_NUM_WARPS, num_stages=DEFAULT_NUM_STAGES,
            interpret=False):
  """e (B, N, C), v (B, N, D) -> out (B, N, D), lse (B, N), zinv (B, N)."""
  b, n, c = e.shape
  d = v.shape[-1]
  lay = _Layout(n, c, d, block_q, block_k, block_d)
  bq, bk, bd = lay.block_q, lay.block_k, lay.block_d
  e_p, v_p = _pad(e, lay.n_pad, lay.c_pad), _pad(v, lay.n_pad, lay.d_pad)
  tiled_grid = (lay.n_pad // bq, lay.d_pad // bd, b)
  stat = jax.ShapeDtypeStruct((b, lay.n_pad), jnp.float32)
  out = jax.ShapeDtypeStruct((b, lay.n_pad, lay.d_pad), v.dtype)
  opts = dict(n_keys=lay.n_keys, block_k=bk)
  call = functools.partial(_call, num_warps=num_warps, num_stages=num_stages,
                           interpret=interpret)
  e_specs = [lay.rows(bq, lay.c_pad), lay.whole(lay.c_pad)]
  cost = functools.partial(_cost, b, lay, itemsize=v.dtype.itemsize)
  tiled_cost = cost(score_passes=lay.d_pad // bd, value_width=lay.d_pad,
                    rows_read=lay.c_pad * lay.d_pad // bd + lay.d_pad)
  if threshold:
    lse = call(
        functools.partial(_softmax_kernel, with_values=False, **opts),
        grid=(lay.n_pad // bq, 1, b), in_specs=e_specs,
        out_specs=lay.rows_stat(bq), out_shape=stat,
        cost=cost(score_passes=1, value_width=0, rows_read=lay.c_pad))(e_p, e_p)
    out, zinv = call(
        functools.partial(_kept_kernel, threshold=threshold, **opts),
        grid=tiled_grid,
        in_specs=[*e_specs, lay.whole(bd, tiled=True), lay.rows_stat(bq)],
        out_specs=[lay.rows(bq, bd, tiled=True), lay.rows_stat(bq)],
        out_shape=[out, stat], cost=tiled_cost)(e_p, e_p, v_p, lse)
    zinv = zinv[:, :n]
  else:
    out, lse = call(
        functools.partial(_softmax_kernel, with_values=True, **opts),
        grid=tiled_grid, in_specs=[*e_specs, lay.whole(bd, tiled=True)],
        out_specs=[lay.rows(bq, bd, tiled=True), lay.rows_stat(bq)],
        out_shape=[out, stat], cost=tiled_cost)(e_p, e_p, v_p)
    zinv = jnp.ones((b, n), jnp.float32)
  return out[:, :n, :d], lse[:, :n], zinv


def backward(e, v, out, lse, zinv, d_out, *, threshold,
             block_q=DEFAULT_BLOCK_Q, block_k=DEFAULT_BLOCK_K,
             block_d=DEFAULT_BLOCK_D, num_warps=DEFAULT_NUM_WARPS,
             num_stages=DEFAULT_NUM_STAGES, interpret=False):
  """Residuals of `forward` and dO (B, N, D) -> de (B, N, C), dv (B, N, D)."""
  b, n, c = e.shape
  d = v.shape[-1]
  lay = _Layout(n, c, d, block_q, block_k, block_d)
  bq, bk, bd = lay.block_q, lay.block_k, lay.block_d
  cp, dp = lay.c_pad, lay.d_pad
  e_p = _pad(e, lay.n_pad, cp)
  v_p, do_p = (_pad(x, lay.n_pad, dp) for x in (v, d_out))
  stats = [rc.pad_axis(x, 1, lay.n_pad)
           for x in (lse, zinv, rc.output_grad_dot(out, d_out))]
  call = functools.partial(_call, num_warps=num_warps, num_stages=num_stages,
                           interpret=interpret)
  opts = dict(n_keys=lay.n_keys, threshold=threshold)
  cost = functools.partial(_cost, b, lay, itemsize=v.dtype.itemsize)
  # dS needs dO V^T over all features; dS @ En is one more C-wide product.
  grad_cost = cost(score_passes=1, value_width=dp + cp, rows_read=cp + dp)

  d_en_row = call(
      functools.partial(_row_grad_kernel, block_k=bk, block_d=bd, **opts),
      grid=(lay.n_pad // bq, b),
      in_specs=[lay.rows(bq, cp), lay.whole(cp), lay.whole(dp),
                lay.rows(bq, dp), *[lay.rows_stat(bq)] * 3],
      out_specs=lay.rows(bq, cp),
      out_shape=jax.ShapeDtypeStruct((b, lay.n_pad, cp), jnp.float32),
      cost=grad_cost)(e_p, e_p, v_p, do_p, *stats)
  de = call(
      functools.partial(_column_grad_kernel, block_q=bq, block_d=bd, **opts),
      grid=(lay.n_pad // bk, b),
      in_specs=[lay.rows(bk, cp), lay.rows(bk, cp), lay.rows(bk, dp),
                lay.whole(cp), lay.whole(dp), *[lay.whole_stat()] * 3],
      out_specs=lay.rows(bk, cp),
      out_shape=jax.ShapeDtypeStruct((b, lay.n_pad, cp), e.dtype),
      cost=grad_cost)(e_p, d_en_row, v_p, e_p, do_p, *stats)
  dv = call(
      functools.partial(_value_grad_kernel, block_q=bq, **opts),
      grid=(lay.n_pad // bk, dp // bd, b),
      in_specs=[lay.rows(bk, cp), lay.whole(cp), lay.whole(bd, tiled=True),
                *[lay.whole_stat()] * 2],
      out_specs=lay.rows(bk, bd, tiled=True),
      out_shape=jax.ShapeDtypeStruct((b, lay.n_pad, dp), v.dtype),
      cost=cost(score_passes=dp // bd, value_width=dp,
                rows_read=cp * dp // bd + dp))(e_p, e_p, do_p, *stats[:2])
  return de[:, :n, :c], dv[:, :n, :d]
