"""SAM's global attention with decomposed relative position, fused: public entry point.

    out = softmax(q k^T / sqrt(C) + rel_h[i, row(j)] + rel_w[i, col(j)]) v

per image and head over the N = h x w tokens of the embedding grid (row-major),
where rel_h = q . table_h[row(i)]^T (N, h) and rel_w = q . table_w[col(i)]^T (N, w)
are the two terms of Meta's `add_decomposed_rel_pos`. They are computed outside
(`rel_pos_terms`: O(N (h + w) C), their gradients to q and the tables plain
autodiff) and enter the kernels as inputs, never expanded to N x N.

Implementations (`IMPLS`): 'reference' materialises the (N, N) scores (the test
oracle, plain autodiff); 'xla' is blocked XLA over query blocks (CPU); the fused
ones share one `jax.custom_vjp` (`spt_jax.kernels.fused`) whose residuals are the
inputs, the output and each row's log-sum-exp, from which the backward recomputes
the weights blockwise (flash attention's scheme), giving dq, dk, dv and the
gradients of rel_h and rel_w. 'auto' picks by the platform the program is lowered
for; under a device mesh the kernels run per shard, images split over the batch
axes and heads over the heads' (model). The encoder calls `attention_from_qkv`, the
same function from its token-major qkv projection, whose backward keeps qkv and the
output token-major rather than the head-major operands (lane padding on TPU).
"""

import functools

import jax
import jax.numpy as jnp

from spt_jax.errors import SptUserError
from spt_jax.kernels import fused
from spt_jax.kernels import global_attention_pallas_gpu
from spt_jax.kernels import global_attention_pallas_tpu
from spt_jax.kernels import global_attention_reference
from spt_jax.kernels import global_attention_xla
from spt_jax.kernels import partition

_FUSED = (
    ("xla", global_attention_xla),
    ("pallas_tpu", global_attention_pallas_tpu),
    ("pallas_gpu", global_attention_pallas_gpu),
)
IMPLS = fused.impl_names(_FUSED)
_NAMES = ("batch", "heads", None, None)
_ROW_NAMES = ("batch", "heads", None)


def rel_pos_terms(q: jax.Array, table_h: jax.Array, table_w: jax.Array):
  """The decomposed rel-pos terms of grid queries.

  Args:
    q: (B, H, h, w, C) queries on the token grid.
    table_h: (h, h, C), table_w: (w, w, C): relative position tables of the grid
      (`spt_jax.models.image_encoder.relative_position_table`).

  Returns:
    rel_h (B, H, h * w, h), rel_w (B, H, h * w, w), in q's dtype.
  """
  batch, heads, height, width, _ = q.shape
  rel_h = jnp.einsum("bnyxc,ykc->bnyxk", q, table_h)
  rel_w = jnp.einsum("bnyxc,xkc->bnyxk", q, table_w)
  tokens = (batch, heads, height * width)
  return rel_h.reshape(tokens + (height,)), rel_w.reshape(tokens + (width,))


def global_attention(q, k, v, rel_h, rel_w, *, impl="auto", **options):
  """softmax(q k^T / sqrt(C) + rel_h[i, row(j)] + rel_w[i, col(j)]) v.

  Args:
    q, k, v: (B, H, N, C), N = h * w tokens of the grid, row-major.
    rel_h: (B, H, N, h); rel_w: (B, H, N, w) (`rel_pos_terms`).
    impl: one of IMPLS; 'auto' picks per lowering platform and takes no options.
    **options: keyword options of the chosen implementation:
      xla: block_q, block_q_bwd (query rows per loop step, default 1024 each);
      pallas_tpu: block_q, block_k (multiples of 128, default 512 each),
        interpret (True or pltpu.InterpretParams() to run on CPU);
      pallas_gpu: block_q, block_k (powers of two, default 64 each), num_warps
        (4), num_stages (2), interpret.

  Returns:
    (B, H, N, C) in v's dtype.

  Raises:
    SptUserError: wrong ranks, dtypes or sizes, an unknown impl or option.
  """
  impl = _check(q, k, v, rel_h, rel_w, impl, options)
  if impl == "reference":
    return global_attention_reference.global_attention_reference(
        q, k, v, rel_h, rel_w, scale=q.shape[-1] ** -0.5)
  return fused.apply(_fused_op(q.shape, impl, options), q, k, v, rel_h, rel_w)


def attention_from_qkv(qkv, table_h, table_w, *, num_heads, impl="auto", **options):
  """The encoder's attention from its fused qkv projection, token-major in and out.

  The same function as splitting qkv into heads, `rel_pos_terms` and
  `global_attention`, but what the backward keeps are qkv and the output as they
  are, (B, h, w, 3D) and (B, h, w, D), and each row's log-sum-exp: the head-major
  q, k, v, the rel-pos terms and the output's head-major form are rebuilt in the
  backward. On TPU this matters: head-major arrays put C (64 for vit_b) or h, w (14
  in a window) on the 128-lane minor axis, so keeping them would hold 2 to 9 times
  their bytes (a windowed vit_b block kept 225 MiB this way in float32, against 58).

  Args:
    qkv: (B, h, w, 3 * H * C): q, k, v slots, each heads x channels.
    table_h: (h, h, C), table_w: (w, w, C): the grid's rel-pos tables.
    num_heads: H.
    impl, **options: as for `global_attention`.

  Returns:
    (B, h, w, H * C) in qkv's dtype.
  """
  if getattr(qkv, "ndim", 0) != 4 or qkv.shape[-1] % (3 * num_heads):
    raise SptUserError(f"attention_from_qkv: qkv must have shape (B, h, w, 3 * H * C) "
                       f"with H = {num_heads}, got {getattr(qkv, 'shape', qkv)}")
  height, width = qkv.shape[1:3]
  prologue = functools.partial(_heads_and_rel_pos, num_heads=num_heads)
  inputs = jax.eval_shape(prologue, qkv, table_h, table_w)
  impl = _check(*inputs, impl, options)
  if impl == "reference":
    return _tokens_last(global_attention(*prologue(qkv, table_h, table_w), impl=impl),
                        height, width)
  return _attend_qkv(_fused_op(inputs[0].shape, impl, options), num_heads, qkv, table_h,
                     table_w)


def _heads_and_rel_pos(qkv, table_h, table_w, *, num_heads):
  """(B, h, w, 3 H C) -> q, k, v (B, H, N, C), rel_h (B, H, N, h), rel_w (B, H, N, w)."""
  batch, height, width, channels3 = qkv.shape
  head_dim = channels3 // (3 * num_heads)
  grid = qkv.reshape(batch, height, width, 3, num_heads, head_dim).transpose(3, 0, 4, 1, 2, 5)
  rel_h, rel_w = rel_pos_terms(grid[0], table_h, table_w)
  tokens = lambda x: x.reshape(batch, num_heads, height * width, head_dim)
  return tokens(grid[0]), tokens(grid[1]), tokens(grid[2]), rel_h, rel_w


def _tokens_last(x, height, width):
  """(B, H, N, C) -> (B, h, w, H C)."""
  batch, heads, _, channels = x.shape
  return x.reshape(batch, heads, height, width, channels).transpose(0, 2, 3, 1, 4).reshape(
      batch, height, width, heads * channels)


def _heads_first(x, num_heads):
  """(B, h, w, H C) -> (B, H, N, C)."""
  batch, height, width, dim = x.shape
  return x.reshape(batch, height * width, num_heads, dim // num_heads).transpose(0, 2, 1, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _attend_qkv(op, num_heads, qkv, table_h, table_w):
  out, _ = _attend_qkv_fwd(op, num_heads, qkv, table_h, table_w)
  return out


def _attend_qkv_fwd(op, num_heads, qkv, table_h, table_w):
  inputs = _heads_and_rel_pos(qkv, table_h, table_w, num_heads=num_heads)
  out, lse = op.forward(*inputs)
  out = _tokens_last(out, *qkv.shape[1:3])
  return out, (qkv, table_h, table_w, out, lse)


def _attend_qkv_bwd(op, num_heads, residuals, d_out):
  # The barrier keeps XLA from sharing the forward's head-major forms with the
  # backward's (common subexpressions), which would keep those instead of qkv and out.
  qkv, table_h, table_w, out, lse = jax.lax.optimization_barrier(residuals)
  inputs, prologue_vjp = jax.vjp(
      functools.partial(_heads_and_rel_pos, num_heads=num_heads), qkv, table_h, table_w)
  grads = op.backward(*inputs, _heads_first(out, num_heads), lse,
                      _heads_first(d_out, num_heads))
  return prologue_vjp(tuple(grads))


_attend_qkv.defvjp(_attend_qkv_fwd, _attend_qkv_bwd)


def _check(q, k, v, rel_h, rel_w, impl, options):
  """Raises SptUserError unless the operands fit `global_attention`; -> the impl."""
  caller = "global_attention"
  for name, x, shape in (("q", q, "(B, H, N, C)"), ("k", k, "(B, H, N, C)"),
                         ("v", v, "(B, H, N, C)"), ("rel_h", rel_h, "(B, H, N, h)"),
                         ("rel_w", rel_w, "(B, H, N, w)")):
    fused.check_array(caller, name, x, 4, shape)
  tokens = q.shape[:3]
  if k.shape != q.shape or v.shape[:3] != tokens:
    raise SptUserError(f"{caller}: k must have q's shape {q.shape} and v its first three "
                       f"dims, got k {k.shape}, v {v.shape}")
  if (rel_h.shape[:3] != tokens or rel_w.shape[:3] != tokens
      or rel_h.shape[-1] * rel_w.shape[-1] != tokens[2]):
    raise SptUserError(
        f"{caller}: rel_h (B, H, N, h) and rel_w (B, H, N, w) must share q's (B, H, N) "
        f"{tokens} with h * w = N, got {rel_h.shape} and {rel_w.shape}")
  return fused.check_impl(caller, impl, _FUSED, options)


def _fused_op(q_shape, impl, options) -> fused.Fused:
  """The fused call's static part for queries of q_shape (B, H, N, C)."""
  scale = q_shape[-1] ** -0.5
  return fused.Fused(_FUSED, impl, tuple(sorted(dict(options, scale=scale).items())),
                     partition.current(((_NAMES, q_shape),)),
                     input_names=(_NAMES,) * 5, output_names=(_NAMES, _ROW_NAMES))
