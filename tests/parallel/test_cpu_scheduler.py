"""XLA:CPU's scheduler per program: remat saves memory on CPU only with the
memory-optimised scheduler, which 'auto' picks for train steps of rematerialised
models on CPUs."""

import jax
from jax.sharding import AbstractMesh, AxisType
import pytest

from small_models import SMALL_SPEC
from spt_jax import parallel
from spt_jax.data.pipeline import DataConfig, batch_spec
from spt_jax.data.prompts import PromptConfig
from spt_jax.errors import SptUserError
from spt_jax.models.sam import init_variables
from spt_jax.parallel import cpu_scheduler
from spt_jax.spt.losses import LossSpec
from spt_jax.spt.model import Spt
from spt_jax.train.optimizer import OptimizerSpec, make_optimizer
from spt_jax.train.sharded_step import sharded_train_step
from spt_jax.train.trainable import SPT_TRAINABLE


def test_auto_picks_memory_optimised_for_rematerialised_train_steps_on_cpus():
  mesh = parallel.make_mesh(parallel.MeshSpec(shape=(1, 1, 1)))
  memory_optimised = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
  for remat in ("blocks", "dots_with_no_batch_dims_saveable", True):
    assert cpu_scheduler.options_for(mesh, "auto", True, remat) == memory_optimised
    assert cpu_scheduler.options_for(mesh, "auto", False, remat) == {}
  for remat in ("none", False):
    assert cpu_scheduler.options_for(mesh, "auto", True, remat) == {}
  assert cpu_scheduler.options_for(mesh, "default", True, "blocks") == {}
  assert cpu_scheduler.options_for(mesh, "memory_optimized", True) == memory_optimised
  with pytest.raises(SptUserError, match="model.remat='everything'"):
    cpu_scheduler.options_for(mesh, "auto", True, "everything")
  abstract = AbstractMesh((1, 1, 1), ("data", "fsdp", "model"),
                          axis_types=(AxisType.Auto,) * 3)
  assert cpu_scheduler.options_for(abstract, "memory_optimized", True, "blocks") == {}
  with pytest.raises(SptUserError, match="model.cpu_scheduler='fast'"):
    cpu_scheduler.options_for(mesh, "fast", training=True)


def _train_step_temp(remat: str, scheduler: str) -> int:
  model = Spt(SMALL_SPEC, remat=remat, relation_impl="xla")
  variables = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0)))
  spec = parallel.MeshSpec(shape=(1, 1, 1))
  prompt = PromptConfig(per_region=True, max_prompts=2)
  step = sharded_train_step(model, variables, SPT_TRAINABLE, make_optimizer(OptimizerSpec()),
                            LossSpec(num_points=256), prompt, parallel.make_mesh(spec),
                            spec.rules, scheduler)
  batch = batch_spec(DataConfig(image_size=SMALL_SPEC.image_size, batch_size=4,
                                prompt=prompt))
  compiled = step.step.lower(*step.abstract_inputs(variables, batch)).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_remat_saves_more_cpu_memory_with_the_memory_optimised_scheduler():
  """Measured with this small SAM before the lean residuals (GELU/LayerNorm custom VJPs,
  attention from qkv): remat 'blocks' 68 MiB with XLA's default scheduler, 45 MiB with
  the memory-optimised one ('auto' for a train step); after them 60.5 and 48.6 MiB (the
  backward keeps less without remat, so remat has less to save)."""
  assert _train_step_temp("blocks", "auto") < 0.9 * _train_step_temp("blocks", "default")
