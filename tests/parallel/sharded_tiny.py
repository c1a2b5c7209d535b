"""A tiny SPT trained and evaluated on a mesh: shared by the 8-device tests and the
two-process worker, so that every run computes exactly the same thing.

The batch has 8 images with 2 per-region box prompts each (the second region absent,
its prompt padding, for odd images), a text entry (left on the host by
`global_batch`) and the paper's point-sampled loss, whose random points must not
depend on the sharding.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from small_models import TINY_SPEC
from spt_jax import model_inputs
from spt_jax import parallel
from spt_jax.data.prompts import PromptConfig
from spt_jax.models.sam import init_variables
from spt_jax.spt.losses import LossSpec
from spt_jax.spt.model import Spt
from spt_jax.train.optimizer import OptimizerSpec, make_optimizer
from spt_jax.train.sharded_step import sharded_train_step
from spt_jax.train.trainable import SPT_TRAINABLE

NUM_IMAGES = 8
PROMPT_CONFIG = PromptConfig(per_region=True, max_prompts=2)
LEARNING_RATE = 5e-2
STEPS = 2


def tiny_batch(rows: slice = slice(None)) -> dict[str, np.ndarray]:
  """Rows `rows` of the global batch (a process passes its own share)."""
  size, prompts = TINY_SPEC.image_size, PROMPT_CONFIG.max_prompts
  rng = np.random.default_rng(0)
  regions = np.zeros((NUM_IMAGES, size, size), np.uint8)
  boxes = np.zeros((NUM_IMAGES, prompts, 4), np.float32)
  valid = np.zeros((NUM_IMAGES, prompts), bool)
  for i in range(NUM_IMAGES):
    top, left = 4 + 3 * i, 40 - 4 * i
    regions[i, top:top + 20, left:left + 16] = 1
    boxes[i, 0] = [left, top, left + 15, top + 19]
    if i % 2 == 0:
      regions[i, 50:58, 4:20] = 2
      boxes[i, 1] = [4, 50, 19, 57]
    valid[i, :2 - i % 2] = True
  batch = dict(
      image=rng.integers(0, 256, (NUM_IMAGES, size, size, 3)).astype(np.uint8),
      input_size=np.array([[size, size - 2 * (i % 3)] for i in range(NUM_IMAGES)], np.int32),
      mask=(regions > 0).astype(np.float32), prompt_regions=regions, boxes=boxes,
      prompt_valid=valid, category=np.array([b"woven"] * NUM_IMAGES))
  return {k: v[rows] for k, v in batch.items()}


@functools.cache
def tiny_model():
  """(model, variables, optimizer, loss)."""
  model = Spt(TINY_SPEC, relation_impl="xla")
  variables = init_variables(model, jax.random.PRNGKey(0))
  optimizer = make_optimizer(OptimizerSpec(learning_rate=LEARNING_RATE))
  return model, variables, optimizer, LossSpec(num_points=16 * 16)


def forward_metrics(model, variables, batch) -> dict[str, jax.Array]:
  """Draft/final low-res logits (B, P, l, l) and the final masks' IoU (B, P) with the
  target at low resolution (nearest), 1 where both are empty."""
  output = model.apply(variables, model_inputs.model_images(batch),
                       model_inputs.model_prompts(batch, PROMPT_CONFIG))
  factor = TINY_SPEC.image_size // TINY_SPEC.low_res_size
  target = model_inputs.prompt_targets(batch, PROMPT_CONFIG)[..., ::factor, ::factor] > 0.5
  predicted = output.final[:, :, 0] > 0
  inter = jnp.sum(predicted & target, axis=(-2, -1))
  union = jnp.sum(predicted | target, axis=(-2, -1))
  iou = jnp.where(union > 0, inter / jnp.maximum(union, 1), 1.0)
  return dict(draft=output.draft[:, :, 0], final=output.final[:, :, 0], iou=iou)


@dataclasses.dataclass
class MeshRun:
  mesh: Any
  losses: list[float]
  state: Any  # TrainState of global arrays after training
  frozen: Any  # frozen variables as placed
  state_shardings: Any
  forward: dict[str, np.ndarray]  # this process's rows of forward_metrics


def run_on_mesh(spec: parallel.MeshSpec, devices=None,
                local_batch: dict[str, np.ndarray] | None = None) -> MeshRun:
  """STEPS train steps, then the forward pass, sharded as `spec` says."""
  model, variables, optimizer, loss = tiny_model()
  mesh = parallel.make_mesh(spec, devices)
  program = sharded_train_step(model, variables, SPT_TRAINABLE, optimizer, loss,
                               PROMPT_CONFIG, mesh, spec.rules)
  state, frozen = program.initial_state(variables, jax.random.PRNGKey(1))
  batch = parallel.global_batch(tiny_batch() if local_batch is None else local_batch,
                                program.batch_sharding)
  losses = []
  for _ in range(STEPS):
    state, metrics = program.step(state, frozen, batch)
    losses.append(float(metrics["loss"]))
  forward = parallel.sharded_jit(functools.partial(forward_metrics, model), mesh,
                                 (program.shardings, program.batch_sharding),
                                 program.batch_sharding, spec.rules)
  outputs = forward(parallel.place(variables, program.shardings), batch)
  return MeshRun(mesh, losses, state, frozen, program.state_shardings,
                 {k: parallel.local_rows(v) for k, v in outputs.items()})
