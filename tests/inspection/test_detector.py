"""Anomaly maps, boxes and a fitted detector: smoothing over the image's cells only,
components to boxes, thresholds that hold their false-positive rate on new normal
images, a saved detector that reads back."""

import numpy as np
import pytest

from spt_jax.errors import SptUserError
from spt_jax.inspection import proposals
from spt_jax.inspection.detector import AnomalyDetector, DetectorSpec, fit_detector
from spt_jax.inspection.proposals import ProposalSpec


def test_smoothing_never_reads_the_padding_cells():
  maps = np.zeros((1, 6, 6), np.float32)
  maps[0, :, 4:] = 1e6  # the padding's cells (the image covers 4 columns)
  maps[0, 1, 1] = 1.0
  cells = np.array([[6, 4]])
  smooth = np.asarray(proposals.smooth_grid(maps, cells, sigma=1.0))
  assert smooth[0, :, :4].max() < 1.0  # no padding value leaked in
  np.testing.assert_allclose(np.asarray(proposals.smooth_grid(maps, cells, 0.0))[0, :, :4],
                             maps[0, :, :4])


def test_boxes_are_the_largest_peaks_components_with_enough_area():
  score_map = np.zeros((40, 50), np.float32)
  score_map[2:6, 3:10] = 5.0  # area 28, peak 5
  score_map[20:30, 30:45] = 2.0  # area 150, peak 2
  score_map[35, 1] = 9.0  # one pixel: below min_area
  spec = ProposalSpec(min_area=0.005, max_boxes=4)
  boxes = proposals.boxes_from_map(score_map, 1.0, spec)
  np.testing.assert_array_equal(boxes, [[3, 2, 9, 5], [30, 20, 44, 29]])
  assert len(proposals.boxes_from_map(score_map, 1.0, ProposalSpec(max_boxes=1))) == 1
  assert proposals.boxes_from_map(score_map, 10.0, spec).shape == (0, 4)


def normal_embeddings(rng, count, grid=8, dim=6):
  """Embeddings of 'normal images': a position pattern plus noise."""
  pattern = np.sin(np.arange(grid)[:, None, None] + np.arange(dim)) * np.cos(
      np.arange(grid)[None, :, None])
  return (pattern + 0.3 * rng.standard_normal((count, grid, grid, dim))).astype(np.float32)


def test_thresholds_hold_their_false_positive_rate_on_new_normal_images(tmp_path):
  rng = np.random.default_rng(0)
  spec = DetectorSpec(coreset_fraction=0.5, calibration_every=2, pixel_fpr=0.05,
                      image_fpr=0.2)
  sizes = np.full((80, 2), 64)
  detector = fit_detector(normal_embeddings(rng, 80), sizes, sizes, spec, 64, 8)
  new = detector.maps(normal_embeddings(rng, 60), sizes[:60], sizes[:60], 64)
  assert 0.02 <= np.mean(new > detector.pixel_threshold) <= 0.1
  assert np.mean(new.max(axis=(1, 2)) > detector.image_threshold) <= 0.4
  anomalous = normal_embeddings(rng, 1)
  anomalous[0, 2:4, 5:7] += 3.0
  score, boxes = detector.propose(detector.maps(anomalous, sizes[:1], sizes[:1], 64)[0])
  assert score > detector.image_threshold and len(boxes) >= 1
  x0, y0, x1, y1 = boxes[0]  # the highest peak: the anomaly
  assert x0 <= 5 * 8 and x1 >= 7 * 8 - 1 and y0 <= 2 * 8 and y1 >= 4 * 8 - 1
  detector.save(str(tmp_path / "d"))
  loaded = AnomalyDetector.load(str(tmp_path / "d"))
  np.testing.assert_array_equal(loaded.maps(anomalous, sizes[:1], sizes[:1], 64),
                                detector.maps(anomalous, sizes[:1], sizes[:1], 64))
  assert loaded.spec == spec and loaded.pixel_threshold == detector.pixel_threshold


def test_fit_needs_two_images_and_sane_options(tmp_path):
  rng = np.random.default_rng(1)
  sizes = np.full((1, 2), 64)
  with pytest.raises(SptUserError, match="at least 2 normal images"):
    fit_detector(normal_embeddings(rng, 1), sizes, sizes, DetectorSpec(), 64, 8)
  with pytest.raises(SptUserError, match="pixel_fpr=1.5"):
    DetectorSpec(pixel_fpr=1.5).check()
  with pytest.raises(SptUserError, match="no anomaly detector here"):
    AnomalyDetector.load(str(tmp_path))
