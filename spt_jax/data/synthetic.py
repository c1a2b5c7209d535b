"""A generated industrial anomaly set: procedural textures and parts with exact defect masks.

The embedded default data set: `ensure_synthetic_dataset(directory)` writes it in the
MVTec AD layout (so the mvtec_ad builder reads it) and builds it, in seconds, once per
set of options; the same options and seed give byte-identical PNG files.

Categories (`CATEGORIES`; textures fill the frame, parts lie on a background):
  woven          plain-weave fabric: warp and weft threads, over/under shading
  brushed_metal  grey steel with streaks along one direction and a broad sheen
  wood           planks with growth rings and fine grain
  granular       sand-like grains with pores and clumps
  printed        paper printed with a dot lattice and ruled lines
  wire_mesh      a woven wire grid on a dark ground, grayscale (like MVTec's grid)
  washer         a machined steel ring on a dark tray
  plate          a painted, rotated plate with four corner holes
  capsule        a two-tone capsule with a printed band
Defects (`DEFECTS`; each category has a subset, as in MVTec AD): scratch (thin smooth
line, bright on metal, dark elsewhere), crack (jagged dark line with branches), stain
(irregular tinted blob), hole (dark irregular pit, or background seen through a part),
contamination (a cluster of particles or a fibre; often several regions), colour_shift
(irregular region of shifted colour or brightness), missing_piece (a chunk of a part's
edge gone, the background showing). The defect changed (practically) every pixel of its
mask, by at least a third of the way to the defect's appearance, and no other pixel,
apart from the sensor noise that every image, normal or not, gets.

As in MVTec AD, the train split holds normal images only: to fine-tune a promptable
model, train on the test split of some categories and evaluate on the others, e.g.
DataConfig(split="test", categories=CATEGORY_NAMES[:6], augment=True, ...) and
DataConfig(split="test", categories=CATEGORY_NAMES[6:]). Each image has its own
generator seeded from (seed, category, split, defect, number), so choosing fewer
categories or images leaves the others' files unchanged.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
from typing import Callable, Sequence

from absl import logging
import numpy as np
from PIL import Image
from scipy import ndimage

from spt_jax.data import builders
from spt_jax.errors import SptUserError

# Bump when the generator's output changes, so that stale generated sets are not reused.
GENERATOR_VERSION = 1
DEFECTS = ("scratch", "crack", "stain", "hole", "contamination", "colour_shift",
           "missing_piece")


# ----------------------------------------------------------------------------------------
# Noise and drawing helpers. Images are float32 (S, S, 3) in [0, 1]; u = S / 256.


def _grid(size: int):
  """float32 (S, S) row and column coordinates."""
  return np.mgrid[0:size, 0:size].astype(np.float32)


def _smooth_taps(size: int, cell: float, offset: float):
  """Left/right coarse indices and smoothstep weight of each of `size` fine positions."""
  position = (np.arange(size, dtype=np.float32) + offset) / cell
  left = np.floor(position).astype(np.int64)
  t = position - left
  return left, left + 1, (t * t * (3 - 2 * t))[:, None]


def value_noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
  """float32 (S, S) smooth value noise with features about `cell` pixels wide, unit std."""
  cells = int(np.ceil(size / cell)) + 2
  coarse = rng.standard_normal((cells, cells)).astype(np.float32)
  y0, y1, wy = _smooth_taps(size, cell, rng.uniform(0, cell))
  x0, x1, wx = _smooth_taps(size, cell, rng.uniform(0, cell))
  rows = coarse[y0] * (1 - wy) + coarse[y1] * wy
  fine = rows[:, x0] * (1 - wx.T) + rows[:, x1] * wx.T
  return (fine - fine.mean()) / (fine.std() + 1e-6)


def streaks(rng: np.random.Generator, size: int, length: float) -> np.ndarray:
  """float32 (S, S) noise stretched along x (streaks about `length` pixels long)."""
  columns = int(np.ceil(size / length)) + 2
  coarse = rng.standard_normal((size, columns)).astype(np.float32)
  x0, x1, wx = _smooth_taps(size, length, rng.uniform(0, length))
  fine = coarse[:, x0] * (1 - wx.T) + coarse[:, x1] * wx.T
  fine = ndimage.gaussian_filter1d(fine, 0.6, axis=0)
  return (fine - fine.mean()) / (fine.std() + 1e-6)


def _colour(rng: np.random.Generator, base: Sequence[float], jitter: float = 0.03):
  """A (3,) colour near `base`."""
  return np.clip(np.asarray(base, np.float32) + rng.normal(0, jitter, 3), 0, 1).astype(
      np.float32)


def lighting(rng: np.random.Generator, size: int, strength: float = 0.08) -> np.ndarray:
  """float32 (S, S, 1) gentle linear light gradient around 1."""
  y, x = _grid(size) / size - 0.5
  angle = rng.uniform(0, 2 * np.pi)
  return (1 + strength * (np.cos(angle) * x + np.sin(angle) * y))[:, :, None]


def _disk(radius: float) -> np.ndarray:
  r = int(np.ceil(radius))
  y, x = np.mgrid[-r:r + 1, -r:r + 1]
  return x * x + y * y <= radius * radius + 0.25


def _walk(rng: np.random.Generator, start, length: float, turn: float,
          angle: float | None = None) -> np.ndarray:
  """float32 (N, 2) yx points of a random walk with half-pixel steps."""
  steps = max(int(length * 2), 2)
  angle = rng.uniform(0, 2 * np.pi) if angle is None else angle
  angles = angle + np.cumsum(rng.normal(0, turn, steps))
  moves = 0.5 * np.stack([np.sin(angles), np.cos(angles)], axis=1)
  return (np.asarray(start, np.float32) + np.cumsum(moves, axis=0)).astype(np.float32)


def _stamp(points: np.ndarray, radius: float, size: int) -> np.ndarray:
  """bool (S, S): pixels within `radius` of the points (a one-pixel line for radius 0)."""
  mask = np.zeros((size, size), bool)
  yx = np.round(points).astype(np.int64)
  inside = (yx >= 0).all(axis=1) & (yx < size).all(axis=1)
  mask[yx[inside, 0], yx[inside, 1]] = True
  if radius > 0:
    mask = ndimage.binary_dilation(mask, structure=_disk(radius))
  return mask


def _blob(rng: np.random.Generator, center, radius: float, size: int,
          roughness: float = 0.35) -> np.ndarray:
  """bool (S, S): an irregular blob of about `radius` around center (y, x)."""
  y, x = _grid(size)
  distance = np.hypot(y - center[0], x - center[1]) / radius
  wobble = value_noise(rng, size, max(radius * 0.6, 2.0))
  return distance + roughness * wobble < 1


def _alpha(mask: np.ndarray, soft: float, floor: float = 0.4) -> np.ndarray:
  """float32 (S, S, 1): opacity rising from `floor` at the mask's edge to 1 inside."""
  alpha = np.zeros(mask.shape + (1,), np.float32)
  if mask.any():
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))
    depth = ndimage.distance_transform_edt(np.pad(mask[box], 1))[1:-1, 1:-1]
    alpha[box] = np.where(mask[box], np.clip(depth / max(soft, 1e-6), floor, 1.0), 0)[..., None]
  return alpha


def _pick(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """(2,) yx of a random True pixel."""
  ys, xs = np.nonzero(mask)
  i = rng.integers(len(ys))
  return np.array([ys[i], xs[i]], np.float32)


# ----------------------------------------------------------------------------------------
# Categories: each renders (image, part mask, background) for a generator and a size.


@dataclasses.dataclass(frozen=True)
class Scene:
  """A defect-free image; `part` is where defects may go (the frame for textures)."""
  image: np.ndarray  # float32 (S, S, 3)
  part: np.ndarray  # bool (S, S)
  background: np.ndarray | None  # float32 (S, S, 3) seen through holes; None: textures


def _texture(image: np.ndarray) -> Scene:
  return Scene(np.clip(image, 0, 1), np.ones(image.shape[:2], bool), None)


def _woven(rng, size):
  u = size / 256
  y, x = _grid(size)
  period = 11 * u * rng.uniform(0.9, 1.1)
  ty, tx = (y + rng.uniform(0, 50)) / period, (x + rng.uniform(0, 50)) / period
  row, col = np.floor(ty).astype(np.int64), np.floor(tx).astype(np.int64)
  fy, fx = ty - row, tx - col
  warp_on_top = (row + col) % 2 == 0
  shade_warp = np.sqrt(np.sin(np.pi * fx)) * (0.85 + 0.15 * np.sin(np.pi * fy))
  shade_weft = np.sqrt(np.sin(np.pi * fy)) * (0.85 + 0.15 * np.sin(np.pi * fx))
  thread_var = rng.normal(1, 0.06, 64).astype(np.float32)
  warp = _colour(rng, (0.62, 0.48, 0.30)) * (shade_warp * thread_var[col % 64])[:, :, None]
  weft = _colour(rng, (0.55, 0.44, 0.33)) * (shade_weft * thread_var[row % 64])[:, :, None]
  image = np.where(warp_on_top[:, :, None], warp, weft)
  image = 0.12 + 0.88 * image + 0.015 * value_noise(rng, size, 2 * u)[:, :, None]
  return _texture(image * lighting(rng, size))


def _brushed_metal(rng, size):
  u = size / 256
  y, _ = _grid(size)
  level = (0.58 + 0.05 * streaks(rng, size, 40 * u) + 0.02 * streaks(rng, size, 6 * u)
           + 0.07 * np.cos(2 * np.pi * (y / size * rng.uniform(0.5, 1) + rng.uniform())))
  image = level[:, :, None] * _colour(rng, (0.98, 1.0, 1.04), 0.01)
  return _texture(image * lighting(rng, size, 0.12))


def _wood(rng, size):
  u = size / 256
  y, x = _grid(size)
  bend = 0.25 * (x - rng.uniform(0, size)) ** 2 / size
  rings = (y + bend + 10 * u * value_noise(rng, size, 40 * u)) / (16 * u * rng.uniform(0.85, 1.15))
  late_wood = (rings - np.floor(rings)) ** 3
  grain = 0.04 * streaks(rng, size, 25 * u)
  t = np.clip(0.75 * late_wood + 0.15 * value_noise(rng, size, 60 * u) * 0.5 + grain, 0, 1)
  light, dark = _colour(rng, (0.80, 0.60, 0.40)), _colour(rng, (0.48, 0.29, 0.15))
  image = light * (1 - t[:, :, None]) + dark * t[:, :, None]
  return _texture(image * lighting(rng, size))


def _granular(rng, size):
  u = size / 256
  grains = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), u)
  grains /= grains.std()
  pores = ndimage.binary_dilation(rng.random((size, size)) < 0.002 / u ** 2,
                                  structure=_disk(1.2 * u))
  level = (0.62 + 0.09 * grains + 0.05 * value_noise(rng, size, 20 * u)
           - 0.25 * ndimage.gaussian_filter(pores.astype(np.float32), 0.7))
  image = level[:, :, None] * _colour(rng, (1.15, 1.05, 0.85))
  return _texture(image * lighting(rng, size))


def _printed(rng, size):
  u = size / 256
  y, x = _grid(size)
  spacing = 22 * u
  oy, ox = rng.uniform(0, spacing, 2)
  row = np.floor((y + oy) / spacing)
  cy = (row + 0.5) * spacing - oy
  shift = (row % 2) * spacing / 2
  cx = (np.floor((x + ox + shift) / spacing) + 0.5) * spacing - ox - shift
  dots = np.hypot(y - cy, x - cx) < 5.5 * u
  lines = np.abs(((y + oy) % (2 * spacing)) - spacing) < 0.9 * u
  paper = _colour(rng, (0.95, 0.94, 0.90), 0.01) * (
      1 + 0.015 * value_noise(rng, size, 3 * u))[:, :, None]
  ink_dots, ink_lines = _colour(rng, (0.15, 0.30, 0.72)), _colour(rng, (0.80, 0.18, 0.20))
  image = np.where(dots[:, :, None], ink_dots, paper)
  image = np.where(lines[:, :, None], ink_lines, image)
  image = ndimage.gaussian_filter(image, (0.6 * u, 0.6 * u, 0))
  return _texture(image * lighting(rng, size, 0.05))


def _wire_mesh(rng, size):
  u = size / 256
  y, x = _grid(size)
  period = 16 * u * rng.uniform(0.9, 1.1)
  fy, fx = ((y + rng.uniform(0, 40)) / period) % 1, ((x + rng.uniform(0, 40)) / period) % 1
  width = 0.11
  wire_x = np.clip(1 - np.abs(fx - 0.5) / width, 0, 1)  # Vertical wires.
  wire_y = np.clip(1 - np.abs(fy - 0.5) / width, 0, 1)  # Horizontal wires.
  cells = np.floor((y + x) / period).astype(np.int64) % 2 == 0
  top = np.where(cells, wire_x, wire_y)
  level = 0.14 + 0.6 * np.maximum(np.sqrt(top), 0.8 * np.sqrt(np.maximum(wire_x, wire_y)))
  level = level + 0.02 * value_noise(rng, size, 8 * u)
  return _texture(np.repeat(level[:, :, None], 3, axis=2) * lighting(rng, size, 0.15))


def _background(rng, size, base):
  u = size / 256
  level = 1 + 0.04 * value_noise(rng, size, 30 * u)
  return _colour(rng, base, 0.01) * level[:, :, None] * lighting(rng, size, 0.1)


def _washer(rng, size):
  u = size / 256
  y, x = _grid(size)
  cy, cx = size / 2 + rng.uniform(-0.03, 0.03, 2) * size
  r = np.hypot(y - cy, x - cx)
  outer, inner = 0.38 * size * rng.uniform(0.95, 1.0), 0.16 * size * rng.uniform(0.95, 1.05)
  part = (r < outer) & (r > inner)
  light = rng.uniform(0, 2 * np.pi)
  facing = np.cos(np.arctan2(y - cy, x - cx) - light)
  level = (0.55 + 0.18 * facing * (r - inner) / (outer - inner)
           + 0.03 * np.sin(2 * np.pi * r / (3 * u)) + 0.02 * streaks(rng, size, 10 * u))
  background = _background(rng, size, (0.12, 0.13, 0.16))
  metal = level[:, :, None] * _colour(rng, (1.0, 1.0, 1.03), 0.01)
  return Scene(np.clip(np.where(part[:, :, None], metal, background), 0, 1), part, background)


def _plate(rng, size):
  u = size / 256
  y, x = _grid(size)
  cy, cx = size / 2 + rng.uniform(-0.03, 0.03, 2) * size
  angle = rng.uniform(-0.3, 0.3)
  v = np.cos(angle) * (x - cx) + np.sin(angle) * (y - cy)
  w = -np.sin(angle) * (x - cx) + np.cos(angle) * (y - cy)
  half_v, half_w, corner = 0.38 * size, 0.25 * size, 0.05 * size
  outside = np.hypot(np.maximum(np.abs(v) - half_v + corner, 0),
                     np.maximum(np.abs(w) - half_w + corner, 0)) > corner
  holes = np.hypot(np.abs(v) - half_v + 0.1 * size, np.abs(w) - half_w + 0.1 * size) < 0.045 * size
  part = ~outside & ~holes
  paint = _colour(rng, (0.20, 0.36, 0.62)) * (
      1 + 0.08 * v / half_v + 0.02 * value_noise(rng, size, 12 * u))[:, :, None]
  background = _background(rng, size, (0.80, 0.80, 0.78))
  return Scene(np.clip(np.where(part[:, :, None], paint, background), 0, 1), part, background)


def _capsule(rng, size):
  y, x = _grid(size)
  cy, cx = size / 2 + rng.uniform(-0.04, 0.04, 2) * size
  angle = rng.uniform(0, np.pi)
  v = np.cos(angle) * (x - cx) + np.sin(angle) * (y - cy)
  w = -np.sin(angle) * (x - cx) + np.cos(angle) * (y - cy)
  length, radius = 0.26 * size, 0.15 * size
  distance = np.hypot(np.maximum(np.abs(v) - length, 0), w) / radius
  part = distance < 1
  dome = np.sqrt(np.clip(1 - distance ** 2, 0, 1))
  cap, body = _colour(rng, (0.78, 0.16, 0.14)), _colour(rng, (0.93, 0.91, 0.86), 0.01)
  shell = np.where((v < 0)[:, :, None], cap, body)
  band = (np.abs(v - 0.45 * length) < 0.025 * size) & part
  shell = np.where(band[:, :, None], shell * 0.55, shell)
  shell = shell * (0.55 + 0.45 * dome)[:, :, None]
  background = _background(rng, size, (0.22, 0.34, 0.28))
  return Scene(np.clip(np.where(part[:, :, None], shell, background), 0, 1), part, background)


@dataclasses.dataclass(frozen=True)
class Category:
  render: Callable[[np.random.Generator, int], Scene]
  defects: tuple[str, ...]
  grayscale: bool = False
  bright_scratches: bool = False


CATEGORIES: dict[str, Category] = {
    "woven": Category(_woven, ("hole", "stain", "contamination", "colour_shift")),
    "brushed_metal": Category(_brushed_metal, ("scratch", "stain", "hole", "contamination"),
                              bright_scratches=True),
    "wood": Category(_wood, ("scratch", "crack", "hole", "stain", "colour_shift")),
    "granular": Category(_granular, ("crack", "hole", "contamination", "colour_shift")),
    "printed": Category(_printed, ("scratch", "stain", "colour_shift", "contamination")),
    "wire_mesh": Category(_wire_mesh, ("hole", "contamination", "scratch"), grayscale=True,
                          bright_scratches=True),
    "washer": Category(_washer, ("scratch", "crack", "missing_piece", "stain",
                                 "contamination"), bright_scratches=True),
    "plate": Category(_plate, ("scratch", "hole", "missing_piece", "colour_shift")),
    "capsule": Category(_capsule, ("crack", "stain", "contamination", "colour_shift",
                                   "missing_piece")),
}
CATEGORY_NAMES = tuple(CATEGORIES)


# ----------------------------------------------------------------------------------------
# Defects: each returns (image, mask) for a scene, or a mask too small (the caller retries).


def _scratch(scene, category, rng):
  size = scene.image.shape[0]
  u = size / 256
  points = _walk(rng, _pick(scene.part, rng), rng.uniform(0.15, 0.45) * size, 0.02)
  mask = _stamp(points, rng.choice([0.0, 0.8, 1.2]) * u, size) & scene.part
  tone = (_colour(rng, (0.95, 0.95, 0.95), 0.02) if category.bright_scratches
          else scene.image * 0.35)
  return _blend(scene.image, tone, mask, rng.uniform(0.75, 0.95)), mask


def _crack(scene, category, rng):
  del category
  size = scene.image.shape[0]
  u = size / 256
  trunk = _walk(rng, _pick(scene.part, rng), rng.uniform(0.12, 0.3) * size, 0.35)
  paths = [trunk]
  for _ in range(rng.integers(1, 3)):
    paths.append(_walk(rng, trunk[rng.integers(len(trunk))], rng.uniform(0.03, 0.1) * size,
                       0.4))
  mask = _stamp(np.concatenate(paths), 0.7 * u if u > 1 else 0.0, size) & scene.part
  return _blend(scene.image, scene.image * 0.18, mask, 0.9), mask


def _stain(scene, category, rng):
  del category
  size = scene.image.shape[0]
  mask = _blob(rng, _pick(scene.part, rng), rng.uniform(0.04, 0.1) * size, size) & scene.part
  tint = scene.image * _colour(rng, (0.62, 0.50, 0.36), 0.06)
  return _blend(scene.image, tint, mask, 0.85, soft=3 * size / 256), mask


def _hole(scene, category, rng):
  del category
  size = scene.image.shape[0]
  mask = _blob(rng, _pick(scene.part, rng), rng.uniform(0.025, 0.055) * size, size, 0.2)
  mask &= scene.part
  if scene.background is not None:
    inside = scene.background * 0.8
  else:
    depth = ndimage.distance_transform_edt(mask)
    inside = np.repeat((0.05 + 0.1 * np.exp(-depth / 3))[:, :, None], 3, axis=2)
  return _blend(scene.image, inside, mask, 1.0), mask


def _contamination(scene, category, rng):
  del category
  size = scene.image.shape[0]
  u = size / 256
  centre = _pick(scene.part, rng)
  if rng.random() < 0.3:  # A fibre.
    mask = _stamp(_walk(rng, centre, rng.uniform(0.08, 0.2) * size, 0.15), 0.6 * u, size)
    tone = _colour(rng, (0.1, 0.08, 0.06), 0.05)
  else:  # A cluster of particles.
    mask = np.zeros((size, size), bool)
    for _ in range(rng.integers(1, 5)):
      spot = centre + rng.normal(0, 0.05 * size, 2)
      mask |= _blob(rng, spot, rng.uniform(1.5, 5) * u, size, 0.3)
    tone = _colour(rng, rng.choice([(0.15, 0.1, 0.05), (0.05, 0.05, 0.05),
                                    (0.6, 0.55, 0.2)]), 0.05)
  mask &= scene.part
  return _blend(scene.image, tone, mask, 0.95), mask


def _colour_shift(scene, category, rng):
  size = scene.image.shape[0]
  mask = _blob(rng, _pick(scene.part, rng), rng.uniform(0.07, 0.14) * size, size, 0.5)
  mask &= scene.part
  if category.grayscale:
    factor = np.full(3, rng.choice([0.6, 1.4]), np.float32)
  else:
    factor = np.asarray(rng.choice([(1.3, 1.05, 0.6), (0.7, 0.85, 1.3), (0.62, 0.62, 0.66)]),
                        np.float32)
  shifted = np.clip(scene.image * factor, 0, 1)
  return _blend(scene.image, shifted, mask, 1.0, soft=4 * size / 256, floor=0.6), mask


def _missing_piece(scene, category, rng):
  del category
  size = scene.image.shape[0]
  edge = scene.part & ~ndimage.binary_erosion(scene.part)
  mask = _blob(rng, _pick(edge, rng), rng.uniform(0.06, 0.11) * size, size, 0.3)
  mask &= scene.part
  return _blend(scene.image, scene.background, mask, 1.0), mask


def _blend(image, tone, mask, strength, soft=1.0, floor=0.4):
  """image moved towards tone on the mask only, by strength times _alpha(mask)."""
  alpha = strength * _alpha(mask, soft, floor)
  return image * (1 - alpha) + tone * alpha


_DEFECT_FUNCTIONS = {
    "scratch": _scratch, "crack": _crack, "stain": _stain, "hole": _hole,
    "contamination": _contamination, "colour_shift": _colour_shift,
    "missing_piece": _missing_piece,
}


def render(category: str, defect: str | None, size: int, rng: np.random.Generator):
  """One image: uint8 (S, S, 3) (or (S, S) for grayscale categories), bool mask (S, S)."""
  spec = CATEGORIES[category]
  scene = spec.render(rng, size)
  image, mask = scene.image, np.zeros((size, size), bool)
  if defect is not None:
    minimum = max(6, int(6 * (size / 256) ** 2))
    for _ in range(20):
      image, mask = _DEFECT_FUNCTIONS[defect](scene, spec, rng)
      if mask.sum() >= minimum:
        break
    else:
      raise RuntimeError(f"synthetic {category}/{defect}: no defect of {minimum} pixels")
  image = image + np.float32(0.008) * rng.standard_normal(image.shape, np.float32)
  image = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
  if spec.grayscale:
    image = np.round(image.mean(axis=2)).astype(np.uint8)
  return image, mask


def _save_png(array: np.ndarray, path: pathlib.Path):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, format="PNG", compress_level=1)


def category_images(category: str, *, image_size: int, num_train: int, num_test_good: int,
                    num_test_per_defect: int, seed: int):
  """Yields (split, folder, n, image, mask) for every image of one category.

  In `write_tree`'s order and with its per-image seeds: split 'train' or 'test', folder
  'good' or the defect type, n the index within the folder; image uint8 (S, S, 3) or
  (S, S) for grayscale categories; mask bool (S, S), None for normal images.
  """
  c = CATEGORY_NAMES.index(category)
  jobs = [("train", "good", None, 0, num_train), ("test", "good", None, 1, num_test_good)]
  jobs += [("test", d, d, 2 + DEFECTS.index(d), num_test_per_defect)
           for d in CATEGORIES[category].defects]
  for split, folder, defect, code, count in jobs:
    for n in range(count):
      image, mask = render(category, defect, image_size,
                           np.random.default_rng([seed, c, code, n]))
      yield split, folder, n, image, None if defect is None else mask


def write_tree(root: str | os.PathLike, categories: Sequence[str] = CATEGORY_NAMES, *,
               image_size: int = 256, num_train: int = 4, num_test_good: int = 2,
               num_test_per_defect: int = 2, seed: int = 0) -> None:
  """Writes the set in the MVTec AD layout under root.

  <root>/<category>/train/good/NNN.png, test/good/NNN.png, test/<defect>/NNN.png and
  ground_truth/<defect>/NNN_mask.png (0/255). Grayscale categories are single-channel.
  """
  root = pathlib.Path(root)
  for category in categories:
    for split, folder, n, image, mask in category_images(
        category, image_size=image_size, num_train=num_train, num_test_good=num_test_good,
        num_test_per_defect=num_test_per_defect, seed=seed):
      _save_png(image, root / category / split / folder / f"{n:03d}.png")
      if mask is not None:
        _save_png(mask.astype(np.uint8) * 255,
                  root / category / "ground_truth" / folder / f"{n:03d}_mask.png")


@dataclasses.dataclass(frozen=True)
class SyntheticDataset:
  """A generated and built synthetic set: its MVTec-layout tree and its TFDS files."""
  manual_dir: str
  data_dir: str
  categories: tuple[str, ...]

  def data_config_fields(self) -> dict[str, str]:
    """The DataConfig fields that read this set through the mvtec_ad builder."""
    return {"dataset": builders.MvtecAd.name, "manual_dir": self.manual_dir,
            "data_dir": self.data_dir}


def ensure_synthetic_dataset(directory: str | os.PathLike,
                             categories: Sequence[str] | None = None, *,
                             image_size: int = 256, num_train: int = 4,
                             num_test_good: int = 2, num_test_per_defect: int = 2,
                             seed: int = 0) -> SyntheticDataset:
  """Generates and builds the synthetic set under directory, or finds it there.

  Args:
    directory: a working folder; each set of options gets its own sub-folder
      <directory>/<fingerprint>/{raw,tfds}.
    categories: names from CATEGORY_NAMES (default: all).
    image_size: side of the square images.
    num_train: normal training images per category.
    num_test_good: normal test images per category.
    num_test_per_defect: test images per defect type of each category.
    seed: the same seed gives byte-identical files.
  """
  categories = tuple(categories or CATEGORY_NAMES)
  unknown = sorted(set(categories) - set(CATEGORY_NAMES))
  if unknown:
    raise SptUserError(f"synthetic categories {unknown}: expected some of {CATEGORY_NAMES}")
  if image_size < 32:
    raise SptUserError(f"synthetic image_size={image_size}: expected >= 32")
  options = dict(categories=categories, image_size=image_size, num_train=num_train,
                 num_test_good=num_test_good, num_test_per_defect=num_test_per_defect,
                 seed=seed, version=GENERATOR_VERSION)
  fingerprint = hashlib.sha1(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
  home = pathlib.Path(directory).expanduser().resolve() / fingerprint
  raw = home / "raw"
  if not raw.is_dir():
    logging.info("synthetic: generating %s into %s", options, raw)
    staging = home / f"raw.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    write_tree(staging, categories, image_size=image_size, num_train=num_train,
               num_test_good=num_test_good, num_test_per_defect=num_test_per_defect,
               seed=seed)
    try:
      staging.rename(raw)
    except OSError:  # Another process finished first: its tree is the same.
      shutil.rmtree(staging, ignore_errors=True)
  builders.build(builders.MvtecAd.name, raw, home / "tfds")
  return SyntheticDataset(str(raw), str(home / "tfds"), categories)
