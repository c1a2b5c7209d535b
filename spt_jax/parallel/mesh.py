"""The device mesh from the config: named axes, per-axis sizes, -1 for "the rest".

Mesh axes (`MESH_AXES`, outermost first):
  data   data parallelism: the batch is split, weights are replicated.
  fsdp   fully sharded data parallelism (ZeRO-3): the batch is split AND weights,
         adapters and optimizer state are split, each layer's weights gathered when used.
  model  tensor parallelism: the encoder's heads and MLP are split, and the decoders'
         prompts (SAM decodes every prompt of an image separately).
The batch goes over (data, fsdp); which weight dims go where is `rules.ShardingRules`.

Devices are laid out by `jax.experimental.mesh_utils` so that the last axes are the
closest devices (one TPU slice's ICI torus, one host's NVLink). With `dcn_shape`, the
mesh spans several TPU slices or GPU hosts: `dcn_shape[i]` of axis i's `shape[i]`
run across slices/hosts (the slow network), the rest inside each.

The mesh's axis types are Auto: shardings propagate through the program from the
explicit in/out shardings of `jax.jit` and a few activation constraints (pjit style).
"""

import dataclasses
import math
from typing import Any, Mapping, Sequence

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh
import ml_collections
import numpy as np

from spt_jax.errors import SptUserError
from spt_jax.fields import known_fields
from spt_jax.parallel.distributed import DistributedSpec
from spt_jax.parallel.rules import ShardingRules

MESH_AXES = ("data", "fsdp", "model")


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  """The `mesh` config block.

  shape: devices along each axis, one entry per name in `axes`; at most one -1, which
    takes the devices the others leave. The product is the device count.
  axes: names of the axes, a subset of MESH_AXES in any order (outermost first).
  dcn_shape: () for one TPU slice / one host; else per axis how many slices (TPU) or
    hosts (GPU, one granule per process) it spans; divides `shape` entrywise.
  rules: which logical axes go to which mesh axes, and the logical axes of variables.
  distributed: multi-process start (see `spt_jax.parallel.distributed`).
  """
  shape: tuple[int, ...] = (-1, 1, 1)
  axes: tuple[str, ...] = MESH_AXES
  dcn_shape: tuple[int, ...] = ()
  rules: ShardingRules = ShardingRules()
  distributed: DistributedSpec = DistributedSpec()

  @classmethod
  def from_config(cls, config: "MeshSpec | Mapping[str, Any] | Any") -> "MeshSpec":
    """From itself, a mapping or an ml_collections ConfigDict of its fields."""
    if isinstance(config, cls):
      return config
    fields = known_fields(cls, config, "mesh config")
    for key in ("shape", "axes", "dcn_shape"):
      if key in fields:
        fields[key] = tuple(fields[key] or ())
    if "rules" in fields:
      fields["rules"] = ShardingRules.from_config(fields["rules"])
    if "distributed" in fields:
      fields["distributed"] = DistributedSpec.from_config(fields["distributed"])
    return cls(**fields).check()

  def check(self) -> "MeshSpec":
    """Returns self if the names and sizes are consistent, else raises SptUserError."""
    unknown = [a for a in self.axes if a not in MESH_AXES]
    if unknown or len(set(self.axes)) != len(self.axes):
      raise SptUserError(f"mesh.axes={self.axes}: expected distinct names from {MESH_AXES}")
    if len(self.shape) != len(self.axes):
      raise SptUserError(f"mesh.shape={self.shape} has {len(self.shape)} entries but "
                         f"mesh.axes={self.axes} has {len(self.axes)}")
    if any(s == 0 or s < -1 for s in self.shape) or list(self.shape).count(-1) > 1:
      raise SptUserError(f"mesh.shape={self.shape}: expected positive sizes and at most "
                         "one -1 (the rest of the devices)")
    if self.dcn_shape and (len(self.dcn_shape) != len(self.axes) or
                           any(s < 1 for s in self.dcn_shape)):
      raise SptUserError(f"mesh.dcn_shape={self.dcn_shape}: expected () or one positive "
                         f"size per axis of {self.axes}")
    self.rules.check(MESH_AXES)
    return self

  def resolved_shape(self, num_devices: int) -> tuple[int, ...]:
    """`shape` with the -1 filled in; raises unless it multiplies to `num_devices`."""
    known = math.prod(s for s in self.shape if s != -1)
    shape = tuple(num_devices // known if s == -1 else s for s in self.shape)
    if num_devices % known or math.prod(shape) != num_devices:
      raise SptUserError(
          f"mesh.shape={self.shape} (axes {self.axes}) does not fit {num_devices} devices: "
          f"expected sizes whose product is {num_devices} (use -1 for one axis to take "
          "the rest)")
    if self.dcn_shape:
      bad = [a for a, s, d in zip(self.axes, shape, self.dcn_shape) if s % d]
      if bad:
        raise SptUserError(f"mesh.dcn_shape={self.dcn_shape} does not divide the mesh "
                           f"shape {shape} along {bad}")
    return shape


def make_mesh(spec: MeshSpec, devices: Sequence[Any] | None = None) -> Mesh:
  """The device mesh of `spec` over `devices` (default: all devices of all processes)."""
  spec = spec.check()
  devices = list(jax.devices() if devices is None else devices)
  shape = spec.resolved_shape(len(devices))
  if spec.dcn_shape:
    per_granule = tuple(s // d for s, d in zip(shape, spec.dcn_shape))
    grid = mesh_utils.create_hybrid_device_mesh(
        per_granule, spec.dcn_shape, devices,
        process_is_granule=devices[0].platform != "tpu", allow_split_physical_axes=True)
  elif any(getattr(device, "core_on_chip", 0) for device in devices):
    # One device per TensorCore (v4 without megacore, as compile-only v4 topologies
    # list them): mesh_utils wants one per chip. In the given (core-tiled) order the
    # cores of a chip stay neighbours along the last axis.
    grid = np.asarray(devices, dtype=object).reshape(shape)
  else:
    grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  return Mesh(grid, spec.axes, axis_types=(AxisType.Auto,) * len(spec.axes))


def mesh_config(**overrides) -> ml_collections.ConfigDict:
  """The `mesh` config block with every field at its default (MeshSpec's)."""
  spec = MeshSpec()
  config = ml_collections.ConfigDict(dict(
      shape=spec.shape, axes=spec.axes, dcn_shape=spec.dcn_shape,
      rules=ml_collections.ConfigDict(dataclasses.asdict(spec.rules)),
      distributed=ml_collections.ConfigDict(dataclasses.asdict(spec.distributed))))
  config.update(overrides)
  return config
