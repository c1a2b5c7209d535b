"""Pixel AUROC and AUPRO: sort-based exact values, a hand-computed AUPRO, binning error."""

import numpy as np
import pytest
from scipy import ndimage, stats

from spt_jax.errors import SptUserError
from spt_jax.evaluate.anomaly_metrics import F1Counter, PixelScoreAccumulator, image_auroc


def exact_auroc(scores, gt):
  """Mann-Whitney: P(defect score > normal score) + P(equal) / 2, from average ranks."""
  scores, gt = np.ravel(scores), np.ravel(gt).astype(bool)
  ranks = stats.rankdata(scores)
  positives, negatives = gt.sum(), (~gt).sum()
  return (ranks[gt].sum() - positives * (positives + 1) / 2) / (positives * negatives)


def exact_aupro(score_maps, gt_maps, max_fpr=0.3):
  """Every distinct score a threshold; PRO from 8-connected components of each image."""
  weights, scores, normal, num_components = [], [], [], 0
  for score_map, gt_map in zip(score_maps, gt_maps):
    labels, count = ndimage.label(gt_map, structure=np.ones((3, 3)))
    sizes = np.bincount(labels.ravel())
    weights.append(np.where(labels > 0, 1.0 / sizes[labels], 0.0).ravel())
    scores.append(score_map.ravel())
    normal.append(labels.ravel() == 0)
    num_components += count
  weights, scores, normal = map(np.concatenate, (weights, scores, normal))
  order = np.argsort(-scores, kind="stable")
  last_of_ties = np.append(np.diff(scores[order]) != 0, True)
  fpr = np.append(0, np.cumsum(normal[order])[last_of_ties] / normal.sum())
  pro = np.append(0, np.cumsum(weights[order])[last_of_ties] / num_components)
  below = fpr <= max_fpr
  x, y = fpr[below], pro[below]
  area = np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2)
  if x[-1] < max_fpr:
    beyond = np.argmax(fpr > max_fpr)
    y_max = np.interp(max_fpr, fpr[beyond - 1:beyond + 1], pro[beyond - 1:beyond + 1])
    area += (max_fpr - x[-1]) * (y[-1] + y_max) / 2
  return area / max_fpr


def accumulate(score_maps, gt_maps, **kwargs):
  accumulator = PixelScoreAccumulator(**kwargs)
  for score_map, gt_map in zip(score_maps, gt_maps):
    accumulator.add(score_map, gt_map)
  return accumulator


def sam_like(seed, count=6, size=(48, 64), background=(-12, 4), missed_logits=(-7, 3)):
  """Sigmoid score maps of SAM-like logits with blob defects, some regions missed;
  logits of the background and of the missed regions ~ N(mean, std)."""
  rng = np.random.default_rng(seed)
  scores, gts = [], []
  for _ in range(count):
    noise = ndimage.gaussian_filter(rng.standard_normal(size), 3)
    gt = noise > np.quantile(noise, rng.uniform(0.8, 0.97))
    labels, regions = ndimage.label(gt, structure=np.ones((3, 3)))
    missed = np.isin(labels, rng.choice(np.arange(1, regions + 1), regions // 2)) & gt
    logits = rng.normal(*background, size)
    logits[gt] = rng.normal(3, 4, gt.sum())
    logits[missed] = rng.normal(*missed_logits, missed.sum())
    scores.append((1 / (1 + np.exp(-logits))).astype(np.float32))
    gts.append(gt)
  return scores, gts


def test_hand_computed_aupro_two_regions():
  # One 10 x 10 image: region A (2 x 2 = 4 px), region B (4 x 4 = 16 px), 80 normal px.
  # Scores: A all 0.9; B 8 px 0.7, 4 px 0.6, 4 px 0.1; normal 8 px 0.8, 20 px 0.6,
  # 52 px 0.1. PRO is the mean over the two regions (not over pixels):
  #   t = 0.9: FPR 0,           PRO (1 + 0) / 2       = 0.5
  #   t = 0.8: FPR 8/80 = 0.1,  PRO                     0.5
  #   t = 0.7: FPR 0.1,         PRO (1 + 8/16) / 2    = 0.75
  #   t = 0.6: FPR 28/80 = 0.35, PRO (1 + 12/16) / 2  = 0.875
  # At FPR 0.3 (between 0.1 and 0.35): PRO = 0.75 + 0.125 * 0.2 / 0.25 = 0.85.
  # Area = 0.1 * 0.5 (the vertical rise at FPR 0 adds nothing) + 0.2 * (0.75 + 0.85) / 2
  #      = 0.05 + 0.16 = 0.21; AUPRO = 0.21 / 0.3 = 0.7.
  scores = np.full((10, 10), 0.1, np.float32)
  gt = np.zeros((10, 10), bool)
  gt[0:2, 0:2] = True                    # A
  scores[0:2, 0:2] = 0.9
  gt[5:9, 5:9] = True                    # B
  scores[5:7, 5:9] = 0.7
  scores[7, 5:9] = 0.6
  normal = np.flatnonzero(~gt.ravel())
  scores.ravel()[normal[:8]] = 0.8
  scores.ravel()[normal[8:28]] = 0.6
  accumulator = accumulate([scores], [gt])
  assert accumulator.num_components == 2
  assert accumulator.aupro() == pytest.approx(0.7, abs=1e-12)
  assert exact_aupro([scores], [gt]) == pytest.approx(0.7, abs=1e-12)
  # The two regions split over two images of a batch give the same curve.
  batch_scores = np.stack([scores, scores])
  batch_gt = np.stack([gt & (np.arange(10) < 5)[:, None], gt & (np.arange(10) >= 5)[:, None]])
  batch_scores[0][batch_gt[1]] = 0.1   # B's pixels are normal-free in image 0: give them
  batch_scores[1][batch_gt[0]] = 0.1   # and A's the scores of normal background (0.1)
  split = PixelScoreAccumulator()
  split.add(batch_scores, batch_gt)
  assert split.num_components == 2
  assert split.aupro() == pytest.approx(exact_aupro(batch_scores, batch_gt), abs=1e-12)


def test_components_are_8_connected_and_never_cross_images():
  gt = np.zeros((2, 6, 6), bool)
  gt[0, 1, 1] = gt[0, 2, 2] = True   # diagonal neighbours: one component
  gt[1, 1, 1] = True                 # same place in the next image: its own component
  accumulator = PixelScoreAccumulator()
  accumulator.add(np.full(gt.shape, 0.5, np.float32), gt)
  assert accumulator.num_components == 2


@pytest.mark.parametrize("seed", range(3))
def test_auroc_matches_the_exact_value(seed):
  scores, gts = sam_like(seed)
  accumulator = accumulate(scores, gts)
  exact = exact_auroc(np.stack(scores), np.stack(gts))
  assert abs(accumulator.auroc() - exact) <= accumulator.error_bounds()["auroc"] + 1e-12
  assert accumulator.auroc() == pytest.approx(exact, abs=1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_aupro_matches_the_exact_value(seed):
  scores, gts = sam_like(seed)
  accumulator = accumulate(scores, gts)
  exact = exact_aupro(scores, gts)
  assert 0.05 < exact < 0.95
  assert abs(accumulator.aupro() - exact) <= accumulator.error_bounds()["aupro"] + 1e-12
  assert accumulator.aupro() == pytest.approx(exact, abs=1e-4)


@pytest.mark.parametrize("seed", range(2))
def test_confident_backgrounds_are_resolved(seed):
  """Logits around -50 (a full-size SAM's backgrounds) and missed defects around -40:
  nothing a float32 sigmoid resolves falls into an end bin."""
  scores, gts = sam_like(seed, background=(-50, 6), missed_logits=(-42, 5))
  background = np.concatenate([s[~g] for s, g in zip(scores, gts)])
  assert np.median(background) < 1e-20  # sigmoid(-32) = 1.3e-14: beyond the former range
  accumulator = accumulate(scores, gts)
  bounds = accumulator.error_bounds()
  exact_roc, exact_pro = exact_auroc(np.stack(scores), np.stack(gts)), exact_aupro(scores, gts)
  assert abs(accumulator.auroc() - exact_roc) <= min(bounds["auroc"] + 1e-12, 1e-3)
  assert abs(accumulator.aupro() - exact_pro) <= min(bounds["aupro"] + 1e-12, 1e-3)
  assert bounds["auroc"] < 1e-3 and bounds["aupro"] < 1e-3


def test_coarse_bins_stay_within_their_error_bound():
  scores, gts = sam_like(7)
  coarse = accumulate(scores, gts, num_bins=64)
  bounds = coarse.error_bounds()
  assert abs(coarse.auroc() - exact_auroc(np.stack(scores), np.stack(gts))) <= bounds["auroc"]
  assert abs(coarse.aupro() - exact_aupro(scores, gts)) <= bounds["aupro"]
  assert bounds["aupro"] > 1e-3  # a bound that says something at this resolution


def test_perfect_random_and_inverted_scores():
  rng = np.random.default_rng(0)
  gt = rng.random((2, 100, 100)) < 0.2
  perfect = np.where(gt, 0.9, 0.1).astype(np.float32)
  assert accumulate([perfect], [gt]).auroc() == 1.0
  assert accumulate([perfect], [gt]).aupro() == pytest.approx(1.0, abs=1e-12)
  assert accumulate([1 - perfect], [gt]).auroc() == 0.0
  assert accumulate([1 - perfect], [gt]).aupro() == 0.0
  random = rng.random(gt.shape).astype(np.float32)
  assert accumulate([random], [gt]).auroc() == pytest.approx(0.5, abs=0.01)


def test_merge_equals_one_accumulator():
  scores, gts = sam_like(1)
  whole = accumulate(scores, gts)
  first, second = accumulate(scores[:2], gts[:2]), accumulate(scores[2:], gts[2:])
  first.merge(second)
  assert (first.auroc(), first.aupro()) == (whole.auroc(), whole.aupro())
  with pytest.raises(SptUserError, match="num_bins"):
    first.merge(PixelScoreAccumulator(num_bins=16))


def test_without_defects_the_metrics_are_nan():
  accumulator = accumulate([np.full((4, 4), 0.3, np.float32)], [np.zeros((4, 4), bool)])
  assert np.isnan(accumulator.auroc()) and np.isnan(accumulator.aupro())


def test_bad_inputs_name_the_argument():
  accumulator = PixelScoreAccumulator()
  with pytest.raises(SptUserError, match="scores: expected probabilities"):
    accumulator.add(np.full((4, 4), 3.0), np.zeros((4, 4), bool))
  with pytest.raises(SptUserError, match="scores: expected probabilities"):
    accumulator.add(np.full((4, 4), np.nan), np.zeros((4, 4), bool))
  with pytest.raises(SptUserError, match="gt: expected the shape"):
    accumulator.add(np.zeros((4, 4)), np.zeros((4, 5), bool))
  with pytest.raises(SptUserError, match="max_fpr"):
    accumulator.aupro(max_fpr=0)


def test_metrics_over_all_images_include_the_good_ones():
  """Prompt-free evaluation adds the good images (no defect pixel): their pixels count
  as normal in AUROC and AUPRO exactly as a direct computation over all images does."""
  scores, gts = sam_like(5)
  rng = np.random.default_rng(6)
  good = [(1 / (1 + np.exp(-rng.normal(-11, 4, (48, 64))))).astype(np.float32)
          for _ in range(4)]
  all_scores, all_gts = scores + good, gts + [np.zeros((48, 64), bool)] * 4
  accumulator = accumulate(all_scores, all_gts)
  bounds = accumulator.error_bounds()
  assert abs(accumulator.auroc() - exact_auroc(np.stack(all_scores), np.stack(all_gts))) <= (
      max(bounds["auroc"], 1e-9))
  assert abs(accumulator.aupro() - exact_aupro(all_scores, all_gts)) <= max(
      bounds["aupro"], 1e-9)
  assert accumulator.auroc() != accumulate(scores, gts).auroc()  # the good ones count


def test_image_auroc_equals_the_pairwise_definition():
  rng = np.random.default_rng(3)
  scores = np.round(rng.normal(size=40), 1)  # ties
  labels = rng.random(40) < 0.4
  pairs = [(1.0 if p > n else 0.5 if p == n else 0.0)
           for p in scores[labels] for n in scores[~labels]]
  assert image_auroc(scores, labels) == pytest.approx(np.mean(pairs), abs=1e-12)
  assert np.isnan(image_auroc(scores[labels], labels[labels]))
  with pytest.raises(SptUserError, match="expected two"):
    image_auroc(scores, labels[:3])


def test_f1_counts_every_pixel_added():
  counter = F1Counter()
  counter.add(np.array([[1, 1, 0]]), np.array([[1, 0, 0]]))
  counter.add(np.array([[0, 0]]), np.array([[1, 0]]))
  assert counter.f1() == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
  assert np.isnan(F1Counter().f1())
