"""Per-mask segmentation metrics: IoU, Boundary IoU and Dice, in JAX (batched) and numpy.

Definitions, as in the SPT authors' evaluation (utils/misc.py, main.py):
  P = pred_logits > 0, G = gt > 0.5 (the authors threshold 0..255 labels at 128).
  IoU  = |P & G| / |P | G|.
  Dice = 2 |P & G| / (|P| + |G|), the F1 score of the pixels.
  Boundary IoU (Cheng et al., CVPR 2021) = IoU of boundary(P) and boundary(G), where
  boundary(M) = M minus M eroded `d` times by a 3x3 square, pixels outside the image
  counting as 0 (the authors pad the mask with one zero pixel before cv2.erode, so
  mask pixels on the image border are boundary), and
  d = max(1, round(dilation_ratio * sqrt(h^2 + w^2))) from the mask's own (h, w),
  rounded half to even in float64 like the authors' Python `round`.
Empty denominators give 1.0 (both masks empty agree perfectly); the authors divide
0 / 0 (NaN) there. SPT's promptable evaluation leaves images with an empty GT out, and
a non-empty GT has a non-empty boundary, so the case does not arise in it.

JAX form (`segmentation_metrics`): masks sit in the top-left (h, w) of a zero-padded
(H, W) canvas; pixels outside count as 0 for the masks and for the erosion (they are
the image border). d erosions by a 3x3 square equal one erosion by a (2d+1) square,
which is a row pass then a column pass of (2d+1)-pixel windows; a pixel survives a
pass when its window holds 2d+1 mask pixels, counted from an int32 prefix sum looked
up at the mask's own offsets (a window reaching past the canvas holds fewer and
erodes). That is exact for any d, costs O(H W) whatever d is, and keeps d a traced
per-mask value, so one compilation serves every mix of image sizes. d itself is
computed in the graph from integers: the authors' float64 rounding is evaluated on
the host at trace time as the thresholds on h^2 + w^2 where d steps up
(`_dilation_steps`), so no float32 rounding can move a mask to a neighbouring d.
Counts agree exactly with the numpy form; the float32 ratios agree to float32 rounding
(recompute them in float64 from the counts when that matters).

Numpy form (`iou_np`, `dice_np`, `boundary_iou_np`, ...): masks at their true size,
written plainly after the authors' steps; the tests hold the JAX form to it.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from spt_jax.errors import SptUserError

DILATION_RATIO = 0.02


class SegmentationMetrics(NamedTuple):
  """Per-mask results, each (N,): ratios float32, pixel counts int32."""
  iou: jax.Array
  boundary_iou: jax.Array
  dice: jax.Array
  intersection: jax.Array
  union: jax.Array
  pred_area: jax.Array
  gt_area: jax.Array
  boundary_intersection: jax.Array
  boundary_union: jax.Array


def boundary_dilation(h: int, w: int, dilation_ratio: float = DILATION_RATIO) -> int:
  """The authors' erosion count for an (h, w) mask: max(1, round(ratio * diagonal))."""
  return max(1, int(round(dilation_ratio * np.sqrt(h ** 2 + w ** 2))))


@functools.lru_cache(maxsize=None)
def _dilation_steps(max_squared_diagonal: int, dilation_ratio: float) -> np.ndarray:
  """(K,) int32: the smallest h^2 + w^2 whose dilation is >= 2, 3, ..., K + 1.

  `boundary_dilation` is non-decreasing in s = h^2 + w^2, so
  dilation(s) = 1 + #{steps <= s} for every s up to `max_squared_diagonal`.
  """
  def dilation(s):
    return max(1, int(round(dilation_ratio * np.sqrt(s))))

  steps = []
  for k in range(2, dilation(max_squared_diagonal) + 1):
    # round(ratio * sqrt(s)) first reaches k near ratio * sqrt(s) = k - 1/2.
    s = max(0, int(((k - 0.5) / dilation_ratio) ** 2) - 2)
    assert dilation(s) < k, (k, s)
    while dilation(s) < k:
      s += 1
    steps.append(s)
  return np.asarray(steps, np.int32)


def _erode_axis(mask: jax.Array, radius: jax.Array, axis: int) -> jax.Array:
  """(N, H, W) bool eroded along `axis` by a window of 2 * radius + 1, outside = 0.

  radius: (N,) int32, one per mask.
  """
  size = mask.shape[axis]
  pad = [(0, 0)] * 3
  pad[axis] = (1, 0)
  prefix = jnp.pad(jnp.cumsum(mask, axis=axis, dtype=jnp.int32), pad)  # (.., size + 1, ..)
  offsets = jnp.arange(size, dtype=jnp.int32)[None, :]
  radius = radius[:, None]
  index_shape = [-1, 1, 1]
  index_shape[axis] = size
  upper = jnp.clip(offsets + radius + 1, 0, size).reshape(index_shape)
  lower = jnp.clip(offsets - radius, 0, size).reshape(index_shape)
  count = (jnp.take_along_axis(prefix, upper, axis=axis)
           - jnp.take_along_axis(prefix, lower, axis=axis))
  return count == (2 * radius + 1).reshape(-1, 1, 1)


def _boundary(mask: jax.Array, dilation: jax.Array) -> jax.Array:
  """(N, H, W) bool: mask minus its erosion by a (2 * dilation + 1) square."""
  eroded = _erode_axis(_erode_axis(mask, dilation, axis=2), dilation, axis=1)
  return mask & ~eroded


def _ratio(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """numerator / denominator as float32, 1.0 where the denominator is 0."""
  return jnp.where(denominator > 0,
                   numerator / jnp.maximum(denominator, 1).astype(jnp.float32), 1.0)


def _check_shapes(pred_logits, gt, valid_hw) -> None:
  if pred_logits.ndim != 3:
    raise SptUserError(
        f"pred_logits: expected (N, H, W) mask logits, got shape {pred_logits.shape}")
  if gt.shape != pred_logits.shape:
    raise SptUserError(
        f"gt: expected the shape of pred_logits {pred_logits.shape}, got {gt.shape}")
  if valid_hw.shape != (pred_logits.shape[0], 2):
    raise SptUserError(
        f"valid_hw: expected ({pred_logits.shape[0]}, 2) true (h, w) per mask, "
        f"got shape {valid_hw.shape}")


@functools.partial(jax.jit, static_argnames=("dilation_ratio",))
def segmentation_metrics(pred_logits: jax.Array, gt: jax.Array, valid_hw: jax.Array, *,
                         dilation_ratio: float = DILATION_RATIO) -> SegmentationMetrics:
  """IoU, Boundary IoU and Dice of each mask of a batch on a zero-padded canvas.

  Args:
    pred_logits: (N, H, W) float, predicted mask logits (foreground where > 0).
    gt: (N, H, W) bool or float, ground truth (foreground where > 0.5).
    valid_hw: (N, 2) int, the true (h, w) of each mask, 1 <= h <= H, 1 <= w <= W;
      pixels at row >= h or column >= w are ignored.
    dilation_ratio: Boundary IoU band as a fraction of each mask's own diagonal.

  Returns:
    SegmentationMetrics of (N,) arrays (module docstring for the definitions).
  """
  _check_shapes(pred_logits, gt, valid_hw)
  _, height, width = pred_logits.shape
  valid_hw = valid_hw.astype(jnp.int32)
  valid = ((jnp.arange(height)[None, :, None] < valid_hw[:, 0, None, None])
           & (jnp.arange(width)[None, None, :] < valid_hw[:, 1, None, None]))
  pred = (pred_logits > 0) & valid
  truth = (gt.astype(jnp.float32) > 0.5) & valid

  steps = _dilation_steps(height ** 2 + width ** 2, dilation_ratio)
  squared_diagonal = valid_hw[:, 0] ** 2 + valid_hw[:, 1] ** 2
  dilation = 1 + jnp.sum(squared_diagonal[:, None] >= jnp.asarray(steps)[None, :], axis=1,
                         dtype=jnp.int32)
  pred_boundary, truth_boundary = _boundary(pred, dilation), _boundary(truth, dilation)

  def count(mask):
    return jnp.sum(mask, axis=(1, 2), dtype=jnp.int32)

  intersection, union = count(pred & truth), count(pred | truth)
  pred_area, gt_area = count(pred), count(truth)
  boundary_intersection = count(pred_boundary & truth_boundary)
  boundary_union = count(pred_boundary | truth_boundary)
  return SegmentationMetrics(
      iou=_ratio(intersection, union),
      boundary_iou=_ratio(boundary_intersection, boundary_union),
      dice=_ratio(2 * intersection, pred_area + gt_area),
      intersection=intersection, union=union, pred_area=pred_area, gt_area=gt_area,
      boundary_intersection=boundary_intersection, boundary_union=boundary_union)


def _ratio_np(numerator: int, denominator: int) -> float:
  return float(numerator / denominator) if denominator else 1.0


def _check_pair_np(pred: np.ndarray, gt: np.ndarray) -> None:
  if pred.ndim != 2 or pred.shape != gt.shape:
    raise SptUserError(
        f"pred, gt: expected two (h, w) masks of one shape, got {pred.shape} and {gt.shape}")


def iou_np(pred: np.ndarray, gt: np.ndarray) -> float:
  """IoU of two (h, w) bool masks; 1.0 when both are empty."""
  _check_pair_np(pred, gt)
  return _ratio_np(np.sum(pred & gt), np.sum(pred | gt))


def dice_np(pred: np.ndarray, gt: np.ndarray) -> float:
  """Dice (F1) of two (h, w) bool masks; 1.0 when both are empty."""
  _check_pair_np(pred, gt)
  return _ratio_np(2 * np.sum(pred & gt), np.sum(pred) + np.sum(gt))


def mask_boundary_np(mask: np.ndarray, dilation: int) -> np.ndarray:
  """(h, w) bool boundary: the authors' steps, with scipy in place of cv2.

  Pad one zero pixel, erode `dilation` times by a 3x3 square (outside the padded
  mask counting as 1, cv2.erode's default border), crop, subtract from the mask.
  """
  padded = np.pad(mask, 1)
  eroded = ndimage.binary_erosion(padded, structure=np.ones((3, 3), bool),
                                  iterations=dilation, border_value=1)[1:-1, 1:-1]
  return mask & ~eroded


def boundary_iou_np(pred: np.ndarray, gt: np.ndarray,
                    dilation_ratio: float = DILATION_RATIO) -> float:
  """Boundary IoU of two (h, w) bool masks; 1.0 when both are empty."""
  _check_pair_np(pred, gt)
  dilation = boundary_dilation(*gt.shape, dilation_ratio)
  return iou_np(mask_boundary_np(pred, dilation), mask_boundary_np(gt, dilation))
