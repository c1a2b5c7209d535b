"""Relation attention, the core of the VRA-Adapter: public entry points.

    out = softmax_row(cos(E_i, E_j), self excluded [, alpha]) @ V

for the image embedding E (N tokens) and the current image tokens V. Exact
semantics (METHOD.md section 3 and the authors' `extract_relation`):
En = E / (||E||_2 + 1e-16) per row; S_ij = En_i . En_j; -1e16 is added to the
diagonal; P = softmax over j. With alpha > 0, entries P_ij <= alpha / N (N the
true token count) are zeroed and each ROW is renormalised to sum 1; a row that
kept nothing stays zero. out = P @ V, accumulated in float32, returned in v's
dtype. Gradients flow to both E (through the cosines and the normalisation)
and V; with alpha > 0 the threshold mask is held constant, as autodiff of the
formula does.

Discrepancy with the authors' release: their `thresholding` sums the masked
(B, N, N) matrix over dim=1, i.e. renormalises COLUMNS; our spec (METHOD.md)
says rows, and rows are implemented here. The two agree for alpha == 0, the
authors' default.

Implementations (`IMPLS`): "reference" materialises the N x N matrix (the test
oracle, plain autodiff); "xla" is blocked XLA with O(N x block) memory;
"pallas_tpu" / "pallas_gpu" are fused Mosaic / Triton kernels. The fused ones
share one `jax.custom_vjp` whose residuals are (e, v, out, lse, zinv): per-row
log-sum-exp and inverse kept mass, from which every backward pass recomputes
the weights blockwise. "auto" picks pallas_tpu on TPU, pallas_gpu on GPU and
xla elsewhere.
"""

import dataclasses
import functools
import inspect
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from spt_jax.errors import SptUserError
from spt_jax.kernels import relation_common as rc
from spt_jax.kernels import relation_pallas_gpu
from spt_jax.kernels import relation_pallas_tpu
from spt_jax.kernels import relation_reference
from spt_jax.kernels import relation_xla

IMPLS = ("auto", "reference", "xla", "pallas_tpu", "pallas_gpu")

_FUSED = {
    "xla": relation_xla,
    "pallas_tpu": relation_pallas_tpu,
    "pallas_gpu": relation_pallas_gpu,
}
_AUTO = {"tpu": "pallas_tpu", "gpu": "pallas_gpu"}


@dataclasses.dataclass(frozen=True)
class _Fused:
  """Static part of a fused call: implementation, threshold and its options."""
  impl: str
  threshold: float
  options: tuple[tuple[str, Any], ...]

  def forward(self, e, v):
    """-> out (B, N, D), lse (B, N), zinv (B, N)."""
    return _FUSED[self.impl].forward(e, v, threshold=self.threshold,
                                     **dict(self.options))

  def backward(self, e, v, out, lse, zinv, d_out):
    """-> de (B, N, C), dv (B, N, D)."""
    return _FUSED[self.impl].backward(e, v, out, lse, zinv, d_out,
                                      threshold=self.threshold,
                                      **dict(self.options))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _fused_attention(e, v, fused):
  return fused.forward(e, v)[0]


def _fused_attention_fwd(e, v, fused):
  out, lse, zinv = fused.forward(e, v)
  return out, (e, v, out, lse, zinv)


def _fused_attention_bwd(fused, residuals, d_out):
  return fused.backward(*residuals, d_out)


_fused_attention.defvjp(_fused_attention_fwd, _fused_attention_bwd)


def _resolve_impl(impl, options):
  if impl not in IMPLS:
    raise SptUserError(
        f"relation_attention: impl must be one of {IMPLS}, got {impl!r}")
  if impl == "auto":
    impl = _AUTO.get(jax.default_backend(), "xla")
  if impl == "reference":
    if options:
      raise SptUserError(
          "relation_attention: impl='reference' takes no options, got "
          f"{sorted(options)}")
    return impl
  valid = set(inspect.signature(_FUSED[impl].forward).parameters) - {
      "e", "v", "threshold"}
  unknown = sorted(set(options) - valid)
  if unknown:
    raise SptUserError(
        f"relation_attention: unknown option(s) {unknown} for impl={impl!r}; "
        f"expected some of {sorted(valid)}")
  return impl


def _check_alpha(alpha):
  if (not isinstance(alpha, numbers.Real) or isinstance(alpha, bool)
      or not alpha >= 0):
    raise SptUserError(
        f"relation_attention: alpha must be a real number >= 0, got {alpha!r}")
  return float(alpha)


def _check_array(caller, name, x, rank, shape_doc):
  if not hasattr(x, "shape") or x.ndim != rank:
    got = getattr(x, "shape", type(x).__name__)
    raise SptUserError(
        f"{caller}: {name} must have shape {shape_doc}, got {got}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise SptUserError(
        f"{caller}: {name} must be a floating array (float32 or bfloat16), "
        f"got dtype {x.dtype}")


def relation_attention(e, v, *, alpha=0.0, impl="auto", **options):
  """softmax_row(cos(E_i, E_j), self excluded [, alpha]) @ V.

  Args:
    e: (B, N, C) image embedding; any N >= 1.
    v: (B, N, D) values, same B and N.
    alpha: sparsification strength >= 0 (a Python number; 0 disables it).
    impl: one of IMPLS.
    **options: keyword options of the chosen implementation:
      xla: block_q, block_q_bwd (query rows per loop step of the forward
        and the backward, default 128 / 256);
      pallas_tpu: block_q, block_k (multiples of 128, default 256 / 256),
        interpret (True or pltpu.InterpretParams() to run on CPU);
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
  _check_array("relation_attention", "e", e, 3, "(B, N, C)")
  _check_array("relation_attention", "v", v, 3, "(B, N, D)")
  if e.shape[1] < 1:
    raise SptUserError(
        f"relation_attention: e must hold at least one token, got {e.shape}")
  if v.shape[:2] != e.shape[:2]:
    raise SptUserError(
        "relation_attention: v must have shape (B, N, D) with B, N of e "
        f"{e.shape[:2]}, got {v.shape}")
  alpha = _check_alpha(alpha)
  impl = _resolve_impl(impl, options)
  if impl == "reference":
    return relation_reference.relation_attention_reference(e, v, alpha=alpha)
  fused = _Fused(impl, rc.threshold_for(alpha, e.shape[1]),
                 tuple(sorted(options.items())))
  return _fused_attention(e, v, fused)


def relation_attention_shared(e, v, *, alpha=0.0, impl="auto", **options):
  """Relation attention of several prompts' tokens over one image's E.

  The prompts' values are stacked along the feature axis, so all of them go
  through ONE call (one pass over the N x N relation) instead of P.

  Args:
    e: (N, C) or (1, N, C) image embedding.
    v: (P, N, D) values of P prompts of that image.
    alpha, impl, **options: as for `relation_attention`.

  Returns:
    (P, N, D) in v's dtype.
  """
  if hasattr(e, "ndim") and e.ndim == 3 and e.shape[0] == 1:
    e = e[0]
  _check_array("relation_attention_shared", "e", e, 2, "(N, C) or (1, N, C)")
  _check_array("relation_attention_shared", "v", v, 3, "(P, N, D)")
  p, n, d = v.shape
  if n != e.shape[0]:
    raise SptUserError(
        f"relation_attention_shared: v must have shape (P, N, D) with N = "
        f"{e.shape[0]} (the tokens of e), got {v.shape}")
  stacked = jnp.transpose(v, (1, 0, 2)).reshape(1, n, p * d)
  out = relation_attention(e[None], stacked, alpha=alpha, impl=impl, **options)
  return jnp.transpose(out.reshape(n, p, d), (1, 0, 2))
