"""`--mode=predict` with no prompts file: find the defects of a folder of images, then SPT
draws them.

The detector comes from `predict.good_dir` (a folder of normal images: its memory bank
and thresholds are fitted, `detector.fit_detector`, and saved to
<output>/memory_bank/) or from a workdir that already holds one
(workdir/memory_bank/<category>/, written by the prompt-free evaluation; with several
categories `predict.category` names one). Per image: the anomaly map (frozen base
encoder), its score and boxes; SPT's final mask of each box; written are
<stem>_mask.png (the boxes' masks merged, 0 / 255), <stem>_prompt<p>.png (each box's
mask), <stem>_overlay.png (image, anomaly map with the boxes, merged mask) and
predictions.json / .csv (image score, whether it exceeds the image threshold, each
box and its mask's predicted IoU).
"""

import csv
import json
import os

import numpy as np
from PIL import Image

from spt_jax.data import decode
from spt_jax.errors import SptUserError
from spt_jax.evaluate import overlays
from spt_jax.inspection.detector import AnomalyDetector, DetectorSpec, fit_detector
from spt_jax.predictor import SptPredictor


def _images(folder: str) -> list[str]:
  names = sorted(n for n in os.listdir(folder) if decode.is_image_file(n))
  if not names:
    raise SptUserError(f"{folder}: no image files")
  return names


def _read(folder: str, name: str) -> np.ndarray:
  path = os.path.join(folder, name)
  return decode.decode_image(decode.read_bytes(path), path)


def _embedding(predictor: SptPredictor, image: np.ndarray):
  """(1, h, w, D) embedding, (1, 2) input size, (1, 2) original size of one image."""
  predictor.set_image(image)
  return (np.asarray(predictor.features), np.array([predictor.input_size]),
          np.array([predictor.original_size]))


def load_or_fit_detector(config, proposer: SptPredictor, workdir: str, output_dir: str,
                         spec: DetectorSpec) -> AnomalyDetector:
  """The detector of predict.good_dir, or the one saved in the workdir (module doc)."""
  good_dir = config.predict.good_dir
  if good_dir:
    if not os.path.isdir(good_dir):
      raise SptUserError(f"predict.good_dir {good_dir}: no such folder")
    parts = [_embedding(proposer, _read(good_dir, n)) for n in _images(good_dir)]
    detector = fit_detector(*(np.concatenate(p) for p in zip(*parts)), spec,
                            proposer.image_size, proposer.model.spec.encoder.patch_size)
    detector.save(os.path.join(output_dir, "memory_bank"))
    print(f"memory bank of {len(parts)} normal images from {good_dir}: "
          f"{len(detector.bank)} rows", flush=True)
    return detector
  banks = os.path.join(workdir, "memory_bank")
  categories = sorted(os.listdir(banks)) if os.path.isdir(banks) else []
  category = config.predict.category or (categories[0] if len(categories) == 1 else "")
  if category not in categories:
    raise SptUserError(
        "--mode=predict without predict.prompts_file needs predict.good_dir (a folder of "
        f"normal images) or a memory bank in {banks} (from eval.prompts='auto'); found "
        f"{categories or 'none'}" + ("; name one with predict.category" if categories
                                     else ""))
  return AnomalyDetector.load(os.path.join(banks, category))


def inspect_folder(config, model, variables, proposer_model, proposer_variables,
                   spec: DetectorSpec, workdir: str, output_dir: str) -> None:
  """Writes the masks, overlays and predictions of every image of predict.images_dir."""
  os.makedirs(output_dir, exist_ok=True)
  proposer = SptPredictor(proposer_model, proposer_variables)
  detector = load_or_fit_detector(config, proposer, workdir, output_dir, spec)
  predictor = SptPredictor(model, variables)
  images_dir, rows, document = config.predict.images_dir, [], {}
  names = _images(images_dir)
  for index, name in enumerate(names):
    image = _read(images_dir, name)
    embedding, input_size, original_size = _embedding(proposer, image)
    height, width = image.shape[:2]
    score_map = detector.maps(embedding, input_size, original_size, max(height, width))[
        0, :height, :width]
    score, boxes = detector.propose(score_map)
    stem = os.path.splitext(name)[0]
    masks, ious = np.zeros((0, height, width), bool), np.zeros(0)
    if len(boxes):
      predictor.set_image(image)
      masks, ious, _ = predictor.predict_batch(boxes=boxes)
      masks, ious = masks[:, 0], ious[:, 0]
    merged = masks.any(axis=0) if len(masks) else np.zeros((height, width), bool)
    Image.fromarray(merged.astype(np.uint8) * 255).save(
        os.path.join(output_dir, f"{stem}_mask.png"))
    image_rows = []
    for p, mask in enumerate(masks):
      Image.fromarray(mask.astype(np.uint8) * 255).save(
          os.path.join(output_dir, f"{stem}_prompt{p}.png"))
      image_rows.append({"prompt": p, "box": [float(x) for x in boxes[p]],
                         "mask": f"{stem}_prompt{p}.png", "predicted_iou": float(ious[p])})
    rows += [{"image": name, "image_score": score, **row} for row in image_rows]
    document[name] = {"image_score": score,
                      "anomalous": bool(score > detector.image_threshold),
                      "mask": f"{stem}_mask.png", "boxes": image_rows}
    overlays.save_overlay(os.path.join(output_dir, f"{stem}_overlay.png"), image,
                          {"SPT": merged}, box=boxes, heatmap=score_map,
                          heatmap_threshold=detector.pixel_threshold)
    print(f"[{index + 1}/{len(names)}] {name}: score {score:.3f} "
          f"({'above' if score > detector.image_threshold else 'below'} "
          f"{detector.image_threshold:.3f}), {len(boxes)} box(es)", flush=True)
  with open(os.path.join(output_dir, "predictions.json"), "w") as f:
    json.dump(document, f, indent=2)
  with open(os.path.join(output_dir, "predictions.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["image", "image_score", "prompt", "box", "mask",
                                           "predicted_iou"])
    writer.writeheader()
    writer.writerows(rows)
  print(f"predictions written to {output_dir}", flush=True)
