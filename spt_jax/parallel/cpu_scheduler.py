"""XLA:CPU's instruction scheduler, chosen per compiled program.

XLA:CPU schedules a program for concurrency by default: independent instructions run
side by side, and the rematerialised forward passes of `model.remat` are free to run
as soon as their inputs exist, long before the backward needs them, so remat saves
little (vit_b SPT train step at 1024, remat 'blocks': 4.61 GiB of temporaries against
4.87 without). The memory-optimised scheduler places them where they are used: with
remat 'blocks' 1.11 GiB (`benchmarks/spt_step.py --remat none,blocks --cpu-scheduler
default,memory_optimized`, README "Performance"). Without remat it is now the slower
choice: since the lean residuals (the backward keeps less) it holds 3.27 GiB instead
of 3.81 but the step takes 42.2 s instead of 32.0 (one run, 2026-12-03), and the
forward alone is faster with the default scheduler too.

`model.cpu_scheduler` 'auto' (the default) is therefore the memory-optimised scheduler
for train steps of a rematerialised model (`model.remat` other than 'none') and XLA's
default for every other program (train steps without remat, evaluation), on a mesh of
CPUs; TPU and GPU programs, and programs for an abstract mesh, are left alone.
"""

from spt_jax.errors import SptUserError
from spt_jax.models.image_encoder import remat_policy

SCHEDULERS = {"default": "CPU_SCHEDULER_TYPE_DEFAULT",
              "memory_optimized": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
              "concurrency_optimized": "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED"}
CHOICES = ("auto",) + tuple(SCHEDULERS)


def resolve(name: str, training: bool, remat="none") -> str:
  """The scheduler of SCHEDULERS that `model.cpu_scheduler` names for a train step
  (`training`) or a forward-only program of a model with `model.remat` = remat."""
  if name not in CHOICES:
    raise SptUserError(f"model.cpu_scheduler={name!r}: expected one of {list(CHOICES)}")
  if name != "auto":
    return name
  rematerialised, _ = remat_policy(remat)
  return "memory_optimized" if training and rematerialised else "default"


def compiler_options(name: str) -> dict[str, str]:
  """XLA compiler options selecting scheduler `name` ({} for XLA's default)."""
  if name not in SCHEDULERS:
    raise SptUserError(f"CPU scheduler {name!r}: expected one of {list(SCHEDULERS)}")
  return {} if name == "default" else {"xla_cpu_scheduler_type": SCHEDULERS[name]}


def options_for(mesh, name: str, training: bool, remat="none") -> dict[str, str]:
  """The compiler options of a program on `mesh` (of a model with `model.remat` =
  remat): the scheduler's on a mesh of CPUs, else {} (accelerators, and abstract
  meshes, whose devices are not known)."""
  scheduler = resolve(name, training, remat)
  try:
    devices = list(mesh.devices.flat)
  except ValueError:  # an AbstractMesh
    return {}
  if not all(device.platform == "cpu" for device in devices):
    return {}
  return compiler_options(scheduler)
