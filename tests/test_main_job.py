"""The main job end to end on the generated data with the tiny model: train, evaluate,
predict, and resume after SIGKILL with the same final parameters."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from configs import CONFIG_DIR
from spt_jax.train.checkpoints import restore_trainable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(CONFIG_DIR, "default.py")
# Few generated images so the job stays quick; same options for train and eval data.
SMALL_DATA = ["--config.data.train.dataset_options.num_test_per_defect=2",
              "--config.data.eval.dataset_options.num_test_per_defect=2"]


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
  """Runs `python -m spt_jax.main`; all runs share compiled programs (as a user's do)."""
  cache = str(tmp_path_factory.mktemp("xla_cache"))

  def run(workdir, *flags, background=False):
    command = [sys.executable, "-m", "spt_jax.main", f"--workdir={workdir}",
               f"--compilation_cache={cache}", *flags]
    if background:
      return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result

  return run


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory, main_job):
  workdir = tmp_path_factory.mktemp("job")
  result = main_job(workdir, f"--config={DEFAULT}:quick", *SMALL_DATA)
  return workdir, result.stdout


def test_train_and_eval_writes_results_within_range(trained_workdir):
  workdir, stdout = trained_workdir
  assert "step 4/4" in stdout and "IoU final" in stdout
  results = json.loads((workdir / "results.json").read_text())
  box = results["datasets"]["synthetic"]["prompts"]["box"]
  assert box["num_images"] > 0 and box["steps"] == ["draft", "final"]
  for step in ("draft", "final"):
    row = box["all_images"][step]
    for metric in ("iou", "boundary_iou", "dice", "auroc", "aupro"):
      assert 0.0 <= row[metric] <= 1.0, (step, metric, row)
  assert (workdir / "results.csv").read_text().count("\n") == box["num_images"] + 1
  assert "| **all images** |" in (workdir / "results.md").read_text()
  assert len(list((workdir / "overlays").glob("*.png"))) == 2
  assert list((workdir / "tensorboard" / "train").glob("events.out.tfevents.*"))
  trainable, meta = restore_trainable(str(workdir))
  assert set(trainable["adapters"]) == {"image_encoder", "decoders"}
  assert meta["base"]["sha256"]


def test_predict_mode_writes_masks(trained_workdir, main_job, tmp_path):
  workdir, _ = trained_workdir
  images = tmp_path / "images"
  images.mkdir()
  rng = np.random.default_rng(0)
  for name, size in (("a.png", (120, 90)), ("b.jpg", (64, 200)), ("c.png", (50, 50))):
    Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8)).save(images / name)
  prompts = {"a.png": {"boxes": [[10, 10, 60, 100], [0, 0, 89, 119]]},
             "b.jpg": {"points": [[[30, 20], [150, 40]]], "point_labels": [[1, 0]]}}
  (tmp_path / "prompts.json").write_text(json.dumps(prompts))
  result = main_job(workdir, f"--config={DEFAULT}:quick", "--mode=predict",
                    f"--config.predict.images_dir={images}",
                    f"--config.predict.prompts_file={tmp_path / 'prompts.json'}",
                    f"--config.predict.output_dir={tmp_path / 'out'}")
  assert "1 image(s) without prompts skipped: c.png" in result.stdout
  for name, size in (("a_prompt0.png", (120, 90)), ("a_prompt1.png", (120, 90)),
                     ("b_prompt0.png", (64, 200))):
    mask = np.asarray(Image.open(tmp_path / "out" / name))
    assert mask.shape == size and set(np.unique(mask)) <= {0, 255}
  assert (tmp_path / "out" / "a_overlay.png").exists()


TRAIN_ONLY = [f"--config={DEFAULT}:quick", "--mode=train", *SMALL_DATA,
              "--config.train.num_steps=12", "--config.train.checkpoint_every_steps=1",
              "--config.train.log_every_steps=1"]


def test_resume_after_sigkill_matches_an_uninterrupted_run(main_job, tmp_path):
  main_job(tmp_path / "straight", *TRAIN_ONLY)
  killed = tmp_path / "killed"
  process = main_job(killed, *TRAIN_ONLY, background=True)
  marker = killed / "checkpoints" / "3" / "commit_success.txt"
  deadline = time.time() + 600
  while not marker.exists() and process.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  steps = [int(d) for d in os.listdir(killed / "checkpoints") if d.isdigit()]
  assert 3 <= max(steps) < 12, steps  # killed mid-training
  resumed = main_job(killed, *TRAIN_ONLY)
  assert "resumed from step" in resumed.stdout + resumed.stderr
  expected, _ = restore_trainable(str(tmp_path / "straight"))
  got, _ = restore_trainable(str(killed))
  flat = lambda tree: {k: np.asarray(v) for k, v in _flatten(tree)}
  expected, got = flat(expected), flat(got)
  assert expected.keys() == got.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def _flatten(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, f"{prefix}{key}/")
    else:
      yield prefix + key, value
