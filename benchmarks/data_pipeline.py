"""Input pipeline throughput at 1024 with the training augmentation, against the train step.

Generates a synthetic set at the source size (MVTec images are 700 to 1024 px), runs the
training pipeline (decode, flip, large-scale jitter, prompts, batching) with each worker
count, and prints images/s, the time of each stage per image, and the ratio of the
pipeline's rate to the rate a training step consumes (`--train_step_seconds` per batch;
the default is the SPT authors' vit_b step as measured on a 2-core CPU).

  python -m benchmarks.data_pipeline [--worker_counts=0,2] [--batches=30]
"""

import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
import tensorflow_datasets as tfds

from benchmarks import common
from spt_jax.data import augment
from spt_jax.data import decode
from spt_jax.data import pipeline
from spt_jax.data import prompts

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Synthetic set folder (default: temp).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 1024, "Model input size S.")
_SOURCE_SIZE = flags.DEFINE_integer("source_size", 1024, "Side of the generated images.")
_CATEGORIES = flags.DEFINE_list("categories", ["brushed_metal", "washer", "capsule"],
                                "Synthetic categories to generate.")
_PER_DEFECT = flags.DEFINE_integer("per_defect", 3, "Test images per defect type.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1, "Batch size (the paper: 1 per device).")
_BATCHES = flags.DEFINE_integer("batches", 30, "Timed batches per worker count.")
_WORKER_COUNTS = flags.DEFINE_list("worker_counts", ["0", "2"], "Worker counts to time.")
_PROMPT = flags.DEFINE_string("prompt", "box", "Prompt mode (spt_jax.data.prompts.PRESETS).")
_STEP_SECONDS = flags.DEFINE_float("train_step_seconds", 33.7,
                                   "Seconds per training step to compare with.")


def training_config(data_dir: str, worker_count: int) -> dict:
  return dict(
      data_dir=data_dir, split="test", image_size=_IMAGE_SIZE.value, augment=True,
      shuffle=True, num_epochs=None, drop_remainder=True, batch_size=_BATCH_SIZE.value,
      worker_count=worker_count, prompt=dict(mode=_PROMPT.value),
      dataset_options=dict(categories=_CATEGORIES.value, image_size=_SOURCE_SIZE.value,
                           num_train=0, num_test_good=0,
                           num_test_per_defect=_PER_DEFECT.value))


def time_stages(data_dir: str) -> dict[str, float]:
  """Seconds per image of decoding, flip + LSJ, and prompts, in this process."""
  config = pipeline.DataConfig.from_config(training_config(data_dir, 0))
  config, builder = pipeline.prepare_dataset(config)
  source = builder.as_data_source("test")
  rng = np.random.default_rng(0)
  totals = {"decode": 0.0, "flip + jitter": 0.0, "prompts": 0.0}
  count = min(len(source), 20)
  for i in range(count):
    record = source[i]
    start = time.perf_counter()
    image = decode.decode_image(record["image"], "")
    mask = decode.decode_mask_png(record["mask"], "")
    decoded = time.perf_counter()
    image, mask = augment.random_hflip(image, mask, rng)
    out = augment.large_scale_jitter(image, mask, config.image_size, rng)
    jittered = time.perf_counter()
    prompts.make_prompts(out[1], out[2], config.prompt, rng)
    done = time.perf_counter()
    totals["decode"] += decoded - start
    totals["flip + jitter"] += jittered - decoded
    totals["prompts"] += done - jittered
  return {k: v / count for k, v in totals.items()}


def time_pipeline(data_dir: str, worker_count: int) -> float:
  """Images per second of the whole training pipeline after a warm-up."""
  iterator = iter(pipeline.make_pipeline(training_config(data_dir, worker_count)))
  for _ in range(3 + 2 * worker_count):
    next(iterator)
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    next(iterator)
  return _BATCHES.value * _BATCH_SIZE.value / (time.perf_counter() - start)


def main(argv):
  del argv
  tfds.disable_progress_bar()
  data_dir = _DATA_DIR.value or os.path.join(tempfile.gettempdir(), "spt_jax_bench_data")
  _, seconds = common.timed(lambda: pipeline.make_pipeline(training_config(data_dir, 0)))
  print(f"synthetic set ({_SOURCE_SIZE.value} px, {', '.join(_CATEGORIES.value)}) ready in "
        f"{seconds:.1f} s (generated once, then reused)")
  print(f"per image at S={_IMAGE_SIZE.value}, in-process:")
  for stage, seconds in time_stages(data_dir).items():
    print(f"  {stage:14s} {1000 * seconds:7.1f} ms")
  consumed = _BATCH_SIZE.value / _STEP_SECONDS.value
  for worker_count in map(int, _WORKER_COUNTS.value):
    rate = time_pipeline(data_dir, worker_count)
    print(f"workers={worker_count}: {rate:6.1f} images/s; a {_STEP_SECONDS.value:g} s train "
          f"step takes {consumed:.3f} images/s: pipeline/step ratio {rate / consumed:,.0f}x")


if __name__ == "__main__":
  app.run(main)
