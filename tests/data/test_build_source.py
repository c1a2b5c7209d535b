"""A build follows its source: another tree, a changed file or another bad-input policy
with the same data_dir is built again; the same tree and options reuse the build."""

import os

import pytest
import tensorflow_datasets as tfds

import fake_trees
from spt_jax.data import builders
from spt_jax.errors import SptUserError

tfds.disable_progress_bar()


def categories(builder, split="test"):
  return sorted(set(builder.info.metadata[split]["category"]))


def build(root, data_dir, **options):
  return builders.build("mvtec_ad", root, data_dir, **options)


def test_a_second_tree_with_the_same_data_dir_is_built(tmp_path, caplog):
  fake_trees.write_mvtec(tmp_path / "a", categories=(("bottle", "RGB"), ("grid", "L")))
  fake_trees.write_mvtec(tmp_path / "b", categories=(("cable", "RGB"),))
  assert categories(build(tmp_path / "a", tmp_path / "tfds")) == ["bottle", "grid"]
  rebuilt = build(tmp_path / "b", tmp_path / "tfds")
  assert categories(rebuilt) == ["cable"]
  assert f"manual_dir was {tmp_path / 'a'}" in caplog.text
  again = builders.load("mvtec_ad", tmp_path / "tfds")  # what later runs read
  assert categories(again) == ["cable"]


def test_a_changed_file_or_policy_rebuilds_and_the_same_source_reuses(tmp_path, caplog):
  fake_trees.write_mvtec(tmp_path / "raw")
  first = build(tmp_path / "raw", tmp_path / "tfds")
  good = 2  # bottle/test/good/000.png, after the two crack images
  size = first.info.metadata["test"]["original_size"][good]
  build(tmp_path / "raw", tmp_path / "tfds")
  assert "rebuilding" not in caplog.text
  image = tmp_path / "raw" / "bottle" / "test" / "good" / "000.png"
  fake_trees.write_image(image, "RGB", seed=99, size=(40, 36))
  changed = build(tmp_path / "raw", tmp_path / "tfds")
  assert "files were added, removed or changed" in caplog.text
  assert changed.info.metadata["test"]["original_size"][good] == [40, 36] != size
  caplog.clear()
  build(tmp_path / "raw", tmp_path / "tfds", on_bad_input="skip")
  assert "on_bad_input was 'error'" in caplog.text


def test_the_data_dir_inside_the_tree_is_not_part_of_the_source(tmp_path, caplog):
  fake_trees.write_mvtec(tmp_path / "raw")
  build(tmp_path / "raw", tmp_path / "raw" / "tfds")
  build(tmp_path / "raw", tmp_path / "raw" / "tfds")
  assert "rebuilding" not in caplog.text
  assert os.path.isdir(tmp_path / "raw" / "tfds")


def test_only_the_needed_split_is_read(tmp_path, caplog):
  fake_trees.write_mvtec(tmp_path / "raw")
  bad = tmp_path / "raw" / "bottle" / "train" / "good" / "001.png"
  bad.write_bytes(b"")  # a bad training image does not stop the evaluation data
  test_only = build(tmp_path / "raw", tmp_path / "tfds", splits=("test",))
  assert set(test_only.info.splits) == {"test"}
  with pytest.raises(SptUserError, match="001.png: the image file is empty"):
    build(tmp_path / "raw", tmp_path / "tfds", splits=("train",))
  assert "split(s) train not built" in caplog.text


def test_a_split_needed_later_builds_both(tmp_path):
  fake_trees.write_mvtec(tmp_path / "raw")
  build(tmp_path / "raw", tmp_path / "tfds", splits=("test",))
  both = build(tmp_path / "raw", tmp_path / "tfds", splits=("train",))
  assert set(both.info.splits) == {"train", "test"}
  assert categories(both, "train") == ["bottle", "grid"]
  info = os.path.join(both.data_dir, "dataset_info.json")
  written = os.stat(info).st_mtime_ns
  again = build(tmp_path / "raw", tmp_path / "tfds", splits=("test",))
  assert set(again.info.splits) == {"train", "test"}
  assert os.stat(info).st_mtime_ns == written  # found, not built again
