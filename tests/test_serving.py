"""The serving export of the embedded base and its loader: the predictor's numbers for
any image size and prompt count, the prompt kinds it was asked for, clear refusals."""

import json
import os
import re

import numpy as np
import pytest

from spt_jax import export
from spt_jax.errors import SptUserError
from spt_jax.predictor import SamPredictor
from spt_jax.serving import ServingModel


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  output = str(tmp_path_factory.mktemp("serving") / "embedded")
  assert export.main(["--model", "embedded", "--output", output, "--batch-sizes", "1,2",
                      "--prompts", "box,points1", "--prompt-buckets", "1,4"]) == 0
  return output


def images():
  rng = np.random.default_rng(5)
  return [rng.integers(0, 256, shape, np.uint8) for shape in
          ((180, 240, 3), (256, 256, 3), (300, 140, 3))]


def test_predictions_equal_the_predictors_for_any_size_and_prompt_count(exported):
  model = ServingModel.load(exported)
  boxes = [np.array([[20, 30, 200, 150]]),
           np.array([[0, 0, 100, 100], [50, 60, 250, 250], [10, 200, 80, 255]]),
           np.array([[5, 5, 130, 290]] * 2 + [[40, 40, 100, 250]] * 3)]
  results = model.predict(images(), boxes=boxes)
  predictor = SamPredictor.from_pretrained("embedded")
  for image, image_boxes, result in zip(images(), boxes, results):
    predictor.set_image(image)
    masks, iou, low_res = predictor.predict_batch(boxes=image_boxes, return_logits=True)
    count = len(image_boxes)
    assert result["masks"].shape == (1, count) + image.shape[:2]
    np.testing.assert_allclose(result["low_res_logits"][0], low_res[:, 0], atol=1e-4)
    np.testing.assert_allclose(result["iou"], iou[:, 0], atol=1e-5)
    agree = np.mean(result["masks"][0] == (masks[:, 0] > 0))
    assert agree > 0.999, agree


def test_point_prompts_and_refusals(exported):
  model = ServingModel.load(exported)
  [result] = model.predict(images()[:1], points=[np.array([[[100, 90]], [[30, 40]]])],
                           point_labels=[np.array([[1], [1]])])
  assert result["masks"].shape == (1, 2, 180, 240)
  with pytest.raises(SptUserError, match=r"kind 'box\+points1'; this export takes "
                     r"\['box', 'points1'\]"):
    model.predict(images()[:1], boxes=[np.array([[0, 0, 9, 9]])],
                  points=[np.array([[[3, 3]]])], point_labels=[np.array([[1]])])
  with pytest.raises(SptUserError, match=r"exported for \['cpu'\], not tpu"):
    ServingModel.load(exported, platform="tpu")
  with pytest.raises(SptUserError, match="not a serving export"):
    ServingModel.load(os.path.dirname(exported))


def test_serving_json_describes_the_programs(exported):
  with open(os.path.join(exported, "serving.json")) as f:
    document = json.load(f)
  assert document["batch_sizes"] == [1, 2] and document["prompt_buckets"] == [1, 4]
  assert sorted(document["programs"]) == sorted(
      [f"cpu/embed_b{b}" for b in (1, 2)] +
      [f"cpu/decode_{k}_b{b}_p{p}" for k in ("box", "points1") for b in (1, 2)
       for p in (1, 4)])
  decode = document["programs"]["cpu/decode_box_b2_p4"]
  assert decode["inputs"][0] == "weights" and len(decode["inputs"]) == 5
  assert decode["inputs"][2] == {"boxes": {"shape": ["2", "4", "4"], "dtype": "float32"}}
  assert decode["outputs"]["masks"] == {"shape": ["2", "1", "4", "H", "W"], "dtype": "bool"}
  assert decode["outputs"]["iou"] == {"shape": ["2", "4"], "dtype": "float32"}


@pytest.mark.parametrize("flags,message", [
    (["--platforms", "rocm"], r"platforms \['rocm'\]: expected some of"),
    (["--prompts", "boxes"], "prompt kind 'boxes'"),
    (["--batch-sizes", "0"], "expected counts >= 1"),
])
def test_bad_export_options_are_one_line_errors(tmp_path, capsys, flags, message):
  assert export.main(["--model", "embedded", "--output", str(tmp_path / "x"),
                      *flags]) == 2
  assert re.search(message, capsys.readouterr().err)


def test_an_existing_export_is_not_overwritten(exported, capsys):
  assert export.main(["--model", "embedded", "--output", exported]) == 2
  assert "already holds a serving export" in capsys.readouterr().err
