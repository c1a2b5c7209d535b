"""XLA:CPU's instruction scheduler, chosen per compiled program.

XLA:CPU schedules a program for concurrency by default: independent instructions run
side by side, and the rematerialised forward passes of `model.remat` are free to run
as soon as their inputs exist, long before the backward needs them, so remat saves
nothing (vit_b SPT train step at 1024: 4.87 GiB of temporaries without, 4.61 with).
The memory-optimised scheduler places them where they are used. Measured in one run
(`benchmarks/spt_step.py --remat none,blocks --cpu-scheduler default,memory_optimized`,
README "Performance"): the train step holds 3.79 GiB instead of 4.87 and runs in
26.3 s instead of 29.1; with remat='blocks' 1.11 GiB (42.6 s: one more forward pass);
the forward alone is faster with the default scheduler (10.3 s against 12.0).

`model.cpu_scheduler` 'auto' (the default) is therefore the memory-optimised scheduler
for train steps and XLA's default for forward-only programs (evaluation), on a mesh
of CPUs; TPU and GPU programs, and programs for an abstract mesh, are left alone.
"""

from spt_jax.errors import SptUserError

SCHEDULERS = {"default": "CPU_SCHEDULER_TYPE_DEFAULT",
              "memory_optimized": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
              "concurrency_optimized": "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED"}
CHOICES = ("auto",) + tuple(SCHEDULERS)


def resolve(name: str, training: bool) -> str:
  """The scheduler of SCHEDULERS that `model.cpu_scheduler` names for a train step
  (`training`) or a forward-only program."""
  if name not in CHOICES:
    raise SptUserError(f"model.cpu_scheduler={name!r}: expected one of {list(CHOICES)}")
  if name != "auto":
    return name
  return "memory_optimized" if training else "default"


def compiler_options(name: str) -> dict[str, str]:
  """XLA compiler options selecting scheduler `name` ({} for XLA's default)."""
  if name not in SCHEDULERS:
    raise SptUserError(f"CPU scheduler {name!r}: expected one of {list(SCHEDULERS)}")
  return {} if name == "default" else {"xla_cpu_scheduler_type": SCHEDULERS[name]}


def options_for(mesh, name: str, training: bool) -> dict[str, str]:
  """The compiler options of a program on `mesh`: the scheduler's on a mesh of CPUs,
  else {} (accelerators, and abstract meshes, whose devices are not known)."""
  scheduler = resolve(name, training)
  try:
    devices = list(mesh.devices.flat)
  except ValueError:  # an AbstractMesh
    return {}
  if not all(device.platform == "cpu" for device in devices):
    return {}
  return compiler_options(scheduler)
