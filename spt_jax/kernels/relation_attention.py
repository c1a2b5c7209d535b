"""Relation attention, the core of the VRA-Adapter: public entry points.

    out = softmax_row(cos(E_i, E_j), self excluded [, alpha]) @ V

for the image embedding E (N tokens) and the current image tokens V. Exact
semantics (the paper's VRA-Adapter and the authors' `extract_relation`):
En = E / (||E||_2 + 1e-16) per row; S_ij = En_i . En_j; -1e16 is added to the
diagonal; P = softmax over j. With alpha > 0, entries P_ij <= alpha / N (N the
true token count) are zeroed and each ROW is renormalised to sum 1; a row that
kept nothing stays zero. out = P @ V, accumulated in float32, returned in v's
dtype. Gradients flow to both E (through the cosines and the normalisation)
and V; with alpha > 0 the threshold mask is held constant, as autodiff of the
formula does.

Discrepancy with the authors' release: their `thresholding` sums the masked
(B, N, N) matrix over dim=1, i.e. renormalises COLUMNS; the method as
described renormalises rows, and rows are implemented here. The two agree for alpha == 0, the
authors' default.

Implementations (`IMPLS`): "reference" materialises the N x N matrix (the test
oracle, plain autodiff); "xla" is blocked XLA with O(N x block) memory;
"pallas_tpu" / "pallas_gpu" are fused Mosaic / Triton kernels. The fused ones
share one `jax.custom_vjp` (`spt_jax.kernels.fused`) whose residuals are (e, v,
out, lse, zinv): per-row log-sum-exp and inverse kept mass, from which every
backward pass recomputes the weights blockwise. "auto" picks pallas_tpu on TPU, pallas_gpu on CUDA
and xla elsewhere, by the platform the program is lowered for
(`spt_jax.kernels.dispatch`). Under a device mesh the fused passes run per
shard (`spt_jax.kernels.partition`).
"""

import numbers

import jax.numpy as jnp

from spt_jax.errors import SptUserError
from spt_jax.kernels import fused
from spt_jax.kernels import partition
from spt_jax.kernels import relation_common as rc
from spt_jax.kernels import relation_pallas_gpu
from spt_jax.kernels import relation_pallas_tpu
from spt_jax.kernels import relation_reference
from spt_jax.kernels import relation_xla


_FUSED = (
    ("xla", relation_xla),
    ("pallas_tpu", relation_pallas_tpu),
    ("pallas_gpu", relation_pallas_gpu),
)
IMPLS = fused.impl_names(_FUSED)


# Operand dims by logical axis: images, then tokens, then features. V's features
# are whole unless they stack several prompts (`relation_attention_shared`), which
# the mesh may split like the decoders' prompts; the weights depend on E alone, so a
# feature shard needs no other, and only dE, a sum over all features, is summed
# across them.
_E_NAMES = ("batch", None, None)
_ROW_NAMES = ("batch", None)


def _check_alpha(alpha):
  if (not isinstance(alpha, numbers.Real) or isinstance(alpha, bool)
      or not alpha >= 0):
    raise SptUserError(
        f"relation_attention: alpha must be a real number >= 0, got {alpha!r}")
  return float(alpha)


def _attend(e, v, alpha, impl, options, feature_name):
  """The checked call: reference formula or the fused custom VJP, split by mesh."""
  alpha = _check_alpha(alpha)
  impl = fused.check_impl("relation_attention", impl, _FUSED, options)
  if impl == "reference":
    return relation_reference.relation_attention_reference(e, v, alpha=alpha)
  v_names = ("batch", None, feature_name)
  kwargs = dict(options, threshold=rc.threshold_for(alpha, e.shape[1]))
  op = fused.Fused(
      _FUSED, impl, tuple(sorted(kwargs.items())),
      partition.current(((_E_NAMES, e.shape), (v_names, v.shape))),
      input_names=(_E_NAMES, v_names), output_names=(v_names, _ROW_NAMES, _ROW_NAMES),
      summed=((0, feature_name),) if feature_name else ())
  return fused.apply(op, e, v)


def relation_attention(e, v, *, alpha=0.0, impl="auto", **options):
  """softmax_row(cos(E_i, E_j), self excluded [, alpha]) @ V.

  Args:
    e: (B, N, C) image embedding; any N >= 1.
    v: (B, N, D) values, same B and N.
    alpha: sparsification strength >= 0 (a Python number; 0 disables it).
    impl: one of IMPLS; 'auto' picks per lowering platform and takes no options.
    **options: keyword options of the chosen implementation:
      xla: block_q, block_q_bwd (query rows per loop step of the forward
        and the backward, default 128 / 256);
      pallas_tpu: block_q, block_k (multiples of 128), block_d (feature
        tile, a multiple of 128), vmem_limit_bytes; each unset is chosen
        from the chip's VMEM and D; interpret (True or
        pltpu.InterpretParams() to run on CPU);
      pallas_gpu: block_q, block_k, block_d (powers of two, default
        64 / 64 / 128), num_warps (4), num_stages (2), interpret.

  Returns:
    (B, N, D) in v's dtype.

  Raises:
    SptUserError: wrong ranks or dtypes, mismatched B or N, alpha < 0, an
      unknown impl or option, or a bad block size. (A Pallas impl on a
      backend it does not target fails in JAX's lowering instead: this keeps
      cross-platform lowering and export possible.)
  """
  fused.check_array("relation_attention", "e", e, 3, "(B, N, C)")
  fused.check_array("relation_attention", "v", v, 3, "(B, N, D)")
  if e.shape[1] < 1:
    raise SptUserError(
        f"relation_attention: e must hold at least one token, got {e.shape}")
  if v.shape[:2] != e.shape[:2]:
    raise SptUserError(
        "relation_attention: v must have shape (B, N, D) with B, N of e "
        f"{e.shape[:2]}, got {v.shape}")
  return _attend(e, v, alpha, impl, options, None)


def relation_attention_shared(e, v, *, alpha=0.0, impl="auto", **options):
  """Relation attention of several prompts' tokens over their image's E.

  The prompts' values are stacked along the feature axis, so all prompts of an
  image go through ONE pass over its N x N relation instead of P. Under a mesh
  the stacked features are split like the decoders' prompts ('prompts').

  Args:
    e: (B, N, C) embedding of each image; any N >= 1.
    v: (B, P, N, D) values of P prompts per image.
    alpha, impl, **options: as for `relation_attention`.

  Returns:
    (B, P, N, D) in v's dtype.
  """
  fused.check_array("relation_attention_shared", "e", e, 3, "(B, N, C)")
  fused.check_array("relation_attention_shared", "v", v, 4, "(B, P, N, D)")
  b, p, n, d = v.shape
  if e.shape[1] < 1 or (b, n) != (e.shape[0], e.shape[1]):
    raise SptUserError(
        f"relation_attention_shared: v must have shape (B, P, N, D) with B, N = "
        f"{e.shape[:2]} of e (at least one token), got {v.shape}")
  stacked = jnp.transpose(v, (0, 2, 1, 3)).reshape(b, n, p * d)
  out = _attend(e, stacked, alpha, impl, options, "prompts")
  return jnp.transpose(out.reshape(b, n, p, d), (0, 2, 1, 3))
