"""An anomaly detector fitted on normal images: memory bank, calibrated thresholds, boxes.

`fit_detector` takes the image embeddings of normal images of one category (from the
frozen base's encoder, so that every model evaluated on its proposals sees the same
boxes), keeps every `calibration_every`-th image for calibration and puts the patch
embeddings of the others into a greedy coreset of `coreset_fraction` of them (the
memory bank). Maps of the calibration images give the pixel threshold (their pixel
scores' `pixel_fpr` false-positive rate) and the image threshold (their image scores'
`image_fpr`). An image proposes boxes when its score exceeds the image threshold:
the components of its pixels above the pixel threshold (`proposals.boxes_from_map`).

Saved as <directory>/bank.npy and detector.json (thresholds, spec, grid).
"""

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spt_jax.errors import SptUserError
from spt_jax.inspection import memory_bank
from spt_jax.inspection import proposals
from spt_jax.inspection.proposals import ProposalSpec

BANK_FILE = "bank.npy"
DETECTOR_FILE = "detector.json"


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
  """What a detector keeps of its normal images and how it decides (module docstring)."""
  coreset_fraction: float = 0.1
  calibration_every: int = 4
  pixel_fpr: float = 0.01
  image_fpr: float = 0.05
  proposals: ProposalSpec = ProposalSpec()
  block: int = 4096

  @classmethod
  def from_dict(cls, fields: dict[str, Any]) -> "DetectorSpec":
    fields = dict(fields)
    fields["proposals"] = ProposalSpec(**fields.get("proposals", {}))
    return cls(**fields).check()

  def check(self) -> "DetectorSpec":
    if not 0 < self.coreset_fraction <= 1 or self.calibration_every < 2 or self.block < 1:
      raise SptUserError(f"detector: coreset_fraction={self.coreset_fraction} (0 < f <= 1),"
                         f" calibration_every={self.calibration_every} (>= 2), "
                         f"block={self.block} (>= 1) expected")
    for name in ("pixel_fpr", "image_fpr"):
      if not 0 < getattr(self, name) < 1:
        raise SptUserError(f"detector: {name}={getattr(self, name)}: expected 0 < fpr < 1")
    self.proposals.check()
    return self


@functools.partial(jax.jit, static_argnames=("sigma", "block"))
def original_maps(bank: jax.Array, embeddings: jax.Array, cells: jax.Array,
                  rows: jax.Array, cols: jax.Array, *, sigma: float,
                  block: int) -> jax.Array:
  """bank (M, D), embeddings (B, h, w, D), cells (B, 2) (`proposals.valid_cells`),
  rows (B, H, h), cols (B, W, w) -> smoothed anomaly maps (B, H, W)."""
  grid = memory_bank.anomaly_maps(embeddings, bank, block=block)
  return proposals.to_original(proposals.smooth_grid(grid, cells, sigma), rows, cols)


@dataclasses.dataclass
class AnomalyDetector:
  """A fitted detector of one category: bank (M, D), thresholds, grid geometry."""
  bank: np.ndarray
  pixel_threshold: float
  image_threshold: float
  spec: DetectorSpec
  image_size: int
  patch_size: int

  def maps(self, embeddings: np.ndarray, input_sizes: np.ndarray,
           original_sizes: np.ndarray, canvas: int) -> np.ndarray:
    """Embeddings (B, h, w, D) -> anomaly maps (B, canvas, canvas) at original
    resolution (each image's own H0 x W0 at the top left, zeros beyond)."""
    grid = embeddings.shape[1]
    rows, cols = proposals.grid_matrices(grid, self.image_size, input_sizes,
                                         original_sizes, canvas)
    cells = proposals.valid_cells(input_sizes, self.patch_size)
    return np.asarray(original_maps(jnp.asarray(self.bank), jnp.asarray(embeddings), cells,
                                    rows, cols, sigma=self.spec.proposals.sigma,
                                    block=self.spec.block))

  def propose(self, score_map: np.ndarray) -> tuple[float, np.ndarray]:
    """(H0, W0) map of one image -> (image score, (K, 4) boxes in its pixels)."""
    score = float(score_map.max())
    if score <= self.image_threshold:
      return score, np.zeros((0, 4), np.float32)
    return score, proposals.boxes_from_map(score_map, self.pixel_threshold,
                                           self.spec.proposals)

  def save(self, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    np.save(os.path.join(directory, BANK_FILE), self.bank)
    with open(os.path.join(directory, DETECTOR_FILE), "w") as f:
      json.dump({"pixel_threshold": self.pixel_threshold,
                 "image_threshold": self.image_threshold,
                 "spec": dataclasses.asdict(self.spec), "image_size": self.image_size,
                 "patch_size": self.patch_size, "bank_rows": int(len(self.bank))}, f,
                indent=2)

  @classmethod
  def load(cls, directory: str) -> "AnomalyDetector":
    path = os.path.join(directory, DETECTOR_FILE)
    if not os.path.isfile(path):
      raise SptUserError(f"{directory}: no anomaly detector here (no {DETECTOR_FILE})")
    with open(path) as f:
      document = json.load(f)
    return cls(np.load(os.path.join(directory, BANK_FILE)), document["pixel_threshold"],
               document["image_threshold"], DetectorSpec.from_dict(document["spec"]),
               document["image_size"], document["patch_size"])


def fit_detector(embeddings: np.ndarray, input_sizes: np.ndarray,
                 original_sizes: np.ndarray, spec: DetectorSpec, image_size: int,
                 patch_size: int) -> AnomalyDetector:
  """A detector from the embeddings (N, h, w, D) of N >= 2 normal images of one
  category, their input (N, 2) and original (N, 2) sizes (module docstring)."""
  spec.check()
  count = len(embeddings)
  if count < 2:
    raise SptUserError(f"the memory bank needs at least 2 normal images (one to "
                       f"calibrate its thresholds), got {count}")
  calibration = np.arange(count) % spec.calibration_every == spec.calibration_every - 1
  calibration[-1] |= not calibration.any()  # fewer images than calibration_every
  features = embeddings[~calibration].reshape(-1, embeddings.shape[-1])
  chosen = memory_bank.greedy_coreset(
      jnp.asarray(features), max(1, int(round(spec.coreset_fraction * len(features)))))
  detector = AnomalyDetector(np.asarray(features)[np.asarray(chosen)], 0.0, 0.0, spec,
                             image_size, patch_size)
  canvas = int(np.max(original_sizes[calibration]))
  maps = detector.maps(embeddings[calibration], input_sizes[calibration],
                       original_sizes[calibration], canvas)
  pixels = [m[:h, :w] for m, (h, w) in zip(maps, original_sizes[calibration])]
  detector.pixel_threshold = memory_bank.calibrated_threshold(
      np.concatenate([p.ravel() for p in pixels]), spec.pixel_fpr)
  detector.image_threshold = memory_bank.calibrated_threshold(
      np.array([p.max() for p in pixels]), spec.image_fpr)
  return detector
