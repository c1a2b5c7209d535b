"""The grain input pipeline: built dataset -> decoded, resized, augmented, prompted batches.

`make_pipeline(config)` takes a `DataConfig` (or a mapping / ml_collections ConfigDict of
its fields) and returns a `DataPipeline`; `iter(pipeline)` is grain's checkpointable
iterator (`get_state()` -> bytes, `set_state(bytes)`; grain's PyGrainCheckpointHandler
saves it with Orbax). Records are read from the TFDS `array_record` files through a
random-access source, sharded over JAX processes (process i of n takes every n-th
selected record from the i-th, so each sees every category; with drop_remainder the
shards are cut to equal length, otherwise every record is read exactly once), shuffled
by `seed` within the process's shard (a new order each epoch), transformed in `worker_count`
worker processes (0: in this process) and batched. Random transformations draw from a
generator derived from `seed` and the record's position in the sampler's order, so the
data are the same whatever the worker count, and a restored iterator goes on with exactly
the batches that followed the saved state.

Examples before batching (S = image_size, P = prompt.max_prompts, K = points per prompt,
M = S // 4; batching adds a leading batch axis to every entry):
  image          uint8 (S, S, 3) RGB, resized and zero-padded at bottom/right. The model
                 normalises it and must zero the padding after normalisation (SAM pads
                 the normalised image); input_size says where the padding starts.
  mask           float32 (S, S) in {0, 1}, resized like the image, zero in the padding.
  input_size     int32 (2,): (h, w) of the resized image before padding.
  original_size  int32 (2,): (H0, W0).
  boxes          float32 (P, 4) xyxy in model-input pixels (min/max x, y of the mask's
                 pixels, inclusive; jittered if configured); has_box bool (P,).
  points         float32 (P, K, 2) xy (integer pixel positions); point_labels int32
                 (P, K): 1 positive, 0 negative, -1 padding/absent. K may be 0.
  mask_prompt    float32 (P, M, M): +/- logit coarse mask (only with prompt.mask_prompt);
                 has_mask_prompt bool (P,) (always present).
  prompt_valid   bool (P,): False for padding prompts (fewer regions than P) and for
                 every prompt of an image whose resized mask is empty.
  prompt_regions uint8 (S, S) (only with prompt.per_region): slot p's target is == p + 1.
  original_mask  uint8 (C, C) in {0, 1}, the original-resolution mask zero-padded at
                 bottom/right (only when original_canvas = C is set; eval only).
  category, defect_type, source_path   bytes (numpy 'S' arrays, batchable);
  label          int32: 0 normal, 1 anomalous.

Resize protocols: "sam" (longest side to S, PIL bilinear, like SamPredictor) and
"paper" (exact S x S, torch bilinear without antialias, truncated to uint8, like the
authors' evaluation); see spt_jax.data.resize. With `augment`, a horizontal flip and
large-scale jitter (spt_jax.data.augment) replace the resize. Normal images (empty
masks) are left out unless keep_normal, and counted per category in
`DataPipeline.normal_left_out`;
files skipped when the dataset was built (on_bad_input="skip") are reported as well.

Typical training config: augment=True, shuffle=True, num_epochs=None,
drop_remainder=True, on a split and categories that hold defect images (MVTec-style
train splits hold normal images only, so promptable segmentation trains on the test
split of other categories or data sets and is evaluated on held-out ones); evaluation:
the defaults (split="test", one epoch in order).
"""

import dataclasses
import os
from typing import Any, Mapping

from absl import flags
from absl import logging
import grain.python as grain
import jax
import numpy as np

from spt_jax.data import augment
from spt_jax.data import bad_input
from spt_jax.data import builders
from spt_jax.data import decode
from spt_jax.data import prompts
from spt_jax.data import resize
from spt_jax.data import synthetic
from spt_jax import transforms
from spt_jax.errors import SptUserError
from spt_jax.fields import known_fields

SYNTHETIC = "synthetic"
DEFAULT_SYNTHETIC_DIR = os.path.join("~", ".cache", "spt_jax", "synthetic")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Everything the pipeline needs; every field has a default (the embedded data set).

  dataset: "synthetic" (generated, the default) or a key of builders.BUILDERS.
  manual_dir: the benchmark's extracted tree; needed only to build it the first time.
  data_dir: where built TFDS files live (default: TFDS's; for synthetic, its own folder
    under ~/.cache/spt_jax/synthetic).
  dataset_options: for "synthetic", the arguments of synthetic.ensure_synthetic_dataset
    (categories, image_size, counts, seed).
  folder: for "folder", FolderConfig fields (spt_jax.data.builders.folder); its name
    defaults to the manual_dir's folder name.
  categories: categories to read (empty: all).
  original_canvas: C, to emit original_mask (C, C); every image must fit in it.
  read_threads, read_prefetch: threads reading records and records read ahead, per
    process (grain ReadOptions; records hold encoded images, about 1 MB at 1024 px).
  on_bad_input: "error" or "skip" when building; rebuild: build again even if built.
  """
  dataset: str = SYNTHETIC
  manual_dir: str | None = None
  data_dir: str | None = None
  dataset_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  folder: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  split: str = "test"
  categories: tuple[str, ...] = ()
  image_size: int = 1024
  resize: str = "sam"
  augment: bool = False
  hflip_probability: float = 0.5
  lsj_min_scale: float = 0.1
  lsj_max_scale: float = 2.0
  crop_to_defect: bool = True
  prompt: prompts.PromptConfig = prompts.PromptConfig()
  keep_normal: bool = False
  original_canvas: int | None = None
  seed: int = 0
  shuffle: bool = False
  batch_size: int = 1
  drop_remainder: bool = False
  num_epochs: int | None = 1
  worker_count: int = 0
  worker_buffer_size: int = 1
  read_threads: int = 4
  read_prefetch: int = 64
  on_bad_input: str = "error"
  rebuild: bool = False

  @classmethod
  def from_config(cls, config: "DataConfig | Mapping[str, Any] | Any") -> "DataConfig":
    """A DataConfig from itself, a mapping or an ml_collections ConfigDict of fields.

    `prompt` may be a PromptConfig or a mapping with an optional "mode" (a key of
    prompts.PRESETS) and PromptConfig fields.
    """
    if isinstance(config, cls):
      return config
    fields = known_fields(cls, config, "data config")
    if "prompt" in fields:
      fields["prompt"] = prompts.prompt_config_from(fields["prompt"])
    if "categories" in fields:
      fields["categories"] = tuple(fields["categories"] or ())
    for name in ("dataset_options", "folder"):
      if name in fields:
        fields[name] = dict(fields[name] or {})
    return cls(**fields)

  def check(self) -> "DataConfig":
    """Returns self if the fields are consistent, else raises SptUserError."""
    problems = []
    if self.resize not in resize.PROTOCOLS:
      problems.append(f"resize={self.resize!r}: expected one of {resize.PROTOCOLS}")
    if self.image_size < 16:
      problems.append(f"image_size={self.image_size}: expected >= 16")
    if self.batch_size < 1:
      problems.append(f"batch_size={self.batch_size}: expected >= 1")
    if self.num_epochs is not None and self.num_epochs < 1:
      problems.append(f"num_epochs={self.num_epochs}: expected None (forever) or >= 1")
    if not 0 <= self.seed < 2 ** 32:
      problems.append(f"seed={self.seed}: expected an integer in [0, 2**32)")
    if not 0 < self.lsj_min_scale <= self.lsj_max_scale:
      problems.append("expected 0 < lsj_min_scale <= lsj_max_scale")
    if self.augment and self.original_canvas:
      problems.append("original_canvas is for evaluation: it cannot be used with augment")
    if problems:
      raise SptUserError("data config: " + "; ".join(problems))
    bad_input.check_policy(self.on_bad_input)
    self.prompt.check(self.image_size)
    return self


class _IndexedSource(grain.RandomAccessDataSource):
  """The records of `source` at `indices`, in that order."""

  def __init__(self, source, indices: np.ndarray, description: str):
    self._source = source
    self._indices = indices
    self._description = description

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int):
    return self._source[int(self._indices[index])]

  def __repr__(self) -> str:
    return f"IndexedSource({self._description}, {len(self._indices)} records)"


class _Decode(grain.MapTransform):
  """TFDS record -> image uint8 (H, W, 3), mask bool (H, W) and metadata arrays."""

  def map(self, record):
    path = record["source_path"].decode()
    return {
        "image": decode.decode_image(record["image"], path),
        "mask": decode.decode_mask_png(record["mask"], path + " (stored mask)"),
        "original_size": np.asarray(record["original_size"], np.int32),
        "category": np.asarray(record["category"], np.bytes_),
        "defect_type": np.asarray(record["defect_type"], np.bytes_),
        "label": np.asarray(record["label"], np.int32),
        "source_path": np.asarray(record["source_path"], np.bytes_),
    }


class _Geometry(grain.RandomMapTransform):
  """Resize (evaluation) or flip + large-scale jitter (training), and the canvas."""

  def __init__(self, config: DataConfig):
    self._config = config

  def random_map(self, example, rng):
    config = self._config
    image, mask = example["image"], example["mask"]
    if config.original_canvas:
      example["original_mask"] = transforms.pad_to_square(mask.astype(np.uint8),
                                                           config.original_canvas)
    if config.augment:
      image, mask = augment.random_hflip(image, mask, rng, config.hflip_probability)
      out = augment.large_scale_jitter(image, mask, config.image_size, rng,
                                       config.lsj_min_scale, config.lsj_max_scale,
                                       config.crop_to_defect)
    else:
      out = resize.resize_for_model(image, mask, config.image_size, config.resize)
    example["image"], example["mask"], example["input_size"] = out
    return example


class _Prompts(grain.RandomMapTransform):
  """Adds the prompt arrays (spt_jax.data.prompts.make_prompts)."""

  def __init__(self, config: prompts.PromptConfig):
    self._config = config

  def random_map(self, example, rng):
    example.update(prompts.make_prompts(example["mask"], example["input_size"],
                                        self._config, rng))
    return example


@dataclasses.dataclass
class DataPipeline:
  """A grain DataLoader plus what was selected, left out and skipped.

  num_examples: examples per epoch over all processes (after leaving normals out).
  num_local_examples: those this process reads per epoch (its shard).
  normal_left_out: {category: normal images (empty masks) left out}.
  skipped_at_build: [[path, message], ...] skipped in this split when it was built.
  """
  loader: grain.DataLoader
  config: DataConfig
  categories: tuple[str, ...]
  num_examples: int
  num_local_examples: int
  normal_left_out: dict[str, int]
  skipped_at_build: list[list[str]]

  @property
  def num_normal_left_out(self) -> int:
    return sum(self.normal_left_out.values())

  def __iter__(self):
    """grain's checkpointable iterator (get_state / set_state)."""
    return iter(self.loader)

  def summary(self) -> str:
    c = self.config
    text = (f"{c.dataset}/{c.split}: {self.num_examples} examples of "
            f"{len(self.categories)} categories ({', '.join(self.categories)}); "
            f"{self.num_normal_left_out} normal images (empty masks) left out; "
            f"{len(self.skipped_at_build)} files skipped when building")
    return text + "".join(f"\n  skipped: {m}" for _, m in self.skipped_at_build)


def folder_options(config: DataConfig) -> dict[str, Any]:
  """The FolderConfig fields of a "folder" data config, the name defaulting to the
  manual_dir's folder name."""
  options = dict(config.folder)
  if not options.get("name") and config.manual_dir:
    options["name"] = os.path.basename(os.path.normpath(os.path.expanduser(
        config.manual_dir)))
  return options


def dataset_label(config: DataConfig) -> str:
  """The data set's name in reports: the builder's, or a folder data set's own name."""
  if config.dataset == builders.FolderDataset.name:
    return folder_options(config).get("name") or config.dataset
  return config.dataset


def prepare_dataset(config: DataConfig) -> tuple[DataConfig, Any]:
  """Builds or finds the configured dataset; returns (config, prepared TFDS builder).

  For "synthetic" the returned config names the generated MVTec-layout tree.
  """
  if config.dataset == SYNTHETIC:
    generated = synthetic.ensure_synthetic_dataset(
        config.data_dir or DEFAULT_SYNTHETIC_DIR, **config.dataset_options)
    config = dataclasses.replace(config, **generated.data_config_fields())
  folder = folder_options(config) if config.dataset == builders.FolderDataset.name else None
  if config.manual_dir is None:
    builder = builders.load(config.dataset, config.data_dir, folder)
  else:
    builder = builders.build(config.dataset, config.manual_dir, config.data_dir,
                             on_bad_input=config.on_bad_input, folder=folder,
                             overwrite=config.rebuild, splits=(config.split,))
  return config, builder


def _select(config: DataConfig, builder) -> tuple[np.ndarray, tuple[str, ...], dict]:
  """(record indices, categories, {category: normal images}) of the configured subset."""
  index = builder.info.metadata.get(config.split)
  if index is None:
    raise SptUserError(f"{builder.data_dir}: no split {config.split!r} in {builder.name}; "
                       f"it has {sorted(builder.info.splits)}")
  category = np.asarray(index["category"])
  available = sorted(set(index["category"]))
  wanted = config.categories or tuple(available)
  unknown = sorted(set(wanted) - set(available))
  if unknown:
    raise SptUserError(f"categories {unknown} are not in {builder.name}/{config.split}; "
                       f"it has {available}")
  keep = np.isin(category, wanted)
  empty = np.asarray(index["mask_pixels"]) == 0
  normal = {c: int((keep & empty & (category == c)).sum()) for c in sorted(set(wanted))}
  if not config.keep_normal:
    keep &= ~empty
  indices = np.flatnonzero(keep)
  if not len(indices):
    raise SptUserError(f"{builder.name}/{config.split} categories {list(wanted)}: no "
                       "example with a defect mask (set keep_normal to read normal images)")
  return indices, tuple(sorted(set(wanted))), normal


def largest_image_side(config: DataConfig | Mapping[str, Any] | Any) -> int:
  """The largest image side (H or W, original pixels) of the configured subset: the
  smallest original_canvas that holds it. Builds the data set if needed."""
  config, builder = prepare_dataset(DataConfig.from_config(config).check())
  indices, _, _ = _select(config, builder)
  sizes = np.asarray(builder.info.metadata[config.split]["original_size"])
  return int(sizes[indices].max())


def _shard(indices: np.ndarray, drop_remainder: bool) -> np.ndarray:
  """This JAX process's records: every process_count-th, from its process_index."""
  count, index = jax.process_count(), jax.process_index()
  if drop_remainder:
    indices = indices[:len(indices) - len(indices) % count]
  local = indices[index::count]
  if not len(local):
    raise SptUserError(f"{len(indices)} examples cannot feed {count} processes "
                       "(some would get none)")
  return local


def _check_canvas(config: DataConfig, source, indices: np.ndarray, sizes: np.ndarray):
  too_big = np.flatnonzero(sizes[indices].max(axis=1) > config.original_canvas)
  if len(too_big):
    record = source[int(indices[too_big[0]])]
    h, w = record["original_size"]
    raise SptUserError(
        f"{record['source_path'].decode()}: image is {h}x{w} (HxW), larger than "
        f"original_canvas={config.original_canvas} ({len(too_big)} such images); "
        "expected every image to fit in the canvas")


def batch_spec(config: DataConfig | Mapping[str, Any] | Any) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of the numeric entries of one batch (module docstring), read
  from the config alone: what a program compiled ahead of time takes. The text
  entries (category, defect_type, source_path) stay on the host and are left out."""
  config = DataConfig.from_config(config)
  size, prompt = config.image_size, config.prompt
  p, k = prompt.max_prompts, prompt.points_per_prompt
  shapes = dict(
      image=((size, size, 3), np.uint8), mask=((size, size), np.float32),
      input_size=((2,), np.int32), original_size=((2,), np.int32), label=((), np.int32),
      boxes=((p, 4), np.float32), has_box=((p,), np.bool_),
      points=((p, k, 2), np.float32), point_labels=((p, k), np.int32),
      has_mask_prompt=((p,), np.bool_), prompt_valid=((p,), np.bool_))
  if prompt.mask_prompt:
    shapes["mask_prompt"] = ((p, size // 4, size // 4), np.float32)
  if prompt.per_region:
    shapes["prompt_regions"] = ((size, size), np.uint8)
  if config.original_canvas:
    shapes["original_mask"] = ((config.original_canvas,) * 2, np.uint8)
  return {name: jax.ShapeDtypeStruct((config.batch_size,) + shape, dtype)
          for name, (shape, dtype) in shapes.items()}


def make_pipeline(config: DataConfig | Mapping[str, Any] | Any) -> DataPipeline:
  """Builds (or finds) the dataset and returns its grain pipeline (module docstring)."""
  config = DataConfig.from_config(config).check()
  config, builder = prepare_dataset(config)
  indices, categories, normal = _select(config, builder)
  source = builder.as_data_source(config.split)
  if config.original_canvas:
    sizes = np.asarray(builder.info.metadata[config.split]["original_size"])
    _check_canvas(config, source, indices, sizes)
  local = _shard(indices, config.drop_remainder)
  source = _IndexedSource(source, local, f"{builder.name}/{config.split}")
  if config.worker_count and not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags.
  sampler = grain.IndexSampler(num_records=len(source), shuffle=config.shuffle,
                               num_epochs=config.num_epochs, seed=config.seed)
  loader = grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=[_Decode(), _Geometry(config), _Prompts(config.prompt),
                  grain.Batch(config.batch_size, drop_remainder=config.drop_remainder)],
      worker_count=config.worker_count, worker_buffer_size=config.worker_buffer_size,
      read_options=grain.ReadOptions(num_threads=config.read_threads,
                                     prefetch_buffer_size=config.read_prefetch))
  pipeline = DataPipeline(
      loader=loader, config=config, categories=categories, num_examples=len(indices),
      num_local_examples=len(local),
      normal_left_out={} if config.keep_normal else normal,
      skipped_at_build=builders.skipped_files(builder).get(config.split, []))
  logging.info("%s", pipeline.summary())
  return pipeline
