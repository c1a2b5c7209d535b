"""Multi-host start: a guarded `jax.distributed.initialize`, and who is the main process.

Single-host runs never initialise the distributed runtime. A run is multi-process when
`mesh.distributed.enabled` is set or the environment says so (`SPT_DISTRIBUTED=1`, what
the scripts in launch/ export). Unset coordinator, process count and process id are
taken from the environment (`JAX_COORDINATOR_ADDRESS`, `SPT_NUM_PROCESSES`,
`SPT_PROCESS_ID`) and otherwise left to JAX's cluster detection (Cloud TPU, SLURM,
Open MPI, Kubernetes). On CPU, cross-process collectives need an implementation
(`cpu_collectives`, gloo by default), set before the backend starts.

After initialisation every process sees all devices (`jax.devices()`) and addresses its
own (`jax.local_devices()`); each reads its own share of the data (the pipeline shards
by `jax.process_index()`), all of them take part in every jitted step and in every
Orbax save, and only the main process writes logs and reports (`is_main_process`).
"""

import dataclasses
import os
from typing import Any, Mapping

from absl import logging
import jax

from spt_jax.errors import SptUserError
from spt_jax.fields import known_fields

ENV_ENABLED = "SPT_DISTRIBUTED"
ENV_NUM_PROCESSES = "SPT_NUM_PROCESSES"
ENV_PROCESS_ID = "SPT_PROCESS_ID"
CPU_COLLECTIVES = ("gloo", "mpi")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
  """The `mesh.distributed` config block ('' / 0 / -1 / () mean "not set").

  enabled: initialise the multi-process runtime (also when $SPT_DISTRIBUTED is true).
  coordinator_address: 'host:port' of process 0 ('' : $JAX_COORDINATOR_ADDRESS or
    cluster detection).
  num_processes: 0: $SPT_NUM_PROCESSES or cluster detection.
  process_id: -1: $SPT_PROCESS_ID or cluster detection.
  local_device_ids: the accelerators this process drives (GPU, one process per GPU);
    (): all visible ones.
  cpu_collectives: cross-process collectives of the CPU backend: 'gloo' or 'mpi'.
  initialization_timeout: seconds to wait for all processes.
  """
  enabled: bool = False
  coordinator_address: str = ""
  num_processes: int = 0
  process_id: int = -1
  local_device_ids: tuple[int, ...] = ()
  cpu_collectives: str = "gloo"
  initialization_timeout: int = 300

  @classmethod
  def from_config(cls, config: "DistributedSpec | Mapping[str, Any] | Any") -> "DistributedSpec":
    """From itself, a mapping or a ConfigDict of its fields (unknown keys are an error)."""
    if isinstance(config, cls):
      return config
    fields = known_fields(cls, config, "mesh.distributed")
    if "local_device_ids" in fields:
      fields["local_device_ids"] = tuple(fields["local_device_ids"] or ())
    return cls(**fields).check()

  def check(self) -> "DistributedSpec":
    if self.cpu_collectives not in CPU_COLLECTIVES:
      raise SptUserError(f"mesh.distributed.cpu_collectives={self.cpu_collectives!r}: "
                         f"expected one of {CPU_COLLECTIVES}")
    if self.num_processes < 0:
      raise SptUserError(f"mesh.distributed.num_processes={self.num_processes}: expected "
                         "0 (from the environment) or the number of processes")
    return self


def _env_flag(name: str) -> bool:
  value = os.environ.get(name, "").strip().lower()
  if value not in _TRUE + _FALSE:
    raise SptUserError(f"${name}={os.environ[name]!r}: expected one of {_TRUE + _FALSE[1:]}")
  return value in _TRUE


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, "").strip()
  if not value:
    return None
  if not value.isdigit():
    raise SptUserError(f"${name}={value!r}: expected a non-negative integer")
  return int(value)


def distributed_requested(spec: DistributedSpec) -> bool:
  """Whether this run is multi-process: the config or $SPT_DISTRIBUTED."""
  return spec.enabled or _env_flag(ENV_ENABLED)


def maybe_initialize_distributed(spec: DistributedSpec = DistributedSpec()) -> bool:
  """Calls `jax.distributed.initialize` when requested; True when multi-process.

  Must run before anything touches a JAX backend (no `jax.devices()` before it).
  Calling it again after a successful initialisation does nothing.
  """
  if not distributed_requested(spec):
    return False
  if jax.distributed.is_initialized():
    return True
  jax.config.update("jax_cpu_collectives_implementation", spec.cpu_collectives)
  process_id = spec.process_id if spec.process_id >= 0 else _env_int(ENV_PROCESS_ID)
  jax.distributed.initialize(
      coordinator_address=spec.coordinator_address or None,
      num_processes=spec.num_processes or _env_int(ENV_NUM_PROCESSES),
      process_id=process_id,
      local_device_ids=list(spec.local_device_ids) or None,
      initialization_timeout=spec.initialization_timeout)
  if is_main_process():
    logging.info("jax.distributed: %d processes, %d devices (%d local)",
                 jax.process_count(), jax.device_count(), jax.local_device_count())
  return True


def is_main_process() -> bool:
  """True in process 0, the one that writes logs, reports and overlays."""
  return jax.process_index() == 0
