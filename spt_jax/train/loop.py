"""The training loop: data, jit-compiled step, logging, periodic evaluation, checkpoints.

A run resumed from its workdir continues exactly where it stopped: the step, the
trainable leaves, the optimizer state, the RNG and the data iterator are restored, so
the following batches and the final parameters equal those of an uninterrupted run.
"""

import dataclasses
from typing import Any, Callable, Optional

from absl import logging
import jax

from spt_jax import parallel
from spt_jax.config import to_data_config
from spt_jax.data.pipeline import make_pipeline
from spt_jax.errors import SptUserError
from spt_jax.spt.losses import LossSpec
from spt_jax.train import checkpoints as checkpoints_lib
from spt_jax.train.sharded_step import sharded_train_step
from spt_jax.train.metric_writer import MetricWriter, Progress, format_duration
from spt_jax.train.model_setup import ModelSetup
from spt_jax.train.optimizer import OptimizerSpec, learning_rate_schedule, make_optimizer
from spt_jax.train.preemption import Preempted, PreemptionWatch
from spt_jax.train.trainable import merge

# evaluate(variables, step) -> flat metrics {name: value}
EvaluateFn = Callable[[dict, int], dict[str, float]]


def optimizer_spec(config, steps_per_epoch: int) -> OptimizerSpec:
  """OptimizerSpec with decay_epochs turned into decay_steps (explicit steps win)."""
  fields = config.optimizer.to_dict()
  decay_epochs = fields.pop("decay_epochs")
  if not fields["decay_steps"]:
    fields["decay_steps"] = tuple(int(e * steps_per_epoch) for e in decay_epochs)
  return OptimizerSpec(**{**fields, "decay_steps": tuple(fields["decay_steps"])})


@dataclasses.dataclass
class TrainResult:
  variables: dict[str, Any]
  steps: int
  last_metrics: dict[str, float]


def train(config, workdir: str, setup: ModelSetup, mesh_spec: parallel.MeshSpec,
          evaluate: Optional[EvaluateFn] = None,
          final_evaluate: Optional[EvaluateFn] = None) -> TrainResult:
  """Trains `setup.model`'s trainable variables on the mesh; returns the final variables.

  The frozen base and the trainable leaves are sharded by `mesh_spec.rules` (the
  optimizer state alongside its parameters), each process feeds its own shard of the
  data, and the global batch is split over the mesh's batch axes. `evaluate` runs
  every train.eval_every_steps, `final_evaluate` once the last step is done (also when
  a resumed run had nothing left to train); the best of their metrics by
  train.best_metric is kept in workdir/best.
  """
  image_size = setup.model.spec.image_size
  pipeline = make_pipeline(to_data_config(config.data.train, image_size, num_epochs=None))
  batch_size = pipeline.config.batch_size  # per process
  steps_per_epoch = max(1, pipeline.num_local_examples // batch_size)
  total_steps = config.train.num_steps or config.train.num_epochs * steps_per_epoch
  if total_steps < 1:
    raise SptUserError("train.num_steps and train.num_epochs give no step to run")
  opt_spec = optimizer_spec(config, steps_per_epoch)
  optimizer = make_optimizer(opt_spec)
  learning_rate = learning_rate_schedule(opt_spec)
  loss_spec = LossSpec(**{**config.loss.to_dict(),
                          "step_weights": tuple(config.loss.step_weights)})
  program = sharded_train_step(setup.model, setup.variables, config.trainable, optimizer,
                               loss_spec, pipeline.config.prompt,
                               parallel.make_mesh(mesh_spec), mesh_spec.rules,
                               config.model.cpu_scheduler)
  state, frozen = program.initial_state(setup.variables,
                                        jax.random.PRNGKey(config.train.seed))
  iterator = iter(pipeline)
  checkpoints = checkpoints_lib.TrainCheckpoints(
      workdir, config.train.keep_checkpoints, config.train.best_metric,
      meta={"base": setup.base, "config": config.to_json()})
  restored = checkpoints.restore_latest(state, iterator)
  state = restored if restored is not None else state
  start = int(state.step)
  batch_sharding = program.batch_sharding
  train_step = program.step
  logging.info("training %d steps (%d per epoch, batch %d, %d trainable values) from "
               "step %d", total_steps, steps_per_epoch, batch_size,
               sum(x.size for x in jax.tree_util.tree_leaves(state.trainable)), start)
  writer = MetricWriter(workdir, "train")
  progress = Progress(total_steps, batch_size * jax.process_count())
  metrics: dict[str, float] = {}
  period = PeriodMeans()
  preemption = PreemptionWatch()
  try:
    for step in range(start + 1, total_steps + 1):
      state, step_metrics = train_step(
          state, frozen, parallel.global_batch(next(iterator), batch_sharding))
      period.add(step_metrics)
      if step % config.train.log_every_steps == 0 or step in (start + 1, total_steps):
        metrics = period.means()
        metrics.update(progress.report(step), learning_rate=float(learning_rate(step - 1)))
        writer.write(step, metrics)
        _log_progress(step, total_steps, metrics)
      preempted = preemption.reached(step)
      if preempted or step % config.train.checkpoint_every_steps == 0 or step == total_steps:
        checkpoints.save(state, iterator)
      if preempted:
        checkpoints.wait()
        raise Preempted(step)
      final = step == total_steps and final_evaluate is not None
      if evaluate and config.train.eval_every_steps and not final and (
          step % config.train.eval_every_steps == 0 or step == total_steps):
        eval_metrics = evaluate(merge(state.trainable, frozen), step)
        checkpoints.save_best(state, iterator, eval_metrics)
    checkpoints.wait()
    if final_evaluate is not None:
      checkpoints.save_best(state, iterator,
                            final_evaluate(merge(state.trainable, frozen), total_steps))
      checkpoints.wait()
  finally:
    preemption.close()
    writer.close()
    checkpoints.close()
  return TrainResult(merge(state.trainable, frozen), total_steps, metrics)


class PeriodMeans:
  """Means of the step metrics since the last `means()` (the logged loss is the period's,
  not one batch's). Sums stay on the device, so adding does not wait for the step."""

  def __init__(self):
    self._sums, self._count = None, 0

  def add(self, step_metrics: dict[str, jax.Array]) -> None:
    self._sums = step_metrics if self._sums is None else jax.tree_util.tree_map(
        lambda a, b: a + b, self._sums, step_metrics)
    self._count += 1

  def means(self) -> dict[str, float]:
    sums = jax.device_get(self._sums)
    means = {k: float(v) / self._count for k, v in sums.items()}
    self._sums, self._count = None, 0
    return means


def _log_progress(step, total, metrics):
  if jax.process_index() != 0:
    return
  parts = [f"step {step}/{total}", f"loss {metrics['loss']:.4f}",
           f"lr {metrics['learning_rate']:.2e}"]
  if "examples_per_second" in metrics:
    parts += [f"{metrics['examples_per_second']:.2f} img/s",
              f"ETA {format_duration(metrics['eta_seconds'])}"]
  print(" | ".join(parts), flush=True)
