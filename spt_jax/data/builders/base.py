"""Shared logic of the benchmark builders: a manual_dir tree -> validated TFDS examples.

Each benchmark builder only lists its tree (`list_examples`: which image, which mask,
category, defect type, label); this base reads and checks every file, applies the
bad-input policy, and writes the examples with TFDS's `array_record` file format.

Features (no TensorFlow needed: plain tensors, bytes and text, which TFDS encodes and
decodes with numpy alone; `tfds.features.Image` would need TF to encode):
  image          bytes (Tensor shape=(), dtype=object): the source file as it is
                 (PNG, JPEG or BMP); decoded by `spt_jax.data.decode.decode_image`.
  mask           bytes: single-channel PNG, values {0, 255}, original size, binarised by
                 the benchmark's rule (value > MASK_THRESHOLD; 0 for label-id masks);
                 all zeros for normal images.
  category, defect_type, source_path, mask_path   text ("" mask_path for no mask file).
  label          int64: 0 normal, 1 anomalous.
  mask_pixels    int64: number of defect pixels.
  original_size  int32 (2,): (H, W).
Paths are relative to the manual_dir. Records keep the listing order (sorted), which
TFDS preserves because shuffling at write time is off (grain shuffles at read time).

Beside the records, the dataset's metadata.json holds, per split, the per-record index
`{category, defect_type, label, mask_pixels, original_size}` lists (so the pipeline can
select categories and leave out normal images without reading the records),
`skipped`: the files skipped under on_bad_input="skip", with reasons, and `source`
(`source_record`): the tree it was built from (its path and a fingerprint of every
file's name, size and modification time), the bad-input policy, the builder's options
and version. A build whose record differs from the current one is stale.
"""

import dataclasses
import hashlib
import inspect
import os
import pathlib
from typing import Any

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from spt_jax.data import bad_input
from spt_jax.data import decode
from spt_jax.errors import SptUserError

_PROGRESS_EVERY = 500


@dataclasses.dataclass(frozen=True)
class RawExample:
  """One listed example: image and mask files (absolute) and its annotations.

  label None: anomalous iff the mask has defect pixels (KSDD2, the SPT archive, folders);
  defect_type None: then "defect" or "good" by that label.
  mask None: no mask file (a normal image).
  problem: what is wrong with this entry (e.g. its mask is missing), naming the files and
    what was expected; it is then an error or a skip, by the bad-input policy.
  """
  image: pathlib.Path
  mask: pathlib.Path | None
  category: str
  defect_type: str | None
  label: int | None
  problem: str | None = None


def list_dir(path: pathlib.Path) -> list[str]:
  """Sorted visible entry names of a directory, [] if it is not one."""
  if not path.is_dir():
    return []
  return sorted(n for n in os.listdir(path) if not n.startswith("."))


def _options(config) -> dict[str, Any]:
  """The fields a builder's config adds to TFDS's BuilderConfig (none without one)."""
  if config is None:
    return {}
  inherited = {field.name for field in dataclasses.fields(tfds.core.BuilderConfig)}
  return {field.name: getattr(config, field.name) for field in dataclasses.fields(config)
          if field.name not in inherited}


def tree_fingerprint(root: pathlib.Path, skip: str = "") -> str:
  """sha256 over every file under root (but not under `skip`, e.g. the built data
  itself): relative path, size, modification time (ns)."""
  digest = hashlib.sha256()
  skip = os.path.abspath(skip) if skip else ""
  for directory, subdirectories, files in os.walk(root):
    subdirectories[:] = sorted(name for name in subdirectories
                               if os.path.abspath(os.path.join(directory, name)) != skip)
    for name in sorted(files):
      path = os.path.join(directory, name)
      stat = os.stat(path)
      digest.update(f"{os.path.relpath(path, root)}\t{stat.st_size}\t{stat.st_mtime_ns}\n"
                    .encode())
  return digest.hexdigest()


def image_files(path: pathlib.Path) -> list[pathlib.Path]:
  """Sorted image files (any IMAGE_EXTENSIONS case) directly in a directory."""
  return [path / n for n in list_dir(path) if decode.is_image_file(n)
          and (path / n).is_file()]


def found(root: pathlib.Path, limit: int = 12) -> str:
  """A short two-level listing of what is under root, for wrong-root errors."""
  if not root.exists():
    return "the folder does not exist"
  entries = []
  for name in list_dir(root):
    entry = name
    if (root / name).is_dir():
      inner = list_dir(root / name)
      entry += "/{" + ", ".join(inner[:6]) + (", ..." if len(inner) > 6 else "") + "}"
    entries.append(entry)
  if not entries:
    return "an empty folder"
  more = f", ... ({len(entries)} entries)" if len(entries) > limit else ""
  return ", ".join(entries[:limit]) + more


class ManualDirBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A TFDS builder reading a benchmark's tree from manual_dir (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  # Raw mask pixels > MASK_THRESHOLD are defects (0 for label-id masks).
  MASK_THRESHOLD = 128
  # The expected tree, shown in wrong-root errors.
  LAYOUT = ""

  def __init_subclass__(cls, **kwargs):
    super().__init_subclass__(**kwargs)
    cls.MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Place the extracted dataset in manual_dir with this layout:\n{cls.LAYOUT}")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This builder's source file.

    TFDS's own lookup, for classes inside a package, needs the `importlib_resources`
    backport, which is not a dependency here.
    """
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, on_bad_input: str = "error", splits=None, **kwargs):
    """on_bad_input: "error" or "skip" (spt_jax.data.bad_input); splits: the splits to
    build (None: every split of the tree); kwargs go to TFDS."""
    self.on_bad_input = bad_input.check_policy(on_bad_input)
    self.splits = None if splits is None else tuple(sorted(splits))
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self,
        description=(self.__doc__ or "").strip(),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),
            "mask": tfds.features.Tensor(shape=(), dtype=np.object_),
            "category": text,
            "defect_type": text,
            "label": tfds.features.Scalar(dtype=np.int64),
            "mask_pixels": tfds.features.Scalar(dtype=np.int64),
            "original_size": tfds.features.Tensor(shape=(2,), dtype=np.int32),
            "source_path": text,
            "mask_path": text,
        }),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  # TFDS prints two bold lines around every preparation ("Downloading and preparing
  # dataset Unknown size ...", "... downloaded and prepared"): nothing is downloaded
  # here, and `builders.build` logs what it builds.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass

  def wrong_root(self, root: pathlib.Path, problem: str) -> SptUserError:
    """The error for a manual_dir that does not hold this benchmark's layout."""
    return SptUserError(
        f"{root}: {problem}; {self.name} expects this layout:\n{self.LAYOUT}\n"
        f"found: {found(root)}")

  def list_examples(self, root: pathlib.Path) -> dict[str, list[RawExample]]:
    """The examples of each split under root, in a fixed (sorted) order.

    Raises `self.wrong_root(...)` when root does not hold the expected layout.
    """
    raise NotImplementedError

  def source_record(self, root: pathlib.Path) -> dict[str, Any]:
    """What decides this build's content (module docstring), for the tree at root."""
    return {"manual_dir": os.path.abspath(root),
            "files": tree_fingerprint(root, skip=os.fspath(self.data_dir_root)),
            "on_bad_input": self.on_bad_input, "version": str(self.VERSION),
            "options": _options(self.builder_config)}

  def stale_reason(self, root: pathlib.Path) -> str | None:
    """Why the prepared build does not reflect root and the options (None if it does)."""
    built = self.info.metadata.get("source")
    if built is None:
      return "the build records no source (built by an earlier version)"
    current = self.source_record(root)
    changed = [key for key in current if built.get(key) != current[key]]
    if not changed:
      return None
    names = {"manual_dir": f"manual_dir was {built.get('manual_dir')}",
             "files": "files were added, removed or changed",
             "on_bad_input": f"on_bad_input was {built.get('on_bad_input')!r}",
             "version": f"builder version was {built.get('version')}",
             "options": "the builder options differ"}
    return "; ".join(names[key] for key in changed)

  def built_splits(self) -> tuple[str, ...] | None:
    """The splits the prepared build was asked for (None: all of the tree's)."""
    built = (self.info.metadata.get("source") or {}).get("splits")
    return None if built is None else tuple(built)

  def missing_splits(self) -> tuple[str, ...]:
    """Splits asked for (all when `splits` is None) that the prepared build lacks."""
    built = self.built_splits()
    if built is None:
      return ()
    return ("(all)",) if self.splits is None else tuple(
        split for split in self.splits if split not in built)

  def _split_generators(self, dl_manager):
    root = pathlib.Path(dl_manager.manual_dir)
    splits = self.list_examples(root)
    if self.splits is not None:  # only these: a bad file elsewhere does not stop them
      splits = {split: examples for split, examples in splits.items()
                if split in self.splits}
    self.info.metadata["source"] = dict(self.source_record(root), splits=self.splits)
    self.info.metadata["skipped"] = {}
    return {split: self._generate_examples(root, split, examples)
            for split, examples in splits.items()}

  def _generate_examples(self, root, split, examples):
    """Yields (index, example) after reading and checking each listed example."""
    log = bad_input.BadInputLog(self.on_bad_input, f"{self.name}/{split}")
    index = {"category": [], "defect_type": [], "label": [], "mask_pixels": [],
             "original_size": []}
    for position, raw in enumerate(examples):
      example = self._read(root, raw, log)
      if example is not None:
        for key in index:
          value = example[key]
          index[key].append(value.tolist() if isinstance(value, np.ndarray) else value)
        yield len(index["label"]) - 1, example
      if (position + 1) % _PROGRESS_EVERY == 0:
        logging.info("%s/%s: %d/%d files read", self.name, split, position + 1, len(examples))
    self.info.metadata[split] = index
    self.info.metadata["skipped"][split] = [[s.path, s.message] for s in log.skipped]
    logging.info("%s/%s: %d examples written, %d skipped", self.name, split,
                 len(index["label"]), len(log.skipped))

  def _read(self, root: pathlib.Path, raw: RawExample, log: bad_input.BadInputLog):
    """The example dict for `raw`, or None if it was skipped."""
    if raw.problem:
      log.bad(str(raw.image), raw.problem)
      return None
    try:
      image_bytes = decode.read_bytes(raw.image)
      height, width = decode.image_size(image_bytes, str(raw.image))
      if raw.mask is None:
        mask = np.zeros((height, width), bool)
      else:
        mask = decode.binarise_mask(
            decode.read_bytes(raw.mask), str(raw.mask), self.MASK_THRESHOLD)
        if mask.shape != (height, width):
          raise SptUserError(
              f"{raw.mask}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image "
              f"{raw.image} is {height}x{width}; expected the same size")
    except SptUserError as e:
      log.bad(str(raw.image), str(e))
      return None
    pixels = int(mask.sum())
    label = int(pixels > 0) if raw.label is None else raw.label
    if label == 1 and pixels == 0:
      log.bad(str(raw.image),
              f"{raw.mask}: no mask pixel is above {self.MASK_THRESHOLD}; expected the "
              f"defect of the anomalous image {raw.image}")
      return None
    return {
        "image": image_bytes,
        "mask": decode.encode_mask_png(mask),
        "category": raw.category,
        "defect_type": raw.defect_type or ("defect" if label else "good"),
        "label": label,
        "mask_pixels": pixels,
        "original_size": np.array([height, width], np.int32),
        "source_path": os.path.relpath(raw.image, root),
        "mask_path": "" if raw.mask is None else os.path.relpath(raw.mask, root),
    }
