"""`--mode=predict`: a folder of images and a prompts file -> mask PNGs and overlays.

Prompts file (JSON), coordinates in each image's own pixels:

    {"part_01.png": {"boxes": [[x0, y0, x1, y1], ...]},
     "part_02.jpg": {"points": [[[x, y], ...], ...], "point_labels": [[1, 0, ...], ...]},
     "part_03.png": {"boxes": [[...]], "points": [[[x, y]]], "point_labels": [[1]]}}

Every entry is one or more prompts (P boxes and/or P point sets). For each image the
refined masks go to `<output>/<stem>_prompt<p>.png` (0 / 255) and an overlay to
`<output>/<stem>_overlay.png`. Images of the folder without prompts are listed and
skipped; a prompt for an image that is not in the folder is an error.
"""

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


def predict_folder(config, model, variables, output_dir: str) -> None:
  """Writes masks and overlays for every image of predict.images_dir with prompts."""
  images_dir = config.predict.images_dir
  prompts = read_prompts_file(config.predict.prompts_file)
  present = sorted(n for n in os.listdir(images_dir) if decode.is_image_file(n))
  missing = sorted(set(prompts) - set(present))
  if missing:
    raise SptUserError(f"{config.predict.prompts_file}: prompts for images not in "
                       f"{images_dir}: {missing}")
  os.makedirs(output_dir, exist_ok=True)
  predictor = SptPredictor(model, variables)
  for index, name in enumerate(n for n in present if n in prompts):
    path = os.path.join(images_dir, name)
    image = decode.decode_image(decode.read_bytes(path), path)
    entry = prompts[name]
    predictor.set_image(image)
    masks, scores, _ = predictor.predict_batch(
        point_coords=entry.get("points"), point_labels=entry.get("point_labels"),
        boxes=entry.get("boxes"))
    stem = os.path.splitext(name)[0]
    for p, mask in enumerate(masks[:, 0]):
      Image.fromarray(mask.astype(np.uint8) * 255).save(
          os.path.join(output_dir, f"{stem}_prompt{p}.png"))
    overlays.save_overlay(
        os.path.join(output_dir, f"{stem}_overlay.png"), image,
        {f"prompt {p}": mask for p, mask in enumerate(masks[:, 0])},
        box=entry.get("boxes"), points=entry.get("points"),
        point_labels=entry.get("point_labels"))
    print(f"[{index + 1}/{len(prompts)}] {name}: {len(masks)} mask(s), predicted IoU "
          f"{', '.join(f'{s:.2f}' for s in scores[:, 0])}", flush=True)
  skipped = [n for n in present if n not in prompts]
  if skipped:
    print(f"{len(skipped)} image(s) without prompts skipped: {', '.join(skipped[:10])}"
          + (" ..." if len(skipped) > 10 else ""), flush=True)
  print(f"predictions written to {output_dir}", flush=True)
