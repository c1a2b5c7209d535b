"""Promptable-segmentation data that is not anomalies: objects and shapes on backgrounds.

The pretraining data of the tiny SAM (`spt_jax.pretrain`), generated on the fly at the
model's input size. A scene is a background with `min_objects`..`max_objects` objects
painted one over the other (later objects occlude earlier ones):
  shapes       ellipse, polygon (3-8 vertices), star, rounded rectangle, blob (smooth
               random outline), thin bar, ring; radius 10 px to 40% of the image side,
               any rotation and position (possibly cut by the image border)
  fills        solid, linear gradient, texture (value noise or stripes between two
               colours), outlined (a filled shape with a border of another colour),
               hollow (the outline stroke only)
  backgrounds  value-noise texture, gradient, stripes or checks, brushed streaks; each
               sometimes under clutter (small shapes that are never targets)
then a gentle lighting gradient and sensor noise over the whole image. Shapes are
rasterised with hard edges (PIL polygons), so an object's mask is exactly the set of
pixels where its paint is visible: its own pixels minus those of later objects.

An example has P targets: objects whose visible part has at least `min_area` pixels
(drawn with replacement when fewer are visible), each with its mask, its box (the
mask's bounding box, with probability `box_jitter_prob` jittered as SAM's training
does by `spt_jax.data.prompts.jitter_box`) and K points: K positives on the mask, or
(K > 1, probability `negative_prob`) K - 1 positives and one negative point off it.

Deterministic by seed: example `index` of `split` ('train' or 'held_out') draws
everything from np.random.default_rng([seed, SPLITS.index(split), index]), whatever
the batch size or the other examples.
"""

import dataclasses
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from spt_jax.data import synthetic
from spt_jax.data.prompts import PromptConfig, make_prompts
from spt_jax.errors import SptUserError

SPLITS = ("train", "held_out")
FILLS = ("solid", "gradient", "texture", "outlined", "hollow")
FILL_WEIGHTS = (0.3, 0.2, 0.25, 0.15, 0.1)
BACKGROUNDS = ("noise", "gradient", "pattern", "streaks")


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
  """What the scenes and prompts look like (module docstring)."""
  image_size: int = 256
  min_objects: int = 2
  max_objects: int = 7
  min_area: int = 150  # visible pixels of a target at 256 px (scaled with the area)
  clutter_prob: float = 0.35
  box_jitter: float = 0.1  # noise std as a fraction of the box side, as SAM's training
  box_jitter_max: float = 20.0
  box_jitter_prob: float = 0.5
  negative_prob: float = 0.5

  def check(self) -> "ShapesConfig":
    """Returns self, or raises SptUserError naming the first bad field."""
    if self.image_size < 32:
      raise SptUserError(f"shapes image_size={self.image_size}: expected >= 32")
    if not 1 <= self.min_objects <= self.max_objects:
      raise SptUserError(f"shapes min_objects={self.min_objects}, max_objects="
                         f"{self.max_objects}: expected 1 <= min_objects <= max_objects")
    if self.min_area < 1:
      raise SptUserError(f"shapes min_area={self.min_area}: expected >= 1")
    for name in ("clutter_prob", "box_jitter_prob", "negative_prob"):
      if not 0 <= getattr(self, name) <= 1:
        raise SptUserError(f"shapes {name}={getattr(self, name)}: expected a probability")
    if self.box_jitter < 0 or self.box_jitter_max < 0:
      raise SptUserError("shapes box_jitter and box_jitter_max: expected >= 0")
    return self

  @property
  def unit(self) -> float:
    """Pixels per pixel of a 256 px image (sizes are given at 256 px)."""
    return self.image_size / 256


HELD_OUT = ShapesConfig(box_jitter_prob=0.0, negative_prob=0.0)  # exact prompts


@dataclasses.dataclass(frozen=True)
class Layer:
  """One object: where it is drawn (bool (S, S)) and its paint (float32 (S, S, 3))."""
  shape: np.ndarray
  paint: np.ndarray


@dataclasses.dataclass(frozen=True)
class Scene:
  """A float32 (S, S, 3) background in [0, 1] and the objects painted over it in order."""
  background: np.ndarray
  layers: tuple[Layer, ...]

  def visible(self) -> list[np.ndarray]:
    """bool (S, S) per layer: its pixels not covered by a later layer."""
    covered = np.zeros(self.background.shape[:2], bool)
    masks = []
    for layer in reversed(self.layers):
      masks.append(layer.shape & ~covered)
      covered |= layer.shape
    return masks[::-1]

  def compose(self, skip: tuple[int, ...] = ()) -> np.ndarray:
    """float32 (S, S, 3): the layers (except those in `skip`) over the background."""
    image = self.background
    for i, layer in enumerate(self.layers):
      if i not in skip:
        image = np.where(layer.shape[:, :, None], layer.paint, image)
    return image


# ----------------------------------------------------------------------------------------
# Outlines: (N, 2) xy of a unit-size shape around the origin, and a hole or None.


def _circle(count: int = 64) -> np.ndarray:
  t = np.linspace(0, 2 * np.pi, count, endpoint=False)
  return np.stack([np.cos(t), np.sin(t)], axis=1)


def _ellipse(rng, radius):
  del radius
  return _circle() * [1.0, rng.uniform(0.35, 1.0)], None


def _polygon(rng, radius):
  del radius
  count = int(rng.integers(3, 9))
  angle = (np.arange(count) + rng.uniform(-0.3, 0.3, count)) * 2 * np.pi / count
  r = rng.uniform(0.55, 1.0, count)[:, None]
  return r * np.stack([np.cos(angle), np.sin(angle)], axis=1), None


def _star(rng, radius):
  del radius
  count = int(rng.integers(5, 9))
  angle = np.arange(2 * count) * np.pi / count
  r = np.where(np.arange(2 * count) % 2 == 0, 1.0, rng.uniform(0.35, 0.6))[:, None]
  return r * np.stack([np.cos(angle), np.sin(angle)], axis=1), None


def _rounded_rectangle(rng, radius):
  del radius
  half = np.array([1.0, rng.uniform(0.3, 1.0)])
  corner = rng.uniform(0.05, 0.5) * half[1]
  arc = np.linspace(0, np.pi / 2, 8)
  points = []
  for quadrant, sign in enumerate(([1, 1], [-1, 1], [-1, -1], [1, -1])):
    t = arc + quadrant * np.pi / 2
    centre = np.multiply(sign, half - corner)
    points.append(centre + corner * np.stack([np.cos(t), np.sin(t)], axis=1))
  return np.concatenate(points), None


def _blob(rng, radius):
  del radius
  t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
  r = np.ones_like(t)
  for k in range(2, 6):
    r += rng.uniform(0, 0.5 / k) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
  return (r / r.max())[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1), None


def _bar(rng, radius):
  half_width = rng.uniform(1.5, 4.0) / radius
  return np.array([[1, half_width], [-1, half_width], [-1, -half_width],
                   [1, -half_width]], np.float64), None


def _ring(rng, radius):
  outer = _circle() * [1.0, rng.uniform(0.5, 1.0)]
  inner = max(0.2, min(rng.uniform(0.4, 0.75), 1 - 3 / radius))  # >= 3 px thick
  return outer, outer * inner


OUTLINES: dict[str, Callable] = {
    "ellipse": _ellipse, "polygon": _polygon, "star": _star,
    "rounded_rectangle": _rounded_rectangle, "blob": _blob, "bar": _bar, "ring": _ring,
}
SHAPES = tuple(OUTLINES)
_NO_HOLLOW = ("bar", "ring")
_CLUTTER = tuple(kind for kind in SHAPES if kind != "ring")


def _place(points: np.ndarray, centre, radius: float, angle: float) -> list[tuple]:
  """Unit outline -> PIL polygon coordinates: scaled, rotated, moved to centre (x, y)."""
  c, s = np.cos(angle), np.sin(angle)
  xy = radius * points @ np.array([[c, s], [-s, c]]) + centre
  return [tuple(p) for p in xy]


def _raster(size: int, outline, hole=None, border: int = 0, hollow: bool = False):
  """uint8 (S, S): 1 inside the polygon (minus the hole), 2 on a border of `border` px.

  `hollow` draws the border only.
  """
  canvas = Image.new("L", (size, size), 0)
  draw = ImageDraw.Draw(canvas)
  if hollow:
    draw.polygon(outline, outline=2, width=border)
  else:
    draw.polygon(outline, fill=1, outline=2 if border else None, width=max(border, 1))
  if hole is not None:
    draw.polygon(hole, fill=0)
  return np.asarray(canvas)


# ----------------------------------------------------------------------------------------
# Paint and backgrounds: float32 (S, S, 3) in [0, 1].


def _mix(a, b, t: np.ndarray) -> np.ndarray:
  """a * (1 - t) + b * t per pixel: colours (3,), t (S, S) -> (S, S, 3) float32."""
  t = np.clip(t, 0, 1)[:, :, None].astype(np.float32)
  return (np.asarray(a, np.float32) * (1 - t) + np.asarray(b, np.float32) * t)


def _along(xy, angle: float) -> np.ndarray:
  """(S, S) coordinate of every pixel along direction `angle`."""
  return np.cos(angle) * xy[0] + np.sin(angle) * xy[1]


def _texture(rng, xy, size: int, unit: float) -> np.ndarray:
  """(S, S) texture in about [0, 1]: value noise or stripes."""
  if rng.random() < 0.5:
    return 0.5 + 0.3 * synthetic.value_noise(rng, size, rng.uniform(2, 12) * unit)
  period = rng.uniform(4, 14) * unit
  return 0.5 + 0.5 * np.sin(2 * np.pi * _along(xy, rng.uniform(0, np.pi)) / period)


def _paint(rng, fill: str, xy, size: int, unit: float, centre, radius: float):
  """float32 (S, S, 3) (maybe broadcast) paint of an object with `fill`."""
  a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
  if fill in ("solid", "hollow", "outlined"):
    return np.broadcast_to(a.astype(np.float32), (size, size, 3))
  if fill == "gradient":
    angle = rng.uniform(0, 2 * np.pi)
    offset = _along(xy, angle) - _along(np.reshape(centre, (2, 1, 1)), angle)
    return _mix(a, b, 0.5 + 0.5 * offset / radius)
  return _mix(a, b, _texture(rng, xy, size, unit))


def _background(rng, xy, size: int, unit: float) -> np.ndarray:
  a, b = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
  kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
  if kind == "noise":
    t = (0.5 + 0.3 * synthetic.value_noise(rng, size, rng.uniform(6, 64) * unit)
         + 0.1 * synthetic.value_noise(rng, size, 3 * unit))
  elif kind == "gradient":
    t = _along(xy, rng.uniform(0, 2 * np.pi)) / size + rng.uniform(-0.5, 0.5)
  elif kind == "pattern":
    b = a + rng.uniform(0.1, 0.5) * (b - a)
    period = rng.uniform(6, 32) * unit
    angle = rng.uniform(0, np.pi)
    stripes = np.floor(_along(xy, angle) / period)
    if rng.random() < 0.5:  # checks
      stripes += np.floor(_along(xy, angle + np.pi / 2) / period)
    t = stripes % 2
  else:
    t = 0.5 + 0.25 * synthetic.streaks(rng, size, rng.uniform(10, 60) * unit)
  return _mix(a, b, t)


def _clutter(rng, image: np.ndarray, unit: float) -> np.ndarray:
  """Small shapes drawn into the background (never targets)."""
  size = image.shape[0]
  count = int(rng.integers(15, 50))
  canvas = Image.new("L", (size, size), 0)
  draw = ImageDraw.Draw(canvas)
  for i in range(count):
    kind = _CLUTTER[rng.integers(len(_CLUTTER))]
    radius = rng.uniform(2, 10) * unit
    outline, _ = OUTLINES[kind](rng, radius)
    draw.polygon(_place(outline, rng.uniform(0, size, 2), radius, rng.uniform(0, 2 * np.pi)),
                 fill=i + 1)
  colours = np.concatenate([np.zeros((1, 3)), rng.uniform(0, 1, (count, 3))]).astype(
      np.float32)
  labels = np.asarray(canvas)
  return np.where(labels[:, :, None] > 0, colours[labels], image)


def _object(rng, xy, size: int, unit: float) -> Layer:
  kind = SHAPES[rng.integers(len(SHAPES))]
  radius = float(np.exp(rng.uniform(np.log(10), np.log(0.4 * 256)))) * unit
  centre = rng.uniform(0, size, 2)
  angle = rng.uniform(0, 2 * np.pi)
  fill = FILLS[rng.choice(len(FILLS), p=FILL_WEIGHTS)]
  if fill == "hollow" and kind in _NO_HOLLOW:
    fill = "solid"
  outline, hole = OUTLINES[kind](rng, radius)
  border = max(1, round(rng.integers(2, 6) * unit)) if fill in ("outlined", "hollow") else 0
  labels = _raster(size, _place(outline, centre, radius, angle),
                   None if hole is None else _place(hole, centre, radius, angle),
                   border, hollow=fill == "hollow")
  paint = _paint(rng, fill, xy, size, unit, centre, radius)
  if fill == "outlined":
    paint = np.where((labels == 2)[:, :, None], rng.uniform(0, 1, 3).astype(np.float32),
                     paint)
  return Layer(labels > 0, paint)


def draw_scene(rng: np.random.Generator, config: ShapesConfig) -> Scene:
  """A background and its objects (module docstring), from `rng`."""
  size, unit = config.image_size, config.unit
  xy = np.mgrid[0:size, 0:size][::-1].astype(np.float32)  # (2, S, S) x, y
  background = _background(rng, xy, size, unit)
  if rng.random() < config.clutter_prob:
    background = _clutter(rng, background, unit)
  count = int(rng.integers(config.min_objects, config.max_objects + 1))
  return Scene(background, tuple(_object(rng, xy, size, unit) for _ in range(count)))


def finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """float32 (S, S, 3) -> uint8: lighting gradient and sensor noise over every pixel."""
  size = image.shape[0]
  image = image * synthetic.lighting(rng, size, rng.uniform(0, 0.2))
  image = image + np.float32(rng.uniform(0, 0.03)) * rng.standard_normal(image.shape,
                                                                        np.float32)
  return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
  if split not in SPLITS:
    raise SptUserError(f"shapes split {split!r}: expected one of {SPLITS}")
  return np.random.default_rng([seed, SPLITS.index(split), index])


def make_example(seed: int, split: str, index: int, num_targets: int, num_points: int,
                 config: ShapesConfig = ShapesConfig()) -> dict[str, np.ndarray]:
  """One example, P = num_targets, K = num_points.

  Returns:
    image uint8 (S, S, 3); masks bool (P, S, S); boxes float32 (P, 4) xyxy;
    points float32 (P, K, 2) xy; point_labels int32 (P, K) (1 positive, 0 negative);
    targets int32 (P,): the index of each target's layer in `draw_scene`'s scene.
  """
  rng = example_rng(seed, split, index)
  min_area = max(1, round(config.min_area * config.unit ** 2))
  while True:  # A scene whose objects are all (nearly) hidden is drawn again.
    scene = draw_scene(rng, config)
    visible = scene.visible()
    eligible = [i for i, m in enumerate(visible) if m.sum() >= min_area]
    if eligible:
      break
  targets = rng.choice(eligible, num_targets, replace=len(eligible) < num_targets)
  size = config.image_size
  fields = {"masks": [], "boxes": [], "points": [], "point_labels": []}
  for target in targets:
    negative = int(num_points > 1 and rng.random() < config.negative_prob)
    jitter = config.box_jitter if rng.random() < config.box_jitter_prob else 0.0
    prompt = PromptConfig(box_jitter=jitter, box_jitter_max=config.box_jitter_max,
                          num_points=num_points - negative, num_negative_points=negative)
    made = make_prompts(visible[target], np.array([size, size]), prompt, rng)
    fields["masks"].append(visible[target])
    for name in ("boxes", "points", "point_labels"):
      fields[name].append(made[name][0])
  out = {name: np.stack(values) for name, values in fields.items()}
  out["image"] = finish(scene.compose(), rng)
  out["targets"] = targets.astype(np.int32)
  return out


def make_batch(seed: int, split: str, start: int, batch_size: int, num_targets: int,
               num_points: int, config: ShapesConfig = ShapesConfig()) -> dict[str, np.ndarray]:
  """Examples start .. start + B - 1 of `split`, each field stacked on a leading B axis."""
  examples = [make_example(seed, split, start + i, num_targets, num_points, config)
              for i in range(batch_size)]
  return {name: np.stack([e[name] for e in examples]) for name in examples[0]}
