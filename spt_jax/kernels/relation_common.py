"""Math shared by every relation-attention implementation.

The functions here are plain `jnp` on small arrays, so the same code runs in the
materialised reference, in the blocked XLA path and inside the Pallas kernels
(Mosaic and Triton lower every op used here).

Notation for one image: e (N, C) the image embedding, en its L2-normalised rows,
a query block i (bq rows) and a key block j (bk rows) of it; s (bq, bk) the
masked cosine scores; p (bq, bk) the final attention weights. Per query row the
fused paths keep two statistics: lse, the log-sum-exp of the row's scores, and
zinv, the inverse of the probability mass kept by the alpha threshold (1 when
alpha == 0). Together they give the weights of any block, so the kernels never
hold a full row: p = exp(s - lse), then (alpha > 0) zeroed where <= alpha / N
and scaled by zinv.
"""

import functools

from jax import lax
import jax.numpy as jnp

# Added to the diagonal score, as the authors do: excludes self-relation while
# keeping the exact arithmetic of their formula (N = 1 gives p = 1 on itself).
SELF_SCORE = -1e16
# Score of padded key columns: far below SELF_SCORE, so their weight is 0.
PAD_SCORE = -1e30
NORM_EPS = 1e-16


def row_norm(x):
  """L2 norm of each row: (..., C) -> (..., 1) float32.

  Differentiable at a zero row (gradient 0 there, as in torch) instead of NaN.
  """
  sq = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=-1, keepdims=True)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def normalize_rows(x):
  """x / (||x|| + 1e-16) per row, in float32: (..., C) -> (..., C)."""
  return x.astype(jnp.float32) / (row_norm(x) + NORM_EPS)


def inverse_row_norm(x):
  """1 / (||x|| + 1e-16) per row: (..., C) -> (..., 1) float32."""
  return 1.0 / (row_norm(x) + NORM_EPS)


def normalize_rows_vjp(x, d_xn):
  """Gradient through `normalize_rows`: x, d_xn (..., C) -> dx (..., C) f32.

  With r = ||x|| and xn = x / (r + eps):
  dx = d_xn / (r + eps) - xn (xn . d_xn) / r, and 0 for the second term at r = 0.
  """
  r = row_norm(x)
  xn = x.astype(jnp.float32) / (r + NORM_EPS)
  radial = jnp.sum(xn * d_xn, axis=-1, keepdims=True)
  return d_xn / (r + NORM_EPS) - xn * radial / jnp.where(r > 0, r, 1.0)


def mask_scores(g, q_start, k_start, n_keys=None):
  """Excludes the diagonal (and padded keys) from a block of cosine scores.

  Args:
    g: (bq, bk) float32 cosines of queries q_start.. against keys k_start...
    q_start, k_start: global index of the block's first query / key row.
    n_keys: true number of keys; columns at or beyond it are padding. None
      when the block holds no padding.

  Returns:
    (bq, bk) float32 scores.
  """
  rows = q_start + lax.broadcasted_iota(jnp.int32, g.shape, 0)
  cols = k_start + lax.broadcasted_iota(jnp.int32, g.shape, 1)
  s = jnp.where(rows == cols, g + SELF_SCORE, g)
  if n_keys is not None:
    s = jnp.where(cols < n_keys, s, PAD_SCORE)
  return s


def dot_precision(dtype):
  """Full float32 products for float32 operands; native for narrower ones."""
  if jnp.dtype(dtype) == jnp.float32:
    return lax.Precision.HIGHEST
  return lax.Precision.DEFAULT


def triton_dot_precision(dtype):
  """The Triton kernels' products: float32 operands at the program's matmul precision
  (`jax_default_matmul_precision`), as XLA:GPU's own float32 products are: unset,
  TF32 on the tensor cores; 'highest', full float32 (on the CUDA cores: the vit_b
  global attention's forward measured 22x slower than in bfloat16 on an H200).
  Narrower operands native."""
  if jnp.dtype(dtype) == jnp.float32:
    return None  # lax.dot_general then reads jax_default_matmul_precision
  return lax.Precision.DEFAULT


def dot_nt(a, b, precision=dot_precision):
  """a (m, k) @ b (n, k).T -> (m, n) float32; precision: operand dtype -> precision."""
  return lax.dot_general(
      a, b, (((1,), (1,)), ((), ())), precision=precision(a.dtype),
      preferred_element_type=jnp.float32)


def dot_tn(a, b, precision=dot_precision):
  """a (k, m).T @ b (k, n) -> (m, n) float32; precision as for dot_nt."""
  return lax.dot_general(
      a, b, (((0,), (0,)), ((), ())), precision=precision(a.dtype),
      preferred_element_type=jnp.float32)


def dot_nn(a, b, precision=dot_precision):
  """a (m, k) @ b (k, n) -> (m, n) float32; precision as for dot_nt."""
  return lax.dot_general(
      a, b, (((1,), (0,)), ((), ())), precision=precision(a.dtype),
      preferred_element_type=jnp.float32)


# The products of the Triton kernels (triton_dot_precision).
triton_dot_nt = functools.partial(dot_nt, precision=triton_dot_precision)
triton_dot_tn = functools.partial(dot_tn, precision=triton_dot_precision)
triton_dot_nn = functools.partial(dot_nn, precision=triton_dot_precision)


def block_scores(e_q, e_k, q_start, k_start, n_keys=None, precision=dot_precision):
  """Normalises two row blocks and returns their masked cosine scores.

  Args:
    e_q: (bq, C) query rows of E, starting at global row q_start.
    e_k: (bk, C) key rows of E, starting at global row k_start.
    n_keys: true number of keys (None: the block holds no padding).
    precision: operand dtype -> the product's precision (as for dot_nt).

  Returns:
    s: (bq, bk) float32 scores; en_q, en_k: the normalised blocks, cast back
    to the input dtype so that the matrix unit runs at the input's precision.
  """
  en_q = normalize_rows(e_q).astype(e_q.dtype)
  en_k = normalize_rows(e_k).astype(e_k.dtype)
  scores = dot_nt(en_q, en_k, precision)
  return mask_scores(scores, q_start, k_start, n_keys), en_q, en_k


def online_softmax_update(m_prev, l_prev, s):
  """One key block of a streaming softmax.

  Args:
    m_prev, l_prev: (bq, 1) running row max and sum of exp(s - max).
    s: (bq, bk) scores of the next key block.

  Returns:
    m, l: (bq, 1) updated statistics; p: (bq, bk) exp(s - m); corr: (bq, 1)
    the factor that rescales anything accumulated with m_prev.
  """
  m = jnp.maximum(m_prev, jnp.max(s, axis=-1, keepdims=True))
  corr = jnp.exp(m_prev - m)
  p = jnp.exp(s - m)
  l = corr * l_prev + jnp.sum(p, axis=-1, keepdims=True)
  return m, l, p, corr


def probs_from_stats(s, lse, zinv, threshold):
  """Final attention weights of a block from the rows' statistics.

  Args:
    s: (bq, bk) scores.
    lse: (bq, 1) row log-sum-exp.
    zinv: (bq, 1) inverse kept mass (ignored when threshold == 0).
    threshold: alpha / N, a Python float; 0 disables sparsification.

  Returns:
    (bq, bk) float32 weights: softmax, thresholded and renormalised per row.
  """
  p = jnp.exp(s - lse)
  if threshold:
    p = jnp.where(p > threshold, p, 0.0) * zinv
  return p


def kept_mass_inverse(z):
  """1 / z for the kept probability mass z; a row that kept nothing gets 1."""
  return 1.0 / jnp.where(z == 0, 1.0, z)


def score_grad(p, dp, delta):
  """Gradient w.r.t. the scores of a block: (bq, bk) -> (bq, bk).

  With dp = dO . V_j and delta = dO . out per row, ds = p (dp - delta). The
  same form holds with alpha > 0 and the threshold mask held constant: the
  renormalisation makes the softmax term sum_k p_ik dp_ik vanish, and p is the
  renormalised weight.
  """
  return p * (dp - delta)


def output_grad_dot(out, d_out):
  """delta = rowsum(dO * out): (..., D) twice -> (...) float32."""
  return jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)


def round_up(n, multiple):
  return -(-n // multiple) * multiple


def pad_axis(x, axis, size):
  """Zero-pads axis `axis` of x at the end up to length `size`."""
  extra = size - x.shape[axis]
  if not extra:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  return jnp.pad(x, widths)


def threshold_for(alpha, n):
  """The alpha sparsification threshold alpha / N (0.0 disables it)."""
  return alpha / n if alpha > 0 else 0.0
