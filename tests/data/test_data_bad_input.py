"""Bad input: a clear error naming the file and what was expected, or a counted skip."""

import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

import fake_trees
from spt_jax.data import builders
from spt_jax.data import pipeline
from spt_jax.errors import SptUserError

tfds.disable_progress_bar()


def build(tmp_path, policy, dataset="mvtec_ad"):
  return builders.build(dataset, tmp_path / "raw", tmp_path / "tfds", on_bad_input=policy)


def truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])


def garbage(path):
  path.write_bytes(b"this is not an image")


def empty(path):
  path.write_bytes(b"")


def drop_mask(path):
  (path.parents[2] / "ground_truth" / "crack" / f"{path.stem}_mask.png").unlink()


def wrong_size_mask(path):
  fake_trees.write_mask(path.parents[2] / "ground_truth" / "crack" / f"{path.stem}_mask.png",
                        [(1, 5, 1, 5)], size=(fake_trees.H + 2, fake_trees.W))


def empty_mask(path):
  fake_trees.write_mask(path.parents[2] / "ground_truth" / "crack" / f"{path.stem}_mask.png",
                        [])


CASES = {
    "truncated image": (truncate, r"unreadable or truncated image .*expected a complete"),
    "unreadable image": (garbage, r"unreadable or truncated image \(cannot identify image "
                         r"file\); expected a complete"),
    "empty image": (empty, r"001\.png: the image file is empty \(0 bytes\)"),
    "missing mask": (drop_mask, r"missing mask for this anomalous image; expected "
                     r".*ground_truth/crack/001_mask\.png"),
    "mask size differs": (wrong_size_mask, r"mask is 26x32 \(HxW\) but its image .*001\.png "
                          r"is 24x32; expected the same size"),
    "empty mask of an anomalous image": (empty_mask, r"no mask pixel is above 128; expected "
                                         r"the defect of the anomalous image"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_file_is_an_error_naming_it(tmp_path, case):
  fake_trees.write_mvtec(tmp_path / "raw")
  spoil, message = CASES[case]
  bad = tmp_path / "raw" / "bottle" / "test" / "crack" / "001.png"
  spoil(bad)
  with pytest.raises(SptUserError, match=message) as error:
    build(tmp_path, "error")
  assert str(bad.parent) in str(error.value)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_file_is_skipped_counted_and_reported(tmp_path, case, caplog):
  expected = fake_trees.write_mvtec(tmp_path / "raw")
  spoil, message = CASES[case]
  bad = tmp_path / "raw" / "bottle" / "test" / "crack" / "001.png"
  spoil(bad)
  built = build(tmp_path, "skip")
  assert built.info.splits["test"].num_examples == len(expected["test"]) - 1
  skipped = builders.skipped_files(built)
  assert [path for path, _ in skipped["test"]] == [str(bad)]
  assert re.search(message, skipped["test"][0][1])
  assert skipped["train"] == []
  loaded = pipeline.make_pipeline(dict(
      dataset="mvtec_ad", data_dir=str(tmp_path / "tfds"), image_size=32))
  assert len(loaded.skipped_at_build) == 1
  assert "1 files skipped when building" in loaded.summary()
  assert str(bad) in loaded.summary()


def test_wrong_root_names_the_layout_and_what_was_found(tmp_path):
  fake_trees.write_ksdd2(tmp_path / "ksdd2_tree")
  with pytest.raises(SptUserError) as error:
    builders.build("mvtec_ad", tmp_path / "ksdd2_tree", tmp_path / "tfds")
  text = str(error.value)
  assert "no category folder holding train/ or test/" in text
  assert "<root>/<category>/ground_truth/<defect>/<name>_mask.png" in text
  assert "found: test/{20000.png" in text


def test_category_folder_given_as_root_gets_a_hint(tmp_path):
  fake_trees.write_mvtec(tmp_path / "raw")
  with pytest.raises(SptUserError, match="looks like one category's folder"):
    builders.build("mvtec_ad", tmp_path / "raw" / "bottle", tmp_path / "tfds")


@pytest.mark.parametrize("dataset", sorted(set(builders.BUILDERS) - {"folder"}))
def test_missing_or_empty_root(tmp_path, dataset):
  with pytest.raises(SptUserError, match="(?s)manual_dir is missing or empty.*found: the "
                     "folder does not exist"):
    builders.build(dataset, tmp_path / "nowhere", tmp_path / "tfds")
  (tmp_path / "empty").mkdir()
  with pytest.raises(SptUserError, match="found: an empty folder"):
    builders.build(dataset, tmp_path / "empty", tmp_path / "tfds")


def test_visa_without_its_split_csv(tmp_path):
  fake_trees.write_visa(tmp_path / "raw")
  (tmp_path / "raw" / "split_csv" / "1cls.csv").unlink()
  with pytest.raises(SptUserError, match=r"(?s)no split file .*1cls\.csv.*found: candle/"):
    builders.build("visa", tmp_path / "raw", tmp_path / "tfds")


def test_visa_missing_image_and_mask(tmp_path):
  fake_trees.write_visa(tmp_path / "raw")
  (tmp_path / "raw" / "pcb1" / "Data" / "Masks" / "Anomaly" / "000.png").unlink()
  (tmp_path / "raw" / "candle" / "Data" / "Images" / "Normal" / "0001.JPG").unlink()
  with pytest.raises(SptUserError, match=r"0001\.JPG \(listed in .*1cls\.csv line 3\)"):
    build(tmp_path, "error", "visa")
  built = build(tmp_path, "skip", "visa")
  messages = [m for _, m in builders.skipped_files(built)["test"]]
  assert len(messages) == 2
  assert "missing mask for this anomalous image; expected" in messages[1]
  assert built.info.splits["test"].num_examples == 2


@pytest.mark.parametrize("dataset,writer,victim", [
    ("ksdd2", fake_trees.write_ksdd2, "train/10001_GT.png"),
    ("spt_archive", fake_trees.write_spt_archive, "visa/test/000.png"),
    ("btad", fake_trees.write_btad, "02/ground_truth/ko/0000.png"),
])
def test_missing_masks_in_other_layouts(tmp_path, dataset, writer, victim):
  writer(tmp_path / "raw")
  (tmp_path / "raw" / victim).unlink()
  with pytest.raises(SptUserError, match=f"missing .*mask.*expected .*{victim}"):
    build(tmp_path, "error", dataset)


def test_folder_image_without_mask(tmp_path):
  fake_trees.write_folder(tmp_path / "raw")
  options = dict(name="line1", images_dir="images", mask_name="{stem}_mask.png")
  with pytest.raises(SptUserError, match=r"c\.jpg: missing mask; expected .*c_mask\.png "
                     r"\(or set missing_mask='normal'"):
    builders.build("folder", tmp_path / "raw", tmp_path / "tfds", folder=options)


def test_folder_defect_without_mask_names_every_file_it_looked_for(tmp_path):
  fake_trees.write_normal_abnormal_folder(tmp_path / "raw")
  (tmp_path / "raw" / "masks" / "scratch_1.png").unlink()
  options = dict(name="line2", normal_dir="good", abnormal_dir="defect")
  with pytest.raises(SptUserError, match=r"defect/scratch_1\.png: missing mask; expected "
                     r".*masks/scratch_1\.png or .*masks/scratch_1\.png or "
                     r".*masks/scratch_1_mask\.png$"):
    builders.build("folder", tmp_path / "raw", tmp_path / "tfds", folder=options)


@pytest.mark.parametrize("options,message", [
    (dict(name="x"), "give normal_dir, abnormal_dir and/or images_dir"),
    (dict(name="x", normal_dir="nope"), r"normal_dir='nope': no folder .*nope"),
    (dict(name="x", normal_dir="good", test_fraction=1.0), "test_fraction=1.0"),
    (dict(name="x", normal_dir="good", mask_name="mask.png"), "a rule with {stem}"),
    (dict(normal_dir="good"), "needs folder options with a 'name'"),
    (dict(name="x", normal_dir="good", colour="red"), r"folder options \['colour'\]"),
])
def test_folder_options_are_checked(tmp_path, options, message):
  fake_trees.write_normal_abnormal_folder(tmp_path / "raw")
  with pytest.raises(SptUserError, match=message):
    builders.build("folder", tmp_path / "raw", tmp_path / "tfds", folder=options)


def test_image_larger_than_the_canvas(tmp_path):
  fake_trees.write_mvtec(tmp_path / "raw")
  with pytest.raises(SptUserError, match=r"bottle/test/crack/000\.png: image is 24x32 "
                     r"\(HxW\), larger than original_canvas=30 \(4 such images\)"):
    pipeline.make_pipeline(dict(dataset="mvtec_ad", manual_dir=str(tmp_path / "raw"),
                                data_dir=str(tmp_path / "tfds"), image_size=32,
                                original_canvas=30))


def test_bad_config_values(tmp_path):
  fake_trees.write_mvtec(tmp_path / "raw")
  base = dict(dataset="mvtec_ad", manual_dir=str(tmp_path / "raw"),
              data_dir=str(tmp_path / "tfds"), image_size=32)
  with pytest.raises(SptUserError, match=r"categories \['cable'\] are not in mvtec_ad/test; "
                     r"it has \['bottle', 'grid'\]"):
    pipeline.make_pipeline({**base, "categories": ["cable"]})
  with pytest.raises(SptUserError, match=r"no split 'validation'"):
    pipeline.make_pipeline({**base, "split": "validation"})
  with pytest.raises(SptUserError, match=r"data config: unknown key\(s\) \['imagesize'\]"):
    pipeline.make_pipeline({**base, "imagesize": 3})
  with pytest.raises(SptUserError, match=r"on_bad_input='ignore'"):
    pipeline.make_pipeline({**base, "on_bad_input": "ignore"})
  with pytest.raises(SptUserError, match=r"dataset 'mvtec': expected one of"):
    pipeline.make_pipeline({**base, "dataset": "mvtec"})
  assert np.isfinite(pipeline.make_pipeline(base).num_examples)
