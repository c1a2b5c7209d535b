"""The grain pipeline: the example contract, determinism, resume, sharding, workers."""

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from spt_jax.data import pipeline
from spt_jax.data import prompts
from spt_jax.data import synthetic

tfds.disable_progress_bar()

S = 64
CATEGORIES = ("woven", "washer")


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("synthetic")
  synthetic.ensure_synthetic_dataset(directory, CATEGORIES, **SYNTHETIC_OPTIONS)
  return str(directory)


SYNTHETIC_OPTIONS = dict(image_size=48, num_train=4, num_test_good=1, num_test_per_defect=1)


def config(directory, **fields):
  base = dict(data_dir=directory, image_size=S, batch_size=2,
              dataset_options=dict(categories=CATEGORIES, **SYNTHETIC_OPTIONS))
  return {**base, **fields}


def training(directory, **fields):
  """Training on the defect images (the synthetic train split, like MVTec's, is normal)."""
  return config(directory, **{**dict(augment=True, shuffle=True, num_epochs=None,
                                    drop_remainder=True), **fields})


def batches(loaded_or_iterator, count):
  iterator = iter(loaded_or_iterator)
  return [next(iterator) for _ in range(count)]


def assert_same(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_example_contract(synthetic_dir):
  prompt = dict(mode="box_per_region", max_prompts=3, num_points=2, num_negative_points=1,
                mask_prompt=True)
  loaded = pipeline.make_pipeline(config(synthetic_dir, prompt=prompt, original_canvas=50))
  batch = next(iter(loaded))
  b, p, k = 2, 3, 3
  expected = {
      "image": (np.uint8, (b, S, S, 3)), "mask": (np.float32, (b, S, S)),
      "input_size": (np.int32, (b, 2)), "original_size": (np.int32, (b, 2)),
      "boxes": (np.float32, (b, p, 4)), "has_box": (np.bool_, (b, p)),
      "points": (np.float32, (b, p, k, 2)), "point_labels": (np.int32, (b, p, k)),
      "mask_prompt": (np.float32, (b, p, S // 4, S // 4)),
      "has_mask_prompt": (np.bool_, (b, p)), "prompt_valid": (np.bool_, (b, p)),
      "prompt_regions": (np.uint8, (b, S, S)), "original_mask": (np.uint8, (b, 50, 50)),
      "label": (np.int32, (b,)),
  }
  for key, (dtype, shape) in expected.items():
    assert batch[key].dtype == dtype and batch[key].shape == shape, key
  for key in ("category", "defect_type", "source_path"):
    assert batch[key].dtype.kind == "S" and batch[key].shape == (b,)
  assert set(batch) == set(expected) | {"category", "defect_type", "source_path"}
  assert (batch["original_size"] == 48).all() and (batch["input_size"] == S).all()
  assert batch["prompt_valid"][:, 0].all() and (batch["label"] == 1).all()
  assert (batch["original_mask"][:, 48:].sum() == 0) and batch["original_mask"].any()


@pytest.mark.parametrize("prompt, canvas", [
    (dict(mode="box_per_region", max_prompts=3, num_points=2, num_negative_points=1,
          mask_prompt=True), 50),
    (dict(mode="box"), 0)])
def test_batch_spec_describes_real_batches(synthetic_dir, prompt, canvas):
  """What programs compiled ahead of time take is what the pipeline gives."""
  fields = config(synthetic_dir, prompt=prompt, original_canvas=canvas or None)
  batch = next(iter(pipeline.make_pipeline(fields)))
  spec = pipeline.batch_spec(fields)
  numeric = {k: v for k, v in batch.items() if v.dtype.kind != "S"}
  assert set(spec) == set(numeric)
  for key, value in numeric.items():
    assert (spec[key].shape, spec[key].dtype) == (value.shape, value.dtype), key


def test_sam_and_paper_protocols_and_boxes(synthetic_dir):
  for protocol in ("sam", "paper"):
    loaded = pipeline.make_pipeline(config(synthetic_dir, resize=protocol, batch_size=1))
    for batch in loaded:
      mask = batch["mask"][0]
      assert batch["input_size"][0].tolist() == [S, S]  # Square sources: same size.
      assert batch["boxes"][0, 0].tolist() == prompts.mask_box(mask > 0).tolist()


def test_training_batches_with_augmentation(synthetic_dir):
  for batch in batches(pipeline.make_pipeline(training(synthetic_dir)), 6):
    for image, mask, (h, w) in zip(batch["image"], batch["mask"], batch["input_size"]):
      assert 1 <= h <= S and 1 <= w <= S
      assert not image[h:].any() and not image[:, w:].any()
      assert not mask[h:].any() and not mask[:, w:].any()
    assert (batch["label"] == 1).all()


def test_deterministic_shuffling_by_seed(synthetic_dir):
  def paths(seed):
    loaded = pipeline.make_pipeline(config(synthetic_dir, shuffle=True, seed=seed))
    return [p for batch in loaded for p in batch["source_path"].tolist()]
  first, again, other = paths(1), paths(1), paths(2)
  assert first == again and first != other and sorted(first) == sorted(other)
  assert len(first) == 9  # 4 + 5 defect types; the 2 normal test images are left out.


def test_resume_mid_epoch_gives_the_same_following_batches(synthetic_dir):
  fields = training(synthetic_dir, num_epochs=3, prompt=dict(mode="box_points",
                                                            box_jitter=0.1, num_points=2))
  iterator = iter(pipeline.make_pipeline(fields))
  batches(iterator, 3)
  state = iterator.get_state()
  following = batches(iterator, 5)  # Crosses into the next epoch (9 records, batch 2).
  restored = iter(pipeline.make_pipeline(fields))
  restored.set_state(state)
  assert_same(batches(restored, 5), following)


def test_sharding_over_jax_processes(synthetic_dir, monkeypatch):
  seen = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  for index in range(2):
    monkeypatch.setattr(jax, "process_index", lambda index=index: index)
    loaded = pipeline.make_pipeline(config(synthetic_dir, batch_size=1))
    seen.append([p for batch in loaded for p in batch["source_path"].tolist()])
  assert not set(seen[0]) & set(seen[1])
  assert len(seen[0]) + len(seen[1]) == 9  # Uneven shards: every example once.
  assert {p.split(b"/")[0] for p in seen[1]} == {b"washer", b"woven"}
  equal = pipeline.make_pipeline(config(synthetic_dir, batch_size=1, drop_remainder=True))
  assert (equal.num_examples, equal.num_local_examples) == (9, 4)


def test_config_dict_and_defaults(synthetic_dir):
  loaded = pipeline.make_pipeline(ml_collections.ConfigDict(config(
      synthetic_dir, categories=["washer"], prompt={"mode": "points", "num_points": 3})))
  batch = next(iter(loaded))
  assert loaded.config.dataset == "mvtec_ad" and loaded.categories == ("washer",)
  assert batch["points"].shape == (2, 1, 3, 2)
  assert pipeline.DataConfig().dataset == pipeline.SYNTHETIC


@pytest.mark.slow
def test_worker_processes_give_the_same_examples_and_resume(synthetic_dir):
  fields = config(synthetic_dir, shuffle=True, num_epochs=2, batch_size=1,
                  prompt=dict(mode="points", num_points=2))
  in_process = batches(pipeline.make_pipeline(fields), 18)
  workers = pipeline.make_pipeline({**fields, "worker_count": 2})
  iterator = iter(workers)
  from_workers = batches(iterator, 4)
  state = iterator.get_state()
  following = batches(iterator, 6)
  by_path = {(i // 9, b["source_path"][0]): b for i, b in enumerate(in_process)}
  for i, batch in enumerate(from_workers + following):
    assert_same([batch], [by_path[(i // 9, batch["source_path"][0])]])
  restored = iter(workers)
  restored.set_state(state)
  assert_same(batches(restored, 6), following)
