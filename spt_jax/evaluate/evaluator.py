"""The evaluation loop: model over the eval split, metrics at original resolution, reports.

Per batch, one jit-compiled call runs the encoder once per image, every SDT step for
all prompts, maps each step's low-res logits to the original resolution (inside a
zero-padded canvas of side `data.eval.original_canvas`, with the postprocessing of the
configured resize protocol expressed as per-image interpolation matrices) and computes
IoU, Boundary IoU and Dice there. Pixel AUROC/AUPRO accumulate on the host from the
sigmoid scores of the evaluated (anomalous) images. Step 0 is the draft, the last step
the final mask; with fresh adapters the draft is zero-shot SAM.
"""

import collections
import dataclasses
import os
import pickle
from typing import Any, Optional

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
from PIL import Image

from spt_jax import buckets
from spt_jax import model_inputs
from spt_jax import parallel
from spt_jax import programs
from spt_jax import transforms
from spt_jax.config import prompt_fields, to_data_config
from spt_jax.data.pipeline import (batch_spec, dataset_label, largest_image_side,
                                   make_pipeline)
from spt_jax.errors import SptUserError
from spt_jax.evaluate import anomaly_metrics
from spt_jax.evaluate import overlays
from spt_jax.evaluate import reports
from spt_jax.evaluate.metrics import segmentation_metrics
from spt_jax.parallel import cpu_compiler
from spt_jax.train.metric_writer import MetricWriter, ProgressLine

STEP_NAMES = ("draft", "final")
MASK_METRICS = ("iou", "boundary_iou", "dice")


def step_names(num_steps: int) -> tuple[str, ...]:
  """Names of the SDT steps' outputs: ('final',) for one step, ('draft', 'final') for two."""
  return STEP_NAMES[-num_steps:] if num_steps <= 2 else tuple(
      f"step{i}" for i in range(num_steps - 1)) + ("final",)


def overlay_indices(count: int, total: int) -> frozenset[int]:
  """`count` example indices spread evenly over 0..total-1 (all of them when fewer).

  The evaluation data are ordered by category, so the first `count` images would show
  one category only.
  """
  if count >= total:
    return frozenset(range(total))
  return frozenset(int(i) for i in np.linspace(0, total - 1, max(count, 0)).round())


class Evaluator:
  """Evaluates variables of `model` on `config.data.eval`; writes reports to workdir."""

  def __init__(self, config, model, workdir: str, mesh_spec: parallel.MeshSpec,
               mesh=None):
    """mesh: default `make_mesh(mesh_spec)` over every process's devices; pass one of
    compile-only devices, or an AbstractMesh, to compile or export `program`."""
    self.config = config
    self.model = model
    self.workdir = workdir
    self.data_config = to_data_config(config.data.eval, model.spec.image_size, num_epochs=1)
    if not self.data_config.original_canvas:  # 0: the data's largest image side
      self.data_config = dataclasses.replace(
          self.data_config, original_canvas=largest_image_side(self.data_config))
    if self.data_config.prompt.per_region:
      raise SptUserError("data.eval.prompt: per-region prompts are for training; evaluation "
                         "uses one prompt per image (the paper's protocol)")
    self.canvas = self.data_config.original_canvas
    self.steps = step_names(model.sdt_steps)
    self.mesh_spec = mesh_spec
    self.mesh = parallel.make_mesh(mesh_spec) if mesh is None else mesh
    self.batch_sharding = parallel.batch_sharding(self.mesh, mesh_spec.rules)
    self._compiled = {}

  def _jitted(self, variables):
    """(variables' shardings, the forward jit-compiled with them and the batch's)."""
    key = jax.tree_util.tree_structure(variables)
    if key not in self._compiled:
      shardings = parallel.shard_tree(variables, self.mesh, self.mesh_spec.rules)
      self._compiled[key] = (shardings, parallel.sharded_jit(
          self._forward_fn, self.mesh,
          (shardings, self.batch_sharding, self.batch_sharding, self.batch_sharding),
          self.batch_sharding, self.mesh_spec.rules,
          compiler_options=cpu_compiler.options_for(
              self.mesh, self.config.model.cpu_scheduler, training=False)))
    return self._compiled[key]

  def _forward(self, variables, batch, rows, cols):
    """The jit-compiled forward on this process's batch; its rows of the outputs."""
    shardings, forward = self._jitted(variables)
    outputs = forward(parallel.place(variables, shardings),
                      parallel.global_batch(batch, self.batch_sharding),
                      *parallel.global_batch({"rows": rows, "cols": cols},
                                             self.batch_sharding).values())
    return jax.tree_util.tree_map(parallel.local_rows, outputs)

  def program(self, variables) -> tuple[Any, tuple]:
    """(the per-batch forward jit-compiled for the mesh, abstract inputs for it) to
    lower or export it without data: variables as arrays or ShapeDtypeStructs, a
    global batch of data.eval.batch_size images per process."""
    shardings, forward = self._jitted(variables)
    images = self.data_config.batch_size * jax.process_count()
    batch = batch_spec(dataclasses.replace(self.data_config, batch_size=images))
    matrix = jax.ShapeDtypeStruct((images, self.canvas, self.model.spec.low_res_size),
                                  jnp.float32)
    return forward, (parallel.abstract_tree(variables, shardings),
                     parallel.abstract_tree(batch, {k: self.batch_sharding for k in batch}),
                     *parallel.abstract_tree((matrix, matrix), (self.batch_sharding,) * 2))

  def _forward_fn(self, variables, batch, rows, cols):
    """-> metrics {name: (B, steps, P)} and the predictions: scores and masks
    (B, steps, P, C, C), low-res logits (B, steps, P, l, l), predicted IoU (B, P).

    The model runs as `spt_jax.programs` (what the serving export holds). Every output
    leads with the batch axis, so each process reads its own images' rows.
    """
    embeddings = programs.embed(self.model, variables, batch["image"], batch["input_size"])
    outputs = programs.decode(self.model, variables, embeddings,
                              model_inputs.model_prompts(batch, self.data_config.prompt),
                              rows, cols)
    at_original = outputs["logits"]
    truth = jnp.broadcast_to(batch["original_mask"][:, None, None] > 0, at_original.shape)
    valid_hw = jnp.broadcast_to(batch["original_size"][:, None, None], at_original.shape[:3]
                                + (2,))
    flat = lambda x: x.reshape((-1,) + x.shape[3:])
    results = segmentation_metrics(flat(at_original), flat(truth), flat(valid_hw),
                                   dilation_ratio=self.config.eval.dilation_ratio)
    metrics = {name: getattr(results, name).reshape(at_original.shape[:3])
               for name in MASK_METRICS}
    predictions = {"scores": jax.nn.sigmoid(at_original),
                   "low_res_logits": outputs["low_res_logits"], "iou": outputs["iou"]}
    if self.config.eval.save_predictions:
      predictions["masks"] = at_original > 0
    return metrics, predictions

  def _matrices(self, batch):
    return transforms.postprocess_matrices_batch(
        self.data_config.resize, self.model.spec.low_res_size, self.model.spec.image_size,
        batch["input_size"], batch["original_size"], self.canvas)

  def prompt_label(self) -> str:
    """The prompt kind the results are grouped by: the mode and any field set."""
    fields = prompt_fields(self.config.data.eval.prompt)
    mode = fields.pop("mode")
    return mode + "".join(f",{k}={v}" for k, v in sorted(fields.items()))

  def evaluate(self, variables, num_overlays: int = 0) -> dict[str, Any]:
    """Runs the split: ImageRecords, pixel metrics (per category and pooled), counts."""
    pipeline = make_pipeline(self.data_config)
    dataset, prompt = dataset_label(self.data_config), self.prompt_label()
    records, overlay_files = [], []
    accumulators = collections.defaultdict(
        lambda: anomaly_metrics.PixelScoreAccumulator(self.config.eval.score_bins))
    done, total = 0, pipeline.num_local_examples
    progress = ProgressLine(f"eval {dataset}", total, "images")
    # Overlays come from the main process's share (one writer per file name).
    with_overlay = overlay_indices(num_overlays if parallel.is_main_process() else 0, total)
    for batch in pipeline:
      rows, cols = self._matrices(batch)
      metrics, predictions = self._forward(
          variables, *_pad_rows((model_inputs.array_fields(batch), rows, cols),
                                self.data_config.batch_size))
      for b in range(len(batch["image"])):
        category = batch["category"][b].decode()
        records += [self._record(batch, b, p, metrics, dataset, prompt)
                    for p in np.flatnonzero(batch["prompt_valid"][b])]
        height, width = (int(x) for x in batch["original_size"][b])
        if self.config.eval.anomaly_metrics:
          truth = batch["original_mask"][b, :height, :width] > 0
          for s, step in enumerate(self.steps):
            accumulators[category, step].add(
                predictions["scores"][b, s, 0, :height, :width], truth)
        if done + b in with_overlay:
          overlay_files.append(self._save_overlay(
              batch, b, predictions["low_res_logits"][b, :, 0], done + b))
        if self.config.eval.save_predictions:
          self._save_predictions(batch, b, predictions, pipeline.config.manual_dir)
      done += len(batch["image"])
      if parallel.is_main_process():
        progress.update(done)
    records, accumulators = self._gather(records, dict(accumulators))
    return {"records": records,
            "pixel": self._pixel_metrics(accumulators, dataset, prompt),
            "normal_left_out": {(dataset, c): n
                                for c, n in pipeline.normal_left_out.items()},
            "skipped": {dataset: pipeline.skipped_at_build},
            "overlays": overlay_files}

  def _gather(self, records, accumulators):
    """All processes' records and accumulators, on the main process (a shared workdir).

    Each process writes its part to workdir/eval_parts/ and the main process merges
    them after a barrier; with one process nothing is written.
    """
    if jax.process_count() == 1:
      return records, accumulators
    parts = os.path.join(self.workdir, "eval_parts")
    os.makedirs(parts, exist_ok=True)
    with open(os.path.join(parts, f"{jax.process_index()}.pkl"), "wb") as f:
      pickle.dump((records, accumulators), f)
    multihost_utils.sync_global_devices("spt_jax evaluation parts written")
    if not parallel.is_main_process():
      return records, accumulators
    records, merged = [], {}
    for index in range(jax.process_count()):
      with open(os.path.join(parts, f"{index}.pkl"), "rb") as f:
        part_records, part_accumulators = pickle.load(f)
      records += part_records
      for key, accumulator in part_accumulators.items():
        if key in merged:
          merged[key].merge(accumulator)
        else:
          merged[key] = accumulator
    return records, merged

  def _pixel_metrics(self, accumulators, dataset, prompt):
    """{(dataset, prompt, category or None): {step: {'auroc', 'aupro'}}}."""
    pixel = collections.defaultdict(dict)
    for step in self.steps:
      pooled = anomaly_metrics.PixelScoreAccumulator(self.config.eval.score_bins)
      for (category, of_step), accumulator in sorted(accumulators.items()):
        if of_step == step:
          pixel[dataset, prompt, category][step] = _pixel_row(accumulator)
          pooled.merge(accumulator)
      if accumulators:
        pixel[dataset, prompt, None][step] = _pixel_row(pooled)
    return dict(pixel)

  def _record(self, batch, b, p, metrics, dataset, prompt) -> reports.ImageRecord:
    return reports.ImageRecord(
        dataset=dataset, category=batch["category"][b].decode(),
        defect_type=batch["defect_type"][b].decode(),
        image_path=batch["source_path"][b].decode(), prompt=prompt,
        scores={step: {name: float(metrics[name][b, s, p]) for name in MASK_METRICS}
                for s, step in enumerate(self.steps)})

  def _save_predictions(self, batch, b, predictions, source_root) -> None:
    """workdir/predictions/<source path, '/' as '__'>.npz: what the model predicted
    for image b: scores and masks (steps, P, H0, W0), low_res_logits (steps, P, l, l),
    iou (P,), its prompt (prompt_boxes, prompt_points, prompt_point_labels in
    model-input pixels, prompt_valid), input_size, original_size, steps, category and
    source_path (relative to source_root, the data set's folder)."""
    height, width = (int(x) for x in batch["original_size"][b])
    source = batch["source_path"][b].decode()
    prompt = {k: batch[k][b] for k in ("boxes", "points", "point_labels", "prompt_valid")}
    directory = os.path.join(self.workdir, "predictions")
    os.makedirs(directory, exist_ok=True)
    np.savez_compressed(
        os.path.join(directory, source.replace("/", "__") + ".npz"),
        source_path=source, source_root=str(source_root or ""),
        category=batch["category"][b].decode(),
        steps=np.array(self.steps), input_size=batch["input_size"][b],
        original_size=batch["original_size"][b],
        scores=predictions["scores"][b, :, :, :height, :width],
        masks=predictions["masks"][b, :, :, :height, :width],
        low_res_logits=predictions["low_res_logits"][b], iou=predictions["iou"][b],
        **{f"prompt_{k}": v for k, v in prompt.items()})

  def _save_overlay(self, batch, b, logits, index) -> str:
    """Overlay on the model-input image (what the model saw) with every step's mask;
    returns its path."""
    height, width = (int(x) for x in batch["input_size"][b])
    size = self.model.spec.image_size
    masks = transforms.postprocess_masks(logits, size, (height, width), (height, width)) > 0
    prompt = batch["point_labels"][b, 0] if "point_labels" in batch else None
    directory = os.path.join(self.workdir, "overlays")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{index:04d}_{batch['category'][b].decode()}.png")
    overlays.save_overlay(
        path, batch["image"][b, :height, :width], dict(zip(self.steps, masks)),
        batch["mask"][b, :height, :width] > 0.5,
        box=batch["boxes"][b, 0] if self.data_config.prompt.box else None,
        points=batch["points"][b, 0] if prompt is not None else None, point_labels=prompt)
    return path

  def run(self, variables, write_reports: bool = True,
          step: Optional[int] = None) -> dict[str, Any]:
    """Evaluates, writes results.json/csv/md and overlays, prints the table; with the
    training `step` the variables are of, also the means and the overlays to
    TensorBoard (workdir/tensorboard/eval)."""
    evaluation = self.evaluate(variables, num_overlays=self.config.eval.num_overlays)
    kwargs = dict(pixel=evaluation["pixel"], normal_left_out=evaluation["normal_left_out"],
                  skipped=evaluation["skipped"],
                  config=self.config.to_dict())
    if not (write_reports and jax.process_index() == 0):
      return reports.summarize(evaluation["records"], **kwargs)
    results = reports.write_results(self.workdir, evaluation["records"], **kwargs)
    reports.print_table(results)
    if step is not None:
      writer = MetricWriter(self.workdir, "eval")
      writer.write(step, reports.flat_means(results))
      writer.write_images(step, {f"overlays/{os.path.basename(path)}":
                                 np.asarray(Image.open(path).convert("RGB"))
                                 for path in evaluation["overlays"]})
      writer.close()
    return results

  def metrics_at_step(self, variables, step: int) -> dict[str, float]:
    """For periodic evaluation while training: flat means, also written to TensorBoard."""
    evaluation = self.evaluate(variables)
    flat = reports.flat_means(reports.summarize(evaluation["records"],
                                                pixel=evaluation["pixel"]))
    writer = MetricWriter(self.workdir, "eval")
    writer.write(step, flat)
    writer.close()
    return flat


def _pad_rows(arrays, rows: int):
  """Pads every array's leading axis to `rows` by repeating its last row (a short last
  batch keeps the compiled shape and divides over the mesh); callers read the real rows."""
  return jax.tree_util.tree_map(lambda x: buckets.pad_repeating(x, rows), arrays)


def _pixel_row(accumulator) -> dict[str, float]:
  """AUROC, AUPRO and the bounds of their binning error (reports.PIXEL_BOUNDS)."""
  bounds = accumulator.error_bounds()
  return {"auroc": accumulator.auroc(), "aupro": accumulator.aupro(),
          "auroc_error_bound": bounds["auroc"], "aupro_error_bound": bounds["aupro"]}
