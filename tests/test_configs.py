"""Every shipped config builds and validates; bad fields and paths fail before compiling."""

import glob
import os
import subprocess
import sys

import pytest
from ml_collections import config_flags

from configs import CONFIG_DIR
from spt_jax import config as config_lib
from spt_jax import jobs
from spt_jax.errors import SptUserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
                      if not p.endswith("__init__.py"))


def _load(path, variant):
  return config_flags.config_flags._LoadConfigModule("config", path).get_config(variant)


def variants(path):
  if path.endswith("default.py"):
    return ["", "quick", "auto,quick"] + [f"{m},quick" for m in config_lib.METHODS]
  if path.endswith("folder.py"):  # the data folder, then the model variant
    return ["/data/line", "/data/line,vit_b", "/data/line,vit_h"]
  return ["", "vit_b", "vit_l", "vit_h"]


@pytest.mark.parametrize("path,variant", [(p, v) for p in CONFIG_FILES for v in variants(p)])
def test_shipped_config_builds_and_validates(path, variant):
  config = _load(path, variant)
  assert config.is_locked
  image_size = jobs.model_image_size(config)
  for block, epochs in ((config.data.train, None), (config.data.eval, 1)):
    config_lib.to_data_config(block, image_size, epochs).check()
  assert config.data.eval.original_canvas >= image_size or config.data.eval.dataset != "synthetic"
  with pytest.raises(AttributeError):
    config.train.no_such_field = 1


def test_only_the_embedded_default_departs_from_the_papers_loss_weights():
  """The tiny default trains the draft step only; benchmark configs keep equal weights."""
  for method in config_lib.METHODS:
    config = _load(os.path.join(CONFIG_DIR, "default.py"), method)
    expected = (1.0, 0.0) if config.model.sdt_steps == 2 else (1.0, 1.0)
    assert tuple(config.loss.step_weights) == expected, method
  assert _load(os.path.join(CONFIG_DIR, "default.py"), "").model.sdt_steps == 2
  for path in CONFIG_FILES:
    if not path.endswith(("default.py", "folder.py")):
      assert tuple(_load(path, "vit_b").loss.step_weights) == (1.0, 1.0), path
  folder = os.path.join(CONFIG_DIR, "folder.py")
  assert tuple(_load(folder, "/data/line").loss.step_weights) == (1.0, 0.0)
  assert tuple(_load(folder, "/data/line,vit_b").loss.step_weights) == (1.0, 1.0)


def run_main(*flags):
  return subprocess.run([sys.executable, "-m", "spt_jax.main", *flags], cwd=REPO,
                        capture_output=True, text=True)


def test_unknown_config_field_is_a_clear_error(tmp_path):
  result = run_main(f"--workdir={tmp_path}", "--config.train.unknown=1")
  assert result.returncode == 2
  assert "config.train.unknown" in result.stderr and "Traceback" not in result.stderr


def test_unknown_variant_is_a_clear_error(tmp_path):
  result = run_main(f"--workdir={tmp_path}", f"--config={CONFIG_DIR}/visa.py:vit_x")
  assert result.returncode == 2 and "expected one of ('vit_b', 'vit_l', 'vit_h')" in result.stderr


def test_missing_base_and_dataset_paths_fail_before_compiling(tmp_path):
  result = run_main(f"--workdir={tmp_path}", f"--config={CONFIG_DIR}/visa.py")
  assert result.returncode == 2 and "model.base is empty" in result.stderr
  (tmp_path / "base").mkdir()
  result = run_main(f"--workdir={tmp_path}", f"--config={CONFIG_DIR}/visa.py",
                    f"--config.model.base={tmp_path / 'base'}")
  assert result.returncode == 2 and "not a model directory" in result.stderr


def test_missing_manual_dir_is_named():
  config = config_flags.config_flags._LoadConfigModule(
      "config", os.path.join(CONFIG_DIR, "default.py")).get_config("")
  with config.unlocked():
    config.data.eval.dataset = "visa"
    config.data.eval.manual_dir = "/nonexistent/visa"
  with pytest.raises(SptUserError, match="data.eval.manual_dir /nonexistent/visa: no such"):
    jobs.check_config(config, "eval")
