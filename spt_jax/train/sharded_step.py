"""The train step sharded over a mesh, with every sharding it needs, from the variables.

One builder for the training loop (real arrays) and for compiling ahead of time
(abstract arrays: `ShardedTrainStep.abstract_inputs`, to compile for a TPU slice that
is not here or export for CUDA).
The frozen base and the trainable leaves are sharded by the rules, the optimizer
state like its parameters, the global batch over the mesh's batch axes; the state
keeps its shardings from step to step and is donated.
"""

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding
import optax

from spt_jax import parallel
from spt_jax.parallel import cpu_compiler
from spt_jax.data.prompts import PromptConfig
from spt_jax.models.image_encoder import uses_chunked_core
from spt_jax.spt.losses import LossSpec
from spt_jax.train import step as step_lib
from spt_jax.train.trainable import partition


@dataclasses.dataclass(frozen=True)
class ShardedTrainStep:
  """step: (state, frozen, global batch) -> (state, metrics), jit-compiled for the mesh.

  shardings: of the whole variables tree; trainable_shardings / frozen_shardings its
  two halves; state_shardings: of the TrainState; batch_sharding: of every entry.
  """
  step: Callable
  optimizer: optax.GradientTransformation
  trainable_patterns: Sequence[str]
  shardings: Any
  trainable_shardings: Any
  frozen_shardings: Any
  state_shardings: step_lib.TrainState
  batch_sharding: NamedSharding

  def initial_state(self, variables, rng: jax.Array) -> tuple[step_lib.TrainState, Any]:
    """(state, frozen) placed on the mesh, from host or global variables."""
    trainable, frozen = partition(parallel.place(variables, self.shardings),
                                  self.trainable_patterns)
    state = step_lib.init_train_state(trainable, self.optimizer, rng)
    return parallel.place(state, self.state_shardings), frozen

  def abstract_inputs(self, variables, batch: Mapping[str, jax.ShapeDtypeStruct]
                      ) -> tuple[Any, Any, Any]:
    """(state, frozen, batch) as ShapeDtypeStructs with their shardings, to lower or
    export `step` without data: from variables (arrays or ShapeDtypeStructs) and the
    global batch's shapes (`spt_jax.data.pipeline.batch_spec`)."""
    trainable, frozen = partition(variables, self.trainable_patterns)
    state = _abstract_state(trainable, self.optimizer)
    return (parallel.abstract_tree(state, self.state_shardings),
            parallel.abstract_tree(frozen, self.frozen_shardings),
            parallel.abstract_tree(dict(batch), {k: self.batch_sharding for k in batch}))


def _abstract_state(trainable, optimizer) -> step_lib.TrainState:
  return jax.eval_shape(
      lambda t: step_lib.init_train_state(t, optimizer, jax.random.PRNGKey(0)), trainable)


def sharded_train_step(model, variables, trainable_patterns: Sequence[str],
                       optimizer: optax.GradientTransformation, loss_spec: LossSpec,
                       prompt_config: PromptConfig, mesh: Mesh,
                       rules: parallel.ShardingRules = parallel.ShardingRules(),
                       scheduler: str = "auto") -> ShardedTrainStep:
  """The sharded train step of `model` for `variables` (arrays or ShapeDtypeStructs);
  `scheduler`: XLA:CPU's scheduler on a CPU mesh (`parallel.cpu_compiler`)."""
  shardings = parallel.shard_tree(variables, mesh, rules)
  trainable_shardings, frozen_shardings = partition(shardings, trainable_patterns)
  trainable, _ = partition(variables, trainable_patterns)
  state_shardings = parallel.train_state_shardings(
      _abstract_state(trainable, optimizer), trainable_shardings, optimizer, mesh)
  batch_sharding = parallel.batch_sharding(mesh, rules)
  step = parallel.make_sharded_train_step(
      step_lib.make_train_step(model, optimizer, loss_spec, prompt_config), mesh,
      state_shardings, frozen_shardings, batch_sharding, rules,
      cpu_compiler.options_for(mesh, scheduler, training=True, remat=model.remat,
                               chunked_attention=uses_chunked_core(
                                   model.global_attention_impl, model.window_attention_impl,
                                   model.adapters)))
  return ShardedTrainStep(step, optimizer, tuple(trainable_patterns), shardings,
                          trainable_shardings, frozen_shardings, state_shardings,
                          batch_sharding)
