"""Evaluation results: results.json / results.csv / results.md, a stdout table, comparisons.

Inputs:
  records       one `ImageRecord` per image and prompt: where it came from and, per SDT
                step ('draft', 'final'; a method without SDT gives 'final' only), its
                'iou', 'biou' and 'dice'.
  pixel         optional {(dataset, prompt, category): {step: {'auroc', 'aupro'}}}, the
                pixel-level anomaly metrics of each category (`anomaly_metrics`).
  normal_left_out  optional {(dataset, category): number of normal images} (empty masks,
                left out of promptable evaluation).
  config        optional JSON-able dict, stored as is.

Means (results.json, per dataset and prompt):
  mean_over_images      IoU / BIoU / Dice averaged over all images of the dataset, as the
                        SPT authors report them;
  mean_over_categories  the mean of the category means, and of the categories' AUROC /
                        AUPRO (the anomaly-detection custom; None unless every category
                        has them).
AUROC / AUPRO are not per-image metrics: the "mean over images" rows show them as "-".
Missing values are null in JSON, "" in CSV and "-" in tables.
"""

import csv
import dataclasses
import json
import os
import sys
from typing import Any, Iterable, Mapping, Optional, TextIO

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from spt_jax.errors import SptUserError

STEPS = ("draft", "final")
MASK_METRICS = ("iou", "biou", "dice")
PIXEL_METRICS = ("auroc", "aupro")
METRIC_NAMES = {"iou": "IoU", "biou": "BIoU", "dice": "Dice", "auroc": "AUROC",
                "aupro": "AUPRO"}
MEAN_OVER_IMAGES = "mean over images"
MEAN_OVER_CATEGORIES = "mean over categories"
# {(dataset, prompt, category): {step: {'auroc', 'aupro'}}} and {(dataset, category): n}.
PixelMetrics = Mapping[tuple[str, str, str], Mapping[str, Mapping[str, float]]]
LeftOut = Mapping[tuple[str, str], int]
# Bar colours of the comparison chart, one per run (cycled).
_PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """One evaluated image and prompt.

  scores: {step: {'iou', 'biou', 'dice'}} for step in a non-empty subset of STEPS.
  """
  dataset: str
  category: str
  defect_type: str
  image_path: str
  prompt: str
  scores: Mapping[str, Mapping[str, float]]

  def __post_init__(self):
    if not self.scores or set(self.scores) - set(STEPS):
      raise SptUserError(f"ImageRecord.scores of {self.image_path}: expected steps among "
                         f"{STEPS}, got {sorted(self.scores)}")
    for step, values in self.scores.items():
      if set(values) != set(MASK_METRICS) or not all(np.isfinite(list(values.values()))):
        raise SptUserError(f"ImageRecord.scores[{step!r}] of {self.image_path}: expected "
                           f"finite {MASK_METRICS}, got {dict(values)}")


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
  """Mean of the values, None if there are none or any is None."""
  values = list(values)
  if not values or any(v is None for v in values):
    return None
  return float(np.mean(values))


def _number(value: Optional[float]) -> Optional[float]:
  """A float, or None for a missing or NaN value (JSON has no NaN)."""
  return None if value is None or np.isnan(value) else float(value)


def _step_means(records: list[ImageRecord]) -> dict[str, dict[str, Optional[float]]]:
  """{step: {metric: mean over the records}} for the steps every record has."""
  steps = [s for s in STEPS if all(s in r.scores for r in records)]
  return {s: {m: _mean(r.scores[s][m] for r in records) for m in MASK_METRICS}
          for s in steps}


def summarize(records: Iterable[ImageRecord], *, pixel: Optional[PixelMetrics] = None,
              normal_left_out: Optional[LeftOut] = None,
              config: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """The results.json content (module docstring); datasets, prompts, categories sorted.

  {'config': ..., 'datasets': {dataset: {
     'normal_left_out': {'total': n, 'per_category': {category: n}},
     'prompts': {prompt: {
        'num_images': n, 'steps': [...],
        'mean_over_images': {step: {iou, biou, dice}},
        'mean_over_categories': {step: {iou, biou, dice, auroc, aupro}},
        'categories': {category: {'num_images': n, step: {iou, biou, dice, auroc, aupro}}}}}}}}
  """
  records = list(records)
  pixel = pixel or {}
  normal_left_out = normal_left_out or {}
  datasets = {}
  for dataset in sorted({r.dataset for r in records} | {d for d, _ in normal_left_out}):
    left_out = {c: int(n) for (d, c), n in sorted(normal_left_out.items()) if d == dataset}
    prompts = {}
    of_dataset = [r for r in records if r.dataset == dataset]
    for prompt in sorted({r.prompt for r in of_dataset}):
      of_prompt = [r for r in of_dataset if r.prompt == prompt]
      overall = _step_means(of_prompt)
      categories = {}
      for category in sorted({r.category for r in of_prompt}):
        means = _step_means([r for r in of_prompt if r.category == category])
        anomaly = pixel.get((dataset, prompt, category), {})
        categories[category] = {
            "num_images": sum(r.category == category for r in of_prompt),
            **{s: {**means[s], **{m: _number(anomaly.get(s, {}).get(m)) for m in PIXEL_METRICS}}
               for s in overall}}
      prompts[prompt] = {
          "num_images": len(of_prompt),
          "steps": list(overall),
          "mean_over_images": overall,
          "mean_over_categories": {
              s: {m: _mean(c[s][m] for c in categories.values())
                  for m in MASK_METRICS + PIXEL_METRICS} for s in overall},
          "categories": categories}
    datasets[dataset] = {
        "normal_left_out": {"total": sum(left_out.values()), "per_category": left_out},
        "prompts": prompts}
  return {"config": dict(config or {}), "datasets": datasets}


def _cell(value: Optional[float]) -> str:
  return "-" if value is None else f"{value:.3f}"


def _metric_columns(steps: Iterable[str]) -> list[tuple[str, str]]:
  """(metric, step) pairs: every metric with its steps side by side."""
  return [(m, s) for m in MASK_METRICS + PIXEL_METRICS for s in steps]


def _column_titles(columns: list[tuple[str, str]]) -> list[str]:
  return [f"{METRIC_NAMES[m]} {s}" for m, s in columns]


def _render(headers: list[str], rows: list[list[str]], markdown: bool) -> str:
  """A markdown table, or a plain text one with aligned columns."""
  if markdown:
    lines = [headers, ["---"] * len(headers)] + rows
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)
  widths = [max(len(str(line[i])) for line in [headers] + rows) for i in range(len(headers))]
  return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip()
                   for line in [headers] + rows)


def _groups(results: Mapping[str, Any]) -> Iterable[tuple[str, str, Mapping[str, Any]]]:
  """(dataset, prompt, summary) of every dataset and prompt in results."""
  for dataset, of_dataset in results["datasets"].items():
    for prompt, summary in of_dataset["prompts"].items():
      yield dataset, prompt, summary


def _dataset_values(summary: Mapping[str, Any], step: str, metric: str) -> Optional[float]:
  """One number per dataset: IoU/BIoU/Dice over images, AUROC/AUPRO over categories."""
  if step not in summary["steps"]:
    return None
  if metric in MASK_METRICS:
    return summary["mean_over_images"][step][metric]
  return summary["mean_over_categories"][step][metric]


def markdown_report(results: Mapping[str, Any]) -> str:
  """results.md: per dataset and prompt, categories x (metric, step) and the two means."""
  sections = ["# Results"]
  for dataset, prompt, summary in _groups(results):
    columns = _metric_columns(summary["steps"])
    left_out = results["datasets"][dataset]["normal_left_out"]["total"]
    rows = [[category, str(values["num_images"])] + [_cell(values[s][m]) for m, s in columns]
            for category, values in summary["categories"].items()]
    rows.append([f"**{MEAN_OVER_IMAGES}**", str(summary["num_images"])] + [
        _cell(summary["mean_over_images"][s].get(m)) for m, s in columns])
    rows.append([f"{MEAN_OVER_CATEGORIES}", str(len(summary["categories"]))] + [
        _cell(summary["mean_over_categories"][s][m]) for m, s in columns])
    sections.append(
        f"## {dataset}, {prompt} prompt\n\nImages: {summary['num_images']}; normal images "
        f"left out: {left_out}. The mean over images is the SPT authors' "
        f"dataset figure; the mean over categories averages the category rows (its n "
        f"counts categories).\n\n"
        + _render(["category", "n"] + _column_titles(columns), rows, markdown=True))
  return "\n\n".join(sections) + "\n"


def text_table(results: Mapping[str, Any]) -> str:
  """A compact plain-text table: one row per dataset and prompt."""
  steps = [s for s in STEPS if any(s in g["steps"] for _, _, g in _groups(results))]
  columns = _metric_columns(steps)
  rows = [[dataset, prompt, str(summary["num_images"])]
          + [_cell(_dataset_values(summary, s, m)) for m, s in columns]
          for dataset, prompt, summary in _groups(results)]
  return _render(["dataset", "prompt", "n"] + _column_titles(columns), rows, markdown=False)


def print_table(results: Mapping[str, Any], file: Optional[TextIO] = None) -> None:
  """Prints `text_table` (IoU/BIoU/Dice over images, AUROC/AUPRO over categories)."""
  print(text_table(results), file=file or sys.stdout)


def write_results(output_dir: str, records: Iterable[ImageRecord], *,
                  pixel: Optional[PixelMetrics] = None,
                  normal_left_out: Optional[LeftOut] = None,
                  config: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """Writes results.json, results.csv and results.md into output_dir; returns `summarize`."""
  records = list(records)
  results = summarize(records, pixel=pixel, normal_left_out=normal_left_out, config=config)
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=2, allow_nan=False)
  with open(os.path.join(output_dir, "results.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    score_columns = [(s, m) for s in STEPS for m in MASK_METRICS]
    writer.writerow(["dataset", "category", "defect_type", "image_path", "prompt"]
                    + [f"{s}_{m}" for s, m in score_columns])
    for r in records:
      writer.writerow([r.dataset, r.category, r.defect_type, r.image_path, r.prompt] + [
          repr(float(r.scores[s][m])) if s in r.scores else "" for s, m in score_columns])
  with open(os.path.join(output_dir, "results.md"), "w") as f:
    f.write(markdown_report(results))
  return results


def _comparison_groups(runs: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
  return sorted({(d, p) for results in runs.values() for d, p, _ in _groups(results)})


def _run_value(results: Mapping[str, Any], dataset: str, prompt: str, step: str,
               metric: str) -> Optional[float]:
  summary = results["datasets"].get(dataset, {}).get("prompts", {}).get(prompt)
  return None if summary is None else _dataset_values(summary, step, metric)


def comparison_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
  """Markdown: per dataset and prompt, one row per run (its name) and the metric columns.

  runs: {name: results of `summarize`} on the same data (methods, configs).
  IoU / BIoU / Dice are means over images, AUROC / AUPRO means over categories.
  """
  columns = _metric_columns(STEPS)
  sections = []
  for dataset, prompt in _comparison_groups(runs):
    rows = [[name] + [_cell(_run_value(results, dataset, prompt, s, m)) for m, s in columns]
            for name, results in runs.items()]
    sections.append(f"## {dataset}, {prompt} prompt\n\n"
                    + _render(["run"] + _column_titles(columns), rows, markdown=True))
  return ("IoU / BIoU / Dice: mean over images; AUROC / AUPRO: mean over categories.\n\n"
          + "\n\n".join(sections) + "\n")


def comparison_chart(runs: Mapping[str, Mapping[str, Any]], path: str, *,
                     metric: str = "iou", step: str = "final") -> None:
  """A grouped bar chart PNG: one group per dataset and prompt, one bar per run.

  Bars show `_dataset_values` (0..1 axis); a missing value draws no bar.
  """
  if metric not in METRIC_NAMES or step not in STEPS:
    raise SptUserError(f"metric, step: expected one of {tuple(METRIC_NAMES)} and one of "
                       f"{STEPS}, got {metric!r}, {step!r}")
  groups = _comparison_groups(runs)
  font = ImageFont.load_default(size=14)
  bar, gap, left, top, plot_height = 28, 36, 56, 40, 300
  legend_width = 24 + max((int(font.getlength(name)) for name in runs), default=0)
  plot_width = max(1, len(groups)) * (len(runs) * bar + gap) + gap
  image = Image.new("RGB", (left + plot_width + legend_width + 24, top + plot_height + 60),
                    "white")
  draw = ImageDraw.Draw(image)
  average = "images" if metric in MASK_METRICS else "categories"
  draw.text((left, 10), f"{METRIC_NAMES[metric]} ({step}), mean over {average}", fill="black",
            font=font)
  small = ImageFont.load_default(size=10)
  bottom = top + plot_height
  for tick in np.linspace(0, 1, 6):
    y = bottom - tick * plot_height
    draw.line([(left, y), (left + plot_width, y)], fill=(220, 220, 220))
    draw.text((left - 8, y), f"{tick:.1f}", fill="black", font=font, anchor="rm")
  for g, (dataset, prompt) in enumerate(groups):
    x0 = left + gap + g * (len(runs) * bar + gap)
    for r, results in enumerate(runs.values()):
      value = _run_value(results, dataset, prompt, step, metric)
      if value is not None:
        x = x0 + r * bar
        draw.rectangle([x, bottom - value * plot_height, x + bar - 3, bottom],
                       fill=_PALETTE[r % len(_PALETTE)])
        draw.text((x + (bar - 3) / 2, bottom - value * plot_height - 2), f"{value:.2f}",
                  fill="black", font=small, anchor="mb")
    draw.text((x0 + len(runs) * bar / 2, bottom + 8), f"{dataset} ({prompt})", fill="black",
              font=font, anchor="mt")
  draw.line([(left, top), (left, bottom), (left + plot_width, bottom)], fill="black")
  for r, name in enumerate(runs):
    y = top + r * 20
    x = left + plot_width + 12
    draw.rectangle([x, y, x + 12, y + 12], fill=_PALETTE[r % len(_PALETTE)])
    draw.text((x + 18, y + 6), name, fill="black", font=font, anchor="lm")
  image.save(path)
