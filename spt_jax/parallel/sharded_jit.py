"""`jax.jit` with explicit in/out shardings (pjit style) for the train step and the like.

The train state (adapters, optimizer state, step, RNG) and the frozen base keep the
shardings of the rules from step to step (out = in, the state donated); the global
batch comes split over the batch axes; metrics come back replicated, readable in every
process. Typical use (the whole variables tree is sharded first, then split like it):

  mesh = make_mesh(mesh_spec)
  shardings = shard_tree(variables, mesh, mesh_spec.rules)
  trainable_sh, frozen_sh = partition(shardings, trainable_patterns)
  trainable, frozen = partition(place(variables, shardings), trainable_patterns)
  state = init_train_state(trainable, optimizer, rng)
  state_sh = train_state_shardings(state, trainable_sh, optimizer, mesh)
  state = place(state, state_sh)
  batch_sh = batch_sharding(mesh, mesh_spec.rules)
  step = make_sharded_train_step(make_train_step(...), mesh, state_sh, frozen_sh,
                                 batch_sh, mesh_spec.rules)
  state, metrics = step(state, frozen, global_batch(local_batch, batch_sh))
"""

import functools
from typing import Any, Callable, Optional, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import optax

from spt_jax.parallel.activations import activation_constraints
from spt_jax.parallel.rules import ShardingRules
from spt_jax.train.step import TrainState


def replicated(mesh: Mesh) -> NamedSharding:
  """The whole array on every device of `mesh`."""
  return NamedSharding(mesh, PartitionSpec())


def train_state_shardings(state: TrainState, trainable_shardings: Any,
                          optimizer: optax.GradientTransformation, mesh: Mesh) -> TrainState:
  """Shardings of a TrainState (real or from `jax.eval_shape`).

  The optimizer's per-parameter leaves (Adam's moments) get their parameter's
  sharding; its other leaves (step counts), the step and the RNG are replicated.
  """
  opt_state = optax.tree_map_params(
      optimizer, lambda _, sharding: sharding, state.opt_state, trainable_shardings,
      transform_non_params=lambda _: replicated(mesh))
  return TrainState(step=replicated(mesh), trainable=trainable_shardings,
                    opt_state=opt_state, rng=replicated(mesh))


def sharded_jit(fn: Callable, mesh: Mesh, in_shardings: Any, out_shardings: Any,
                rules: ShardingRules = ShardingRules(),
                donate_argnums: Sequence[int] = (),
                compiler_options: Optional[dict[str, str]] = None) -> Callable:
  """`jax.jit(fn)` with these shardings and the activation constraints of `rules`;
  `compiler_options` for XLA (e.g. `cpu_compiler.options_for`)."""

  @functools.wraps(fn)  # the program keeps fn's name (compile notices, profiles)
  def constrained(*args):
    with activation_constraints(mesh, rules):
      return fn(*args)

  return jax.jit(constrained, in_shardings=in_shardings, out_shardings=out_shardings,
                 donate_argnums=tuple(donate_argnums),
                 compiler_options=compiler_options or None)


def make_sharded_train_step(train_step: Callable, mesh: Mesh, state_shardings: TrainState,
                            frozen_shardings: Any, batch_sharding: NamedSharding,
                            rules: ShardingRules = ShardingRules(),
                            compiler_options: Optional[dict[str, str]] = None) -> Callable:
  """(state, frozen, global batch) -> (state, metrics), compiled for `mesh`.

  Args:
    train_step: `spt_jax.train.step.make_train_step(...)`'s pure function.
    mesh: the device mesh.
    state_shardings: from `train_state_shardings`; the state keeps them and is donated.
    frozen_shardings: of the frozen variables (the frozen half of `shard_tree`).
    batch_sharding: from `batch_sharding(mesh, rules)`.
    rules: for the activation constraints.
    compiler_options: for XLA.
  """
  return sharded_jit(train_step, mesh, (state_shardings, frozen_shardings, batch_sharding),
                     (state_shardings, replicated(mesh)), rules, donate_argnums=(0,),
                     compiler_options=compiler_options)
