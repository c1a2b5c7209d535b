"""SAM's global attention with decomposed rel-pos as Pallas GPU (Triton) kernels.

Each program owns one row block of one (image, head) and loops over the other axis
inside the kernel, reading the looped operands block by block (Triton programs keep
no state between grid steps); no N x N buffer exists. The rel-pos bias of a block:

  - key blocks of one grid row each (block_k = w, e.g. 64 at 1024 px): key block j
    is grid row j, so its bias is rel_h[q rows, j] (one column, broadcast over the
    keys) + rel_w[q rows] (the keys are the row's w columns), and its gradients are
    the score gradient summed over the keys (into column j of d rel_h) and the score
    gradient itself (d rel_w): no products beyond flash attention's;
  - any other block: as in the TPU kernels, two small products with the keys'
    one-hot grid rows and columns, (h, N) and (w, N) maps built outside,
        bias = rel_h[q rows] @ onehot_h[:, keys] + rel_w[q rows] @ onehot_w[:, keys],
    which doubles the products of the forward.

Kernels:

  forward:        `_forward_kernel` (online softmax; out, lse), grid (q blocks, BH);
  backward, rows: `_query_grad_kernel` (dq, d rel_h, d rel_w), grid (q blocks, BH);
  backward, keys: `_key_grad_kernel` (dk, dv), grid (key blocks, BH).

Triton needs power-of-two tiles: N is padded to the blocks (padded keys masked), C,
h and w to powers of two, with zeros, which change no product.
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
DEFAULT_NUM_WARPS = 4
DEFAULT_NUM_STAGES = 2


def _column(x, index):
  """x[:, index] of x (rows, cols) as (rows, 1) float32 (index traced)."""
  cols = lax.broadcasted_iota(jnp.int32, x.shape, 1)
  return jnp.sum(jnp.where(cols == index, x.astype(jnp.float32), 0.0), axis=1,
                 keepdims=True)


def _bias(rel_h, rel_w, onehots, row):
  """Rel-pos bias (bq, bk) float32 of a key block for queries with terms rel_h (bq, h),
  rel_w (bq, w): by the keys' one-hot maps `onehots` ((h, bk), (w, bk)), or for a
  block that is grid row `row` (onehots None, bk = w)."""
  if onehots is None:
    return _column(rel_h, row) + rel_w.astype(jnp.float32)
  onehot_h, onehot_w = onehots
  return (rc.triton_dot_nn(rel_h, onehot_h.astype(rel_h.dtype))
          + rc.triton_dot_nn(rel_w, onehot_w.astype(rel_w.dtype)))


def _bias_grads(ds, onehots, row, h_pad):
  """Gradients (bq, h), (bq, w) of `_bias`'s rel_h and rel_w from the score gradient
  ds (bq, bk) float32."""
  if onehots is None:
    cols = lax.broadcasted_iota(jnp.int32, (ds.shape[0], h_pad), 1)
    return jnp.where(cols == row, jnp.sum(ds, axis=1, keepdims=True), 0.0), ds
  onehot_h, onehot_w = onehots
  return rc.triton_dot_nt(ds, onehot_h), rc.triton_dot_nt(ds, onehot_w)


def _onehot_blocks(onehot_refs, keys):
  """The keys' blocks of the one-hot maps, or None without them (row blocks)."""
  return tuple(ref[:, keys] for ref in onehot_refs) or None


def _scores(q, k, bias, k_start, scale, n_keys):
  """Scores of queries q (bq, C) against keys k (bk, C) from key k_start with their
  rel-pos bias (bq, bk): (bq, bk) float32."""
  s = rc.triton_dot_nt(q, k) * scale + bias
  if n_keys is not None:
    cols = k_start + lax.broadcasted_iota(jnp.int32, s.shape, 1)
    s = jnp.where(cols < n_keys, s, rc.PAD_SCORE)
  return s


def _forward_kernel(q_ref, k_ref, v_ref, rel_h_ref, rel_w_ref, *refs, scale, n_keys,
                    block_k):
  """Online softmax over key blocks; grid (query blocks, BH). refs: the one-hot maps
  (none for row blocks), out, lse."""
  *onehot_refs, out_ref, lse_ref = refs
  q, rel_h, rel_w = q_ref[...], rel_h_ref[...], rel_w_ref[...]

  def body(j, carry):
    m, l, acc = carry
    keys = pl.ds(j * block_k, block_k)
    bias = _bias(rel_h, rel_w, _onehot_blocks(onehot_refs, keys), j)
    s = _scores(q, k_ref[keys, :], bias, j * block_k, scale, n_keys)
    m, l, p, corr = rc.online_softmax_update(m, l, s)
    return m, l, acc * corr + rc.triton_dot_nn(p.astype(v_ref.dtype), v_ref[keys, :])

  rows = q.shape[0]
  m, l, acc = lax.fori_loop(0, k_ref.shape[0] // block_k, body, (
      jnp.full((rows, 1), -jnp.inf, jnp.float32), jnp.zeros((rows, 1), jnp.float32),
      jnp.zeros((rows, v_ref.shape[1]), jnp.float32)))
  out_ref[...] = (acc / l).astype(out_ref.dtype)
  lse_ref[...] = (m + jnp.log(l))[:, 0]


def _query_grad_kernel(q_ref, k_ref, v_ref, rel_h_ref, rel_w_ref, *refs, scale, n_keys,
                       block_k):
  """dq = scale dS K and the gradients of rel_h, rel_w (`_bias_grads`); grid (q, BH).
  refs: the one-hot maps (none for row blocks), dO, lse, delta, dq, d rel_h, d rel_w."""
  *onehot_refs, do_ref, lse_ref, delta_ref, dq_ref, d_rel_h_ref, d_rel_w_ref = refs
  q, rel_h, rel_w, d_out = q_ref[...], rel_h_ref[...], rel_w_ref[...], do_ref[...]
  lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]

  def body(j, carry):
    dq, d_rel_h, d_rel_w = carry
    keys = pl.ds(j * block_k, block_k)
    onehots = _onehot_blocks(onehot_refs, keys)
    k = k_ref[keys, :]
    s = _scores(q, k, _bias(rel_h, rel_w, onehots, j), j * block_k, scale, n_keys)
    ds = rc.score_grad(jnp.exp(s - lse), rc.triton_dot_nt(d_out, v_ref[keys, :]), delta)
    dh, dw = _bias_grads(ds, onehots, j, d_rel_h.shape[1])
    return dq + scale * rc.triton_dot_nn(ds.astype(k.dtype), k), d_rel_h + dh, d_rel_w + dw

  zeros = lambda ref: jnp.zeros(ref.shape, jnp.float32)
  grads = lax.fori_loop(0, k_ref.shape[0] // block_k, body,
                        (zeros(dq_ref), zeros(d_rel_h_ref), zeros(d_rel_w_ref)))
  for ref, grad in zip((dq_ref, d_rel_h_ref, d_rel_w_ref), grads):
    ref[...] = grad.astype(ref.dtype)


def _key_grad_kernel(kb_ref, vb_ref, *refs, scale, n_keys, block_q):
  """dk = scale dS^T Q, dv = P^T dO of one key block; grid (key blocks, BH). refs: the
  block's one-hot maps (none for row blocks), q, rel_h, rel_w, dO, lse, delta, dk, dv."""
  *onehot_refs, q_ref, rel_h_ref, rel_w_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = refs
  block = pl.program_id(0)
  k_start = block * kb_ref.shape[0]
  k, v = kb_ref[...], vb_ref[...]
  onehots = _onehot_blocks(onehot_refs, slice(None))

  def body(i, carry):
    dk, dv = carry
    rows = pl.ds(i * block_q, block_q)
    q, d_out = q_ref[rows, :], do_ref[rows, :]
    bias = _bias(rel_h_ref[rows, :], rel_w_ref[rows, :], onehots, block)
    s = _scores(q, k, bias, k_start, scale, n_keys)
    p = jnp.exp(s - lse_ref[rows][:, None])
    ds = rc.score_grad(p, rc.triton_dot_nt(d_out, v), delta_ref[rows][:, None])
    return (dk + scale * rc.triton_dot_tn(ds.astype(q.dtype), q),
            dv + rc.triton_dot_tn(p.astype(d_out.dtype), d_out))

  zeros = lambda ref: jnp.zeros(ref.shape, jnp.float32)
  dk, dv = lax.fori_loop(0, q_ref.shape[0] // block_q, body,
                         (zeros(dk_ref), zeros(dv_ref)))
  dk_ref[...] = dk.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _is_power_of_two(x):
  return x > 0 and not x & (x - 1)


class _Layout:
  """Padded sizes, one-hot maps and block specs of one call.

  Grid axes are (row blocks, BH). `rows` tiles rows by the program's block, `whole`
  hands the kernel all (padded) rows of its (image, head).
  """

  def __init__(self, n, channels, height, width, block_q, block_k):
    for name, block in (("block_q", block_q), ("block_k", block_k)):
      if not _is_power_of_two(block):
        raise SptUserError(
            f"global_attention (pallas_gpu): {name} must be a power of two, got {block}")
    cap = pl.next_power_of_2(n)
    self.block_q, self.block_k = min(block_q, cap), min(block_k, cap)
    self.n_pad = rc.round_up(n, max(self.block_q, self.block_k))
    self.n_keys = n if self.n_pad != n else None
    self.c_pad, self.h_pad, self.w_pad = (pl.next_power_of_2(x)
                                          for x in (channels, height, width))
    self.height, self.width = height, width
    # Each key block is one grid row: the bias needs no one-hot maps (module doc).
    self.row_blocks = self.block_k == width

  def onehots(self):
    """The one-hot maps, (h_pad, n_pad) and (w_pad, n_pad) float32: each key's grid
    row and column; () for row blocks."""
    if self.row_blocks:
      return ()
    keys = jnp.arange(self.n_pad)[None, :]
    valid = keys < (self.n_keys or self.n_pad)
    return ((valid & (keys // self.width == jnp.arange(self.h_pad)[:, None]))
            .astype(jnp.float32),
            (valid & (keys % self.width == jnp.arange(self.w_pad)[:, None]))
            .astype(jnp.float32))

  @staticmethod
  def rows(block, width):
    return pl.BlockSpec((None, block, width), lambda r, b: (b, r, 0))

  def whole(self, width):
    return pl.BlockSpec((None, self.n_pad, width), lambda r, b: (b, 0, 0))

  def onehots_whole(self):
    """Block specs handing a kernel the whole one-hot maps (none for row blocks)."""
    if self.row_blocks:
      return []
    return [pl.BlockSpec((height, self.n_pad), lambda r, b: (0, 0))
            for height in (self.h_pad, self.w_pad)]

  def onehots_block(self):
    """Block specs of the one-hot maps' columns of the program's key block."""
    if self.row_blocks:
      return []
    return [pl.BlockSpec((height, self.block_k), lambda r, b: (0, r))
            for height in (self.h_pad, self.w_pad)]

  def whole_stat(self):
    return pl.BlockSpec((None, self.n_pad), lambda r, b: (b, 0))

  @staticmethod
  def rows_stat(block):
    return pl.BlockSpec((None, block), lambda r, b: (b, r))

  def pad(self, x, width):
    """(B, H, N, X) -> (B * H, n_pad, width), zero-padded."""
    return rc.pad_axis(rc.pad_axis(x.reshape((-1,) + x.shape[2:]), 1, self.n_pad), 2,
                       width)

  def cost(self, bh, passes, itemsize):
    """One call over bh (image, head) pairs: `passes` N x N products of C (+ h + w for
    the one-hot maps)."""
    n = self.n_pad
    width = self.c_pad + (0 if self.row_blocks else self.h_pad + self.w_pad)
    blocks = n // min(self.block_q, self.block_k)
    return pl.CostEstimate(flops=int(bh * 2 * n * n * passes * width),
                           transcendentals=int(bh * n * n),
                           bytes_accessed=int(bh * n * width * blocks * 4 * itemsize))


def _call(kernel, *, grid, in_specs, out_specs, out_shape, cost, num_warps, num_stages,
          interpret):
  return pl.pallas_call(
      kernel, grid=grid, in_specs=in_specs, out_specs=out_specs, out_shape=out_shape,
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      cost_estimate=cost, interpret=interpret)


def forward(q, k, v, rel_h, rel_w, *, scale, block_q=DEFAULT_BLOCK_Q,
            block_k=DEFAULT_BLOCK_K, num_warps=DEFAULT_NUM_WARPS,
            num_stages=DEFAULT_NUM_STAGES, interpret=False):
  """q, k, v (B, H, N, C), rel_h (B, H, N, h), rel_w (B, H, N, w) -> out (B, H, N, C),
  lse (B, H, N) float32."""
  batch, heads, n, channels = q.shape
  lay = _Layout(n, channels, rel_h.shape[-1], rel_w.shape[-1], block_q, block_k)
  bq, bh, cp, hp, wp = lay.block_q, batch * heads, lay.c_pad, lay.h_pad, lay.w_pad
  out, lse = _call(
      functools.partial(_forward_kernel, scale=scale, n_keys=lay.n_keys,
                        block_k=lay.block_k),
      grid=(lay.n_pad // bq, bh),
      in_specs=[lay.rows(bq, cp), lay.whole(cp), lay.whole(cp), lay.rows(bq, hp),
                lay.rows(bq, wp), *lay.onehots_whole()],
      out_specs=[lay.rows(bq, cp), lay.rows_stat(bq)],
      out_shape=[jax.ShapeDtypeStruct((bh, lay.n_pad, cp), v.dtype),
                 jax.ShapeDtypeStruct((bh, lay.n_pad), jnp.float32)],
      cost=lay.cost(bh, 2, q.dtype.itemsize), num_warps=num_warps,
      num_stages=num_stages, interpret=interpret,
  )(lay.pad(q, cp), lay.pad(k, cp), lay.pad(v, cp), lay.pad(rel_h, hp),
    lay.pad(rel_w, wp), *lay.onehots())
  return (out[:, :n, :channels].reshape(q.shape),
          lse[:, :n].reshape(batch, heads, n))


def backward(q, k, v, rel_h, rel_w, out, lse, d_out, *, scale, block_q=DEFAULT_BLOCK_Q,
             block_k=DEFAULT_BLOCK_K, num_warps=DEFAULT_NUM_WARPS,
             num_stages=DEFAULT_NUM_STAGES, interpret=False):
  """Residuals of `forward` and dO -> dq, dk, dv, d_rel_h, d_rel_w (inputs' shapes)."""
  batch, heads, n, channels = q.shape
  lay = _Layout(n, channels, rel_h.shape[-1], rel_w.shape[-1], block_q, block_k)
  bq, bk, bh, cp, hp, wp = (lay.block_q, lay.block_k, batch * heads, lay.c_pad,
                            lay.h_pad, lay.w_pad)
  q_, k_, v_, do_ = (lay.pad(x, cp) for x in (q, k, v, d_out))
  rel_h_, rel_w_ = lay.pad(rel_h, hp), lay.pad(rel_w, wp)
  delta = rc.output_grad_dot(out, d_out)
  lse_, delta_ = (rc.pad_axis(x.reshape(bh, n), 1, lay.n_pad) for x in (lse, delta))
  onehots = lay.onehots()
  call = functools.partial(_call, cost=lay.cost(bh, 3, q.dtype.itemsize),
                           num_warps=num_warps, num_stages=num_stages,
                           interpret=interpret)
  dq, d_rel_h, d_rel_w = call(
      functools.partial(_query_grad_kernel, scale=scale, n_keys=lay.n_keys, block_k=bk),
      grid=(lay.n_pad // bq, bh),
      in_specs=[lay.rows(bq, cp), lay.whole(cp), lay.whole(cp), lay.rows(bq, hp),
                lay.rows(bq, wp), *lay.onehots_whole(), lay.rows(bq, cp),
                lay.rows_stat(bq), lay.rows_stat(bq)],
      out_specs=[lay.rows(bq, cp), lay.rows(bq, hp), lay.rows(bq, wp)],
      out_shape=[jax.ShapeDtypeStruct((bh, lay.n_pad, width), x.dtype)
                 for x, width in ((q, cp), (rel_h, hp), (rel_w, wp))],
  )(q_, k_, v_, rel_h_, rel_w_, *onehots, do_, lse_, delta_)
  dk, dv = call(
      functools.partial(_key_grad_kernel, scale=scale, n_keys=lay.n_keys, block_q=bq),
      grid=(lay.n_pad // bk, bh),
      in_specs=[lay.rows(bk, cp), lay.rows(bk, cp), *lay.onehots_block(), lay.whole(cp),
                lay.whole(hp), lay.whole(wp), lay.whole(cp), lay.whole_stat(),
                lay.whole_stat()],
      out_specs=[lay.rows(bk, cp), lay.rows(bk, cp)],
      out_shape=[jax.ShapeDtypeStruct((bh, lay.n_pad, cp), x.dtype) for x in (k, v)],
  )(k_, v_, *onehots, q_, rel_h_, rel_w_, do_, lse_, delta_)
  unflat = lambda x, like: x[:, :n, :like.shape[-1]].reshape(like.shape)
  return (unflat(dq, q), unflat(dk, k), unflat(dv, v), unflat(d_rel_h, rel_h),
          unflat(d_rel_w, rel_w))
