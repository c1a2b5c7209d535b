"""The SAM converter: architecture inference and every user-error path (exit code 2)."""

import os
import subprocess
import sys

from flax.traverse_util import flatten_dict
import numpy as np
import pytest

from meta_reference import build_meta_sam, randomize_, torch
from small_models import SMALL_SPEC
from spt_jax.errors import SptUserError
from spt_jax.models.config import PRESETS, sam_preset
from spt_jax.pretrained import load_pretrained
from weights_conversion import convert_sam
from weights_conversion.infer_spec import infer_sam_spec, resolve_spec

pytestmark = pytest.mark.reference


@pytest.fixture(scope="module")
def small_state():
  model = randomize_(build_meta_sam(SMALL_SPEC), seed=2)
  return {k: v.clone() for k, v in model.state_dict().items()}


def run_convert(capsys, checkpoint, output, *extra):
  code = convert_sam.main(["--checkpoint", str(checkpoint), "--output", str(output), *extra])
  return code, capsys.readouterr().err


@pytest.mark.parametrize("name", PRESETS)
def test_infers_published_sizes_from_shapes(name):
  with torch.device("meta"):  # shapes only, no memory, no forward pass
    state = build_meta_sam(sam_preset(name)).state_dict()
  assert infer_sam_spec(state, "test") == sam_preset(name)
  assert resolve_spec(state, name, "test") == sam_preset(name)
  other = next(p for p in PRESETS if p != name)
  with pytest.raises(SptUserError, match=f"does not hold a {other} model"):
    resolve_spec(state, other, "test")


def test_converts_and_round_trips_values(tmp_path, capsys, small_state):
  checkpoint = tmp_path / "sam.pth"
  torch.save(small_state, checkpoint)
  code, err = run_convert(capsys, checkpoint, tmp_path / "out")
  assert code == 0, err
  loaded = load_pretrained(str(tmp_path / "out"))
  assert loaded.spec == SMALL_SPEC
  assert loaded.metadata["model_type"] == "custom"
  params = loaded.variables["params"]
  np.testing.assert_array_equal(
      params["image_encoder"]["blocks_1"]["attn"]["qkv"]["kernel"],
      small_state["image_encoder.blocks.1.attn.qkv.weight"].numpy().T)
  np.testing.assert_array_equal(
      params["mask_decoder"]["output_upscaling_0"]["kernel"],
      small_state["mask_decoder.output_upscaling.0.weight"].numpy().transpose(2, 3, 0, 1))


def test_safetensors_input_gives_the_same_variables(tmp_path, capsys, small_state):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  torch.save(small_state, tmp_path / "sam.pth")
  save_file({k: v.numpy() for k, v in small_state.items()}, str(tmp_path / "sam.safetensors"))
  assert run_convert(capsys, tmp_path / "sam.pth", tmp_path / "a")[0] == 0
  assert run_convert(capsys, tmp_path / "sam.safetensors", tmp_path / "b")[0] == 0
  a = load_pretrained(str(tmp_path / "a")).variables
  b = load_pretrained(str(tmp_path / "b")).variables
  flat_a, flat_b = flatten_dict(a), flatten_dict(b)
  assert flat_a.keys() == flat_b.keys()
  for key, value in flat_a.items():
    np.testing.assert_array_equal(value, flat_b[key])


def _edited(state, drop=(), add=None, replace=None):
  edited = {k: v for k, v in state.items() if k not in drop}
  edited.update(add or {})
  edited.update(replace or {})
  return edited


@pytest.mark.parametrize("edit,expected", [
    (dict(drop=["mask_decoder.iou_prediction_head.layers.2.bias"]),
     "missing key(s): mask_decoder.iou_prediction_head.layers.2.bias"),
    (dict(add={"image_encoder.blocks.0.attn.extra.weight": torch.zeros(3, 3)}),
     "unexpected key(s): image_encoder.blocks.0.attn.extra.weight"),
    (dict(replace={"mask_decoder.iou_prediction_head.layers.2.bias": torch.zeros(7)}),
     "shape mismatch: mask_decoder.iou_prediction_head.layers.2.bias has shape (7,), "
     "expected (4,)"),
])
def test_strict_key_errors(tmp_path, capsys, small_state, edit, expected):
  checkpoint = tmp_path / "sam.pth"
  torch.save(_edited(small_state, **edit), checkpoint)
  code, err = run_convert(capsys, checkpoint, tmp_path / "out")
  assert code == 2
  assert str(checkpoint) in err and expected in err
  assert not os.path.exists(tmp_path / "out" / "model_spec.json")


def test_not_a_sam_checkpoint(tmp_path, capsys):
  checkpoint = tmp_path / "resnet.pth"
  torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, checkpoint)
  code, err = run_convert(capsys, checkpoint, tmp_path / "out")
  assert code == 2 and "not a SAM checkpoint" in err and "conv1.weight" in err


def test_truncated_file(tmp_path, capsys, small_state):
  checkpoint = tmp_path / "sam.pth"
  torch.save(small_state, checkpoint)
  data = checkpoint.read_bytes()
  checkpoint.write_bytes(data[:len(data) // 2])
  code, err = run_convert(capsys, checkpoint, tmp_path / "out")
  assert code == 2 and "unreadable or truncated" in err and str(checkpoint) in err


class _RunsCode:
  def __reduce__(self):
    return (os.system, ("touch should_never_exist",))


def test_pickle_with_code_is_refused_not_executed(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  checkpoint = tmp_path / "evil.pth"
  torch.save({"image_encoder.x": _RunsCode()}, checkpoint)
  code, err = run_convert(capsys, checkpoint, tmp_path / "out")
  assert code == 2 and "refused to unpickle" in err and "\x1b[" not in err
  assert not (tmp_path / "should_never_exist").exists()


def test_missing_file_and_model_type_mismatch(tmp_path, capsys, small_state):
  code, err = run_convert(capsys, tmp_path / "nope.pth", tmp_path / "out")
  assert code == 2 and "checkpoint file not found" in err
  code, err = run_convert(capsys, tmp_path, tmp_path / "out")
  assert code == 2 and "is a directory, expected a checkpoint file" in err
  (tmp_path / "empty.pth").write_bytes(b"")
  code, err = run_convert(capsys, tmp_path / "empty.pth", tmp_path / "out")
  assert code == 2 and "the checkpoint file is empty (0 bytes)" in err
  torch.save(small_state, tmp_path / "sam.pth")
  code, err = run_convert(capsys, tmp_path / "sam.pth", tmp_path / "out", "--model-type", "vit_b")
  assert code == 2 and "does not hold a vit_b model" in err and "encoder.embed_dim" in err


def test_refuses_to_overwrite_a_converted_model(tmp_path, capsys, small_state):
  torch.save(small_state, tmp_path / "sam.pth")
  assert run_convert(capsys, tmp_path / "sam.pth", tmp_path / "out")[0] == 0
  code, err = run_convert(capsys, tmp_path / "sam.pth", tmp_path / "out")
  assert code == 2 and "already holds a converted model" in err


def test_cli_prints_one_line_without_traceback(tmp_path):
  bad = tmp_path / "junk.pth"
  bad.write_bytes(b"not a checkpoint")
  result = subprocess.run(
      [sys.executable, "-m", "weights_conversion.convert_sam", "--checkpoint", str(bad),
       "--output", str(tmp_path / "out")], capture_output=True, text=True,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().count("\n") == 0 and str(bad) in result.stderr
