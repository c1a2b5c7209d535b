"""Anomaly maps at original resolution, and the boxes they propose.

A map starts on the image encoder's grid (h, w) (one nearest-neighbour distance per
embedding position, `memory_bank.anomaly_maps`). It is smoothed there with a Gaussian
of `sigma` grid cells, over the cells that cover the image only (the padding's cells
carry no image and are left out of every average), then taken to the original pixels
with the postprocessing matrices of the masks (SAM's bilinear upsampling of the grid to
the padded input, the crop of the padding, the resize to the original size: one
matrix per axis, `spt_jax.transforms.postprocess_matrix` with the grid as "low res").
The image score is the map's maximum.

Proposals: the 8-connected components of the pixels above a threshold, those of at
least `min_area` pixels (as a fraction of the image), largest peak first, at most
`max_boxes`; each gives its bounding box (x0, y0, x1, y1), inclusive pixel indices, as
the ground-truth box prompts are made.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from spt_jax import transforms
from spt_jax.errors import SptUserError

_EIGHT_CONNECTED = np.ones((3, 3), bool)


@dataclasses.dataclass(frozen=True)
class ProposalSpec:
  """How maps become boxes (module docstring)."""
  sigma: float = 0.5
  min_area: float = 0.0005
  max_boxes: int = 4

  def check(self) -> "ProposalSpec":
    if self.sigma < 0 or not 0 <= self.min_area < 1 or self.max_boxes < 1:
      raise SptUserError(f"proposals: sigma={self.sigma} (>= 0), min_area={self.min_area} "
                         f"(0 <= a < 1), max_boxes={self.max_boxes} (>= 1) expected")
    return self


def _smoothing_matrix(cells: int, valid: jax.Array, sigma: float) -> jax.Array:
  """(B, cells, cells) row-normalised Gaussian weights over the valid cells."""
  position = jnp.arange(cells, dtype=jnp.float32)
  if sigma > 0:
    weights = jnp.exp(-0.5 * ((position[:, None] - position[None, :]) / sigma) ** 2)
  else:
    weights = jnp.eye(cells, dtype=jnp.float32)
  weights = weights[None] * (position[None, None, :] < valid[:, None, None])
  return weights / jnp.maximum(weights.sum(-1, keepdims=True), 1e-12)


def smooth_grid(maps: jax.Array, valid_cells: jax.Array, sigma: float) -> jax.Array:
  """maps (B, h, w), valid_cells (B, 2) int (cells covering the image) -> (B, h, w)."""
  height, width = maps.shape[1:]
  rows = _smoothing_matrix(height, valid_cells[:, 0], sigma)
  cols = _smoothing_matrix(width, valid_cells[:, 1], sigma)
  return jnp.einsum("bph,bhw,bqw->bpq", rows, maps, cols,
                    precision=jax.lax.Precision.HIGHEST)


def valid_cells(input_sizes: np.ndarray, patch_size: int) -> np.ndarray:
  """(B, 2) grid cells covering each resized image (ceil of its size / the patch)."""
  return -(-np.asarray(input_sizes) // patch_size)


def to_original(maps: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """Grid maps (B, h, w), rows (B, H, h), cols (B, W, w) -> (B, H, W)."""
  return jnp.einsum("bph,bhw,bqw->bpq", rows, maps, cols,
                    precision=jax.lax.Precision.HIGHEST)


def grid_matrices(grid: int, image_size: int, input_sizes: np.ndarray,
                  original_sizes: np.ndarray, canvas: int) -> tuple[np.ndarray, np.ndarray]:
  """rows (B, canvas, grid), cols (B, canvas, grid): the grid to original pixels."""
  return transforms.postprocess_matrices_batch("sam", grid, image_size, input_sizes,
                                               original_sizes, canvas)


def boxes_from_map(score_map: np.ndarray, threshold: float,
                   spec: ProposalSpec) -> np.ndarray:
  """(H, W) map of one image -> (K, 4) float32 boxes, K <= max_boxes (module docstring)."""
  above = score_map > threshold
  labels, count = ndimage.label(above, structure=_EIGHT_CONNECTED)
  if not count:
    return np.zeros((0, 4), np.float32)
  index = np.arange(1, count + 1)
  areas = ndimage.sum_labels(above, labels, index)
  peaks = ndimage.maximum(score_map, labels, index)
  keep = np.flatnonzero(areas >= spec.min_area * score_map.size)
  keep = keep[np.argsort(-peaks[keep], kind="stable")][:spec.max_boxes]
  slices = ndimage.find_objects(labels)
  return np.array([[slices[k][1].start, slices[k][0].start, slices[k][1].stop - 1,
                    slices[k][0].stop - 1] for k in keep], np.float32).reshape(-1, 4)
