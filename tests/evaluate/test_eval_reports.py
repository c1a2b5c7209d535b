"""Reports: the numbers in results.json / .csv / .md, tables, comparisons and the chart."""

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from spt_jax.errors import SptUserError
from spt_jax.evaluate import reports
from spt_jax.evaluate.reports import ImageRecord


def scores(iou, biou, dice):
  return {"iou": iou, "boundary_iou": biou, "dice": dice}


def record(dataset, category, name, **steps):
  return ImageRecord(dataset=dataset, category=category, defect_type="crack",
                     image_path=f"{dataset}/{category}/{name}.png", prompt="box",
                     scores={step: scores(*values) for step, values in steps.items()})


# mvtec: bottle has two images, cable one; visa (a method without SDT) has final only.
RECORDS = [
    record("mvtec", "bottle", "a", draft=(0.4, 0.3, 0.5), final=(0.5, 0.4, 0.6)),
    record("mvtec", "bottle", "b", draft=(0.6, 0.5, 0.7), final=(0.7, 0.6, 0.8)),
    record("mvtec", "cable", "c", draft=(0.8, 0.7, 0.9), final=(0.9, 0.8, 0.95)),
    record("visa", "candle", "d", final=(0.3, 0.2, 0.4)),
]
PIXEL = {
    ("mvtec", "box", "bottle"): {"draft": {"auroc": 0.9, "aupro": 0.8},
                                 "final": {"auroc": 0.95, "aupro": 0.85}},
    ("mvtec", "box", "cable"): {"draft": {"auroc": 0.8, "aupro": 0.7},
                                "final": {"auroc": 0.85, "aupro": 0.75}},
    ("mvtec", "box", None): {"draft": {"auroc": 0.88, "aupro": 0.77},   # pooled pixels
                             "final": {"auroc": 0.93, "aupro": float("nan")}},
}
LEFT_OUT = {("mvtec", "bottle"): 20, ("mvtec", "cable"): 58, ("visa", "candle"): 0}


@pytest.fixture(name="results")
def fixture_results(tmp_path):
  return reports.write_results(str(tmp_path), RECORDS, pixel=PIXEL, normal_left_out=LEFT_OUT,
                               config={"model": "vit_b", "prompt": "box"})


def test_json_means_counts_and_config(results, tmp_path):
  with open(tmp_path / "results.json") as f:
    written = json.load(f)
  assert written == results
  assert written["config"] == {"model": "vit_b", "prompt": "box"}
  mvtec = written["datasets"]["mvtec"]
  assert mvtec["normal_left_out"] == {"total": 78, "per_category": {"bottle": 20, "cable": 58}}
  box = mvtec["prompts"]["box"]
  assert box["num_images"] == 3 and box["steps"] == ["draft", "final"]
  # Over images: (0.5 + 0.7 + 0.9) / 3; over categories: (0.6 + 0.9) / 2.
  assert box["all_images"]["final"]["iou"] == pytest.approx(0.7)
  assert box["all_images"]["draft"]["dice"] == pytest.approx(0.7)
  assert box["all_images"]["draft"]["auroc"] == 0.88
  assert box["all_images"]["final"]["aupro"] is None  # NaN becomes null
  assert box["mean_over_categories"]["final"]["iou"] == pytest.approx(0.75)
  assert box["mean_over_categories"]["draft"]["boundary_iou"] == pytest.approx(0.55)
  assert box["mean_over_categories"]["final"]["auroc"] == pytest.approx(0.9)
  assert box["mean_over_categories"]["draft"]["aupro"] == pytest.approx(0.75)
  assert box["categories"]["bottle"]["num_images"] == 2
  assert box["categories"]["bottle"]["final"] == pytest.approx(
      {"iou": 0.6, "boundary_iou": 0.5, "dice": 0.7, "auroc": 0.95, "aupro": 0.85})
  visa = written["datasets"]["visa"]["prompts"]["box"]
  assert visa["steps"] == ["final"]
  assert visa["categories"]["candle"]["final"]["auroc"] is None
  assert visa["mean_over_categories"]["final"]["aupro"] is None


def test_csv_has_one_row_per_image_and_prompt(results, tmp_path):
  del results
  with open(tmp_path / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["image_path"] for r in rows] == [r.image_path for r in RECORDS]
  assert float(rows[2]["final_dice"]) == 0.95
  assert float(rows[0]["draft_iou"]) == 0.4
  assert rows[3]["draft_iou"] == "" and float(rows[3]["final_iou"]) == 0.3
  assert rows[1]["category"] == "bottle" and rows[1]["prompt"] == "box"


def test_markdown_tables(results, tmp_path):
  text = (tmp_path / "results.md").read_text()
  assert text == reports.markdown_report(results)
  assert "## mvtec, box prompt" in text and "normal images left out: 78" in text
  assert ("| category | n | IoU draft | IoU final | BIoU draft | BIoU final | Dice draft | "
          "Dice final | AUROC draft | AUROC final | AUPRO draft | AUPRO final |") in text
  assert ("| bottle | 2 | 0.500 | 0.600 | 0.400 | 0.500 | 0.600 | 0.700 | 0.900 | 0.950 | "
          "0.800 | 0.850 |") in text
  assert ("| **all images** | 3 | 0.600 | 0.700 | 0.500 | 0.600 | 0.700 | 0.783 | 0.880 | 0.930 "
          "| 0.770 | - |") in text
  assert ("| mean over categories | 2 | 0.650 | 0.750 | 0.550 | 0.650 | 0.750 | 0.825 | 0.850 "
          "| 0.900 | 0.750 | 0.800 |") in text
  visa = text[text.index("## visa"):]
  assert "draft" not in visa
  assert "| candle | 1 | 0.300 | 0.200 | 0.400 | - | - |" in visa


def test_text_table(results):
  out = io.StringIO()
  reports.print_table(results, file=out)
  lines = out.getvalue().splitlines()
  assert lines[0].split() == ["dataset", "prompt", "n", "IoU", "draft", "IoU", "final",
                              "BIoU", "draft", "BIoU", "final", "Dice", "draft", "Dice",
                              "final", "AUROC", "draft", "AUROC", "final", "AUPRO", "draft",
                              "AUPRO", "final"]
  assert lines[1].split() == ["mvtec", "box", "3", "0.600", "0.700", "0.500", "0.600",
                              "0.700", "0.783", "0.880", "0.930", "0.770", "-"]
  assert lines[2].split() == ["visa", "box", "1", "-", "0.300", "-", "0.200", "-", "0.400",
                              "-", "-", "-", "-"]


def runs_with_final_iou(values):
  """{run name: results} where each run's mvtec final IoU is the given value."""
  return {name: reports.summarize([record("mvtec", "bottle", "a", final=(v, v, v))])
          for name, v in values.items()}


def test_comparison_table(results):
  runs = {"SPT": results, **runs_with_final_iou({"SAM": 0.25})}
  table = reports.comparison_table(runs)
  mvtec = table[table.index("## mvtec"):table.index("## visa")]
  assert ("| SPT | 0.600 | 0.700 | 0.500 | 0.600 | 0.700 | 0.783 | 0.880 | 0.930 | 0.770 | - |"
          in mvtec)
  assert "| SAM | - | 0.250 | - | 0.250 | - | 0.250 | - | - | - | - |" in mvtec
  visa = table[table.index("## visa"):]
  assert "| SAM | - | - |" in visa and "| SPT | - | 0.300 |" in visa


def test_comparison_chart_bar_heights(tmp_path):
  path = str(tmp_path / "chart.png")
  reports.comparison_chart(runs_with_final_iou({"high": 0.8, "low": 0.4}), path)
  pixels = np.asarray(Image.open(path).convert("RGB"))

  def bar_height(colour):  # the tallest column of the colour (the legend swatch is short)
    return np.all(pixels == colour, axis=-1).sum(axis=0).max()

  high, low = bar_height(reports._PALETTE[0]), bar_height(reports._PALETTE[1])
  assert high == pytest.approx(2 * low, abs=2)
  with pytest.raises(SptUserError, match="metric"):
    reports.comparison_chart({}, path, metric="accuracy")


def test_flat_means_average_the_datasets(results):
  flat = reports.flat_means(results)
  assert flat["final_iou"] == pytest.approx((0.7 + 0.3) / 2)
  assert flat["mvtec/box/final_iou"] == pytest.approx(0.7)
  assert flat["draft_iou"] == pytest.approx(0.6)  # visa has no draft
  assert flat["final_auroc"] == pytest.approx(0.93)
  assert "final_aupro" not in flat


def test_more_steps_keep_their_order(tmp_path):
  steps = {"step0": (0.1, 0.1, 0.1), "step1": (0.2, 0.2, 0.2), "final": (0.3, 0.3, 0.3)}
  results = reports.write_results(str(tmp_path), [record("mvtec", "bottle", "a", **steps)])
  assert results["datasets"]["mvtec"]["prompts"]["box"]["steps"] == ["step0", "step1", "final"]
  header = reports.text_table(results).splitlines()[0].split()
  assert header[3:9] == ["IoU", "step0", "IoU", "step1", "IoU", "final"]
  with open(tmp_path / "results.csv", newline="") as f:
    assert next(csv.reader(f))[5:8] == ["step0_iou", "step0_boundary_iou", "step0_dice"]


def test_bad_records_name_the_field():
  with pytest.raises(SptUserError, match="scores"):
    ImageRecord("mvtec", "bottle", "crack", "x.png", "box", {})
  with pytest.raises(SptUserError, match=r"scores\['final'\]"):
    ImageRecord("mvtec", "bottle", "crack", "x.png", "box", {"final": {"iou": 1.0}})
  with pytest.raises(SptUserError, match="finite"):
    ImageRecord("mvtec", "bottle", "crack", "x.png", "box", {"final": scores(np.nan, 1, 1)})


def test_skipped_files_and_metric_bounds_are_reported(tmp_path):
  pixel = {("mvtec", "box", None): {
      "final": {"auroc": 0.9, "aupro": 0.8, "auroc_error_bound": 2e-6,
                "aupro_error_bound": 3e-5},
      "draft": {"auroc": 0.8, "aupro": 0.7, "auroc_error_bound": 4e-6,
                "aupro_error_bound": 1e-5}}}
  skipped = {"mvtec": [["/data/bottle/test/crack/001.png", "the image file is empty"]]}
  results = reports.write_results(str(tmp_path), RECORDS[:3], pixel=pixel, skipped=skipped)
  mvtec = json.loads((tmp_path / "results.json").read_text())["datasets"]["mvtec"]
  assert mvtec["skipped_at_build"] == skipped["mvtec"]
  assert mvtec["prompts"]["box"]["all_images"]["final"]["aupro_error_bound"] == 3e-5
  assert results["datasets"]["mvtec"]["skipped_at_build"] == skipped["mvtec"]
  text = (tmp_path / "results.md").read_text()
  assert "Files skipped when the data set was built (1)" in text
  assert "- `/data/bottle/test/crack/001.png`: the image file is empty" in text
  assert "error is at most 4.0e-06 and 3.0e-05" in text
