"""Training augmentation: horizontal flip and large-scale jitter (LSJ), as in the paper.

LSJ follows the authors' `LargeScaleJitter` (scale 0.1 to 2.0): draw a scale s, rescale the
image, aspect kept, so that its longest side is round(s * S), resize bilinearly (torch
rule, no antialias), crop a random S x S window when larger than S, pad at bottom/right.
Differences, both deliberate and documented in the pipeline: the image is padded with 0
(not 128) and `input_size` gives the valid region, so the model can pad after
normalisation as SAM does; and with `crop_to_defect` the crop window is drawn among the
windows that contain a defect pixel (chosen at random), so that small defects are not
cropped away at large scales. Only the cropped window is ever computed.
"""

import numpy as np

from spt_jax import transforms
from spt_jax.data import resize


def random_hflip(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                 probability: float = 0.5):
  """Flips image (H, W, C) and mask (H, W) left-right together with `probability`."""
  if rng.random() < probability:
    return image[:, ::-1], mask[:, ::-1]
  return image, mask


def _crop_offset(margin: int, crop: int, defect_at: int | None,
                 rng: np.random.Generator) -> int:
  """A crop start in [0, margin]; if defect_at is given, one whose window covers it."""
  low, high = 0, margin
  if defect_at is not None:
    low, high = max(low, defect_at - crop + 1), min(high, defect_at)
  return int(rng.integers(low, high + 1))


def large_scale_jitter(image: np.ndarray, mask: np.ndarray, size: int,
                       rng: np.random.Generator, min_scale: float = 0.1,
                       max_scale: float = 2.0, crop_to_defect: bool = True):
  """LSJ of one example (module docstring).

  Args:
    image: uint8 (H, W, 3).
    mask: bool (H, W).
    size: S, the model input size.
    rng: the example's generator.
    min_scale, max_scale: range of the scale s.
    crop_to_defect: draw the crop among windows containing a random defect pixel.
  Returns:
    image uint8 (S, S, 3), mask float32 (S, S) in {0, 1} (bilinear then > 0.5),
    input_size int32 (2,): (h, w) of the valid region.
  """
  height, width = mask.shape
  scale = rng.uniform(min_scale, max_scale)
  longest = np.round(np.float32(scale) * size)
  factor = min(longest / height, longest / width)
  scaled = (max(int(np.round(height * factor)), 1), max(int(np.round(width * factor)), 1))
  crop = (min(size, scaled[0]), min(size, scaled[1]))
  defect_y = defect_x = None
  if crop_to_defect and mask.any():
    ys, xs = np.nonzero(mask)
    pick = rng.integers(len(ys))
    defect_y, defect_x = int(ys[pick] * scaled[0] / height), int(xs[pick] * scaled[1] / width)
  top = _crop_offset(scaled[0] - crop[0], crop[0], defect_y, rng)
  left = _crop_offset(scaled[1] - crop[1], crop[1], defect_x, rng)
  window = (top, left) + crop
  image = resize.resize_bilinear(image, scaled, window).astype(np.uint8)
  mask = resize.resize_bilinear(mask.astype(np.float32), scaled, window) > 0.5
  return (transforms.pad_to_square(image, size),
          transforms.pad_to_square(mask.astype(np.float32), size),
          np.asarray(crop, np.int32))
