"""Prompt-free evaluation (eval.prompts = 'auto'): find the defects, then let SPT draw them.

Per category of the evaluation data:
  1. Bank: the normal images of split `eval.auto.bank_split` (MVTec's train/good) are
     embedded by the frozen base's encoder, and an `AnomalyDetector` is fitted on them
     (memory bank, thresholds calibrated on held-out normal images;
     `spt_jax.inspection.detector`), saved to workdir/memory_bank/<category>/.
  2. Every test image, normal ones included (as MVTec AD and anomalib count them), gets
     an anomaly map at original resolution, an image score (the map's maximum) and
     boxes where it exceeds the calibrated thresholds.
  3. Each model evaluated (e.g. zero-shot SAM and the trained SPT) segments every box
     (the same boxes for all); the final step's masks are merged into one predicted mask
     per image, its pixel score the highest mask probability of the boxes (0 where
     none). Masks per instance are kept in the overlays' panels.

Metrics, for the anomaly map alone and for each model's merged masks, over all test
images: image AUROC (image score: the map's maximum / the highest mask probability),
pixel AUROC and AUPRO (`anomaly_metrics.PixelScoreAccumulator`; the map's distances d
enter as d / (1 + d), monotone, so the curves are those of d), pixel F1 at the
calibrated threshold (map above the pixel threshold / merged mask), and the mean IoU of
the prediction with the ground truth over the anomalous images. Rows per category and
their mean over categories (MVTec's convention). Written to workdir/prompt_free/
(results.json, results.md, overlays/).
"""

import collections
import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from spt_jax import buckets
from spt_jax import programs
from spt_jax import transforms
from spt_jax.config import to_data_config
from spt_jax.data.pipeline import dataset_label, largest_image_side, make_pipeline
from spt_jax.evaluate import anomaly_metrics
from spt_jax.evaluate import overlays
from spt_jax.evaluate.evaluator import overlay_indices
from spt_jax.evaluate.metrics import iou_np
from spt_jax.inspection.detector import AnomalyDetector, DetectorSpec, fit_detector
from spt_jax.models.prompts import Prompts
from spt_jax.train.metric_writer import ProgressLine

MAP = "anomaly map"
METRICS = ("image_auroc", "pixel_auroc", "aupro", "f1", "iou")


def detector_spec(config) -> DetectorSpec:
  fields = config.eval.auto.to_dict()
  fields.pop("bank_split")
  proposal_fields = {k: fields.pop(k) for k in ("sigma", "min_area", "max_boxes")}
  return DetectorSpec.from_dict({**fields, "proposals": proposal_fields})


class _Scores:
  """One method's running metrics over a category's images."""

  def __init__(self, bins: int):
    self.image_scores, self.labels, self.ious = [], [], []
    self.pixels = anomaly_metrics.PixelScoreAccumulator(bins)
    self.f1 = anomaly_metrics.F1Counter()

  def add(self, scores: np.ndarray, predicted: np.ndarray, gt: np.ndarray, label: int):
    self.image_scores.append(float(scores.max()))
    self.labels.append(label)
    self.pixels.add(scores, gt)
    self.f1.add(predicted, gt)
    if label:
      self.ious.append(iou_np(predicted, gt))

  def row(self) -> dict[str, float]:
    return {"image_auroc": anomaly_metrics.image_auroc(np.array(self.image_scores),
                                                       np.array(self.labels)),
            "pixel_auroc": self.pixels.auroc(), "aupro": self.pixels.aupro(),
            "f1": self.f1.f1(), "iou": float(np.mean(self.ious)) if self.ious else np.nan}


class PromptFreeEvaluator:
  """Evaluates models on the boxes a detector proposes (module docstring).

  proposer: (model, variables) of the frozen base whose encoder fits the banks and
  proposes the boxes; models: {name: (model, variables)} to segment them.
  """

  def __init__(self, config, proposer, workdir: str):
    self.config = config
    self.proposer_model, self.proposer_variables = proposer
    self.spec = detector_spec(config)
    data = to_data_config(config.data.eval, self.proposer_model.spec.image_size,
                          num_epochs=1)
    data = dataclasses.replace(data, keep_normal=True)
    self.data_config = dataclasses.replace(
        data, original_canvas=data.original_canvas or largest_image_side(data))
    self.directory = os.path.join(workdir, "prompt_free")
    self.bank_directory = os.path.join(workdir, "memory_bank")
    self._compiled = {}  # id(model) -> (embed, final logits), jit-compiled

  def _programs(self, model):
    """(embed, decode) of `model`: variables, images, input sizes -> embeddings; and
    variables, embeddings, boxes (B, P, 4), rows, cols -> the last step's logits
    (B, P, C, C) at original resolution."""
    if id(model) not in self._compiled:
      self._compiled[id(model)] = (
          jax.jit(lambda v, images, sizes: programs.embed(model, v, images, sizes)),
          jax.jit(lambda v, e, boxes, rows, cols: programs.decode(
              model, v, e, Prompts(boxes=boxes), rows, cols)["logits"][:, -1]))
    return self._compiled[id(model)]

  def _batches(self, **fields):
    """Batches of the eval data with `fields` replaced, padded to the batch size, and
    their number of real images."""
    pipeline = make_pipeline(dataclasses.replace(self.data_config, **fields))
    size = self.data_config.batch_size
    for batch in pipeline:
      count = len(batch["image"])
      yield {k: buckets.pad_repeating(v, size) for k, v in batch.items()}, count

  def _frozen_embeddings(self, batch):
    embed, _ = self._programs(self.proposer_model)
    return np.asarray(embed(self.proposer_variables, batch["image"], batch["input_size"]))

  def fit(self, category: str) -> AnomalyDetector:
    """The detector of `category` from its normal images of the bank split."""
    embeddings, input_sizes, original_sizes = [], [], []
    for batch, count in self._batches(split=self.config.eval.auto.bank_split,
                                      categories=(category,)):
      normal = np.flatnonzero(batch["label"][:count] == 0)
      embeddings.append(self._frozen_embeddings(batch)[normal])
      input_sizes.append(batch["input_size"][normal])
      original_sizes.append(batch["original_size"][normal])
    spec = self.proposer_model.spec
    detector = fit_detector(np.concatenate(embeddings), np.concatenate(input_sizes),
                            np.concatenate(original_sizes), self.spec, spec.image_size,
                            spec.encoder.patch_size)
    detector.save(os.path.join(self.bank_directory, category))
    return detector

  def run(self, models: dict[str, tuple[Any, dict]]) -> dict[str, Any]:
    """Fits the banks, evaluates `models` on their proposals, writes the reports."""
    test = make_pipeline(self.data_config)
    categories = test.categories
    bins = self.config.eval.score_bins
    scores = collections.defaultdict(lambda: _Scores(bins))
    thresholds, proposed = {}, collections.Counter()
    progress = ProgressLine("prompt-free eval", test.num_examples, "images")
    done, with_overlay = 0, overlay_indices(self.config.eval.num_overlays,
                                            test.num_examples)
    for category in categories:
      detector = self.fit(category)
      thresholds[category] = {"pixel": detector.pixel_threshold,
                              "image": detector.image_threshold,
                              "bank_rows": len(detector.bank)}
      for batch, count in self._batches(categories=(category,)):
        done = self._evaluate_batch(batch, count, category, detector, models, scores,
                                    proposed, done, with_overlay)
        progress.update(done)
    return self._report(scores, categories, list(models), thresholds, proposed)

  def _evaluate_batch(self, batch, count, category, detector, models, scores, proposed,
                      done, with_overlay) -> int:
    canvas = self.data_config.original_canvas
    maps = detector.maps(self._frozen_embeddings(batch), batch["input_size"],
                         batch["original_size"], canvas)
    max_boxes = self.spec.proposals.max_boxes
    boxes, valid = np.zeros((len(maps), max_boxes, 4), np.float32), np.zeros(
        (len(maps), max_boxes), bool)
    found = []
    for b in range(len(maps)):
      height, width = batch["original_size"][b]
      _, image_boxes = detector.propose(maps[b, :height, :width])
      found.append(image_boxes)
      if len(image_boxes):
        boxes[b] = buckets.pad_repeating(transforms.scale_coords(
            image_boxes.reshape(-1, 2, 2), (height, width),
            self.proposer_model.spec.image_size).reshape(-1, 4), max_boxes)
        valid[b, :len(image_boxes)] = True
    rows, cols = transforms.postprocess_matrices_batch(
        self.data_config.resize, self.proposer_model.spec.low_res_size,
        self.proposer_model.spec.image_size, batch["input_size"], batch["original_size"],
        canvas)
    probabilities = {}
    for name, (model, variables) in models.items():
      embed, decode = self._programs(model)
      logits = np.asarray(decode(variables, embed(variables, batch["image"],
                                                  batch["input_size"]), boxes, rows, cols))
      probabilities[name] = np.where(valid[:, :, None, None], 1 / (1 + np.exp(-logits)),
                                     0.0)
    for b in range(count):
      height, width = batch["original_size"][b]
      gt = batch["original_mask"][b, :height, :width] > 0
      label = int(batch["label"][b])
      score_map = maps[b, :height, :width]
      scores[category, MAP].add(score_map / (1 + score_map),
                                score_map > detector.pixel_threshold, gt, label)
      instance_masks = {}
      for name in models:
        per_box = probabilities[name][b, :, :height, :width]
        scores[category, name].add(per_box.max(axis=0), (per_box > 0.5).any(axis=0), gt,
                                   label)
        instance_masks[name] = (per_box > 0.5)[valid[b]]
      proposed[category] += len(found[b])
      if done + b in with_overlay:
        self._save_overlay(batch, b, category, done + b, score_map, detector, found[b],
                           instance_masks)
    return done + count

  def _save_overlay(self, batch, b, category, index, score_map, detector, image_boxes,
                    instance_masks):
    """Image, ground truth, anomaly map with the proposals, each model's merged mask."""
    height, width = batch["original_size"][b]
    image = transforms.resize_image_pil(batch["image"][b, :batch["input_size"][b, 0],
                                                       :batch["input_size"][b, 1]],
                                        (height, width))
    directory = os.path.join(self.directory, "overlays")
    os.makedirs(directory, exist_ok=True)
    merged = {name: masks.any(axis=0) if len(masks) else np.zeros((height, width), bool)
              for name, masks in instance_masks.items()}
    overlays.save_overlay(
        os.path.join(directory, f"{index:04d}_{category}.png"), image, merged,
        batch["original_mask"][b, :height, :width] > 0, box=image_boxes,
        heatmap=score_map, heatmap_threshold=detector.pixel_threshold)

  def _report(self, scores, categories, names, thresholds, proposed) -> dict[str, Any]:
    methods = [MAP] + names
    table = {c: {m: scores[c, m].row() for m in methods} for c in categories}
    mean = {m: {k: float(np.nanmean([table[c][m][k] for c in categories]))
                for k in METRICS} for m in methods}
    results = {"dataset": dataset_label(self.data_config), "categories": table,
               "mean": mean, "thresholds": thresholds, "boxes_proposed": dict(proposed),
               "detector": dataclasses.asdict(self.spec)}
    os.makedirs(self.directory, exist_ok=True)
    with open(os.path.join(self.directory, "results.json"), "w") as f:
      json.dump(results, f, indent=2)
    markdown = markdown_table(results)
    with open(os.path.join(self.directory, "results.md"), "w") as f:
      f.write(markdown)
    print(f"\nprompt-free ({results['dataset']}, all test images):\n{markdown}", flush=True)
    return results


def markdown_table(results: dict[str, Any]) -> str:
  """Per category and mean: each method's image AUROC, pixel AUROC, AUPRO, F1, IoU."""
  lines = ["| category | method | image AUROC | pixel AUROC | AUPRO | F1 | IoU |",
           "|---|---|---|---|---|---|---|"]
  rows = [(c, rows) for c, rows in results["categories"].items()] + [
      ("**mean**", results["mean"])]
  for category, methods in rows:
    for method, values in methods.items():
      lines.append(f"| {category} | {method} | " + " | ".join(
          f"{values[k]:.3f}" for k in METRICS) + " |")
  return "\n".join(lines) + "\n"
