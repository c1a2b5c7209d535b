"""Relation attention as Pallas TPU (Mosaic) kernels.

Flash-style: the grid walks (batch, row block, feature tile, inner block) with
the last two axes sequential ("arbitrary"), carrying running statistics and
accumulators in VMEM scratch; no N x N buffer exists in HBM or VMEM. Four kernels:

  forward, alpha == 0: `_softmax_kernel` (online softmax, writes out and lse);
  forward, alpha > 0:  `_softmax_kernel` without values (lse only), then
                       `_kept_kernel` (thresholded weights, out and zinv);
  backward:            `_row_grad_kernel` over query blocks (dS En -> dEn rows),
                       `_column_grad_kernel` over key blocks (dS^T En and dV,
                       then the chain through the L2 normalisation -> dE).

V, dO and the output are cut into feature tiles of `block_d` columns when a
whole row block of them would not fit the chip's VMEM (several prompts stacked
on the feature axis: D = 256 x prompts). The forward recomputes the scores per
tile. The backward needs no cross-tile state: dS = P (dO V^T - delta) is linear
in the per-tile products, so each tile adds its own share of dS (with its own
share of delta = rowsum(dO * out)) into the dE accumulators.

Block sizes: `block_q` / `block_k` (multiples of 128, default 256) and
`block_d` (a multiple of 128, or all of D) are chosen, where not given, so that
every kernel's blocks (double-buffered by the pipeline), scratch and score
temporaries fit a VMEM budget of the chip the program is compiled for
(`pltpu.get_tpu_info`, known also when compiling ahead of time for a TPU
topology); the scoped VMEM limit the kernels ask for (`vmem_limit_bytes`) is
half the chip's VMEM, at least the compiler's default of 16 MiB.

Per-row statistics live in (rows, 128) lane-broadcast tiles, the TPU idiom for
row vectors. N is padded to the block size; padded keys are masked, padded
queries are dropped.
"""

import dataclasses
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
_MIB = 2 ** 20
# The compiler's default scoped VMEM limit; what is assumed when the chip is
# unknown (interpret mode on a CPU host).
_DEFAULT_VMEM_LIMIT = 16 * _MIB
# Share of the scoped limit the estimated blocks may take (`_pass_vmem_bytes`
# is an estimate).
_BUDGET_SHARE = 0.8


def _column(ref):
  """A (rows, 128) lane-broadcast statistic as a (rows, 1) column."""
  return ref[...][:, :1]


def _store_column(ref, x):
  ref[...] = jnp.broadcast_to(x, ref.shape)


def _first(*axes):
  """True at the first step of each of these grid axes."""
  return functools.reduce(jnp.logical_and, [pl.program_id(a) == 0 for a in axes])


def _last(*axes):
  """True at the last step of each of these grid axes."""
  return functools.reduce(jnp.logical_and, [
      pl.program_id(a) == pl.num_programs(a) - 1 for a in axes])


def _softmax_kernel(eq_ref, ek_ref, *refs, n_keys, with_values):
  """Online softmax over key blocks; grid (B, query blocks, tiles, key blocks)."""
  if with_values:
    v_ref, out_ref, lse_ref, m_ref, l_ref, acc_ref = refs
  else:
    lse_ref, m_ref, l_ref = refs
  i, j = pl.program_id(1), pl.program_id(3)

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

  @pl.when(_last(3))
  def _finish():
    _store_column(lse_ref, m + jnp.log(l))
    if with_values:
      out_ref[...] = (acc_ref[...] / l).astype(out_ref.dtype)


def _kept_kernel(eq_ref, ek_ref, v_ref, lse_ref, out_ref, zinv_ref, z_ref,
                 acc_ref, *, n_keys, threshold):
  """Thresholded, renormalised weights @ V; grid (B, query, tiles, key blocks)."""
  i, j = pl.program_id(1), pl.program_id(3)

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

  @pl.when(_last(3))
  def _finish():
    zinv = rc.kept_mass_inverse(z)
    _store_column(zinv_ref, zinv)
    out_ref[...] = (acc_ref[...] * zinv).astype(out_ref.dtype)


def _row_grad_kernel(eq_ref, ek_ref, vk_ref, do_ref, lse_ref, zinv_ref,
                     delta_ref, d_en_ref, acc_ref, *, n_keys, threshold):
  """dEn row term sum_j dS_ij En_j; grid (B, query blocks, tiles, key blocks)."""
  i, j = pl.program_id(1), pl.program_id(3)

  @pl.when(_first(2, 3))
  def _init():
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

  s, _, en_k = rc.block_scores(eq_ref[...], ek_ref[...], i * eq_ref.shape[0],
                               j * ek_ref.shape[0], n_keys)
  p = rc.probs_from_stats(s, _column(lse_ref), _column(zinv_ref), threshold)
  ds = rc.score_grad(p, rc.dot_nt(do_ref[...], vk_ref[...]),
                     _column(delta_ref))
  acc_ref[...] += rc.dot_nn(ds.astype(en_k.dtype), en_k)

  @pl.when(_last(2, 3))
  def _finish():
    d_en_ref[...] = acc_ref[...]


def _column_grad_kernel(ek_ref, vk_ref, d_en_row_ref, eq_ref, do_ref, lse_ref,
                        zinv_ref, delta_ref, de_ref, dv_ref, d_en_acc_ref,
                        dv_acc_ref, *, n_keys, threshold):
  """dV, dEn column term and dE; grid (B, key blocks, tiles, query blocks)."""
  j, i = pl.program_id(1), pl.program_id(3)

  @pl.when(_first(2, 3))
  def _init_d_en():
    d_en_acc_ref[...] = jnp.zeros(d_en_acc_ref.shape, jnp.float32)

  @pl.when(i == 0)
  def _init_dv():
    dv_acc_ref[...] = jnp.zeros(dv_acc_ref.shape, jnp.float32)

  s, en_q, _ = rc.block_scores(eq_ref[...], ek_ref[...], i * eq_ref.shape[0],
                               j * ek_ref.shape[0], n_keys)
  p = rc.probs_from_stats(s, _column(lse_ref), _column(zinv_ref), threshold)
  d_out = do_ref[...]
  dv_acc_ref[...] += rc.dot_tn(p.astype(d_out.dtype), d_out)
  ds = rc.score_grad(p, rc.dot_nt(d_out, vk_ref[...]), _column(delta_ref))
  d_en_acc_ref[...] += rc.dot_tn(ds.astype(en_q.dtype), en_q)

  @pl.when(_last(3))
  def _finish_dv():
    dv_ref[...] = dv_acc_ref[...].astype(dv_ref.dtype)

  @pl.when(_last(2, 3))
  def _finish_de():
    d_en = d_en_row_ref[...] + d_en_acc_ref[...]
    de_ref[...] = rc.normalize_rows_vjp(ek_ref[...], d_en).astype(de_ref.dtype)


def _vmem_limit():
  """Scoped VMEM (bytes) to ask for: half the chip's VMEM, at least 16 MiB."""
  try:
    capacity = pltpu.get_tpu_info().vmem_capacity_bytes
  except (ValueError, RuntimeError):  # not compiling for a TPU (interpret mode)
    return _DEFAULT_VMEM_LIMIT
  return min(capacity, max(_DEFAULT_VMEM_LIMIT, capacity // 2))


def _pass_vmem_bytes(backward, bq, bk, bd, c, itemsize, tiled):
  """VMEM of the largest kernel of a pass, for these blocks (an estimate).

  Blocks of inputs and outputs count twice (the pipeline's double buffers),
  scratch once, plus the (bq, bk) float32 score temporaries and the normalised
  row blocks. A tiled backward (`tiled`: D cut into several tiles) keeps about
  four more float32 (block, bd) buffers. Checked against the smallest
  `vmem_limit_bytes` that compiles (v5e, N = 4096, C = 256): within 5% or above.
  """
  f32, stat = 4, 2 * 3 * max(bq, bk) * _LANES * 4
  e_blocks = 2 * (bq + bk) * c * itemsize
  temps = 4 * bq * bk * f32 + (bq + bk) * c * f32
  if not backward:
    return e_blocks + 2 * (bk + bq) * bd * itemsize + bq * bd * f32 + stat + temps
  row = (e_blocks + 2 * (bk + bq) * bd * itemsize + 2 * bq * c * f32 + bq * c * f32)
  column = (e_blocks + 2 * bk * c * f32 + 2 * (bk + bq) * bd * itemsize
            + 2 * bk * (c + bd) * itemsize + bk * (c + bd) * f32)
  tiling = 4 * max(bq, bk) * bd * f32 if tiled else 0
  return max(row, column) + stat + temps + tiling


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Padded sizes, blocks and grid of one pass.

  Grid axes are (batch, outer blocks, feature tiles, inner blocks); block specs
  tile rows by the outer or inner block of the current grid step.
  """
  n: int
  block_q: int
  block_k: int
  block_d: int
  d_pad: int
  vmem_limit: int

  @classmethod
  def of(cls, e, v, *, backward, **blocks) -> "_Layout":
    """`choose` for e (B, N, C) and v (B, N, D)."""
    _, n, c = e.shape
    return cls.choose(n, c, v.shape[-1], v.dtype.itemsize, backward=backward, **blocks)

  @classmethod
  def choose(cls, n, c, d, itemsize, *, backward, block_q, block_k, block_d,
             vmem_limit_bytes):
    """Blocks as given, the rest the largest that fit the VMEM budget."""
    for name, block in (("block_q", block_q), ("block_k", block_k),
                        ("block_d", block_d)):
      if block is not None and (block <= 0 or block % _LANES):
        raise SptUserError(
            f"relation_attention (pallas_tpu): {name} must be a positive "
            f"multiple of {_LANES}, got {block}")
    limit = vmem_limit_bytes or _vmem_limit()
    cap = rc.round_up(n, _LANES)
    rows = [(min(block_q or b, cap), min(block_k or b, cap))
            for b in (DEFAULT_BLOCK_Q, _LANES)]
    if block_d is not None:
      tiles = [block_d]
    else:  # all of D, then ever more tiles of a multiple of 128 columns
      count = -(-d // _LANES)
      tiles = [d] + [rc.round_up(-(-d // t), _LANES) for t in range(2, count + 1)]
    if block_q and block_k and block_d:  # all given: the compiler judges
      rows = rows[:1]
    for bq, bk in dict.fromkeys(rows):
      for bd in tiles:
        fits = (_pass_vmem_bytes(backward, bq, bk, bd, c, itemsize, bd < d)
                <= _BUDGET_SHARE * limit)
        if fits or (block_q and block_k and block_d):
          return cls(n, bq, bk, bd, rc.round_up(d, bd), limit)
    raise SptUserError(
        f"relation_attention (pallas_tpu): no blocks fit {limit / _MIB:.0f} MiB "
        f"of VMEM for C = {c}, D = {d}; pass smaller block_q / block_k / block_d "
        "or a larger vmem_limit_bytes")

  @property
  def sizes(self) -> tuple[int, int, int, int, int]:
    """(block_q, block_k, block_d, n_pad, d_pad)."""
    return self.block_q, self.block_k, self.block_d, self.n_pad, self.d_pad

  def pad(self, e, *values):
    """e (B, N, C) to n_pad rows; each (B, N, D) value to n_pad rows, d_pad columns."""
    return (rc.pad_axis(e, 1, self.n_pad),
            *(rc.pad_axis(rc.pad_axis(x, 1, self.n_pad), 2, self.d_pad) for x in values))

  @property
  def n_pad(self):
    return rc.round_up(self.n, math.lcm(self.block_q, self.block_k))

  @property
  def n_keys(self):
    return self.n if self.n_pad != self.n else None

  @property
  def tiles(self):
    return self.d_pad // self.block_d

  def grid(self, batch, outer, inner, tiled=True):
    return (batch, self.n_pad // outer, self.tiles if tiled else 1,
            self.n_pad // inner)

  @staticmethod
  def outer(block, width, tiled=False):
    return pl.BlockSpec((None, block, width),
                        lambda b, o, t, n: (b, o, t if tiled else 0))

  @staticmethod
  def inner(block, width, tiled=False):
    return pl.BlockSpec((None, block, width),
                        lambda b, o, t, n: (b, n, t if tiled else 0))

  @staticmethod
  def tile_stat(block, inner):
    """Per-tile row statistic (B, tiles, n_pad, 128) by outer or inner rows."""
    return pl.BlockSpec((None, None, block, _LANES),
                        lambda b, o, t, n: (b, t, n if inner else o, 0))

  def call(self, kernel, *, grid, in_specs, out_specs, out_shape,
           scratch_shapes, cost, interpret):
    return pl.pallas_call(
        functools.partial(kernel, n_keys=self.n_keys),
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=scratch_shapes,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary",
                                 "arbitrary"),
            vmem_limit_bytes=self.vmem_limit),
        cost_estimate=cost,
        interpret=interpret,
    )


def _cost(batch, *, flops, transcendentals, elements, itemsize):
  """pl.CostEstimate of a call over `batch` images; elements read + written."""
  return pl.CostEstimate(flops=int(batch * flops),
                         transcendentals=int(batch * transcendentals),
                         bytes_accessed=int(batch * elements * itemsize))


def _lanes(stat, n_pad):
  """(B, N) statistic -> (B, n_pad, 128) lane-broadcast, zero-padded rows."""
  stat = rc.pad_axis(stat, 1, n_pad)
  return jnp.broadcast_to(stat[..., None], (*stat.shape, _LANES))


def _tile_delta(out, d_out, lay):
  """delta of each feature tile: (B, N, D) twice -> (B, tiles, n_pad, 128)."""
  b, n, _ = out.shape
  prod = (rc.pad_axis(d_out.astype(jnp.float32), 2, lay.d_pad)
          * rc.pad_axis(out.astype(jnp.float32), 2, lay.d_pad))
  delta = prod.reshape(b, n, lay.tiles, lay.block_d).sum(-1)
  return _lanes(jnp.transpose(delta, (0, 2, 1)).reshape(b * lay.tiles, n),
                lay.n_pad).reshape(b, lay.tiles, lay.n_pad, _LANES)


def forward(e, v, *, threshold, block_q=None, block_k=None, block_d=None,
            vmem_limit_bytes=None, interpret=False):
  """e (B, N, C), v (B, N, D) -> out (B, N, D), lse (B, N), zinv (B, N)."""
  b, n, c = e.shape
  d = v.shape[-1]
  lay = _Layout.of(e, v, backward=False, block_q=block_q, block_k=block_k,
                   block_d=block_d, vmem_limit_bytes=vmem_limit_bytes)
  bq, bk, bd, n_pad, dp = lay.sizes
  e_p, v_p = lay.pad(e, v)
  isz = v.dtype.itemsize
  stat = jax.ShapeDtypeStruct((b, n_pad, _LANES), jnp.float32)
  out = jax.ShapeDtypeStruct((b, n_pad, dp), v.dtype)
  row_stat = pltpu.VMEM((bq, _LANES), jnp.float32)
  acc = pltpu.VMEM((bq, bd), jnp.float32)
  e_specs = [lay.outer(bq, c), lay.inner(bk, c)]
  scores = dict(flops=2 * n_pad * n_pad * c, transcendentals=n_pad * n_pad,
                elements=n_pad * c * (1 + n_pad // bq))
  values = dict(flops=2 * n_pad * n_pad * dp,
                elements=n_pad * dp * (1 + n_pad // bq))
  with_values = lambda passes: _cost(
      b, flops=passes * scores["flops"] + values["flops"],
      transcendentals=passes * scores["transcendentals"],
      elements=passes * scores["elements"] + values["elements"], itemsize=isz)
  if threshold:
    lse = lay.call(
        functools.partial(_softmax_kernel, with_values=False),
        grid=lay.grid(b, bq, bk, tiled=False), in_specs=e_specs,
        out_specs=lay.outer(bq, _LANES), out_shape=stat,
        scratch_shapes=[row_stat, row_stat],
        cost=_cost(b, itemsize=isz, **scores), interpret=interpret)(e_p, e_p)
    out, zinv = lay.call(
        functools.partial(_kept_kernel, threshold=threshold),
        grid=lay.grid(b, bq, bk),
        in_specs=[*e_specs, lay.inner(bk, bd, tiled=True),
                  lay.outer(bq, _LANES)],
        out_specs=[lay.outer(bq, bd, tiled=True), lay.outer(bq, _LANES)],
        out_shape=[out, stat], scratch_shapes=[row_stat, acc],
        cost=with_values(lay.tiles), interpret=interpret)(e_p, e_p, v_p, lse)
    zinv = zinv[:, :n, 0]
  else:
    out, lse = lay.call(
        functools.partial(_softmax_kernel, with_values=True),
        grid=lay.grid(b, bq, bk),
        in_specs=[*e_specs, lay.inner(bk, bd, tiled=True)],
        out_specs=[lay.outer(bq, bd, tiled=True), lay.outer(bq, _LANES)],
        out_shape=[out, stat], scratch_shapes=[row_stat, row_stat, acc],
        cost=with_values(lay.tiles), interpret=interpret)(e_p, e_p, v_p)
    zinv = jnp.ones((b, n), jnp.float32)
  return out[:, :n, :d], lse[:, :n, 0], zinv


def backward(e, v, out, lse, zinv, d_out, *, threshold, block_q=None,
             block_k=None, block_d=None, vmem_limit_bytes=None,
             interpret=False):
  """Residuals of `forward` and dO (B, N, D) -> de (B, N, C), dv (B, N, D)."""
  b, n, c = e.shape
  d = v.shape[-1]
  lay = _Layout.of(e, v, backward=True, block_q=block_q, block_k=block_k,
                   block_d=block_d, vmem_limit_bytes=vmem_limit_bytes)
  bq, bk, bd, n_pad, dp = lay.sizes
  e_p, v_p, do_p = lay.pad(e, v, d_out)
  stats = [_lanes(x, n_pad) for x in (lse, zinv)] + [_tile_delta(out, d_out, lay)]
  isz = v.dtype.itemsize
  # Per pass: scores (and dO V^T) per tile, dS @ En, the rows it streams.
  cost = _cost(
      b, flops=lay.tiles * 2 * n_pad * n_pad * (c + bd) + 2 * n_pad * n_pad * c,
      transcendentals=lay.tiles * n_pad * n_pad,
      elements=n_pad * (c + dp) * (2 + n_pad // min(bq, bk)), itemsize=isz)
  d_en_row = lay.call(
      functools.partial(_row_grad_kernel, threshold=threshold),
      grid=lay.grid(b, bq, bk),
      in_specs=[lay.outer(bq, c), lay.inner(bk, c), lay.inner(bk, bd, True),
                lay.outer(bq, bd, True), lay.outer(bq, _LANES),
                lay.outer(bq, _LANES), lay.tile_stat(bq, inner=False)],
      out_specs=lay.outer(bq, c),
      out_shape=jax.ShapeDtypeStruct((b, n_pad, c), jnp.float32),
      scratch_shapes=[pltpu.VMEM((bq, c), jnp.float32)],
      cost=cost, interpret=interpret)(e_p, e_p, v_p, do_p, *stats)

  # Grid (batch, key blocks, tiles, query blocks): outer specs tile keys now.
  de, dv = lay.call(
      functools.partial(_column_grad_kernel, threshold=threshold),
      grid=lay.grid(b, bk, bq),
      in_specs=[lay.outer(bk, c), lay.outer(bk, bd, True), lay.outer(bk, c),
                lay.inner(bq, c), lay.inner(bq, bd, True),
                lay.inner(bq, _LANES), lay.inner(bq, _LANES),
                lay.tile_stat(bq, inner=True)],
      out_specs=[lay.outer(bk, c), lay.outer(bk, bd, True)],
      out_shape=[jax.ShapeDtypeStruct((b, n_pad, c), e.dtype),
                 jax.ShapeDtypeStruct((b, n_pad, dp), v.dtype)],
      scratch_shapes=[pltpu.VMEM((bk, c), jnp.float32),
                      pltpu.VMEM((bk, bd), jnp.float32)],
      cost=cost, interpret=interpret)(e_p, v_p, d_en_row, e_p, do_p, *stats)
  return de[:, :n], dv[:, :n, :d]
