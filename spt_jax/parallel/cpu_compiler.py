"""XLA:CPU's compile options per program: the instruction scheduler and the fusions.

Scheduler. XLA:CPU schedules a program for concurrency by default: independent
instructions run side by side, and values the backward recomputes (remat, the fused
attention's weights) are free to be computed as soon as their inputs exist, long
before the backward needs them. The memory-optimised scheduler places them where
they are used. `model.cpu_scheduler` 'auto' (the default) picks it for train steps
and XLA's default for every other program (evaluation).

Fusions. jaxlib 0.10's XLA:CPU hands dots, convolutions and reductions to YNNPACK
("ynn" fusions). A reduction fusion takes each scalar constant of its elementwise
part (the exact GELU's 0.5 and 1/sqrt(2), a LayerNorm's 1/C) as a materialised
broadcast of the full operand shape, which XLA shares across the program, and it
keeps its elementwise intermediates (a LayerNorm's centred input) for the backward's
use: in the vit_b SPT train step at 1024, five (1, 64, 64, 3072) float32 broadcasts
of GELU constants (240 MiB) and a centred input per LayerNorm (24 x 12 MiB) stayed
live from the forward into the backward. Train steps without remat are compiled with
YNNPACK's dot and convolution fusions only (`YNN_FUSIONS`), reductions by XLA's own
loops; forward programs and rematerialised train steps keep jaxlib's fusions, with
which they hold less (vit_b forward 354 against 545 MiB; train step with remat
'blocks' and the memory-optimised scheduler 1,484 against 1,979 MiB), and so do train
steps through the encoder's chunked attention core, whose backward's reductions take
XLA's loops 60% longer (vit_b step 16.4 against 9.9 s). vit_b SPT train
step without remat, 1 image x 1 box, float32, compiled temporaries
(`benchmarks/spt_step.py --cpu-scheduler auto,default --cpu-reductions xla,ynn`,
README "Performance"): 3,793 MiB with XLA's defaults, 2,995 with XLA's reductions,
2,208 with both choices.

Only programs on a mesh of CPUs get these options; TPU and GPU programs, and programs
for an abstract mesh, are left alone.
"""

from spt_jax.errors import SptUserError
from spt_jax.models.image_encoder import remat_policy

SCHEDULERS = {"default": "CPU_SCHEDULER_TYPE_DEFAULT",
              "memory_optimized": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
              "concurrency_optimized": "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED"}
CHOICES = ("auto",) + tuple(SCHEDULERS)
# Who runs reductions: 'xla' (XLA:CPU's loops, the choice here) or 'ynn' (YNNPACK, as
# jaxlib 0.10 does by default); `YNN_FUSIONS` is jaxlib 0.10's default list less
# LIBRARY_FUSION_TYPE_REDUCE.
REDUCTIONS = ("xla", "ynn")
YNN_FUSIONS = "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"


def resolve(name: str, training: bool) -> str:
  """The scheduler of SCHEDULERS that `model.cpu_scheduler` names for a train step
  (`training`) or a forward-only program."""
  if name not in CHOICES:
    raise SptUserError(f"model.cpu_scheduler={name!r}: expected one of {list(CHOICES)}")
  if name != "auto":
    return name
  return "memory_optimized" if training else "default"


def compiler_options(scheduler: str, reductions: str = "xla") -> dict[str, str]:
  """XLA:CPU compiler options: scheduler `scheduler` (of SCHEDULERS), reductions by
  `reductions` (of REDUCTIONS; 'ynn' leaves XLA's default fusions)."""
  if scheduler not in SCHEDULERS:
    raise SptUserError(f"CPU scheduler {scheduler!r}: expected one of {list(SCHEDULERS)}")
  if reductions not in REDUCTIONS:
    raise SptUserError(f"CPU reductions {reductions!r}: expected one of {list(REDUCTIONS)}")
  options = {} if scheduler == "default" else {"xla_cpu_scheduler_type": SCHEDULERS[scheduler]}
  if reductions == "xla":
    options["xla_cpu_experimental_ynn_fusion_type"] = YNN_FUSIONS
  return options


def reductions_for(training: bool, remat="none", chunked_attention: bool = False) -> str:
  """Who runs the reductions (of REDUCTIONS) of a train step (`training`) or a
  forward-only program of a model with `model.remat` = remat whose encoder runs the
  chunked attention core in some block or not (`image_encoder.uses_chunked_core`):
  XLA for train steps without remat of the fused attention, YNNPACK (jaxlib's
  default) otherwise."""
  rematerialised, _ = remat_policy(remat)
  return "xla" if training and not (rematerialised or chunked_attention) else "ynn"


def options_for(mesh, name: str, training: bool, remat="none",
                chunked_attention: bool = False) -> dict[str, str]:
  """The compiler options of a program on `mesh` with `model.cpu_scheduler` = name: a
  train step (`training`) or a forward-only program (`resolve`, `reductions_for`); {}
  unless every device is a CPU (accelerators, and abstract meshes, whose devices are
  not known)."""
  scheduler = resolve(name, training)
  reductions = reductions_for(training, remat, chunked_attention)
  try:
    devices = list(mesh.devices.flat)
  except ValueError:  # an AbstractMesh
    return {}
  if not all(device.platform == "cpu" for device in devices):
    return {}
  return compiler_options(scheduler, reductions)
