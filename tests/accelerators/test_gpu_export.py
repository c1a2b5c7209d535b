"""GPU programs without a GPU: the sharded SPT train step and the evaluator's forward
exported for CUDA (`jax.export`, platforms=('cuda',)) on an abstract mesh of 8 GPUs.

Export lowers the relation kernels through Pallas's Triton lowering
(`relation_impl='auto'` picks them when lowering for CUDA) inside the mesh's
`shard_map`; the CUDA compiler itself (XLA:GPU, ptxas) needs the CUDA plugin and a
GPU, neither of which is here.
"""

from jax import export
from jax.sharding import AbstractMesh, AxisType

from spt_jax import aot
from spt_jax import config as config_lib
from spt_jax import parallel
from spt_jax.data.pipeline import DataConfig, batch_spec
from spt_jax.data.prompts import PromptConfig
from spt_jax.evaluate.evaluator import Evaluator
from spt_jax.spt.losses import LossSpec
from spt_jax.train.optimizer import OptimizerSpec, make_optimizer
from spt_jax.train.sharded_step import sharded_train_step
from spt_jax.train.trainable import SPT_TRAINABLE
from test_tpu_compile import micro_spt

MESH = parallel.MeshSpec(shape=(2, 2, 2))


def abstract_mesh():
  return AbstractMesh(MESH.shape, MESH.axes, axis_types=(AxisType.Auto,) * 3)


def export_for_cuda(jitted, inputs):
  """The module text of `jitted` exported for 8 CUDA devices."""
  exported = export.export(jitted, platforms=("cuda",), disabled_checks=[
      export.DisabledSafetyCheck.custom_call(aot.TRITON_CALL)])(*inputs)
  assert exported.nr_devices == 8
  return exported.mlir_module()


def test_train_step_exports_for_cuda_with_the_triton_kernels():
  model, variables = micro_spt()
  prompt = PromptConfig(per_region=True, max_prompts=4)
  step = sharded_train_step(model, variables, SPT_TRAINABLE, make_optimizer(OptimizerSpec()),
                            LossSpec(num_points=16 * 16), prompt, abstract_mesh(),
                            MESH.rules)
  batch = batch_spec(DataConfig(image_size=model.spec.image_size, batch_size=4,
                                prompt=prompt))
  text = export_for_cuda(step.step, step.abstract_inputs(variables, batch))
  # The forward kernel, then the backward's row, column and value kernels.
  assert text.count(aot.TRITON_CALL) >= 4
  assert "tpu_custom_call" not in text
  assert "sdy.manual_computation" in text  # the kernels run per shard (shard_map)


def test_evaluator_exports_for_cuda_with_the_triton_kernels():
  model, variables = micro_spt()
  config = config_lib.base_config()
  config.data.eval.batch_size = 4
  config.data.eval.original_canvas = 48
  forward, inputs = Evaluator(config, model, "unused", MESH, abstract_mesh()).program(
      variables)
  assert export_for_cuda(forward, inputs).count(aot.TRITON_CALL) >= 1
