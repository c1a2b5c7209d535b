"""`--mode=predict`: a folder of images and a prompts file -> mask PNGs and overlays.

Prompts file (JSON), coordinates in each image's own pixels:

    {"part_01.png": {"boxes": [[x0, y0, x1, y1], ...]},
     "part_02.jpg": {"points": [[[x, y], ...], ...], "point_labels": [[1, 0, ...], ...]},
     "part_03.png": {"boxes": [[...]], "points": [[[x, y]]], "point_labels": [[1]]}}

Every entry is one or more prompts (P boxes and/or P point sets). For each image the
refined masks go to `<output>/<stem>_prompt<p>.png` (0 / 255), an overlay (one panel per
prompt, showing that prompt) to `<output>/<stem>_overlay.png`, and every mask's file and
predicted IoU to `<output>/predictions.json` and `predictions.csv`. Images of the folder
without prompts are listed and skipped; a prompt for an image that is not in the folder
is an error.

All prompts are checked against their image's size before anything is predicted: an
inverted or empty box, a box or point wholly outside the image, or P boxes with a
different number of point sets is an error naming the image and the prompt (exit 2); a
box partly outside is clipped to the image, with a warning.
"""

import csv
import json
import os

import numpy as np
from PIL import Image

from spt_jax.data import decode
from spt_jax.errors import SptUserError
from spt_jax.evaluate import overlays
from spt_jax.predictor import SptPredictor

_FIELDS = ("boxes", "points", "point_labels")


def read_prompts_file(path: str) -> dict[str, dict[str, np.ndarray]]:
  """{image name: {'boxes': (P, 4), 'points': (P, K, 2), 'point_labels': (P, K)}}."""
  try:
    with open(path) as f:
      document = json.load(f)
  except json.JSONDecodeError as error:
    raise SptUserError(f"{path}: not valid JSON ({error})") from None
  if not isinstance(document, dict):
    raise SptUserError(f"{path}: expected an object mapping image names to prompts")
  prompts = {}
  for name, entry in document.items():
    unknown = sorted(set(entry) - set(_FIELDS)) if isinstance(entry, dict) else None
    if unknown is None or unknown:
      raise SptUserError(f"{path}: entry {name!r} must be an object with some of "
                         f"{list(_FIELDS)}, got {entry if unknown is None else unknown}")
    if ("points" in entry) != ("point_labels" in entry):
      raise SptUserError(f"{path}: entry {name!r} needs both points and point_labels")
    prompts[name] = {k: np.asarray(v, np.float32 if k != "point_labels" else np.int32)
                     for k, v in entry.items()}
  return prompts


def _image_size(path: str) -> tuple[int, int]:
  """(H, W) from the image file's header."""
  try:
    with Image.open(path) as image:
      width, height = image.size
  except (OSError, SyntaxError, ValueError) as error:
    raise SptUserError(f"{path}: not a readable image ({error})") from None
  return height, width


def check_prompts(name: str, entry: dict[str, np.ndarray], size: tuple[int, int],
                  source: str) -> dict[str, np.ndarray]:
  """The entry with boxes clipped to the (H, W) image, or SptUserError naming the image
  (`name`, in prompts file `source`) and the prompt (module docstring)."""
  height, width = size
  where = f"{source}: {name} ({width}x{height})"
  boxes, points = entry.get("boxes"), entry.get("points")
  counts = {}
  if boxes is not None:
    if boxes.ndim != 2 or boxes.shape[1] != 4:
      raise SptUserError(f"{where}: boxes must be [[x0, y0, x1, y1], ...], got shape "
                         f"{boxes.shape}")
    inverted = np.flatnonzero((boxes[:, 0] >= boxes[:, 2]) | (boxes[:, 1] >= boxes[:, 3]))
    if inverted.size:
      p = int(inverted[0])
      raise SptUserError(f"{where}: box {p} {boxes[p].tolist()} is inverted or empty; "
                         "expected [x0, y0, x1, y1] with x0 < x1 and y0 < y1")
    clipped = np.clip(boxes, 0, np.array([width, height, width, height], np.float32) - 1)
    for p in np.flatnonzero(np.any(clipped != boxes, axis=1)):
      if clipped[p, 0] >= clipped[p, 2] or clipped[p, 1] >= clipped[p, 3]:
        raise SptUserError(f"{where}: box {p} {boxes[p].tolist()} lies outside the image")
      print(f"warning: {where}: box {p} {boxes[p].tolist()} reaches outside the image; "
            f"clipped to {clipped[p].tolist()}", flush=True)
    entry = dict(entry, boxes=clipped)
    counts["boxes"] = len(boxes)
  if points is not None:
    labels = entry["point_labels"]
    if points.ndim != 3 or points.shape[2] != 2 or labels.shape != points.shape[:2]:
      raise SptUserError(f"{where}: points must be [[[x, y], ...], ...] (P, K, 2) with "
                         f"point_labels (P, K), got {points.shape} and {labels.shape}")
    outside = ((points[..., 0] < 0) | (points[..., 0] > width - 1) | (points[..., 1] < 0)
               | (points[..., 1] > height - 1))
    if outside.any():
      p, k = (int(i) for i in np.argwhere(outside)[0])
      raise SptUserError(f"{where}: point {k} {points[p, k].tolist()} of point set {p} "
                         "lies outside the image")
    counts["point sets"] = len(points)
  if len(set(counts.values())) > 1:
    raise SptUserError(f"{where}: {' and '.join(f'{n} {k}' for k, n in counts.items())}; "
                       "expected as many of each (one prompt each)")
  return entry


def _write_table(output_dir: str, rows: list[dict]) -> None:
  """predictions.json ({image: [rows]}) and predictions.csv (one row per mask)."""
  by_image = {}
  for row in rows:
    by_image.setdefault(row["image"], []).append(
        {k: v for k, v in row.items() if k != "image"})
  with open(os.path.join(output_dir, "predictions.json"), "w") as f:
    json.dump(by_image, f, indent=2)
  with open(os.path.join(output_dir, "predictions.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["image", "prompt", "mask", "predicted_iou"])
    writer.writeheader()
    writer.writerows(rows)


def predict_folder(config, model, variables, output_dir: str) -> None:
  """Writes masks, overlays and predictions.json/csv for every image of
  predict.images_dir with prompts (module docstring)."""
  images_dir = config.predict.images_dir
  prompts_file = config.predict.prompts_file
  prompts = read_prompts_file(prompts_file)
  present = sorted(n for n in os.listdir(images_dir) if decode.is_image_file(n))
  missing = sorted(set(prompts) - set(present))
  if missing:
    raise SptUserError(f"{prompts_file}: prompts for images not in {images_dir}: "
                       f"{missing}")
  prompted = [n for n in present if n in prompts]
  checked = {name: check_prompts(name, prompts[name],
                                 _image_size(os.path.join(images_dir, name)), prompts_file)
             for name in prompted}
  os.makedirs(output_dir, exist_ok=True)
  predictor = SptPredictor(model, variables)
  rows = []
  for index, name in enumerate(prompted):
    path = os.path.join(images_dir, name)
    image = decode.decode_image(decode.read_bytes(path), path)
    entry = checked[name]
    predictor.set_image(image)
    masks, scores, _ = predictor.predict_batch(
        point_coords=entry.get("points"), point_labels=entry.get("point_labels"),
        boxes=entry.get("boxes"))
    stem = os.path.splitext(name)[0]
    for p, mask in enumerate(masks[:, 0]):
      mask_file = f"{stem}_prompt{p}.png"
      Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(output_dir, mask_file))
      rows.append({"image": name, "prompt": p, "mask": mask_file,
                   "predicted_iou": float(scores[p, 0])})
    overlays.save_overlay(
        os.path.join(output_dir, f"{stem}_overlay.png"), image,
        {f"prompt {p}": mask for p, mask in enumerate(masks[:, 0])},
        box=entry.get("boxes"), points=entry.get("points"),
        point_labels=entry.get("point_labels"), prompt_per_panel=True)
    print(f"[{index + 1}/{len(prompted)}] {name}: {len(masks)} mask(s), predicted IoU "
          f"{', '.join(f'{s:.2f}' for s in scores[:, 0])}", flush=True)
  _write_table(output_dir, rows)
  skipped = [n for n in present if n not in prompts]
  if skipped:
    print(f"{len(skipped)} image(s) without prompts skipped: {', '.join(skipped[:10])}"
          + (" ..." if len(skipped) > 10 else ""), flush=True)
  print(f"predictions written to {output_dir}", flush=True)
