"""One of the two processes of `test_multi_device.test_two_processes_match_one`.

Started by launch/multiprocess.py (2 processes x 4 CPU devices, gloo collectives):
joins the distributed runtime, trains the tiny SPT on a (data 2, fsdp 2, model 2) mesh
from its own half of the batch, saves and restores the train state with Orbax from
both processes, and in process 0 only writes the report: losses, the adapters,
Adam's first moments and the forward outputs gathered from both processes.

    python tests/parallel/two_process_worker.py OUTPUT_DIR
"""

import os
import sys

from flax import traverse_util
import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)),
                os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
from sharded_tiny import NUM_IMAGES, run_on_mesh, tiny_batch  # pylint: disable=g-import-not-at-top,wrong-import-position
from spt_jax import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position

MESH = parallel.MeshSpec(shape=(2, 2, 2))


def main(output_dir: str) -> None:
  assert parallel.maybe_initialize_distributed(MESH.distributed), "SPT_DISTRIBUTED unset"
  assert jax.process_count() == 2 and jax.device_count() == 8, jax.devices()
  rows = NUM_IMAGES // jax.process_count()
  mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
  run = run_on_mesh(MESH, local_batch=tiny_batch(mine))

  checkpointer = ocp.StandardCheckpointer()
  path = os.path.join(os.path.abspath(output_dir), "state")
  checkpointer.save(path, run.state)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(path, parallel.abstract_tree(run.state,
                                                               run.state_shardings))
  for before, after in zip(jax.tree_util.tree_leaves(run.state),
                           jax.tree_util.tree_leaves(restored)):
    assert after.sharding == before.sharding
    for a, b in zip(before.addressable_shards, after.addressable_shards):
      np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))

  trees = {"trainable": run.state.trainable, "mu": run.state.opt_state[0].mu}
  gathered = multihost_utils.process_allgather({**trees, **run.forward}, tiled=True)
  if parallel.is_main_process():
    report = {"losses": np.asarray(run.losses), "process_count": jax.process_count(),
              "global_devices": jax.device_count(),
              "qkv_spec": str(run.frozen["params"]["image_encoder"]["blocks_0"]["attn"]
                              ["qkv"]["kernel"].sharding.spec)}
    report.update({k: gathered[k] for k in run.forward})
    for name in trees:
      report.update({f"{name}/{key}": value for key, value in
                     traverse_util.flatten_dict(gathered[name], sep="/").items()})
    np.savez(os.path.join(output_dir, "report.npz"), **report)
  checkpointer.close()


if __name__ == "__main__":
  main(sys.argv[1])
