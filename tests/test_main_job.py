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

from checkpoint_faults import corrupt_step
from configs import CONFIG_DIR
from spt_jax import export
from spt_jax.predictor import SptPredictor
from spt_jax.train.checkpoints import restore_trainable
from spt_jax.train.model_setup import TINY_SPEC
from tensorboard_events import summary_tags
from weights_conversion import convert_sam, export_spt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = os.path.join(CONFIG_DIR, "default.py")
# Few generated images so the job stays quick; same options for train and eval data.
SMALL_DATA = ["--config.data.train.dataset_options.num_test_per_defect=2",
              "--config.data.eval.dataset_options.num_test_per_defect=2"]


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
  """Runs `python -m spt_jax.main`; all runs share compiled programs (as a user's do)."""
  cache = str(tmp_path_factory.mktemp("xla_cache"))

  def run(workdir, *flags, background=False, expect_code=0):
    command = [sys.executable, "-m", "spt_jax.main", f"--workdir={workdir}",
               f"--compilation_cache={cache}", *flags]
    if background:
      return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == expect_code, result.stdout[-3000:] + result.stderr[-3000:]
    return result

  return run


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory, main_job):
  workdir = tmp_path_factory.mktemp("job")
  result = main_job(workdir, f"--config={DEFAULT}:quick", *SMALL_DATA,
                    "--config.eval.zero_shot_first=true")
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
  report = (workdir / "results.md").read_text()
  assert "| **all images** |" in report
  assert "# Zero-shot SAM vs spt" in report and "| zero-shot SAM |" in report
  assert stdout.rstrip().endswith(f"done; outputs in the workdir: {workdir}")
  assert len(list((workdir / "overlays").glob("*.png"))) == 2
  assert {"loss", "learning_rate"} <= summary_tags(workdir / "tensorboard" / "train")[
      "scalars"]
  evaluated = summary_tags(workdir / "tensorboard" / "eval")
  assert {"final_iou", "draft_iou", "synthetic/box/final_boundary_iou"} <= evaluated["scalars"]
  assert len(evaluated["images"]) == 2 and all(
      tag.startswith("overlays/") for tag in evaluated["images"])
  assert "\r" not in stdout and "ETA" in stdout  # progress lines, not a redrawn line
  trainable, meta = restore_trainable(str(workdir))
  assert set(trainable["adapters"]) == {"image_encoder", "decoders"}
  assert meta["base"]["sha256"]
  assert os.listdir(workdir / "best") == ["4"]  # the final evaluation's step
  best, _ = restore_trainable(str(workdir), "best")
  assert_same_leaves(best, trainable)


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
  table = json.loads((tmp_path / "out" / "predictions.json").read_text())
  assert [row["mask"] for row in table["a.png"]] == ["a_prompt0.png", "a_prompt1.png"]
  assert all(isinstance(row["predicted_iou"], float) for row in table["b.jpg"])
  assert (tmp_path / "out" / "predictions.csv").read_text().count("\n") == 4
  prompts["a.png"]["boxes"].append([80, 110, 20, 15])  # inverted
  (tmp_path / "prompts.json").write_text(json.dumps(prompts))
  failed = main_job(workdir, f"--config={DEFAULT}:quick", "--mode=predict",
                    f"--config.predict.images_dir={images}",
                    f"--config.predict.prompts_file={tmp_path / 'prompts.json'}",
                    f"--config.predict.output_dir={tmp_path / 'out'}", expect_code=2)
  assert "a.png (90x120): box 2 [80.0, 110.0, 20.0, 15.0] is inverted" in failed.stderr
  assert "Traceback" not in failed.stderr
  assert (tmp_path / "out" / "a_prompt1.png").exists()  # nothing of the first run lost


FOLDER_FLAGS = ["--config.data.{block}.dataset=folder",
                "--config.data.{block}.manual_dir={root}",
                "--config.data.{block}.categories=()",
                "--config.data.{block}.split={split}",
                "--config.data.{block}.folder.normal_dir=good",
                "--config.data.{block}.folder.abnormal_dir=defect",
                "--config.data.{block}.folder.test_fraction=0.3"]


def test_own_folder_trains_and_evaluates(main_job, tmp_path):
  """The README's worked example: the example script's folder, with configs/folder.py,
  and with flags alone on the default config; both evaluate the same held-out images."""
  root = tmp_path / "my_line"
  subprocess.run([sys.executable, os.path.join(REPO, "examples", "make_folder.py"),
                  str(root)], check=True, cwd=tmp_path)
  with_config = tmp_path / "with_config"
  main_job(with_config, f"--config={CONFIG_DIR}/folder.py:{root}",
           f"--config.data.train.data_dir={tmp_path / 'tfds'}",
           f"--config.data.eval.data_dir={tmp_path / 'tfds'}",
           "--config.train.num_steps=3", "--config.eval.num_overlays=1")
  flags = [flag.format(block=block, root=root, split=split) for block, split in
           (("train", "train"), ("eval", "test")) for flag in FOLDER_FLAGS]
  from_flags = tmp_path / "from_flags"
  main_job(from_flags, f"--config={DEFAULT}:quick", *flags,
           f"--config.data.train.data_dir={tmp_path / 'tfds'}",
           f"--config.data.eval.data_dir={tmp_path / 'tfds'}",
           "--config.data.eval.original_canvas=0")
  evaluated = []
  for workdir in (with_config, from_flags):
    results = json.loads((workdir / "results.json").read_text())
    box = results["datasets"]["my_line"]["prompts"]["box"]
    assert 0 < box["num_images"] < 56 and 0 <= box["all_images"]["final"]["iou"] <= 1
    evaluated.append(sorted(row.split(",")[3] for row in
                            (workdir / "results.csv").read_text().splitlines()[1:]))
  assert evaluated[0] == evaluated[1] and all(path.startswith("defect/")
                                              for path in evaluated[0])
  trained = {path for path in os.listdir(root / "defect")} - {
      os.path.basename(path) for path in evaluated[0]}
  assert trained  # the rest of the defect images trained


def test_serving_export_predicts_what_eval_predicts(trained_workdir, main_job, tmp_path):
  """--mode=export of the trained workdir, run by spt_jax.serving in a process without
  model code, gives --mode=eval's masks, scores and predicted IoUs bit for bit (at the
  evaluation's batch size, the export's default)."""
  workdir, _ = trained_workdir
  main_job(workdir, f"--config={DEFAULT}:quick", *SMALL_DATA, "--mode=eval",
           "--config.eval.save_predictions=true")
  export_dir = tmp_path / "export"
  main_job(workdir, f"--config={DEFAULT}:quick", *SMALL_DATA, "--mode=export",
           f"--config.export.output_dir={export_dir}")
  assert sorted(os.listdir(export_dir / "cpu")) == [
      "decode_box_b8_p1.jax_exported", "decode_box_b8_p8.jax_exported",
      "embed_b8.jax_exported"]
  result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "serving_parity.py"),
                           str(export_dir), str(workdir)], capture_output=True, text=True,
                          cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  compared = json.loads(result.stdout.strip().splitlines()[-1])
  images = compared["images"]
  assert images == len(os.listdir(workdir / "predictions")) > 8  # several batches
  assert compared["same"] == {"masks": images, "scores": images, "iou": images}, compared
  assert compared["input_sizes_match"] and not compared["flax_imported"]


def test_best_step_becomes_a_self_contained_model_directory(trained_workdir, tmp_path):
  workdir, _ = trained_workdir
  directory = tmp_path / "model"
  assert export.main(["--model", str(workdir / "best"), "--output", str(directory),
                      "--model-directory"]) == 0
  assert sorted(os.listdir(directory)) == ["model_spec.json", "variables"]
  image, box = np.full((90, 120, 3), 128, np.uint8), np.array([10, 20, 80, 70])
  outputs = []
  for source in (directory, workdir):
    predictor = SptPredictor.from_pretrained(str(source), relation_impl="xla")
    predictor.set_image(image)
    outputs.append(predictor.predict(box=box, return_logits=True)[0])
  np.testing.assert_array_equal(*outputs)


def test_prompt_free_evaluation_and_inspection_of_a_folder(trained_workdir, main_job,
                                                           tmp_path):
  """eval.prompts=auto: memory banks of the held-out categories' normal images, every
  test image (normal ones too) scored, SPT and zero-shot SAM on the same boxes; then
  --mode=predict on a folder with no prompts file, from a good_dir and from the bank."""
  workdir, _ = trained_workdir
  result = main_job(workdir, f"--config={DEFAULT}:quick,auto", *SMALL_DATA, "--mode=eval",
                    "--config.eval.prompts=auto", "--config.eval.zero_shot_first=true",
                    "--config.eval.num_overlays=2")
  results = json.loads((workdir / "prompt_free" / "results.json").read_text())
  categories = ["capsule", "plate", "wire_mesh"]
  assert sorted(results["categories"]) == categories
  for method in ("anomaly map", "zero-shot SAM", "spt"):
    for metric, value in results["mean"][method].items():
      assert 0 <= value <= 1, (method, metric, value)
  assert sorted(os.listdir(workdir / "memory_bank")) == categories
  assert len(os.listdir(workdir / "prompt_free" / "overlays")) == 2
  assert "| **mean** | spt |" in result.stdout
  good, images = tmp_path / "good", tmp_path / "images"
  good.mkdir()
  images.mkdir()
  rng = np.random.default_rng(0)
  for n in range(6):
    Image.fromarray(rng.integers(100, 110, (64, 80, 3), dtype=np.uint8)).save(
        good / f"ok_{n}.png")
  defective = rng.integers(100, 110, (64, 80, 3), dtype=np.uint8)
  defective[20:40, 30:50] = 255
  Image.fromarray(defective).save(images / "part.png")
  for name, extra in (("from_good", f"--config.predict.good_dir={good}"),
                      ("from_bank", "--config.predict.category=plate")):
    out = tmp_path / name
    main_job(workdir, f"--config={DEFAULT}:quick", "--mode=predict",
             f"--config.predict.images_dir={images}", f"--config.predict.output_dir={out}",
             extra)
    table = json.loads((out / "predictions.json").read_text())
    assert set(table) == {"part.png"} and isinstance(table["part.png"]["image_score"], float)
    mask = np.asarray(Image.open(out / "part_mask.png"))
    assert mask.shape == (64, 80) and (out / "part_overlay.png").exists()
  assert (tmp_path / "from_good" / "memory_bank" / "detector.json").exists()
  failed = main_job(workdir, f"--config={DEFAULT}:quick", "--mode=predict",
                    f"--config.predict.images_dir={images}", expect_code=2)
  assert "name one with predict.category" in failed.stderr


TRAIN_ONLY = [f"--config={DEFAULT}:quick", "--mode=train", *SMALL_DATA,
              "--config.train.num_steps=12", "--config.train.checkpoint_every_steps=1",
              "--config.train.log_every_steps=1"]


@pytest.mark.reference
def test_trained_workdir_is_a_model_that_exports(trained_workdir, tmp_path):
  """The workdir loads as a model directory, and its export, run by the authors'-layout
  PyTorch SPT (LoRA alpha 1), gives the trained model's logits (trained at alpha = rank,
  4 decoder heads: the embedded base)."""
  # pylint: disable=g-import-not-at-top  (torch only for this test)
  from meta_reference import make_test_image
  from spt_reference import TorchSide, load_exported
  # pylint: enable=g-import-not-at-top
  workdir, _ = trained_workdir
  predictor = SptPredictor.from_pretrained(str(workdir), relation_impl="xla")
  assert predictor.model.adapters.lora_alpha == predictor.model.adapters.lora_rank
  image, box = make_test_image(180, 240, seed=3), np.array([30, 40, 200, 150])
  predictor.set_image(image)
  masks, _, final, draft = predictor.predict(box=box, return_draft=True)
  exported = str(tmp_path / "spt.pth")
  assert export_spt.main(["--checkpoint", str(workdir), "--output", exported,
                          "--allow-nonstandard"]) == 0
  theirs = TorchSide(load_exported(exported), image, TINY_SPEC.image_size)
  _, _, ref_final, ref_draft = theirs.predict(box=box)
  for ours, reference in ((draft, ref_draft), (final, ref_final)):
    assert np.abs(np.asarray(ours) - reference).max() <= 1e-3 * np.abs(reference).max()
  back = str(tmp_path / "back")  # and read back here: the same model
  assert convert_sam.main(["--checkpoint", exported, "--output", back]) == 0
  again = SptPredictor.from_pretrained(back, relation_impl="xla")
  again.set_image(image)
  masks_again, _, final_again, draft_again = again.predict(box=box, return_draft=True)
  np.testing.assert_array_equal(masks_again, masks)
  np.testing.assert_allclose(final_again, final, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(draft_again, draft, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def straight_run(main_job, tmp_path_factory):
  """The trained leaves of an uninterrupted TRAIN_ONLY run."""
  workdir = tmp_path_factory.mktemp("straight")
  main_job(workdir, *TRAIN_ONLY)
  return restore_trainable(str(workdir))[0]


def assert_same_leaves(got, expected):
  got, expected = dict(_flatten(got)), dict(_flatten(expected))
  assert expected.keys() == got.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(value), err_msg=key)


def test_resume_after_sigkill_matches_an_uninterrupted_run(main_job, straight_run, tmp_path):
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
  assert_same_leaves(restore_trainable(str(killed))[0], straight_run)


def test_sigterm_saves_the_next_step_and_exits_75(main_job, straight_run, tmp_path):
  """Preemption: SIGTERM mid-training saves the step it finishes, exits with code 75;
  the same command resumes, bit-identical to the uninterrupted run. Checkpoints every
  100 steps: the only one saved is the preemption's."""
  flags = [*TRAIN_ONLY, "--config.train.checkpoint_every_steps=100"]
  workdir = tmp_path / "preempted"
  process = main_job(workdir, *flags, background=True)
  metrics = workdir / "metrics_train.jsonl"
  deadline = time.time() + 600
  while process.poll() is None and time.time() < deadline and (
      not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  assert process.wait() == 75
  steps = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
  assert len(steps) == 1 and 3 <= steps[0] < 12, steps
  main_job(workdir, *flags)
  assert_same_leaves(restore_trainable(str(workdir))[0], straight_run)


def _children(pid):
  """Process ids of `pid`'s children (Linux /proc)."""
  with open(f"/proc/{pid}/task/{pid}/children") as f:
    return [int(child) for child in f.read().split()]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_sigterm_to_one_of_two_processes_saves_an_agreed_step(tmp_path):
  """Two processes (launch/multiprocess.py, gloo): SIGTERM to one of them; both save the
  same step and exit 75; the same command resumes, bit-identical to an uninterrupted
  two-process run."""
  flags = [*TRAIN_ONLY, "--config.train.checkpoint_every_steps=100",
           f"--compilation_cache={tmp_path / 'xla_cache'}"]

  def launch(workdir, log_name):
    log = tmp_path / log_name
    with open(log, "w") as stderr:  # a file: a pipe nobody reads would block the job
      process = subprocess.Popen(
          [sys.executable, os.path.join(REPO, "launch", "multiprocess.py"),
           "--processes=2", "--cpu_devices_per_process=1", "--", sys.executable, "-m",
           "spt_jax.main", f"--workdir={workdir}", *flags], cwd=REPO,
          stdout=subprocess.DEVNULL, stderr=stderr,
          env={k: v for k, v in os.environ.items() if k != "SPT_DISTRIBUTED"})
    return process, log

  straight, log = launch(tmp_path / "straight", "straight.log")
  assert straight.wait(timeout=1200) == 0, log.read_text()[-3000:]
  workdir = tmp_path / "preempted"
  launcher, log = launch(workdir, "preempted.log")
  metrics = workdir / "metrics_train.jsonl"
  deadline = time.time() + 900
  while launcher.poll() is None and time.time() < deadline and (
      not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
    time.sleep(0.05)
  os.kill(_children(launcher.pid)[1], signal.SIGTERM)  # process 1 only
  assert launcher.wait(timeout=600) == 75, log.read_text()[-3000:]
  assert "run this same command again to resume" in log.read_text()
  steps = [int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit()]
  assert len(steps) == 1 and 3 <= steps[0] < 12, steps
  resumed, log = launch(workdir, "resumed.log")
  assert resumed.wait(timeout=1200) == 0, log.read_text()[-3000:]
  assert_same_leaves(restore_trainable(str(workdir))[0],
                     restore_trainable(str(tmp_path / "straight"))[0])


def test_a_corrupt_final_checkpoint_is_saved_again(main_job, tmp_path):
  """Rerun after the final step's files were damaged: the step is set aside, trained and
  saved again, bit-identical; evaluation then reads it. With every step damaged,
  evaluation stops with one line (exit 2)."""
  workdir = tmp_path / "job"
  train = [f"--config={DEFAULT}:quick", *SMALL_DATA, "--config.train.num_steps=3",
           "--config.train.checkpoint_every_steps=1"]
  main_job(workdir, *train, "--mode=train")
  final, _ = restore_trainable(str(workdir))
  corrupt_step(workdir / "checkpoints" / "3")
  rerun = main_job(workdir, *train, "--mode=train")
  assert "resumed from step 2" in rerun.stdout + rerun.stderr
  assert "Traceback" not in rerun.stderr and "Exception ignored" not in rerun.stderr
  assert (workdir / "unreadable_checkpoints" / "3").is_dir()
  assert_same_leaves(restore_trainable(str(workdir))[0], final)
  main_job(workdir, *train, "--mode=eval")
  for step in (1, 2, 3):
    corrupt_step(workdir / "checkpoints" / str(step))
  failed = main_job(workdir, *train, "--mode=eval", expect_code=2)
  assert "no readable checkpoint" in failed.stderr and "Traceback" not in failed.stderr


def _flatten(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, f"{prefix}{key}/")
    else:
      yield prefix + key, value
