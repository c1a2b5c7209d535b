"""The main job's configuration: every field with its default, and the checks run first.

Config files (`configs/*.py`) define `get_config(arg)` returning `base_config()` with
fields changed; the command line changes single fields (`--config.train.num_steps=5`).
The dict is locked: a field that does not exist is an error, not a silent no-op.

Fields:
  model.base         '' (random init, tests only), 'embedded' (the shipped tiny
                     pretrained SAM), or a directory from weights_conversion.convert_sam
                     (SAM or SPT).
  model.type         size when base is '': a preset ('vit_b'/'vit_l'/'vit_h') or 'tiny'.
  model.adapters     AdapterSpec fields (LoRA rank/alpha/placement, VRA).
  model.sdt_steps    2: draft -> refine (SPT); 1: one decoder pass.
  model.relation_impl, global_attention_impl, window_attention_impl, dtype, remat,
                     query_chunk, prompt_chunk: see spt_jax.spt.model / models.sam
                     (prompt_chunk: the decoders' prompts per pass, each pass
                     rematerialised; 0 = all at once); cpu_scheduler: XLA:CPU's scheduler
                     on a CPU mesh (spt_jax.parallel.cpu_compiler; 'auto': the
                     memory-optimised one for train steps, XLA's default for the rest).
  method             a key of METHODS (set by `apply_method`): the adapters, decoder
                     steps and trainable rules of SPT or a baseline.
  trainable          regexes on 'collection/module/.../leaf' paths that train (empty:
                     nothing trains, e.g. zero-shot SAM).
  data.train, data.eval   spt_jax.data.pipeline.DataConfig fields (image_size comes
                     from the model spec; eval computes its metrics at original resolution
                     inside a canvas of side original_canvas, 0: the largest image side
                     of the evaluated data). `folder` holds the options of the folder
                     data set (a user's own images; spt_jax/data/builders/folder.py).
  loss               spt_jax.spt.losses.LossSpec fields.
  optimizer          spt_jax.train.optimizer.OptimizerSpec fields; decay_epochs are
                     turned into decay_steps from the training set size.
  train              num_epochs or num_steps (steps win when > 0), log/eval/checkpoint
                     periods in steps, checkpoints kept, seed.
  eval               metrics options, overlays; which checkpoint of the
                     workdir --mode=eval uses ('latest' or 'best'); zero_shot_first
                     evaluates SAM as it is before training, for the comparison;
                     save_predictions writes each image's masks, scores and prompt to
                     workdir/predictions/<source path>.npz; prompts (EVAL_PROMPTS) and
                     auto (the prompt-free detector: DetectorSpec and ProposalSpec fields
                     of spt_jax.inspection, and bank_split, the split whose normal
                     images fill the memory banks).
  predict            images_dir, prompts_file, output_dir for --mode=predict; without a
                     prompts_file the defects are found first (spt_jax.inspection.folder:
                     good_dir, a folder of normal images, or the workdir's memory bank
                     of `category`).
  export             --mode=export (spt_jax.export): platforms, batch_sizes (empty: the
                     evaluation's batch size, so the export's numbers are --mode=eval's),
                     prompt kinds, prompt_buckets, output_dir (default workdir/export).
  mesh               device mesh, sharding rules and multi-host start
                     (spt_jax.parallel.MeshSpec; launch/README.md explains the fields).
"""

import dataclasses
import importlib.util
import os

import ml_collections
import tensorflow_datasets as tfds

from spt_jax.data.builders.folder import FolderConfig
from spt_jax.data.pipeline import DataConfig
from spt_jax.data.prompts import PromptConfig
from spt_jax.errors import SptUserError
from spt_jax.inspection.detector import DetectorSpec
from spt_jax.inspection.proposals import ProposalSpec
from spt_jax.models.config import AdapterSpec
from spt_jax.parallel import mesh_config
from spt_jax.spt.losses import LossSpec
from spt_jax.train.optimizer import OptimizerSpec
from spt_jax.train.trainable import SPT_TRAINABLE

MODES = ("train_and_eval", "train", "eval", "predict", "export")
# eval.prompts: boxes/points from the ground truth (the paper's protocol), proposals of
# a memory bank of normal images (spt_jax.evaluate.prompt_free), or both.
EVAL_PROMPTS = ("ground_truth", "auto", "both")

# The paper's comparison: what each method adds to SAM and what trains. A new PEFT
# method is an adapter module (spt_jax/models) plus an entry here.
DECODER_TRAINABLE = (r"params/decoders/.*",)
METHODS = {
    "zero_shot": dict(adapters={}, sdt_steps=1, trainable=()),  # SAM as it is
    "decoder": dict(adapters={}, sdt_steps=1, trainable=DECODER_TRAINABLE),
    "lora": dict(adapters=dict(lora_rank=8), sdt_steps=1, trainable=SPT_TRAINABLE),
    "adapter": dict(adapters=dict(mlp_adapter_dim=32), sdt_steps=1, trainable=SPT_TRAINABLE),
    "vpt": dict(adapters=dict(vpt_tokens=8), sdt_steps=1, trainable=SPT_TRAINABLE),
    "sdt": dict(adapters=dict(lora_rank=8), sdt_steps=2, trainable=SPT_TRAINABLE),
    "vra": dict(adapters=dict(lora_rank=8, vra=True), sdt_steps=1, trainable=SPT_TRAINABLE),
    "spt": dict(adapters=dict(lora_rank=8, vra=True), sdt_steps=2, trainable=SPT_TRAINABLE),
}


def _from_dataclass(instance, **overrides) -> ml_collections.ConfigDict:
  fields = {**{k: v for k, v in instance.__dict__.items()}, **overrides}
  return ml_collections.ConfigDict(fields)


def prompt_defaults(mode: str = "box") -> ml_collections.ConfigDict:
  """A prompt block: a mode of spt_jax.data.prompts.PRESETS; any field set overrides it."""
  prompt = ml_collections.ConfigDict({"mode": mode})
  for field in dataclasses.fields(PromptConfig):
    prompt[field.name] = ml_collections.config_dict.placeholder(field.type)
  return prompt


def prompt_fields(prompt: ml_collections.ConfigDict) -> dict:
  """The mode and the fields that were set (unset placeholders dropped)."""
  return {k: v for k, v in prompt.to_dict().items() if v is not None}


def folder_defaults() -> ml_collections.ConfigDict:
  """The folder data set's options (FolderConfig fields; name '' = the manual_dir's)."""
  inherited = {field.name for field in dataclasses.fields(tfds.core.BuilderConfig)}
  fields = {field.name: field.default for field in dataclasses.fields(FolderConfig)
            if field.name not in inherited}
  return ml_collections.ConfigDict(dict(name="", **fields))


def data_defaults(**overrides) -> ml_collections.ConfigDict:
  """A data block (DataConfig fields that configs usually set)."""
  fields = dict(dataset="synthetic", manual_dir="", data_dir="",
                dataset_options=ml_collections.ConfigDict(), folder=folder_defaults(),
                split="test", categories=(),
                resize="sam", augment=False, hflip_probability=0.5, lsj_min_scale=0.1,
                lsj_max_scale=2.0, crop_to_defect=True, prompt=prompt_defaults(),
                keep_normal=False,
                original_canvas=0, seed=0, shuffle=False, batch_size=1,
                drop_remainder=False, worker_count=0, on_bad_input="error", rebuild=False)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def prompt_free_defaults() -> ml_collections.ConfigDict:
  """eval.auto: the detector's fields with its proposals' inlined, and bank_split."""
  fields = {k: v for k, v in dataclasses.asdict(DetectorSpec()).items() if k != "proposals"}
  return ml_collections.ConfigDict(dict(bank_split="train", **fields,
                                        **dataclasses.asdict(ProposalSpec())))


def base_config() -> ml_collections.ConfigDict:
  """All fields with their defaults (SPT on ViT-B at 1024, the paper's recipe)."""
  config = ml_collections.ConfigDict()
  config.method = "spt"
  config.model = ml_collections.ConfigDict(dict(
      base="", type="vit_b",
      adapters=_from_dataclass(AdapterSpec(lora_rank=8, vra=True)),
      sdt_steps=2, relation_impl="auto", global_attention_impl="auto",
      window_attention_impl="auto", dtype="float32",
      remat="none", cpu_scheduler="auto", query_chunk=1024, prompt_chunk=0))
  config.trainable = SPT_TRAINABLE
  config.data = ml_collections.ConfigDict()
  config.data.train = data_defaults(augment=True, shuffle=True, drop_remainder=True)
  config.data.eval = data_defaults()
  config.loss = _from_dataclass(LossSpec())
  config.optimizer = _from_dataclass(OptimizerSpec(), decay_epochs=(10,))
  config.train = ml_collections.ConfigDict(dict(
      num_epochs=16, num_steps=0, log_every_steps=10, eval_every_steps=0,
      checkpoint_every_steps=100, keep_checkpoints=3, best_metric="final_iou", seed=0))
  config.eval = ml_collections.ConfigDict(dict(
      dilation_ratio=0.02, anomaly_metrics=True, score_bins=2 ** 19,
      num_overlays=8, checkpoint="latest", zero_shot_first=False, save_predictions=False,
      prompts="ground_truth", auto=prompt_free_defaults()))
  config.predict = ml_collections.ConfigDict(dict(
      images_dir="", prompts_file="", output_dir="", good_dir="", category=""))
  config.export = ml_collections.ConfigDict(dict(
      platforms=("cpu",), batch_sizes=(), prompts=("box",), prompt_buckets=(1, 8),
      output_dir=""))
  config.mesh = mesh_config()
  return config


def apply_method(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Sets the adapters, decoder steps and trainable rules of METHODS[name]."""
  if name not in METHODS:
      raise SptUserError(f"method {name!r}: expected one of {sorted(METHODS)}")
  method = METHODS[name]
  config.method = name
  config.model.adapters = _from_dataclass(AdapterSpec(**method["adapters"]))
  config.model.sdt_steps = method["sdt_steps"]
  config.trainable = method["trainable"]
  return config


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks the field set so that unknown overrides fail."""
  config.lock()
  return config


def to_data_config(block: ml_collections.ConfigDict, image_size: int, num_epochs):
  """A DataConfig from a data block: '' and 0 mean unset, image size from the model."""
  fields = block.to_dict()
  fields["prompt"] = prompt_fields(block.prompt)
  for key in ("manual_dir", "data_dir"):
    fields[key] = fields[key] or None
  fields["original_canvas"] = fields["original_canvas"] or None
  return DataConfig.from_config(dict(fields, image_size=image_size, num_epochs=num_epochs))


# Original-resolution canvas per benchmark: at least the largest image side it holds.
CANVAS = {"mvtec_ad": 1024, "visa": 2048, "btad": 1600, "mpdd": 1024, "ksdd2": 704,
          "spt_archive": 2048}
MODEL_VARIANTS = ("vit_b", "vit_l", "vit_h")


def benchmark_config(dataset: str, arg: str, train_dataset: str) -> ml_collections.ConfigDict:
  """Evaluate on `dataset`'s test split after training on `train_dataset`'s test split.

  `arg` is the model variant ('vit_b' default, 'vit_l', 'vit_h'). Data set folders and
  the converted SAM base are given on the command line, e.g.
  --config.model.base=converted/sam_vit_b --config.data.eval.manual_dir=/data/visa
  --config.data.train.manual_dir=/data/mvtec_ad.
  """
  config = paper_config(arg)
  config.data.train.dataset = train_dataset
  config.data.eval.dataset = dataset
  config.data.eval.original_canvas = CANVAS[dataset]
  return lock(config)


def paper_config(variant: str) -> ml_collections.ConfigDict:
  """The paper's model and recipe for a SAM size ('vit_b' default, 'vit_l', 'vit_h'),
  unlocked, data blocks at their defaults."""
  variant = variant or "vit_b"
  if variant not in MODEL_VARIANTS:
    raise SptUserError(f"config variant {variant!r}: expected one of {MODEL_VARIANTS}")
  config = base_config()
  config.model.type = variant
  if variant == "vit_h":  # v5e-compiled, 1 image x 8 prompts per chip, float32: peak
    config.model.remat = "blocks"  # 15.96 of 16 GiB without, 4.26 with (launch/README)
  config.eval.num_overlays = 16
  return config


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """get_config(variant) of a config file given as 'path.py[:variant]'."""
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise SptUserError(f"--config={spec}: no such config file {path}")
  module_spec = importlib.util.spec_from_file_location("spt_config_file", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()
