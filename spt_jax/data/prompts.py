"""Prompts from a ground-truth mask, in model-input pixel coordinates.

The paper's protocol is one box around all defect pixels (`mask_box`: min/max x and y
of the mask's pixels, inclusive, like the authors' masks_to_boxes), or k random positive
points on the mask. Every other mode is a combination of `PromptConfig` fields:

  per_region=False  one prompt from all defect pixels (P = max_prompts = 1)
  per_region=True   one prompt per connected defect region (8- or 4-connected), largest
                    regions first, at most `max_prompts`; unused slots are padding
  box               the region's box, optionally jittered (`box_jitter`: noise std as a
                    fraction of the box side, at most `box_jitter_max` pixels, as SAM's
                    training), clipped to the valid image
  num_points        positive points drawn from the region's pixels (without replacement
                    when the region is large enough)
  num_negative_points  negative points drawn from non-defect pixels of the valid image
  mask_prompt       a coarse mask (S/4 x S/4, SAM's mask-input size) degraded from the
                    region: max-pooled, dilated or eroded by up to `mask_prompt_morph`
                    pixels, block-coarsened by `mask_prompt_coarsen`, as +/- logit values

`PRESETS` names the usual modes; `prompt_config(mode, **overrides)` builds a config.

Output of `make_prompts` (P = max_prompts, K = num_points + num_negative_points,
M = S // 4):
  boxes float32 (P, 4) xyxy; has_box bool (P,);
  points float32 (P, K, 2) xy; point_labels int32 (P, K): 1 positive, 0 negative,
  -1 padding; mask_prompt float32 (P, M, M) (only when mask_prompt is on);
  has_mask_prompt bool (P,); prompt_valid bool (P,) (False for padding slots);
  prompt_regions uint8 (S, S) (only when per_region): p + 1 on the pixels of the region
  prompted by slot p, 0 elsewhere (the target of slot p is prompt_regions == p + 1).
All randomness comes from the generator passed in, so prompts are deterministic by seed.
"""

import dataclasses
from typing import Any, Mapping

import numpy as np
from scipy import ndimage

from spt_jax.errors import SptUserError
from spt_jax.fields import known_fields


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """Which prompts to make (module docstring)."""
  per_region: bool = False
  max_prompts: int = 1
  box: bool = True
  box_jitter: float = 0.0
  box_jitter_max: float = 20.0
  num_points: int = 0
  num_negative_points: int = 0
  mask_prompt: bool = False
  mask_prompt_logit: float = 8.0
  mask_prompt_morph: int = 2
  mask_prompt_coarsen: int = 4
  connectivity: int = 8

  @property
  def points_per_prompt(self) -> int:
    """K: positive plus negative points per prompt."""
    return self.num_points + self.num_negative_points

  def check(self, image_size: int) -> "PromptConfig":
    """Returns self if consistent with the model input size, else raises SptUserError."""
    problems = []
    if not self.per_region and self.max_prompts != 1:
      problems.append("max_prompts must be 1 unless per_region is on")
    if not 1 <= self.max_prompts <= 255:
      problems.append("max_prompts must be in 1..255")
    if min(self.num_points, self.num_negative_points, self.mask_prompt_morph) < 0:
      problems.append("num_points, num_negative_points and mask_prompt_morph must be >= 0")
    if not (self.box or self.points_per_prompt or self.mask_prompt):
      problems.append("no prompt at all: turn on box, points or mask_prompt")
    if self.box_jitter < 0 or self.box_jitter_max < 0:
      problems.append("box_jitter and box_jitter_max must be >= 0")
    if self.connectivity not in (4, 8):
      problems.append("connectivity must be 4 or 8")
    if self.mask_prompt and (image_size % 4 or (image_size // 4) % self.mask_prompt_coarsen):
      problems.append(f"mask_prompt needs image_size / 4 (here {image_size} / 4) to be a "
                      f"multiple of mask_prompt_coarsen ({self.mask_prompt_coarsen})")
    if problems:
      raise SptUserError(f"prompt config {self}: " + "; ".join(problems))
    return self


PRESETS: dict[str, dict[str, Any]] = {
    "box": {},  # The paper's protocol.
    "box_per_region": dict(per_region=True, max_prompts=4),
    "box_jitter": dict(box_jitter=0.1),
    "points": dict(box=False, num_points=1),  # The paper's point protocol with k = 1.
    "points_pos_neg": dict(box=False, num_points=1, num_negative_points=1),
    "box_points": dict(num_points=1),
    "mask": dict(box=False, mask_prompt=True),
}


def prompt_config(mode: str = "box", **overrides) -> PromptConfig:
  """The PRESETS[mode] config with `overrides` (PromptConfig field names) applied."""
  if mode not in PRESETS:
    raise SptUserError(f"prompt mode {mode!r}: expected one of {sorted(PRESETS)}")
  return PromptConfig(**{**PRESETS[mode], **known_fields(PromptConfig, overrides,
                                                          "prompt config")})


def prompt_config_from(mapping: Mapping[str, Any] | PromptConfig) -> PromptConfig:
  """A PromptConfig from a mapping with an optional "mode" (default "box") and fields."""
  if isinstance(mapping, PromptConfig):
    return mapping
  fields = dict(mapping)
  return prompt_config(fields.pop("mode", "box"), **fields)


def mask_box(mask: np.ndarray) -> np.ndarray:
  """float32 (4,) xyxy: min/max x and y of the True pixels of mask (H, W), inclusive."""
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  return np.array([cols[0], rows[0], cols[-1], rows[-1]], np.float32)


def defect_regions(mask: np.ndarray, max_regions: int, connectivity: int = 8):
  """Connected regions of mask (H, W), largest first (ties: raster order of labels).

  Returns (labels int32 (H, W), ids): ids are the label values of at most max_regions
  regions, in prompt order.
  """
  structure = np.ones((3, 3), bool) if connectivity == 8 else None
  labels, count = ndimage.label(mask, structure=structure)
  areas = np.bincount(labels.ravel(), minlength=count + 1)[1:]
  order = np.argsort(-areas, kind="stable")[:max_regions]
  return labels, [int(i) + 1 for i in order]


def jitter_box(box: np.ndarray, input_size: np.ndarray, scale: float, max_px: float,
               rng: np.random.Generator) -> np.ndarray:
  """Box (4,) plus Gaussian noise of std min(scale * side, max_px), clipped to the image.

  input_size: (h, w) of the valid image; the result lies in [0, w-1] x [0, h-1].
  """
  sides = np.array([box[2] - box[0] + 1, box[3] - box[1] + 1], np.float32)
  std = np.minimum(scale * np.tile(sides, 2), max_px)
  noisy = box + rng.normal(size=4).astype(np.float32) * std
  h, w = input_size
  xs = np.clip(noisy[0::2], 0, w - 1)
  ys = np.clip(noisy[1::2], 0, h - 1)
  return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float32)


def sample_points(pixels: np.ndarray, count: int, width: int,
                  rng: np.random.Generator) -> np.ndarray:
  """float32 (count, 2) xy of `count` flat indices drawn from `pixels` (non-empty).

  Draws without replacement when there are enough pixels, with replacement otherwise.
  """
  chosen = rng.choice(pixels, size=count, replace=len(pixels) < count)
  return np.stack([chosen % width, chosen // width], axis=1).astype(np.float32)


def coarse_mask_prompt(region: np.ndarray, config: PromptConfig,
                       rng: np.random.Generator) -> np.ndarray:
  """float32 (S/4, S/4) +/- logit mask prompt degraded from region bool (S, S)."""
  size = region.shape[0] // 4
  low = region.reshape(size, 4, size, 4).any(axis=(1, 3))
  radius = int(rng.integers(-config.mask_prompt_morph, config.mask_prompt_morph + 1))
  if radius > 0:
    low = ndimage.binary_dilation(low, iterations=radius)
  elif radius < 0:
    eroded = ndimage.binary_erosion(low, iterations=-radius)
    low = eroded if eroded.any() else low
  block = config.mask_prompt_coarsen
  if block > 1:
    fraction = low.reshape(size // block, block, size // block, block).mean(axis=(1, 3))
    coarse = fraction > rng.uniform(0.25, 0.75)
    if coarse.any():
      low = np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)
  logit = np.float32(config.mask_prompt_logit)
  return np.where(low, logit, -logit)


def make_prompts(mask: np.ndarray, input_size: np.ndarray, config: PromptConfig,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
  """Prompts for one example (module docstring for the output).

  Args:
    mask: float32 or bool (S, S), the resized and padded ground truth.
    input_size: int (2,) = (h, w) of the valid (unpadded) image.
    config: which prompts.
    rng: the example's generator.
  """
  mask = mask > 0.5
  size = mask.shape[0]
  p, k = config.max_prompts, config.points_per_prompt
  out = {
      "boxes": np.zeros((p, 4), np.float32),
      "has_box": np.zeros((p,), bool),
      "points": np.zeros((p, k, 2), np.float32),
      "point_labels": np.full((p, k), -1, np.int32),
      "has_mask_prompt": np.zeros((p,), bool),
      "prompt_valid": np.zeros((p,), bool),
  }
  if config.mask_prompt:
    out["mask_prompt"] = np.zeros((p, size // 4, size // 4), np.float32)
  if config.per_region:
    labels, ids = defect_regions(mask, p, config.connectivity)
    regions = [labels == i for i in ids]
    out["prompt_regions"] = np.zeros((size, size), np.uint8)
    for slot, region in enumerate(regions):
      out["prompt_regions"][region] = slot + 1
  else:
    regions = [mask] if mask.any() else []

  background = None
  if config.num_negative_points:
    valid = np.zeros_like(mask)
    valid[:input_size[0], :input_size[1]] = True
    background = np.flatnonzero(valid & ~mask)
  for slot, region in enumerate(regions):
    out["prompt_valid"][slot] = True
    if config.box:
      box = mask_box(region)
      if config.box_jitter > 0:
        box = jitter_box(box, input_size, config.box_jitter, config.box_jitter_max, rng)
      out["boxes"][slot] = box
      out["has_box"][slot] = True
    if config.num_points:
      out["points"][slot, :config.num_points] = sample_points(
          np.flatnonzero(region), config.num_points, size, rng)
      out["point_labels"][slot, :config.num_points] = 1
    if config.num_negative_points and len(background):
      out["points"][slot, config.num_points:] = sample_points(
          background, config.num_negative_points, size, rng)
      out["point_labels"][slot, config.num_points:] = 0
    if config.mask_prompt:
      out["mask_prompt"][slot] = coarse_mask_prompt(region, config, rng)
      out["has_mask_prompt"][slot] = True
  return out
