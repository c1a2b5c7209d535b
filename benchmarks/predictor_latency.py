"""Interactive latency of the predictors and of predict mode, on the embedded base.

Each measurement runs in a new Python process with no persistent compilation cache, so
every compilation it needs is counted (as for a user's first session):

  first use   SptPredictor.from_pretrained('embedded') + first set_image + first predict
              (one box), after the imports; goal: under 15 s.
  folders     `predict_folder` (what --mode=predict runs) on 20 generated images with
              one box each, and on 20 images with 1 to 9 boxes each (1, 2, ..., 9, 1,
              ...); goal: the second under 2x the first.

  python -m benchmarks.predictor_latency [--images 20]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

FIRST_USE_GOAL_S = 15.0
FOLDER_RATIO_GOAL = 2.0


def first_use() -> dict:
  started = time.perf_counter()
  # pylint: disable=g-import-not-at-top
  from spt_jax.predictor import SptPredictor
  # pylint: enable=g-import-not-at-top
  imported = time.perf_counter()
  predictor = SptPredictor.from_pretrained("embedded")
  loaded = time.perf_counter()
  image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)
  predictor.set_image(image)
  predictor.features.block_until_ready()
  embedded = time.perf_counter()
  predictor.predict(box=np.array([40, 30, 200, 180]))
  predicted = time.perf_counter()
  return {"import_s": imported - started, "from_pretrained_s": loaded - imported,
          "set_image_s": embedded - loaded, "predict_s": predicted - embedded,
          "total_after_import_s": predicted - imported}


def predict_folder_seconds(images_dir: str, prompts_file: str) -> dict:
  # pylint: disable=g-import-not-at-top
  import jax
  import configs.default
  from spt_jax.predict_folder import predict_folder
  from spt_jax.train.model_setup import setup_model
  # pylint: enable=g-import-not-at-top
  config = configs.default.get_config()
  with config.unlocked():
    config.predict.images_dir, config.predict.prompts_file = images_dir, prompts_file
  setup = setup_model(config, jax.random.PRNGKey(0))
  started = time.perf_counter()
  predict_folder(config, setup.model, setup.variables, tempfile.mkdtemp())
  return {"predict_folder_s": time.perf_counter() - started}


def write_folder(directory: str, count: int, boxes_per_image) -> str:
  """`count` generated 256 x 320 images and a prompts file; returns the file's path."""
  rng = np.random.default_rng(1)
  prompts = {}
  for index in range(count):
    name = f"part_{index:02d}.png"
    Image.fromarray(rng.integers(0, 256, (256, 320, 3), np.uint8)).save(
        os.path.join(directory, name))
    corners = rng.uniform(0, 150, (boxes_per_image(index), 2))
    sizes = rng.uniform(20, 100, corners.shape)
    prompts[name] = {"boxes": np.concatenate([corners, corners + sizes], 1).tolist()}
  path = os.path.join(directory, "prompts.json")
  with open(path, "w") as f:
    json.dump(prompts, f)
  return path


def in_new_process(*args) -> dict:
  """Runs this module with `args` in a new process; its JSON result."""
  output = subprocess.run([sys.executable, "-m", "benchmarks.predictor_latency", *args],
                          capture_output=True, text=True, check=True,
                          env={**os.environ, "JAX_COMPILATION_CACHE_DIR": ""}).stdout
  return json.loads(output.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=20)
  parser.add_argument("--case", choices=("first_use", "folder"), help=argparse.SUPPRESS)
  parser.add_argument("--folder", nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.case == "first_use":
    print(json.dumps(first_use()))
    return
  if args.case == "folder":
    print(json.dumps(predict_folder_seconds(*args.folder)))
    return
  use = in_new_process("--case", "first_use")
  print(f"first use (new process): import {use['import_s']:.1f} s, from_pretrained "
        f"{use['from_pretrained_s']:.1f} s, first set_image {use['set_image_s']:.1f} s, "
        f"first predict {use['predict_s']:.1f} s: {use['total_after_import_s']:.1f} s after "
        f"the imports (goal < {FIRST_USE_GOAL_S:.0f} s: "
        f"{'met' if use['total_after_import_s'] < FIRST_USE_GOAL_S else 'NOT met'})",
        flush=True)
  seconds = {}
  for name, boxes in (("1 box", lambda i: 1), ("1-9 boxes", lambda i: 1 + i % 9)):
    directory = tempfile.mkdtemp()
    prompts_file = write_folder(directory, args.images, boxes)
    seconds[name] = in_new_process("--case", "folder", "--folder", directory,
                                   prompts_file)["predict_folder_s"]
    print(f"predict_folder, {args.images} images, {name} each: {seconds[name]:.1f} s",
          flush=True)
  ratio = seconds["1-9 boxes"] / seconds["1 box"]
  print(f"1-9 boxes / 1 box: {ratio:.2f} (goal < {FOLDER_RATIO_GOAL:.0f}: "
        f"{'met' if ratio < FOLDER_RATIO_GOAL else 'NOT met'})", flush=True)


if __name__ == "__main__":
  main()
