"""Every benchmark builder on a tiny tree in its real layout, read back through grain."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

import fake_trees
from spt_jax.data import builders
from spt_jax.data.builders import folder as folder_builder
from spt_jax.data import pipeline

tfds.disable_progress_bar()

CANVAS = 40  # Larger than the fake images (24 x 32).


def read_back(tmp_path, dataset, root, split, **config):
  """All examples of a split through the grain pipeline, unbatched, in listing order."""
  loaded = pipeline.make_pipeline(dict(
      dataset=dataset, manual_dir=str(root), data_dir=str(tmp_path / "tfds"), split=split,
      image_size=32, keep_normal=True, original_canvas=CANVAS, **config))
  examples = [{k: v[0] for k, v in batch.items()} for batch in loaded]
  return loaded, examples


def check_split(examples, expected):
  got = [(e["category"].decode(), int(e["label"]), int(e["original_mask"].sum()))
         for e in examples]
  assert got == expected
  for e in examples:
    assert set(np.unique(e["mask"])) <= {0.0, 1.0}
    assert set(np.unique(e["original_mask"])) <= {0, 1}
    assert bool(e["mask"].any()) == bool(e["label"])
    assert e["prompt_valid"][0] == bool(e["label"])
    assert tuple(e["original_size"]) == (fake_trees.H, fake_trees.W)


@pytest.mark.parametrize("dataset,writer,options", [
    ("mvtec_ad", fake_trees.write_mvtec, {}),
    ("mpdd", lambda root: fake_trees.write_mvtec(
        root, (("bracket_black", "RGB"), ("tubes", "RGB"))), {}),
    ("btad", fake_trees.write_btad, {}),
    ("visa", fake_trees.write_visa, {}),
    ("ksdd2", fake_trees.write_ksdd2, {}),
    ("spt_archive", fake_trees.write_spt_archive, {}),
    ("folder", fake_trees.write_folder, dict(folder=dict(
        name="line1", images_dir="images", mask_name="{stem}_mask.png",
        missing_mask="normal"))),
    ("folder", fake_trees.write_normal_abnormal_folder, dict(folder=dict(
        normal_dir="good", abnormal_dir="defect", mask_dir="masks", category="line2"))),
])
def test_builder_reads_its_layout(tmp_path, dataset, writer, options):
  root = tmp_path / "raw"
  expected = writer(root)
  for split, wanted in expected.items():
    loaded, examples = read_back(tmp_path, dataset, root, split, **options)
    check_split(examples, wanted)
    assert loaded.num_examples == len(wanted)
    assert loaded.skipped_at_build == []
  built = builders.load(dataset, tmp_path / "tfds",
                        pipeline.folder_options(pipeline.DataConfig.from_config(
                            dict(options, manual_dir=str(root)))))
  assert {s: built.info.splits[s].num_examples for s in expected} == {
      s: len(v) for s, v in expected.items()}


def test_mvtec_grayscale_category_becomes_rgb(tmp_path):
  fake_trees.write_mvtec(tmp_path / "raw")
  _, examples = read_back(tmp_path, "mvtec_ad", tmp_path / "raw", "train")
  for e in examples:
    channels_equal = (e["image"][..., 0] == e["image"][..., 2]).all()
    assert channels_equal == (e["category"] == b"grid")


def test_visa_defect_types_and_label_id_masks(tmp_path):
  fake_trees.write_visa(tmp_path / "raw")
  _, examples = read_back(tmp_path, "visa", tmp_path / "raw", "test")
  assert [e["defect_type"] for e in examples] == [b"normal", b"anomaly"] * 2
  assert [e["source_path"].decode()[-8:] for e in examples] == [
      "0001.JPG", "/000.JPG"] * 2


def test_normal_images_are_left_out_and_counted(tmp_path):
  fake_trees.write_mvtec(tmp_path / "raw")
  loaded = pipeline.make_pipeline(dict(
      dataset="mvtec_ad", manual_dir=str(tmp_path / "raw"),
      data_dir=str(tmp_path / "tfds"), image_size=32, batch_size=2))
  labels = np.concatenate([b["label"] for b in loaded])
  assert labels.tolist() == [1] * 4
  assert loaded.num_normal_left_out == 2
  assert "2 normal images (empty masks) left out" in loaded.summary()


def test_category_selection(tmp_path):
  fake_trees.write_mvtec(tmp_path / "raw")
  loaded = pipeline.make_pipeline(dict(
      dataset="mvtec_ad", manual_dir=str(tmp_path / "raw"), data_dir=str(tmp_path / "tfds"),
      image_size=32, categories=["grid"]))
  assert {b["category"][0] for b in loaded} == {b"grid"}
  assert loaded.categories == ("grid",)


def test_second_build_finds_the_built_files(tmp_path):
  fake_trees.write_ksdd2(tmp_path / "raw")
  first = builders.build("ksdd2", tmp_path / "raw", tmp_path / "tfds")
  info = os.path.join(first.data_dir, "dataset_info.json")
  written = os.stat(info).st_mtime_ns
  built = builders.build("ksdd2", tmp_path / "raw", tmp_path / "tfds")
  assert os.stat(info).st_mtime_ns == written  # not built again
  assert built.info.splits["train"].num_examples == 2


def test_folder_splits_by_a_stable_hash_and_warns_of_unused_masks(tmp_path, caplog):
  """test_fraction sends each image to the same split whatever else is in the folder;
  a mask no image takes is named in a warning."""
  root = tmp_path / "raw"
  fake_trees.write_normal_abnormal_folder(root)
  fake_trees.write_mask(root / "masks" / "stray.png", [(0, 2, 0, 2)])
  options = dict(normal_dir="good", abnormal_dir="defect", test_fraction=0.5)

  def splits(data_dir):
    built = builders.build("folder", root, data_dir, folder=dict(options, name="line"))
    return {split: sorted(built.as_data_source(split)[i]["source_path"].decode()
                          for i in range(built.info.splits[split].num_examples))
            for split in ("train", "test")}

  with caplog.at_level("WARNING"):
    first = splits(tmp_path / "tfds")
  assert "1 mask file(s)" in caplog.text and "stray.png" in caplog.text
  assert first["train"] and first["test"]
  assert sorted(first["train"] + first["test"]) == sorted(
      f"{d}/{n}" for d in ("good", "defect") for n in os.listdir(root / d))
  for path in first["test"]:
    assert folder_builder.split_of(path, 0.5) == "test"
  fake_trees.write_image(root / "good" / "new_one.png")  # more files: the rest stay
  second = splits(tmp_path / "tfds2")
  for split in ("train", "test"):
    assert set(first[split]) <= set(second[split])
