r"""Memory plan: what one device holds for the sharded SPT train step, per mesh shape.

    python -m benchmarks.sharding_memory [--models vit_b,vit_l,vit_h] [--devices 8]
        [--meshes 8x1x1,1x8x1,2x4x1,1x4x2,2x2x2] [--images_per_device 1] [--prompts 8]
        [--remat] [--dtype float32]

Simulates `--devices` CPU devices, builds the mesh (data x fsdp x model) and the
shardings of `spt_jax.parallel` with the default rules, and lowers and compiles the
train step (the paper's loss, AdamW) for abstract inputs: no weight is allocated.
The global batch is `images_per_device * devices` images of 1024 px with `prompts`
box prompts each (the paper: 1 image per device on 8 devices), the same for every
mesh. Per device, from the compiled program:
  frozen, adapters, optimizer, batch  bytes of this device's shards of each input as
      placed by the rules;
  args  `memory_analysis().argument_size_in_bytes`, checked against the shards of the
        inputs the executable takes with the shardings they were placed with (unused
        frozen weights, e.g. the point embeddings of a box-only run, are pruned);
  temp  XLA's temporaries: the activations kept for the backward pass and the
        gathered fsdp weights (`memory_analysis().temp_size_in_bytes`);
  peak  args + temp + outputs not aliased to (donated) inputs.
`frozen x` is the frozen bytes per device relative to a replicated base. The
absolute temp bytes are the CPU compiler's buffer assignment (no TPU/GPU memory
scheduling or fusion): compare meshes with each other, not with an accelerator's HBM.
"""

import argparse
import math
import time

import jax
import jax.numpy as jnp

from spt_jax import parallel
from spt_jax.data.prompts import PromptConfig
from spt_jax.models.config import sam_preset
from spt_jax.models.sam import init_variables
from spt_jax.spt.losses import LossSpec
from spt_jax.spt.model import Spt
from spt_jax.train import step as step_lib
from spt_jax.train.optimizer import OptimizerSpec, make_optimizer
from spt_jax.train.trainable import SPT_TRAINABLE, partition

MIB = 2 ** 20


def abstract_batch(images: int, size: int, prompts: int) -> dict[str, jax.ShapeDtypeStruct]:
  """The pipeline's training batch entries the step reads (per-region box prompts)."""
  shapes = dict(image=((images, size, size, 3), jnp.uint8), input_size=((images, 2), jnp.int32),
                mask=((images, size, size), jnp.float32),
                prompt_regions=((images, size, size), jnp.uint8),
                boxes=((images, prompts, 4), jnp.float32),
                prompt_valid=((images, prompts), jnp.bool_))
  return {k: jax.ShapeDtypeStruct(shape, dtype) for k, (shape, dtype) in shapes.items()}


def _arguments(compiled, inputs, placed) -> int:
  """Bytes per device of the inputs the executable takes (unused ones are pruned);
  checks that it takes them with the shardings they were placed with."""
  total = 0
  in_shardings, _ = compiled.input_shardings
  for value, mine, theirs in zip(*(jax.tree_util.tree_leaves(t, is_leaf=lambda x: x is None)
                                   for t in (inputs, placed, in_shardings))):
    if theirs is not None:
      if not theirs.is_equivalent_to(mine, value.ndim):
        raise AssertionError(f"compiled input sharding {theirs} differs from {mine}")
      total += math.prod(theirs.shard_shape(value.shape)) * value.dtype.itemsize
  return total


def plan(model_name: str, mesh_shape: tuple[int, ...], args) -> dict[str, float]:
  """Per-device bytes of the compiled train step of `model_name` on `mesh_shape`."""
  model = Spt(sam_preset(model_name), dtype=jnp.dtype(args.dtype), remat=args.remat)
  variables = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0)))
  trainable, frozen = partition(variables, SPT_TRAINABLE)
  optimizer = make_optimizer(OptimizerSpec())
  state = jax.eval_shape(
      lambda t: step_lib.init_train_state(t, optimizer, jax.random.PRNGKey(0)), trainable)
  prompt_config = PromptConfig(per_region=True, max_prompts=args.prompts)
  batch = abstract_batch(args.images_per_device * args.devices, model.spec.image_size,
                         args.prompts)

  spec = parallel.MeshSpec(shape=mesh_shape)
  mesh = parallel.make_mesh(spec)
  trainable_sh, frozen_sh = partition(parallel.shard_tree(variables, mesh, spec.rules),
                                      SPT_TRAINABLE)
  state_sh = parallel.train_state_shardings(state, trainable_sh, optimizer, mesh)
  batch_sh = parallel.batch_sharding(mesh, spec.rules)
  step = parallel.make_sharded_train_step(
      step_lib.make_train_step(model, optimizer, LossSpec(), prompt_config), mesh, state_sh,
      frozen_sh, batch_sh, spec.rules)
  start = time.perf_counter()
  compiled = step.lower(parallel.abstract_tree(state, state_sh),
                        parallel.abstract_tree(frozen, frozen_sh),
                        parallel.abstract_tree(batch, {k: batch_sh for k in batch})).compile()
  seconds = time.perf_counter() - start

  placed = (state_sh, frozen_sh, {k: batch_sh for k in batch})
  taken = _arguments(compiled, (state, frozen, batch), placed)
  memory = compiled.memory_analysis()
  parts = dict(
      frozen=parallel.bytes_per_device(frozen, frozen_sh),
      adapters=parallel.bytes_per_device(state.trainable, state_sh.trainable),
      optimizer=parallel.bytes_per_device(state.opt_state, state_sh.opt_state),
      batch=parallel.bytes_per_device(batch, placed[2]))
  args_bytes = memory.argument_size_in_bytes
  if abs(args_bytes - taken) > 1024:
    raise AssertionError(f"input shards ({taken} bytes) do not add up to the compiled "
                         f"argument size {args_bytes}")
  replicated = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(frozen))
  return dict(parts, args=args_bytes, temp=memory.temp_size_in_bytes,
              peak=args_bytes + memory.temp_size_in_bytes + memory.output_size_in_bytes -
              memory.alias_size_in_bytes,
              frozen_ratio=parts["frozen"] / replicated, compile_s=seconds)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="vit_b,vit_l,vit_h")
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--meshes", default="8x1x1,1x8x1,2x4x1,1x4x2,2x2x2",
                      help="data x fsdp x model sizes, comma separated")
  parser.add_argument("--images_per_device", type=int, default=1)
  parser.add_argument("--prompts", type=int, default=8)
  parser.add_argument("--remat", action="store_true", help="rematerialise encoder blocks")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  args = parser.parse_args()
  jax.config.update("jax_num_cpu_devices", args.devices)  # before the backend starts
  jax.config.update("jax_platforms", "cpu")
  meshes = [tuple(int(s) for s in m.split("x")) for m in args.meshes.split(",")]
  print(f"{args.devices} simulated CPU devices; global batch {args.images_per_device * args.devices}"
        f" images x {args.prompts} prompts at 1024 px; {args.dtype}, remat={args.remat}; "
        f"MiB per device, from the compiled train step")
  header = ("| model | mesh d x f x m | frozen | frozen x | adapters | optimizer | batch | args"
            " | temp | peak | compile s |")
  print(header)
  print("|" + "---|" * (header.count("|") - 1))
  for model_name in args.models.split(","):
    for mesh_shape in meshes:
      row = plan(model_name, mesh_shape, args)
      mib = lambda key: f"{row[key] / MIB:,.1f}"  # pylint: disable=cell-var-from-loop
      print(f"| {model_name} | {'x'.join(map(str, mesh_shape))} | {mib('frozen')} | "
            f"{row['frozen_ratio']:.3f} | {mib('adapters')} | {mib('optimizer')} | "
            f"{mib('batch')} | {mib('args')} | {mib('temp')} | {mib('peak')} | "
            f"{row['compile_s']:.0f} |", flush=True)


if __name__ == "__main__":
  main()
