"""SAM's global attention with decomposed rel-pos as Pallas GPU (Triton) kernels.

Each program owns one row block of one (image, head) and loops over the other axis
inside the kernel, reading the looped operands block by block (Triton programs keep
no state between grid steps); no N x N buffer exists. As in the TPU kernels the
rel-pos bias of a block is two small products with the keys' one-hot grid rows and
columns, (h, N) and (w, N) maps built outside:
    bias = rel_h[q rows] @ onehot_h[:, keys] + rel_w[q rows] @ onehot_w[:, keys].
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


def _scores(q, k, rel_h, rel_w, onehot_h, onehot_w, k_start, scale, n_keys):
  """Scores of queries q (bq, C) against keys k (bk, C) from key k_start: (bq, bk) f32.

  rel_h (bq, h), rel_w (bq, w): the queries' rel-pos terms; onehot_h (h, bk) and
  onehot_w (w, bk): the keys' grid rows and columns.
  """
  s = rc.triton_dot_nt(q, k) * scale
  s += rc.triton_dot_nn(rel_h, onehot_h.astype(rel_h.dtype))
  s += rc.triton_dot_nn(rel_w, onehot_w.astype(rel_w.dtype))
  if n_keys is not None:
    cols = k_start + lax.broadcasted_iota(jnp.int32, s.shape, 1)
    s = jnp.where(cols < n_keys, s, rc.PAD_SCORE)
  return s


def _forward_kernel(q_ref, k_ref, v_ref, rel_h_ref, rel_w_ref, onehot_h_ref,
                    onehot_w_ref, out_ref, lse_ref, *, scale, n_keys, block_k):
  """Online softmax over key blocks; grid (query blocks, BH)."""
  q, rel_h, rel_w = q_ref[...], rel_h_ref[...], rel_w_ref[...]

  def body(j, carry):
    m, l, acc = carry
    keys = pl.ds(j * block_k, block_k)
    s = _scores(q, k_ref[keys, :], rel_h, rel_w, onehot_h_ref[:, keys],
                onehot_w_ref[:, keys], j * block_k, scale, n_keys)
    m, l, p, corr = rc.online_softmax_update(m, l, s)
    return m, l, acc * corr + rc.triton_dot_nn(p.astype(v_ref.dtype), v_ref[keys, :])

  rows = q.shape[0]
  m, l, acc = lax.fori_loop(0, k_ref.shape[0] // block_k, body, (
      jnp.full((rows, 1), -jnp.inf, jnp.float32), jnp.zeros((rows, 1), jnp.float32),
      jnp.zeros((rows, v_ref.shape[1]), jnp.float32)))
  out_ref[...] = (acc / l).astype(out_ref.dtype)
  lse_ref[...] = (m + jnp.log(l))[:, 0]


def _query_grad_kernel(q_ref, k_ref, v_ref, rel_h_ref, rel_w_ref, onehot_h_ref,
                       onehot_w_ref, do_ref, lse_ref, delta_ref, dq_ref, d_rel_h_ref,
                       d_rel_w_ref, *, scale, n_keys, block_k):
  """dq = scale dS K, d rel_h = dS onehot_h^T, d rel_w = dS onehot_w^T; grid (q, BH)."""
  q, rel_h, rel_w, d_out = q_ref[...], rel_h_ref[...], rel_w_ref[...], do_ref[...]
  lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]

  def body(j, carry):
    dq, d_rel_h, d_rel_w = carry
    keys = pl.ds(j * block_k, block_k)
    onehot_h, onehot_w = onehot_h_ref[:, keys], onehot_w_ref[:, keys]
    k = k_ref[keys, :]
    s = _scores(q, k, rel_h, rel_w, onehot_h, onehot_w, j * block_k, scale, n_keys)
    ds = rc.score_grad(jnp.exp(s - lse), rc.triton_dot_nt(d_out, v_ref[keys, :]), delta)
    return (dq + scale * rc.triton_dot_nn(ds.astype(k.dtype), k),
            d_rel_h + rc.triton_dot_nt(ds, onehot_h), d_rel_w + rc.triton_dot_nt(ds, onehot_w))

  zeros = lambda ref: jnp.zeros(ref.shape, jnp.float32)
  grads = lax.fori_loop(0, k_ref.shape[0] // block_k, body,
                        (zeros(dq_ref), zeros(d_rel_h_ref), zeros(d_rel_w_ref)))
  for ref, grad in zip((dq_ref, d_rel_h_ref, d_rel_w_ref), grads):
    ref[...] = grad.astype(ref.dtype)


def _key_grad_kernel(kb_ref, vb_ref, onehot_h_ref, onehot_w_ref, q_ref, rel_h_ref,
                     rel_w_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, scale,
                     n_keys, block_q):
  """dk = scale dS^T Q, dv = P^T dO of one key block; grid (key blocks, BH)."""
  k_start = pl.program_id(0) * kb_ref.shape[0]
  k, v = kb_ref[...], vb_ref[...]
  onehot_h, onehot_w = onehot_h_ref[...], onehot_w_ref[...]

  def body(i, carry):
    dk, dv = carry
    rows = pl.ds(i * block_q, block_q)
    q, d_out = q_ref[rows, :], do_ref[rows, :]
    s = _scores(q, k, rel_h_ref[rows, :], rel_w_ref[rows, :], onehot_h, onehot_w,
                k_start, scale, n_keys)
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

  def onehots(self):
    """(h_pad, n_pad) and (w_pad, n_pad) float32: each key's grid row and column."""
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

  def onehot_whole(self, height):
    return pl.BlockSpec((height, self.n_pad), lambda r, b: (0, 0))

  @staticmethod
  def onehot_block(height, block):
    return pl.BlockSpec((height, block), lambda r, b: (0, r))

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
    """One call over bh (image, head) pairs: `passes` N x N products of C + h + w."""
    n, width = self.n_pad, self.c_pad + self.h_pad + self.w_pad
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
                lay.rows(bq, wp), lay.onehot_whole(hp), lay.onehot_whole(wp)],
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
  delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)
  lse_, delta_ = (rc.pad_axis(x.reshape(bh, n), 1, lay.n_pad) for x in (lse, delta))
  onehot_h, onehot_w = lay.onehots()
  call = functools.partial(_call, cost=lay.cost(bh, 3, q.dtype.itemsize),
                           num_warps=num_warps, num_stages=num_stages,
                           interpret=interpret)
  dq, d_rel_h, d_rel_w = call(
      functools.partial(_query_grad_kernel, scale=scale, n_keys=lay.n_keys, block_k=bk),
      grid=(lay.n_pad // bq, bh),
      in_specs=[lay.rows(bq, cp), lay.whole(cp), lay.whole(cp), lay.rows(bq, hp),
                lay.rows(bq, wp), lay.onehot_whole(hp), lay.onehot_whole(wp),
                lay.rows(bq, cp), lay.rows_stat(bq), lay.rows_stat(bq)],
      out_specs=[lay.rows(bq, cp), lay.rows(bq, hp), lay.rows(bq, wp)],
      out_shape=[jax.ShapeDtypeStruct((bh, lay.n_pad, width), x.dtype)
                 for x, width in ((q, cp), (rel_h, hp), (rel_w, wp))],
  )(q_, k_, v_, rel_h_, rel_w_, onehot_h, onehot_w, do_, lse_, delta_)
  dk, dv = call(
      functools.partial(_key_grad_kernel, scale=scale, n_keys=lay.n_keys, block_q=bq),
      grid=(lay.n_pad // bk, bh),
      in_specs=[lay.rows(bk, cp), lay.rows(bk, cp), lay.onehot_block(hp, bk),
                lay.onehot_block(wp, bk), lay.whole(cp), lay.whole(hp), lay.whole(wp),
                lay.whole(cp), lay.whole_stat(), lay.whole_stat()],
      out_specs=[lay.rows(bk, cp), lay.rows(bk, cp)],
      out_shape=[jax.ShapeDtypeStruct((bh, lay.n_pad, cp), x.dtype) for x in (k, v)],
  )(k_, v_, onehot_h, onehot_w, q_, rel_h_, rel_w_, do_, lse_, delta_)
  unflat = lambda x, like: x[:, :n, :like.shape[-1]].reshape(like.shape)
  return (unflat(dq, q), unflat(dk, k), unflat(dv, v), unflat(d_rel_h, rel_h),
          unflat(d_rel_w, rel_w))
