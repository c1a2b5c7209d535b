"""Scale-out: device mesh from the config, sharding rules as data, multi-host start.

Entry points:
  mesh_config() -> ConfigDict                        the `mesh` config block, defaults
  MeshSpec.from_config(config.mesh) -> MeshSpec      its checked form
  maybe_initialize_distributed(spec.distributed)     multi-process start (guarded)
  make_mesh(spec) -> Mesh                            axes data / fsdp / model
  shard_tree(variables, mesh, spec.rules)            a NamedSharding per variable
  place(tree, shardings), abstract_tree(tree, shardings)
  train_state_shardings(state, trainable_sh, optimizer, mesh)
  make_sharded_train_step(train_step, mesh, state_sh, frozen_sh, batch_sh, rules)
  sharded_jit(fn, mesh, in_sh, out_sh, rules)         any other step (evaluation)
  batch_sharding(mesh, rules), global_batch(local_batch, batch_sh), local_rows(array)
  is_main_process()
"""

from spt_jax.parallel.activations import activation_constraints
from spt_jax.parallel.batch import batch_sharding, global_batch, local_rows
from spt_jax.parallel.distributed import (DistributedSpec, is_main_process,
                                          maybe_initialize_distributed)
from spt_jax.parallel.mesh import MESH_AXES, MeshSpec, make_mesh, mesh_config
from spt_jax.parallel.rules import (DEFAULT_LOGICAL_RULES, DEFAULT_PARAM_RULES, ShardingRules,
                                    abstract_tree, bytes_per_device, place, shard_tree)
from spt_jax.parallel.sharded_jit import (make_sharded_train_step, replicated, sharded_jit,
                                          train_state_shardings)
