"""The jit-able SPT train step: loss on every SDT step, gradient of the trainable tree only."""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from spt_jax.data.prompts import PromptConfig
from spt_jax import model_inputs
from spt_jax.spt.losses import LossSpec, mask_loss_terms, weighted_total
from spt_jax.train.trainable import merge


@flax.struct.dataclass
class TrainState:
  """What changes during training (the frozen base is passed separately, never updated)."""
  step: jax.Array
  trainable: Any
  opt_state: Any
  rng: jax.Array


def init_train_state(trainable, optimizer: optax.GradientTransformation,
                     rng: jax.Array) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                    opt_state=optimizer.init(trainable), rng=rng)


def spt_loss(model, variables, batch, rng, loss_spec: LossSpec,
             prompt_config: PromptConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean over valid prompts of sum_s step_weight[s] * loss(step s logits, target)."""
  output = model.apply(variables, model_inputs.model_images(batch),
                       model_inputs.model_prompts(batch, prompt_config))
  targets = model_inputs.prompt_targets(batch, prompt_config)
  valid = batch["prompt_valid"].astype(jnp.float32)
  num_valid = jnp.maximum(valid.sum(), 1.0)
  flat_targets = targets.reshape((-1,) + targets.shape[2:])
  total, metrics = 0.0, {}
  for step, weight in enumerate(loss_spec.step_weights[:output.logits.shape[0]]):
    logits = output.logits[step][:, :, 0]
    terms = mask_loss_terms(logits.reshape((-1,) + logits.shape[2:]), flat_targets,
                            jax.random.fold_in(rng, step), loss_spec)
    mean = lambda per_mask: (per_mask.reshape(valid.shape) * valid).sum() / num_valid
    total = total + weight * mean(weighted_total(terms, loss_spec))
    metrics.update({f"loss_{name}_step{step}": mean(v) for name, v in terms.items()})
  metrics["loss"] = total
  return total, metrics


def make_train_step(model, optimizer: optax.GradientTransformation, loss_spec: LossSpec,
                    prompt_config: PromptConfig) -> Callable:
  """(state, frozen, batch) -> (state, metrics); differentiates `state.trainable` only."""

  def train_step(state: TrainState, frozen, batch):
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_fn(trainable):
      return spt_loss(model, merge(trainable, frozen), batch, rng, loss_spec, prompt_config)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.trainable)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    metrics["grad_norm"] = optax.global_norm(grads)
    return state.replace(step=state.step + 1, trainable=trainable,
                         opt_state=opt_state), metrics

  return train_step
