"""Runs a serving export (`python -m spt_jax.export`) with no model code: numpy in and out.

    model = ServingModel.load("serving/mvtec")          # for the platform JAX runs on
    [result] = model.predict([image], boxes=[np.array([[x0, y0, x1, y1]])])
    result["masks"][-1]        # (P, H0, W0) bool: the final step's mask of each prompt
    result["scores"], result["iou"], result["low_res_logits"]

Only JAX, numpy and the shared pre- and post-processing (`spt_jax.transforms`: PIL's
resize, Meta's upsampling matrices) are needed; no Flax module is built. Images run
in the exported batch sizes and prompts in the exported prompt buckets (smallest that
holds them, else chunks of the largest; padding repeats the last row). `embed` and
`decode` take the programs' own inputs (padded images, prompts in model-input pixels,
upsampling matrices), as the evaluator builds them: at the evaluator's batch size they
give its numbers bit for bit.
"""

import json
import os
from typing import Any, Optional, Sequence

import jax
from jax import export as jax_export
import numpy as np

from spt_jax import buckets
from spt_jax import transforms
from spt_jax.errors import SptUserError

SERVING_FILE = "serving.json"
FORMAT = "spt_jax.serving/1"
# jax.default_backend() -> the platform name jax.export uses.
_PLATFORM = {"gpu": "cuda"}
_PROMPT_AXIS = {"masks": 2, "scores": 2, "low_res_logits": 2, "iou": 1}


def _kind_name(prompts: dict[str, np.ndarray]) -> str:
  """The exported prompt kind (spt_jax.export.PromptKind.name) of prompt arrays."""
  parts = (["box"] if "boxes" in prompts else []) + (
      [f"points{prompts['points'].shape[2]}"] if "points" in prompts else [])
  return "+".join(parts)


class ServingModel:
  """The programs of one serving export for one platform, and their weights."""

  def __init__(self, directory: str, platform: Optional[str] = None):
    path = os.path.join(directory, SERVING_FILE)
    if not os.path.isfile(path):
      raise SptUserError(f"{directory}: not a serving export (no {SERVING_FILE}); write "
                         "one with `python -m spt_jax.export`")
    with open(path) as f:
      self.document = json.load(f)
    if self.document.get("format") != FORMAT:
      raise SptUserError(f"{path}: format {self.document.get('format')!r}, expected "
                         f"{FORMAT!r}")
    backend = jax.default_backend()
    self.platform = platform or _PLATFORM.get(backend, backend)
    if self.platform not in self.document["platforms"]:
      raise SptUserError(f"{directory} was exported for {self.document['platforms']}, "
                         f"not {self.platform}; export again with --platforms "
                         f"{self.platform}")
    self.directory = directory
    self.image_size = self.document["image_size"]
    self.low_res_size = self.document["low_res_size"]
    self.steps = self.document["model"]["sdt_steps"]
    self.batch_sizes = tuple(self.document["batch_sizes"])
    self.prompt_buckets = tuple(self.document["prompt_buckets"])
    with np.load(os.path.join(directory, self.document["weights"])) as weights:
      self.weights = [jax.device_put(weights[name]) for name in sorted(weights.files)]
    self._programs = {}

  @classmethod
  def load(cls, directory: str, platform: Optional[str] = None) -> "ServingModel":
    return cls(directory, platform)

  def _program(self, name: str):
    """The deserialized program `name` of this platform, jit-wrapped (cached)."""
    key = f"{self.platform}/{name}"
    if key not in self._programs:
      listed = self.document["programs"].get(key)
      if listed is None:
        have = sorted(k.split("/", 1)[1] for k in self.document["programs"]
                      if k.startswith(self.platform + "/"))
        raise SptUserError(f"{self.directory}: no program {name} for {self.platform}; "
                           f"it has {have}")
      with open(os.path.join(self.directory, listed["file"]), "rb") as f:
        self._programs[key] = jax.jit(jax_export.deserialize(bytearray(f.read())).call)
    return self._programs[key]

  def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """HxWx3 uint8 RGB -> (S, S, 3) padded model input, its (h, w) inside."""
    resized = transforms.resize_longest_side(transforms.check_rgb_image(image),
                                             self.image_size)
    return transforms.pad_to_square(resized, self.image_size), resized.shape[:2]

  def embed(self, images: np.ndarray, input_sizes: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 padded, (N, 2) int -> embeddings (N, h, w, D) float32."""
    parts = []
    for start, stop, size in buckets.chunks(len(images), self.batch_sizes):
      pad = lambda x: buckets.pad_repeating(np.asarray(x[start:stop]), size)  # noqa: E731
      run = self._program(f"embed_b{size}")
      parts.append(np.asarray(run(self.weights, pad(images),
                                  pad(input_sizes).astype(np.int32)))[:stop - start])
    return np.concatenate(parts)

  def decode(self, embeddings: np.ndarray, prompts: dict[str, np.ndarray],
             rows: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
    """Embeddings (N, h, w, D), prompts {'boxes': (N, P, 4), 'points': (N, P, K, 2),
    'point_labels': (N, P, K)} in model-input pixels, rows (N, H, l), cols (N, W, l)
    -> masks and scores (N, steps, P, H, W), iou (N, P), low_res_logits
    (N, steps, P, l, l)."""
    kind = _kind_name(prompts)
    count = next(iter(prompts.values())).shape[1]
    images = []
    for start, stop, size in buckets.chunks(len(embeddings), self.batch_sizes):
      rows_of = lambda x: buckets.pad_repeating(np.asarray(x[start:stop]), size)  # noqa: E731
      parts = []
      for first, last, bucket in buckets.chunks(count, self.prompt_buckets):
        chunk = {k: buckets.pad_repeating(rows_of(v)[:, first:last], bucket, axis=1)
                 for k, v in prompts.items()}
        run = self._program(f"decode_{kind}_b{size}_p{bucket}")
        outputs = run(self.weights, rows_of(embeddings), chunk,
                      rows_of(rows).astype(np.float32), rows_of(cols).astype(np.float32))
        parts.append({k: np.take(np.asarray(v)[:stop - start], range(last - first),
                                 axis=_PROMPT_AXIS[k]) for k, v in outputs.items()})
      images.append({k: np.concatenate([p[k] for p in parts], axis=_PROMPT_AXIS[k])
                     for k in parts[0]})
    return {k: np.concatenate([part[k] for part in images]) for k in images[0]}

  def predict(self, images: Sequence[np.ndarray],
              boxes: Optional[Sequence[np.ndarray]] = None,
              points: Optional[Sequence[np.ndarray]] = None,
              point_labels: Optional[Sequence[np.ndarray]] = None) -> list[dict[str, Any]]:
    """Masks of every image's prompts, at its own size.

    Args:
      images: N HxWx3 uint8 RGB images (any sizes).
      boxes: per image (P, 4) xyxy in its own pixels; points: per image (P, K, 2) xy,
        point_labels (P, K) 1/0. The exported prompt kinds say which may be given.

    Returns:
      Per image {'masks': (steps, P, H, W) bool (last step = final), 'scores': the
      same as float32 (sigmoid of the logits), 'iou': (P,), 'low_res_logits':
      (steps, P, l, l)}.
    """
    prepared = [self.preprocess(image) for image in images]
    originals = [tuple(np.asarray(image).shape[:2]) for image in images]
    prompts = [self._prompts_of(i, originals[i], boxes, points, point_labels)
               for i in range(len(images))]
    embeddings = self.embed(np.stack([p[0] for p in prepared]),
                            np.array([p[1] for p in prepared]))
    results = []
    for start, stop, _ in buckets.chunks(len(images), self.batch_sizes):
      group = range(start, stop)
      count = max(next(iter(prompts[i].values())).shape[0] for i in group)
      stacked = {k: np.stack([buckets.pad_repeating(prompts[i][k], count) for i in group])
                 for k in prompts[start]}
      canvas = max(max(originals[i]) for i in group)
      rows, cols = transforms.postprocess_matrices_batch(
          "sam", self.low_res_size, self.image_size, np.array([prepared[i][1] for i in group]),
          np.array([originals[i] for i in group]), canvas)
      outputs = self.decode(embeddings[start:stop], stacked, rows, cols)
      for b, i in enumerate(group):
        height, width = originals[i]
        own = next(iter(prompts[i].values())).shape[0]
        results.append({"masks": outputs["masks"][b, :, :own, :height, :width],
                        "scores": outputs["scores"][b, :, :own, :height, :width],
                        "iou": outputs["iou"][b, :own],
                        "low_res_logits": outputs["low_res_logits"][b, :, :own]})
    return results

  def _prompts_of(self, index, original_size, boxes, points, point_labels):
    """Image `index`'s prompts in model-input pixels, checked against the export."""
    prompts = {}
    if boxes is not None:
      prompts["boxes"] = transforms.scale_coords(
          np.asarray(boxes[index], np.float32).reshape(-1, 2, 2), original_size,
          self.image_size).reshape(-1, 4)
    if points is not None:
      if point_labels is None:
        raise SptUserError("point_labels must be given with points")
      prompts["points"] = transforms.scale_coords(np.asarray(points[index], np.float32),
                                                  original_size, self.image_size)
      prompts["point_labels"] = np.asarray(point_labels[index], np.int32)
    if not prompts:
      raise SptUserError("give boxes and/or points (with point_labels) for every image")
    kinds = self.document["prompt_kinds"]
    if _kind_name({k: v[None] for k, v in prompts.items()}) not in kinds:
      raise SptUserError(f"image {index}: prompts of kind "
                         f"{_kind_name({k: v[None] for k, v in prompts.items()})!r}; this "
                         f"export takes {kinds} (export with --prompts to add one)")
    return prompts
