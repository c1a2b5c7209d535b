"""Which folders read as a trained model, and the error for one that holds none."""

import pytest

from spt_jax.errors import SptUserError
from spt_jax.pretrained import load_pretrained
from spt_jax.train.trained_model import load_trained, locate_step


def test_locates_workdir_step_folders_and_single_steps(tmp_path):
  for step in (2, 5):
    (tmp_path / "checkpoints" / str(step) / "meta").mkdir(parents=True)
  folder = str(tmp_path / "checkpoints")
  assert locate_step(str(tmp_path)) == (folder, None)
  assert locate_step(folder) == (folder, None)
  assert locate_step(str(tmp_path / "checkpoints" / "2")) == (folder, 2)
  assert locate_step(str(tmp_path / "checkpoints" / "7")) is None


def test_a_folder_without_checkpoints_is_an_error_naming_it(tmp_path):
  with pytest.raises(SptUserError, match="no training checkpoint here"):
    load_trained(str(tmp_path))
  with pytest.raises(SptUserError, match="not a model directory .*no training checkpoints"):
    load_pretrained(str(tmp_path))
