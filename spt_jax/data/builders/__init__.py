"""TFDS builders of the industrial benchmarks, and building or finding them on disk.

Each builder reads a benchmark's extracted tree from a manual_dir (nothing is
downloaded) and writes `array_record` files under data_dir/<name>/[<config>/]<version>/:

  mvtec_ad     <root>/<category>/{train,test}/<defect>/*.png, ground_truth/<d>/*_mask.png
  mpdd         the same layout
  btad         <root>/{01,02,03}/{train/ok, test/ok|ko}/*.bmp|png, ground_truth/ko/*
  visa         <root>/split_csv/1cls.csv and the paths it lists (label-id masks)
  ksdd2        <root>/{train,test}/<id>.png and <id>_GT.png
  spt_archive  <root>/<dataset>/test/<name>.jpg and <name>.png (the SPT authors' archive)
  folder       <root>/<normal_dir>, <abnormal_dir>, <images_dir>, <mask_dir> (a user's
               own data; options: FolderConfig fields)

`build(name, manual_dir, data_dir)` builds once (later calls find the built files, and
build again when the tree or the options changed: `base.ManualDirBuilder.stale_reason`)
and reports the files skipped under on_bad_input="skip"; `load(name, data_dir)` opens a
built dataset. The synthetic set (spt_jax.data.synthetic) uses the mvtec_ad builder.
"""

import os
import pathlib
from typing import Any, Mapping

from absl import logging
import tensorflow_datasets as tfds

from spt_jax.data.builders import base
from spt_jax.data.builders.btad import Btad
from spt_jax.data.builders.folder import FolderConfig
from spt_jax.data.builders.folder import FolderDataset
from spt_jax.data.builders.ksdd2 import Ksdd2
from spt_jax.data.builders.mpdd import Mpdd
from spt_jax.data.builders.mvtec import MvtecAd
from spt_jax.data.builders.spt_archive import SptArchive
from spt_jax.data.builders.visa import Visa
from spt_jax.errors import SptUserError

BUILDERS: dict[str, type[base.ManualDirBuilder]] = {
    cls.name: cls for cls in (MvtecAd, Mpdd, Btad, Visa, Ksdd2, SptArchive, FolderDataset)
}


def folder_config(folder: Mapping[str, Any] | None) -> FolderConfig:
  """The FolderConfig of folder options, or SptUserError naming what is wrong."""
  if not folder or not folder.get("name"):
    raise SptUserError("dataset 'folder' needs folder options with a 'name' (the built "
                       "set's; by default the manual_dir's folder name) and its folders "
                       "(normal_dir, abnormal_dir, images_dir, mask_dir, ...); got "
                       f"{dict(folder or {})}")
  fields = set(FolderConfig.__dataclass_fields__)
  unknown = sorted(set(folder) - fields)
  if unknown:
    raise SptUserError(f"folder options {unknown}: expected some of {sorted(fields)}")
  return FolderConfig(**folder)


def _make(name: str, data_dir: str | os.PathLike | None, on_bad_input: str,
          folder: Mapping[str, Any] | None, splits=None) -> base.ManualDirBuilder:
  if name not in BUILDERS:
    raise SptUserError(f"dataset {name!r}: expected one of {sorted(BUILDERS)}")
  config = folder_config(folder) if name == FolderDataset.name else None
  if data_dir is not None:
    data_dir = os.path.expanduser(os.fspath(data_dir))
  return BUILDERS[name](data_dir=data_dir, config=config, file_format="array_record",
                        on_bad_input=on_bad_input, splits=splits)


def skipped_files(builder: base.ManualDirBuilder) -> dict[str, list[list[str]]]:
  """{split: [[path, message], ...]} of the files skipped when the dataset was built."""
  return dict(builder.info.metadata.get("skipped", {}))


def build(name: str, manual_dir: str | os.PathLike, data_dir: str | os.PathLike | None, *,
          on_bad_input: str = "error", folder: Mapping[str, Any] | None = None,
          overwrite: bool = False, splits=None) -> base.ManualDirBuilder:
  """Builds dataset `name` from manual_dir into data_dir, or finds it already built.

  Args:
    name: a key of BUILDERS.
    manual_dir: the benchmark's extracted tree (module docstring).
    data_dir: where the TFDS files go (None: TFDS's default, ~/tensorflow_datasets).
    on_bad_input: "error" (raise on the first bad file) or "skip" (skip, count, report).
    folder: FolderConfig fields, for name "folder".
    overwrite: rebuild even if built. Without it, a build whose recorded source (the
      tree's files, on_bad_input, options, builder version) differs is rebuilt too.
    splits: the splits needed (None: all of the tree's). Only these are read, so a bad
      file of another split does not stop them; a later call that needs more builds
      again with both.
  Returns:
    The prepared builder; `builder.as_data_source(split)` reads it.
  """
  builder = _make(name, data_dir, on_bad_input, folder, splits)
  root = pathlib.Path(manual_dir).expanduser()
  if not root.is_dir() or not base.list_dir(root):
    raise builder.wrong_root(root, "manual_dir is missing or empty")
  if builder.is_prepared() and not overwrite:
    stale, missing = builder.stale_reason(root), builder.missing_splits()
    if missing:
      stale = "; ".join(filter(None, [stale, f"split(s) {', '.join(missing)} not built"]))
      wider = None if splits is None else set(splits) | set(builder.built_splits())
      builder = _make(name, data_dir, on_bad_input, folder, wider)
    if stale is None:
      logging.info("%s: using the dataset built in %s", builder.name, builder.data_dir)
      return builder
    logging.warning("%s: rebuilding %s from %s: %s", builder.name, builder.data_dir, root,
                    stale)
    overwrite = True
  logging.info("%s: building from %s into %s", builder.name, root, builder.data_dir)
  mode = (tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS if not overwrite
          else tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.fspath(root), download_mode=mode))
  for split, skips in skipped_files(builder).items():
    if skips:
      logging.warning("%s/%s: %d file(s) skipped (on_bad_input='skip'):\n%s", builder.name,
                      split, len(skips), "\n".join(f"  {message}" for _, message in skips))
  return builder


def load(name: str, data_dir: str | os.PathLike | None,
         folder: Mapping[str, Any] | None = None) -> base.ManualDirBuilder:
  """A dataset already built in data_dir; SptUserError if it is not there."""
  builder = _make(name, data_dir, "error", folder)
  if not builder.is_prepared():
    raise SptUserError(f"{builder.data_dir}: dataset {name!r} is not built there; build it "
                       "from its files with manual_dir (spt_jax.data.builders.build)")
  return builder
