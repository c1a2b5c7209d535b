"""Evaluation results: results.json / results.csv / results.md, a stdout table, comparisons.

Inputs:
  records       one `ImageRecord` per image and prompt: where it came from and, per SDT
                step (e.g. 'draft', 'final'; a method without SDT has 'final' only), its
                'iou', 'boundary_iou' and 'dice' (the `metrics.SegmentationMetrics` names).
  pixel         optional pixel AUROC / AUPRO (`anomaly_metrics`), keyed
                (dataset, prompt, category) for a category's pixels or
                (dataset, prompt, None) for all pixels of the dataset (pooled):
                {key: {step: {'auroc', 'aupro'[, 'auroc_error_bound',
                'aupro_error_bound']}}}: the bounds on the binned values' error.
  normal_left_out  optional {(dataset, category): number of normal images} (empty masks,
                left out of promptable evaluation).
  skipped       optional {dataset: [[path, why], ...]}: files skipped when the data
                set was built (`on_bad_input='skip'`).
  config        optional JSON-able dict, stored as is.

Per dataset and prompt (results.json, results.md):
  all_images            IoU / BIoU / Dice: mean over the images (the SPT authors' dataset
                        figure); AUROC / AUPRO: the pooled values, if given.
  mean_over_categories  the mean of the category rows, every metric (None unless every
                        category has a value).
The "dataset values" of the stdout table, comparisons, chart and `flat_means` are the
all_images ones. Steps keep the order of the records ('final' last). Missing values are
null in JSON, "" in CSV and "-" in tables.
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

FINAL = "final"
MASK_METRICS = ("iou", "boundary_iou", "dice")
PIXEL_METRICS = ("auroc", "aupro")
PIXEL_BOUNDS = ("auroc_error_bound", "aupro_error_bound")
METRIC_NAMES = {"iou": "IoU", "boundary_iou": "BIoU", "dice": "Dice", "auroc": "AUROC",
                "aupro": "AUPRO"}
# {(dataset, prompt, category or None): {step: {'auroc', 'aupro'}}}; {(dataset, category): n}.
PixelMetrics = Mapping[tuple[str, str, Optional[str]], Mapping[str, Mapping[str, float]]]
LeftOut = Mapping[tuple[str, str], int]
# Bar colours of the comparison chart, one per run (cycled).
_PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """One evaluated image and prompt.

  prompt: the kind of prompt, e.g. 'box' or 'points3' (results are grouped by it).
  scores: {step: {'iou', 'boundary_iou', 'dice'}}, at least one step.
  """
  dataset: str
  category: str
  defect_type: str
  image_path: str
  prompt: str
  scores: Mapping[str, Mapping[str, float]]

  def __post_init__(self):
    if not self.scores:
      raise SptUserError(f"ImageRecord.scores of {self.image_path}: expected at least one "
                         "step, got none")
    for step, values in self.scores.items():
      if set(values) != set(MASK_METRICS) or not all(np.isfinite(list(values.values()))):
        raise SptUserError(f"ImageRecord.scores[{step!r}] of {self.image_path}: expected "
                           f"finite {MASK_METRICS}, got {dict(values)}")


def _ordered_steps(step_lists: Iterable[Iterable[str]]) -> list[str]:
  """The steps of all lists, in order of first appearance with 'final' last."""
  seen = list(dict.fromkeys(s for steps in step_lists for s in steps))
  return [s for s in seen if s != FINAL] + [s for s in seen if s == FINAL]


def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
  """Mean of the values, None if there are none or any is None."""
  values = list(values)
  if not values or any(v is None for v in values):
    return None
  return float(np.mean(values))


def _number(value: Optional[float]) -> Optional[float]:
  """A float, or None for a missing or NaN value (JSON has no NaN)."""
  return None if value is None or np.isnan(value) else float(value)


def _row(records: list[ImageRecord], steps: list[str],
         pixel: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, Optional[float]]]:
  """{step: {mask metric: mean over the records, pixel metric and bound: from `pixel`}}
  (bounds only where `pixel` has them)."""
  return {s: {**{m: _mean(r.scores[s][m] for r in records) for m in MASK_METRICS},
              **{m: _number(pixel.get(s, {}).get(m)) for m in PIXEL_METRICS},
              **{m: _number(pixel[s][m]) for m in PIXEL_BOUNDS if m in pixel.get(s, {})}}
          for s in steps}


def summarize(records: Iterable[ImageRecord], *, pixel: Optional[PixelMetrics] = None,
              normal_left_out: Optional[LeftOut] = None,
              skipped: Optional[Mapping[str, list]] = None,
              config: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """The results.json content (module docstring); datasets, prompts, categories sorted.

  {'config': ..., 'datasets': {dataset: {
     'normal_left_out': {'total': n, 'per_category': {category: n}},
     'skipped_at_build': [[path, why], ...],
     'prompts': {prompt: {
        'num_images': n, 'steps': [steps every record of the group has],
        'all_images': {step: {iou, boundary_iou, dice, auroc, aupro}},
        'mean_over_categories': {step: {...}},
        'categories': {category: {'num_images': n, step: {...}}}}}}}}
  """
  records = list(records)
  pixel = pixel or {}
  normal_left_out, skipped = normal_left_out or {}, skipped or {}
  datasets = {}
  for dataset in sorted({r.dataset for r in records} | {d for d, _ in normal_left_out}
                        | set(skipped)):
    left_out = {c: int(n) for (d, c), n in sorted(normal_left_out.items()) if d == dataset}
    prompts = {}
    of_dataset = [r for r in records if r.dataset == dataset]
    for prompt in sorted({r.prompt for r in of_dataset}):
      of_prompt = [r for r in of_dataset if r.prompt == prompt]
      steps = [s for s in _ordered_steps(r.scores for r in of_prompt)
               if all(s in r.scores for r in of_prompt)]
      categories = {}
      for category in sorted({r.category for r in of_prompt}):
        of_category = [r for r in of_prompt if r.category == category]
        categories[category] = {
            "num_images": len(of_category),
            **_row(of_category, steps, pixel.get((dataset, prompt, category), {}))}
      prompts[prompt] = {
          "num_images": len(of_prompt),
          "steps": steps,
          "all_images": _row(of_prompt, steps, pixel.get((dataset, prompt, None), {})),
          "mean_over_categories": {
              s: {m: _mean(c[s][m] for c in categories.values())
                  for m in MASK_METRICS + PIXEL_METRICS} for s in steps},
          "categories": categories}
    datasets[dataset] = {
        "normal_left_out": {"total": sum(left_out.values()), "per_category": left_out},
        "skipped_at_build": [list(entry) for entry in skipped.get(dataset, [])],
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
  widths = [max(len(line[i]) for line in [headers] + rows) for i in range(len(headers))]
  return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip()
                   for line in [headers] + rows)


def _groups(results: Mapping[str, Any]) -> Iterable[tuple[str, str, Mapping[str, Any]]]:
  """(dataset, prompt, summary) of every dataset and prompt in results."""
  for dataset, of_dataset in results["datasets"].items():
    for prompt, summary in of_dataset["prompts"].items():
      yield dataset, prompt, summary


def _dataset_value(results: Mapping[str, Any], dataset: str, prompt: str, step: str,
                   metric: str) -> Optional[float]:
  """The all_images value, None where the run lacks the dataset, prompt or step."""
  summary = results["datasets"].get(dataset, {}).get("prompts", {}).get(prompt)
  if summary is None or step not in summary["steps"]:
    return None
  return summary["all_images"][step][metric]


def markdown_report(results: Mapping[str, Any]) -> str:
  """results.md: per dataset and prompt, categories x (metric, step), then the two means."""
  sections = ["# Results"]
  for dataset, prompt, summary in _groups(results):
    columns = _metric_columns(summary["steps"])
    left_out = results["datasets"][dataset]["normal_left_out"]["total"]
    skipped = results["datasets"][dataset].get("skipped_at_build", [])
    rows = [[category, str(values["num_images"])] + [_cell(values[s][m]) for m, s in columns]
            for category, values in summary["categories"].items()]
    rows.append(["**all images**", str(summary["num_images"])]
                + [_cell(summary["all_images"][s][m]) for m, s in columns])
    rows.append(["mean over categories", str(len(summary["categories"]))]
                + [_cell(summary["mean_over_categories"][s][m]) for m, s in columns])
    sections.append(
        f"## {dataset}, {prompt} prompt\n\nImages: {summary['num_images']}; normal images "
        f"left out: {left_out}. All images: IoU / BIoU / Dice are means over the images "
        "(the SPT authors' dataset figure), AUROC / AUPRO are over the pooled pixels. Mean "
        "over categories: the mean of the category rows (its n counts categories).\n\n"
        + _render(["category", "n"] + _column_titles(columns), rows, markdown=True)
        + _bounds_note(summary["all_images"]) + _skipped_note(skipped))
  return "\n\n".join(sections) + "\n"


def _bounds_note(all_images: Mapping[str, Mapping[str, Optional[float]]]) -> str:
  """A line with the largest binning-error bounds of the pooled AUROC / AUPRO, if any."""
  bounds = {m: [v[m] for v in all_images.values() if v.get(m) is not None]
            for m in PIXEL_BOUNDS}
  if not all(bounds.values()):
    return ""
  return (f"\n\nAUROC and AUPRO come from score histograms; their error is at most "
          f"{max(bounds['auroc_error_bound']):.1e} and {max(bounds['aupro_error_bound']):.1e} "
          "(all images, every step).")


def _skipped_note(skipped: list) -> str:
  """The files left out when the data set was built, and why."""
  if not skipped:
    return ""
  return (f"\n\nFiles skipped when the data set was built ({len(skipped)}):\n\n"
          + "\n".join(f"- `{path}`: {why}" for path, why in skipped))


def text_table(results: Mapping[str, Any]) -> str:
  """A compact plain-text table of the dataset values: one row per dataset and prompt."""
  columns = _metric_columns(_ordered_steps(g["steps"] for _, _, g in _groups(results)))
  rows = [[dataset, prompt, str(summary["num_images"])]
          + [_cell(_dataset_value(results, dataset, prompt, s, m)) for m, s in columns]
          for dataset, prompt, summary in _groups(results)]
  return _render(["dataset", "prompt", "n"] + _column_titles(columns), rows, markdown=False)


def print_table(results: Mapping[str, Any], file: Optional[TextIO] = None) -> None:
  """Prints `text_table`."""
  print(text_table(results), file=file or sys.stdout)


def flat_means(results: Mapping[str, Any]) -> dict[str, float]:
  """Scalars for TensorBoard and checkpoint selection (e.g. 'final_iou').

  '<step>_<metric>': the mean over datasets and prompts of their dataset values (the
  authors' average over datasets); '<dataset>/<prompt>/<step>_<metric>': each one.
  Missing values are left out.
  """
  per_group = {}
  for dataset, prompt, summary in _groups(results):
    for step, values in summary["all_images"].items():
      for metric, value in values.items():
        if value is not None:
          per_group.setdefault(f"{step}_{metric}", []).append(value)
          per_group[f"{dataset}/{prompt}/{step}_{metric}"] = [value]
  return {key: float(np.mean(values)) for key, values in per_group.items()}


def write_results(output_dir: str, records: Iterable[ImageRecord], *,
                  pixel: Optional[PixelMetrics] = None,
                  normal_left_out: Optional[LeftOut] = None,
                  skipped: Optional[Mapping[str, list]] = None,
                  config: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """Writes results.json, results.csv and results.md into output_dir; returns `summarize`."""
  records = list(records)
  results = summarize(records, pixel=pixel, normal_left_out=normal_left_out,
                      skipped=skipped, config=config)
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=2, allow_nan=False)
  with open(os.path.join(output_dir, "results.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    score_columns = [(s, m) for s in _ordered_steps(r.scores for r in records)
                     for m in MASK_METRICS]
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


def comparison_table(runs: Mapping[str, Mapping[str, Any]]) -> str:
  """Markdown: per dataset and prompt, one row per run (its name) and the metric columns.

  runs: {name: results of `summarize`} on the same data (methods, configs); the values
  are the dataset values (module docstring).
  """
  columns = _metric_columns(_ordered_steps(
      g["steps"] for results in runs.values() for _, _, g in _groups(results)))
  sections = []
  for dataset, prompt in _comparison_groups(runs):
    rows = [[name] + [_cell(_dataset_value(results, dataset, prompt, s, m)) for m, s in columns]
            for name, results in runs.items()]
    sections.append(f"## {dataset}, {prompt} prompt\n\n"
                    + _render(["run"] + _column_titles(columns), rows, markdown=True))
  return ("IoU / BIoU / Dice: mean over images; AUROC / AUPRO: over the pooled pixels.\n\n"
          + "\n\n".join(sections) + "\n")


def comparison_chart(runs: Mapping[str, Mapping[str, Any]], path: str, *,
                     metric: str = "iou", step: str = FINAL) -> None:
  """A grouped bar chart PNG: one group per dataset and prompt, one bar per run.

  Bars show the dataset values of `metric` at `step` (0..1 axis); a missing value draws
  no bar.
  """
  if metric not in METRIC_NAMES:
    raise SptUserError(f"metric: expected one of {tuple(METRIC_NAMES)}, got {metric!r}")
  groups = _comparison_groups(runs)
  font, small = ImageFont.load_default(size=14), ImageFont.load_default(size=10)
  bar, gap, left, top, plot_height = 28, 36, 56, 40, 300
  legend_width = 24 + max((int(font.getlength(name)) for name in runs), default=0)
  plot_width = max(1, len(groups)) * (len(runs) * bar + gap) + gap
  image = Image.new("RGB", (left + plot_width + legend_width + 24, top + plot_height + 60),
                    "white")
  draw = ImageDraw.Draw(image)
  draw.text((left, 10), f"{METRIC_NAMES[metric]} ({step})", fill="black", font=font)
  bottom = top + plot_height
  for tick in np.linspace(0, 1, 6):
    y = bottom - tick * plot_height
    draw.line([(left, y), (left + plot_width, y)], fill=(220, 220, 220))
    draw.text((left - 8, y), f"{tick:.1f}", fill="black", font=font, anchor="rm")
  for g, (dataset, prompt) in enumerate(groups):
    x0 = left + gap + g * (len(runs) * bar + gap)
    for r, results in enumerate(runs.values()):
      value = _dataset_value(results, dataset, prompt, step, metric)
      if value is not None:
        x, y = x0 + r * bar, bottom - value * plot_height
        draw.rectangle([x, y, x + bar - 3, bottom], fill=_PALETTE[r % len(_PALETTE)])
        draw.text((x + (bar - 3) / 2, y - 2), f"{value:.2f}", fill="black", font=small,
                  anchor="mb")
    draw.text((x0 + len(runs) * bar / 2, bottom + 8), f"{dataset} ({prompt})", fill="black",
              font=font, anchor="mt")
  draw.line([(left, top), (left, bottom), (left + plot_width, bottom)], fill="black")
  for r, name in enumerate(runs):
    x, y = left + plot_width + 12, top + r * 20
    draw.rectangle([x, y, x + 12, y + 12], fill=_PALETTE[r % len(_PALETTE)])
    draw.text((x + 18, y + 6), name, fill="black", font=font, anchor="lm")
  image.save(path)
