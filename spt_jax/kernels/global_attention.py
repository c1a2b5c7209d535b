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
axes and heads over the heads' (model).
"""

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
  impl = fused.check_impl(caller, impl, _FUSED, options)
  scale = q.shape[-1] ** -0.5
  if impl == "reference":
    return global_attention_reference.global_attention_reference(
        q, k, v, rel_h, rel_w, scale=scale)
  op = fused.Fused(_FUSED, impl, tuple(sorted(dict(options, scale=scale).items())),
                   partition.current(((_NAMES, q.shape),)),
                   input_names=(_NAMES,) * 5, output_names=(_NAMES, _ROW_NAMES))
  return fused.apply(op, q, k, v, rel_h, rel_w)
