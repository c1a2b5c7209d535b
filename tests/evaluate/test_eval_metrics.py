"""Segmentation metrics: hand-computed IoU / BIoU / Dice, the authors' dilation rounding,
padded canvases, empty masks, and JAX against the numpy reference on random masks."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from spt_jax.errors import SptUserError
from spt_jax.evaluate import metrics


# Tests share canvas shapes where they can: each new shape is a new compilation.
CANVAS = (48, 64)


def on_canvas(masks, canvas=CANVAS, outside=True):
  """(N, H, W) logits (+1 / -1) and gt of (h, w) masks in the top-left of the canvas.

  Outside the valid region both are set to `outside`, which must not matter.
  """
  logits = np.full((len(masks),) + canvas, 3.0 if outside else -3.0, np.float32)
  gt = np.full((len(masks),) + canvas, outside, bool)
  sizes = []
  for i, (pred, truth) in enumerate(masks):
    h, w = truth.shape
    logits[i, :h, :w] = np.where(pred, 2.0, -2.0)
    gt[i, :h, :w] = truth
    sizes.append((h, w))
  return jnp.asarray(logits), jnp.asarray(gt), jnp.asarray(sizes, jnp.int32)


def square(shape, rows, cols):
  mask = np.zeros(shape, bool)
  mask[rows[0]:rows[1], cols[0]:cols[1]] = True
  return mask


def test_hand_computed_square_one_pixel_band():
  # 30 x 40 image: diagonal 50, dilation round(0.02 * 50) = 1, a one-pixel band.
  # GT: 10 x 10 square at rows 5..14, cols 10..19; prediction: shifted one column right.
  # IoU = 90 / 110. Dice = 180 / 200. Boundaries are 36-pixel rings; they share rows 5
  # and 14 at cols 11..19 (18 pixels): BIoU = 18 / (36 + 36 - 18) = 1 / 3.
  gt = square((30, 40), (5, 15), (10, 20))
  pred = square((30, 40), (5, 15), (11, 21))
  result = metrics.segmentation_metrics(*on_canvas([(pred, gt)]))
  np.testing.assert_allclose(result.iou, [9 / 11], rtol=1e-6)
  np.testing.assert_allclose(result.dice, [0.9], rtol=1e-6)
  np.testing.assert_allclose(result.boundary_iou, [1 / 3], rtol=1e-6)
  assert result.boundary_intersection.tolist() == [18]
  assert result.boundary_union.tolist() == [54]
  assert metrics.iou_np(pred, gt) == pytest.approx(9 / 11)
  assert metrics.dice_np(pred, gt) == pytest.approx(0.9)
  assert metrics.boundary_iou_np(pred, gt) == pytest.approx(1 / 3)


@pytest.mark.parametrize("corner", ["top_left", "bottom_right"])
def test_mask_on_the_image_border_is_boundary(corner):
  # 30 x 40 image, dilation 1. GT: 10 x 10 square in a corner; prediction: 10 rows x
  # 9 columns sharing the corner. The image border counts as background, so the GT
  # boundary is its full 36-pixel ring and the prediction's a 34-pixel ring (not just
  # the two inner sides). Shared: the two 9-pixel rows and the 8 inner pixels of the
  # border column = 26. BIoU = 26 / (36 + 34 - 26) = 13 / 22; IoU = 90 / 100.
  # Bottom-right: the border is the edge of the valid region inside a larger canvas
  # whose padding is foreground in both masks; it must act as the image border too.
  gt = square((30, 40), (0, 10), (0, 10))
  pred = square((30, 40), (0, 10), (0, 9))
  if corner == "bottom_right":
    gt, pred = gt[::-1, ::-1], pred[::-1, ::-1]
  result = metrics.segmentation_metrics(*on_canvas([(pred, gt)]))
  np.testing.assert_allclose(result.boundary_iou, [13 / 22], rtol=1e-6)
  np.testing.assert_allclose(result.iou, [0.9], rtol=1e-6)
  assert metrics.boundary_iou_np(pred, gt) == pytest.approx(13 / 22)


def test_hand_computed_five_pixel_band():
  # 150 x 200 image: diagonal 250, dilation round(0.02 * 250) = 5. GT: 20 x 20 square
  # (rows and cols 10..29), interior after erosion 10 x 10, boundary 300. Prediction:
  # 20 x 30 (cols 10..39), interior rows 15..24 x cols 15..34 (200), boundary 400; its
  # boundary inside the GT square is 400 - 150 = 250, all on the GT boundary.
  # BIoU = 250 / (300 + 400 - 250) = 5 / 9; IoU = 400 / 600; Dice = 800 / 1000.
  gt = square((150, 200), (10, 30), (10, 30))
  pred = square((150, 200), (10, 30), (10, 40))
  result = metrics.segmentation_metrics(*on_canvas([(pred, gt), (gt, gt)], (160, 208)))
  np.testing.assert_allclose(result.boundary_iou, [5 / 9, 1.0], rtol=1e-6)
  np.testing.assert_allclose(result.iou, [2 / 3, 1.0], rtol=1e-6)
  np.testing.assert_allclose(result.dice, [0.8, 1.0], rtol=1e-6)
  assert result.boundary_union.tolist() == [450, 300]
  assert metrics.boundary_iou_np(pred, gt) == pytest.approx(5 / 9)


def test_dilation_follows_the_authors_rounding():
  cases = [((15, 20), 1),     # 0.02 * 25 = 0.5 rounds to 0, then max(1, .)
           ((45, 60), 2),     # 1.5 -> 2
           ((75, 100), 2),    # 2.5 -> 2: half to even, like Python's round
           ((105, 140), 4),   # 3.5 -> 4
           ((33, 151), 3),    # 3.09
           ((600, 800), 20)]  # 20.0
  assert [metrics.boundary_dilation(*hw) for hw, _ in cases] == [d for _, d in cases]
  # A full mask's boundary is everything but the (h - 2d) x (w - 2d) interior.
  full = [(np.ones(hw, bool), np.ones(hw, bool)) for hw, _ in cases]
  result = metrics.segmentation_metrics(*on_canvas(full, (603, 805)))
  assert result.boundary_union.tolist() == [h * w - (h - 2 * d) * (w - 2 * d)
                                            for (h, w), d in cases]


def blob(rng, shape, fill):
  """A random smooth (h, w) bool mask covering about `fill` of the image."""
  noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=min(shape) / 8)
  return noise > np.quantile(noise, 1 - fill)


@pytest.mark.parametrize("dilation_ratio", [0.02, 0.07])
def test_jax_matches_numpy_on_random_masks(dilation_ratio):
  rng = np.random.default_rng(int(dilation_ratio * 100))
  sizes = [(37, 53), (64, 21), (50, 50), (9, 70), (70, 66), (18, 31), (2, 3)]
  pairs = []
  for h, w in sizes:
    gt = blob(rng, (h, w), rng.uniform(0.05, 0.6))
    pred = ndimage.binary_dilation(gt, iterations=int(rng.integers(0, 3))) ^ (
        rng.random((h, w)) < 0.03)
    pairs.append((pred, gt))
  result = metrics.segmentation_metrics(*on_canvas(pairs, (70, 72)),
                                        dilation_ratio=dilation_ratio)
  for i, (pred, gt) in enumerate(pairs):
    dilation = metrics.boundary_dilation(*gt.shape, dilation_ratio)
    pred_b = metrics.mask_boundary_np(pred, dilation)
    gt_b = metrics.mask_boundary_np(gt, dilation)
    assert result.intersection[i] == np.sum(pred & gt)
    assert result.union[i] == np.sum(pred | gt)
    assert result.boundary_intersection[i] == np.sum(pred_b & gt_b)
    assert result.boundary_union[i] == np.sum(pred_b | gt_b)
    assert result.iou[i] == pytest.approx(metrics.iou_np(pred, gt), rel=1e-6)
    assert result.dice[i] == pytest.approx(metrics.dice_np(pred, gt), rel=1e-6)
    assert result.boundary_iou[i] == pytest.approx(
        metrics.boundary_iou_np(pred, gt, dilation_ratio), rel=1e-6)


def test_numpy_boundary_matches_a_plain_loop():
  # The reference's scipy call against 3x3 erosions written out, on the zero-padded mask.
  rng = np.random.default_rng(3)
  mask = blob(rng, (23, 31), 0.4)
  for dilation in (1, 2, 4):
    eroded = np.pad(mask, 1)
    for _ in range(dilation):
      padded = np.pad(eroded, 1, constant_values=True)
      eroded = np.min([padded[1 + dy:padded.shape[0] - 1 + dy, 1 + dx:padded.shape[1] - 1 + dx]
                       for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
    np.testing.assert_array_equal(metrics.mask_boundary_np(mask, dilation),
                                  mask & ~eroded[1:-1, 1:-1])


def test_empty_masks():
  empty, some = np.zeros((20, 30), bool), square((20, 30), (2, 6), (3, 9))
  both_empty = metrics.segmentation_metrics(*on_canvas([(empty, empty)]))
  gt_empty = metrics.segmentation_metrics(*on_canvas([(some, empty)]))
  assert (both_empty.iou, both_empty.boundary_iou, both_empty.dice) == (1.0, 1.0, 1.0)
  assert (gt_empty.iou, gt_empty.boundary_iou, gt_empty.dice) == (0.0, 0.0, 0.0)
  assert (both_empty.union, gt_empty.union) == (0, 24)
  assert metrics.iou_np(empty, empty) == metrics.boundary_iou_np(empty, empty) == 1.0
  assert metrics.dice_np(some, empty) == 0.0


def test_shape_errors_name_the_argument():
  logits, gt = jnp.zeros((2, 8, 9)), jnp.zeros((2, 8, 9))
  with pytest.raises(SptUserError, match="gt"):
    metrics.segmentation_metrics(logits, gt[:, :, :8], jnp.ones((2, 2), jnp.int32))
  with pytest.raises(SptUserError, match="valid_hw"):
    metrics.segmentation_metrics(logits, gt, jnp.ones((2,), jnp.int32))
  with pytest.raises(SptUserError, match="pred_logits"):
    metrics.segmentation_metrics(logits[0], gt[0], jnp.ones((1, 2), jnp.int32))
  with pytest.raises(SptUserError, match="pred, gt"):
    metrics.iou_np(np.zeros((3, 4), bool), np.zeros((4, 3), bool))
