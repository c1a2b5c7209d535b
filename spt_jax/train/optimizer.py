"""The optimizer from the config: AdamW with a step-decay schedule and gradient clipping.

It is built for the trainable tree only, so its state exists for trainable leaves only.
"""

import dataclasses

import optax


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """lr decays by `decay_factor` at each step in `decay_steps` (the paper: x0.1 at epoch 10)."""
  learning_rate: float = 1e-3
  weight_decay: float = 1e-4
  b1: float = 0.9
  b2: float = 0.999
  decay_steps: tuple[int, ...] = ()
  decay_factor: float = 0.1
  warmup_steps: int = 0
  clip_grad_norm: float = 0.0  # 0 disables clipping


def learning_rate_schedule(spec: OptimizerSpec) -> optax.Schedule:
  # join_schedules restarts the second schedule's count at the warm-up boundary.
  decayed = optax.piecewise_constant_schedule(
      spec.learning_rate,
      {step - spec.warmup_steps: spec.decay_factor for step in spec.decay_steps})
  if not spec.warmup_steps:
    return decayed
  warmup = optax.linear_schedule(0.0, spec.learning_rate, spec.warmup_steps)
  return optax.join_schedules([warmup, decayed], [spec.warmup_steps])


def make_optimizer(spec: OptimizerSpec) -> optax.GradientTransformation:
  adamw = optax.adamw(learning_rate_schedule(spec), b1=spec.b1, b2=spec.b2,
                      weight_decay=spec.weight_decay)
  if spec.clip_grad_norm:
    return optax.chain(optax.clip_by_global_norm(spec.clip_grad_norm), adamw)
  return adamw
