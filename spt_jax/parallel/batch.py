"""The global batch from each process's local batch, and back.

Each process reads its own share of the data (`spt_jax.data.pipeline` shards the
records by `jax.process_index()`), `data.batch_size` images per process. The step
sees one global batch of `batch_size * process_count` images, split over the 'batch'
mesh axes (data, fsdp) on its leading axis; every other axis is whole.
"""

import math
from typing import Mapping

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from spt_jax import model_inputs
from spt_jax.errors import SptUserError
from spt_jax.parallel.rules import ShardingRules


def batch_sharding(mesh: Mesh, rules: ShardingRules = ShardingRules()) -> NamedSharding:
  """Every batch entry split on its leading (image) axis over the 'batch' mesh axes."""
  axes = tuple(a for a in rules.mesh_axes("batch") if mesh.shape.get(a, 1) > 1)
  return NamedSharding(mesh, PartitionSpec(axes or None))


def _check_rows(sharding: NamedSharding, global_rows: int, rows: int) -> None:
  """Raises SptUserError unless the batch axes split `global_rows` evenly and give this
  process's devices exactly the `rows` it reads."""
  axes = sharding.spec[0] or ()
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  split = math.prod(sharding.mesh.shape[a] for a in axes)
  if global_rows % split:
    raise SptUserError(
        f"the global batch of {global_rows} images ({rows} per process, data "
        f"batch_size, x {jax.process_count()} processes) is not divisible by the "
        f"{split} devices of the batch mesh axes {axes}: change the batch size or mesh.shape")
  indices = sharding.addressable_devices_indices_map((global_rows,))
  mine = {r for index in indices.values() for r in range(global_rows)[index[0]]}
  if len(mine) != rows:
    raise SptUserError(
        f"mesh.shape puts {len(mine)} of {global_rows} batch rows on this process's "
        f"devices, but it reads {rows}: the batch axes {axes} must span the "
        "processes (put 'model' inside a host, 'data'/'fsdp' across hosts)")


def global_batch(local_batch: Mapping[str, np.ndarray],
                 sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's batch (leading axis: its images) -> global arrays.

  Text entries (category, defect_type, source_path: numpy 'S' arrays) stay on the
  host and are left out; keep them from `local_batch` for reports.
  """
  arrays = {k: np.asarray(v) for k, v in model_inputs.array_fields(local_batch).items()}
  if not arrays:
    return {}
  rows = next(iter(arrays.values())).shape[0]
  global_rows = rows * jax.process_count()
  _check_rows(sharding, global_rows, rows)
  return {k: jax.make_array_from_process_local_data(sharding, v,
                                                    (global_rows,) + v.shape[1:])
          for k, v in arrays.items()}


def local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a global array split on its leading axis (all rows if that
  axis is whole): the inverse of `global_batch`, e.g. for per-process metrics."""
  if not array.ndim:
    return np.asarray(array.addressable_shards[0].data)
  shards = {}
  for shard in array.addressable_shards:
    shards.setdefault(shard.index[0].start or 0, shard.data)
  return np.concatenate([np.asarray(shards[start]) for start in sorted(shards)])
