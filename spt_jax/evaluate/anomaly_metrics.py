"""Anomaly metrics: pixel AUROC and AUPRO (FPR <= 0.3), streamed; image AUROC; F1.

Definitions (MVTec AD, Bergmann et al., IJCV 2021), over all pixels of all images added:
  For a threshold t, a pixel is flagged when its score >= t.
  FPR(t) = flagged non-defect pixels / non-defect pixels.
  TPR(t) = flagged defect pixels / defect pixels.
  PRO(t) = mean over all ground-truth connected components (8-connected, as the MVTec
           AD evaluation code's 3x3 structuring element; components never join across
           images) of the fraction of the component's pixels that are flagged.
  AUROC  = area under TPR vs FPR.
  AUPRO  = area under PRO vs FPR from FPR 0 to `max_fpr` (the curve linearly
           interpolated at `max_fpr`), divided by `max_fpr`.
Both curves start at (0, 0) (threshold above every score) and are integrated with the
trapezoid rule over the points of the thresholds used.

Streaming: memory is three histograms of `num_bins` bins whatever the data set size:
non-defect pixels, defect pixels, and defect pixels weighted by 1 / (size of their
component). PRO(t) is the sum of that weighted histogram above t divided by the number
of components, so no per-component state is kept.

Binning: scores are probabilities in [0, 1] (e.g. sigmoid of mask logits). The bins are
uniform in logit(score) over LOGIT_RANGE, every logit a float32 sigmoid can tell apart:
from -104 (the smallest float32, 1.4e-45) to +17 (above it the sigmoid rounds to 1), so
no score the model can produce is clipped into an end bin. Sigmoid outputs crowd near 0
and 1, where uniform bins in [0, 1] would tie most background pixels (a logit of -10
and one of -50 are both < 1e-4). Bin index is
non-decreasing in the score, so the binned curves are the exact curves evaluated at a
subset of thresholds (the bin edges). Between two consecutive edges the exact curve is a
monotone staircase inside the rectangle spanned by the two points, so the error against
the exact (sort-based, every distinct score a threshold) value is at most
  AUROC: 1/2 sum_b dFPR_b dTPR_b,
  AUPRO: (1/2 sum_b dFPR_b dPRO_b over bins below max_fpr
          + the clipped rectangle of the bin that straddles max_fpr) / max_fpr,
where dX_b is the share of the curve's rise inside bin b; `error_bounds()` returns
these for the data seen. They only grow where defect and non-defect pixels share a bin.
With the defaults (2^19 bins, logit step 2.3e-4) the error on synthetic SAM-like score
maps (background logits ~ N(-12, 4)) is ~1e-6 (the tests require 1e-4), where 2^18
uniform bins in [0, 1] err by ~1e-3 on AUROC; with confident backgrounds (logits
around -50, the tests) it stays below 1e-4.
"""

import numpy as np
from scipy import ndimage

from spt_jax.errors import SptUserError

MAX_FPR = 0.3
# (lowest, highest) logit a float32 sigmoid resolves (module docstring).
LOGIT_RANGE = (-104.0, 17.0)
NUM_BINS = 2 ** 19
# 8-connected within an image, never across the images of a (N, H, W) batch.
_COMPONENT_STRUCTURE = np.zeros((3, 3, 3), bool)
_COMPONENT_STRUCTURE[1] = True


class PixelScoreAccumulator:
  """Histograms of pixel scores for pixel AUROC and AUPRO (module docstring)."""

  def __init__(self, num_bins: int = NUM_BINS,
               logit_range: tuple[float, float] = LOGIT_RANGE):
    if num_bins < 2 or not logit_range[0] < logit_range[1]:
      raise SptUserError(f"num_bins, logit_range: expected >= 2 and (low, high) with low "
                         f"< high, got {num_bins}, {logit_range}")
    self.num_bins = num_bins
    self.logit_range = tuple(logit_range)
    self.negative = np.zeros(num_bins, np.int64)
    self.positive = np.zeros(num_bins, np.int64)
    self.component_weight = np.zeros(num_bins, np.float64)
    self.num_components = 0

  def _bins(self, scores: np.ndarray) -> np.ndarray:
    """Bin index (int64) of each score, non-decreasing in the score."""
    scores = scores.astype(np.float64)
    with np.errstate(divide="ignore"):
      logits = np.log(scores) - np.log1p(-scores)
    low, high = self.logit_range
    position = (logits - low) * (self.num_bins / (high - low))
    return np.clip(np.floor(position), 0, self.num_bins - 1).astype(np.int64)

  def add(self, scores: np.ndarray, gt: np.ndarray) -> None:
    """Adds one image (H, W) or a batch (N, H, W) of score maps and defect masks.

    Args:
      scores: probabilities in [0, 1], (H, W) or (N, H, W).
      gt: bool (or 0/1) defect mask of the same shape; pixels where True are defects.
    """
    scores, gt = np.asarray(scores), np.asarray(gt)
    if scores.ndim not in (2, 3):
      raise SptUserError(f"scores: expected (H, W) or (N, H, W), got shape {scores.shape}")
    if gt.shape != scores.shape:
      raise SptUserError(f"gt: expected the shape of scores {scores.shape}, got {gt.shape}")
    if scores.size and not (np.min(scores) >= 0 and np.max(scores) <= 1):
      raise SptUserError("scores: expected probabilities in [0, 1] (e.g. sigmoid of the "
                         f"logits), got values in [{np.min(scores)}, {np.max(scores)}]")
    scores, gt = scores.reshape((-1,) + scores.shape[-2:]), gt.reshape((-1,) + gt.shape[-2:])
    gt = gt.astype(bool)
    bins = self._bins(scores)
    self.negative += np.bincount(bins[~gt], minlength=self.num_bins)
    self.positive += np.bincount(bins[gt], minlength=self.num_bins)
    labels, count = ndimage.label(gt, structure=_COMPONENT_STRUCTURE)
    if count:
      sizes = np.bincount(labels.ravel())
      self.component_weight += np.bincount(
          bins[gt], weights=1.0 / sizes[labels[gt]], minlength=self.num_bins)
      self.num_components += count

  def merge(self, other: "PixelScoreAccumulator") -> None:
    """Adds another accumulator's pixels (e.g. from another process) to this one."""
    if (other.num_bins, other.logit_range) != (self.num_bins, self.logit_range):
      raise SptUserError(
          f"other: expected num_bins={self.num_bins}, logit_range={self.logit_range}, "
          f"got {other.num_bins}, {other.logit_range}")
    self.negative += other.negative
    self.positive += other.positive
    self.component_weight += other.component_weight
    self.num_components += other.num_components

  def _rates(self, histogram: np.ndarray, total: float) -> np.ndarray:
    """(num_bins + 1,) share of the histogram at or above each edge, highest edge first."""
    if total == 0:
      return np.full(self.num_bins + 1, np.nan)
    above = np.concatenate([[0], np.cumsum(histogram[::-1])])
    return above / total

  def roc_curve(self) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr), each (num_bins + 1,) from (0, 0) to (1, 1); NaN without both classes."""
    return (self._rates(self.negative, self.negative.sum()),
            self._rates(self.positive, self.positive.sum()))

  def pro_curve(self) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro), each (num_bins + 1,) from (0, 0) to (1, 1); NaN without both classes."""
    return (self._rates(self.negative, self.negative.sum()),
            self._rates(self.component_weight, self.num_components))

  def auroc(self) -> float:
    """Pixel AUROC; NaN until both defect and non-defect pixels were added."""
    return _area(*self.roc_curve(), 1.0)

  def aupro(self, max_fpr: float = MAX_FPR) -> float:
    """Normalised area under PRO vs FPR up to max_fpr; NaN without both classes."""
    _check_max_fpr(max_fpr)
    return _area(*self.pro_curve(), max_fpr)

  def error_bounds(self, max_fpr: float = MAX_FPR) -> dict[str, float]:
    """{'auroc', 'aupro'}: bounds on |binned - exact| for the data added (module doc)."""
    _check_max_fpr(max_fpr)
    return {"auroc": _binning_error(*self.roc_curve(), 1.0),
            "aupro": _binning_error(*self.pro_curve(), max_fpr)}


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Image AUROC: the probability that an anomalous image (label 1) scores above a
  normal one (label 0), ties counting one half (the exact area under the ROC curve of
  every threshold). NaN without both kinds of images."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
  if scores.shape != labels.shape or scores.ndim != 1:
    raise SptUserError(f"scores {scores.shape} and labels {labels.shape}: expected two "
                       "(N,) arrays")
  positives, negatives = scores[labels], scores[~labels]
  if not len(positives) or not len(negatives):
    return float("nan")
  ranks = _average_ranks(np.concatenate([positives, negatives]))
  wins = ranks[:len(positives)].sum() - len(positives) * (len(positives) + 1) / 2
  return float(wins / (len(positives) * len(negatives)))


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks, tied values sharing their mean rank."""
  order = np.argsort(values, kind="stable")
  sorted_values = values[order]
  starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  ends = np.r_[starts[1:], len(values)]
  ranks = np.empty(len(values))
  ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
  return ranks


class F1Counter:
  """Pixel F1 of binary predictions, counted over every pixel added."""

  def __init__(self):
    self.true_positive = self.false_positive = self.false_negative = 0

  def add(self, predicted: np.ndarray, gt: np.ndarray) -> None:
    predicted, gt = np.asarray(predicted, bool), np.asarray(gt, bool)
    self.true_positive += int(np.sum(predicted & gt))
    self.false_positive += int(np.sum(predicted & ~gt))
    self.false_negative += int(np.sum(~predicted & gt))

  def merge(self, other: "F1Counter") -> None:
    self.true_positive += other.true_positive
    self.false_positive += other.false_positive
    self.false_negative += other.false_negative

  def f1(self) -> float:
    """2 TP / (2 TP + FP + FN); NaN before any positive pixel, predicted or true."""
    denominator = 2 * self.true_positive + self.false_positive + self.false_negative
    return float("nan") if not denominator else 2 * self.true_positive / denominator


def _check_max_fpr(max_fpr: float) -> None:
  if not 0 < max_fpr <= 1:
    raise SptUserError(f"max_fpr: expected a value in (0, 1], got {max_fpr}")


def _area(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
  """Trapezoid area under y(x) from 0 to x_max (interpolated there), over x_max.

  x, y: (M,) non-decreasing, starting at x = 0 and ending at x = 1.
  """
  if np.isnan(x[0]) or np.isnan(y[0]):
    return float("nan")
  inside = np.searchsorted(x, x_max, side="right")  # points with x <= x_max
  area = np.sum(0.5 * (y[1:inside] + y[:inside - 1]) * np.diff(x[:inside]))
  if inside < len(x):
    x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
    y_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
    area += 0.5 * (y0 + y_max) * (x_max - x0)
  return float(area / x_max)


def _binning_error(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
  """Bound on |area of the sampled curve - area of the exact curve| (module doc), / x_max."""
  if np.isnan(x[0]) or np.isnan(y[0]):
    return float("nan")
  x0, x1, rise = x[:-1], x[1:], np.diff(y)
  width = np.clip(np.minimum(x1, x_max) - x0, 0, None)
  share = np.where(x1 <= x_max, 0.5, 1.0)
  return float(np.sum(share * width * rise) / x_max)
