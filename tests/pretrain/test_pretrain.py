"""Pretraining: options are checked first, a short run writes a loadable SAM directory."""

import json
import os

import numpy as np
import pytest

from small_models import MICRO_SPEC
from spt_jax.errors import USER_ERROR_EXIT_CODE, SptUserError
from spt_jax.predictor import SamPredictor
from spt_jax.pretrain import cli
from spt_jax.pretrain.train import PretrainSpec
from spt_jax.pretrained import SPEC_FILE, load_pretrained


@pytest.mark.parametrize("field,value", [("steps", -1), ("batch_size", 0),
                                         ("num_targets", 1), ("max_points", 0)])
def test_bad_option_names_it(field, value):
  with pytest.raises(SptUserError, match=field):
    PretrainSpec(**{field: value}).check()


def test_existing_model_in_output_stops_before_training(tmp_path, capsys):
  (tmp_path / SPEC_FILE).write_text("{}")
  assert cli.main(["--output", str(tmp_path)]) == USER_ERROR_EXIT_CODE
  assert "--output" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--eval-examples", "--eval-per-defect"])
def test_bad_evaluation_option_stops_before_training(tmp_path, capsys, option):
  assert cli.main(["--output", str(tmp_path / "model"), option, "0"]) == USER_ERROR_EXIT_CODE
  assert f"{option}=0" in capsys.readouterr().err
  assert not (tmp_path / "model").exists()


def test_short_run_writes_a_sam_directory(tmp_path):
  output = str(tmp_path / "model")
  spec = PretrainSpec(steps=2, batch_size=2, num_targets=2, max_points=1, log_every=1)
  document = cli.run(output, MICRO_SPEC, spec, eval_examples=2, eval_per_defect=1)
  pretrained = load_pretrained(output)
  assert pretrained.spec == MICRO_SPEC
  assert pretrained.metadata["model"] == "sam"
  assert pretrained.metadata["pretrain"]["steps"] == 2
  assert set(pretrained.variables["params"]) == {"image_encoder", "prompt_encoder",
                                                  "mask_decoder"}
  with open(os.path.join(output, cli.EVALUATION_FILE)) as f:
    assert json.load(f) == json.loads(json.dumps(document))
  shapes_eval = document["held_out_shapes"]
  assert 0 <= shapes_eval["box_iou"] <= 1 and 0 <= shapes_eval["points_iou"] <= 1
  assert set(document["anomaly_zero_shot"]["box_iou"]) >= {"wood", "capsule"}
  predictor = SamPredictor.from_pretrained(output)
  predictor.set_image(np.zeros((40, 30, 3), np.uint8))
  masks, scores, _ = predictor.predict(box=np.array([2, 3, 20, 30]), multimask_output=False)
  assert masks.shape == (1, 40, 30) and scores.shape == (1,)
