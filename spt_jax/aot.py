"""Compiling for accelerators that are not attached: TPU topologies and what a chip holds.

With libtpu available, JAX describes a TPU slice that is not present
(`jax.experimental.topologies`), and `jax.jit(f).lower(*abstract).compile()` on a
mesh of its devices runs the real TPU compiler: Mosaic's passes and VMEM check,
the SPMD partitioner, the per-chip buffer assignment. Nothing is allocated.

libtpu is looked up, first found: $TPU_LIBRARY_PATH; an importable `libtpu` (the
`tpu` extra, as on a TPU VM); `<venv>/libtpu/libtpu/libtpu.so`, where `make setup`
puts it. That last place is outside the import path on purpose: JAX loads an
importable libtpu at every start and, on a host without TPUs, warns about it;
from there it is loaded only when a topology is asked for.
"""

import collections
import dataclasses
import importlib.util
import os
import re
import sys
from typing import NamedTuple

from jax.experimental import topologies
from jax._src.pallas.mosaic import tpu_info  # device kind -> chip version
from jax.experimental.pallas import tpu as pltpu

from spt_jax.errors import SptUserError

# Where `make setup` installs libtpu (pip --target), relative to the environment.
LIBTPU_DIR = "libtpu"
# What libtpu would otherwise ask the metadata server for, on a host that is no TPU VM;
# and no lock file: compile-only devices claim no chip, so several processes may compile.
_COMPILE_ONLY_ENV = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost",
                     "TPU_ACCELERATOR_TYPE": "v5litepod-8",
                     "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
               "collective-permute")
_COLLECTIVE = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
MOSAIC_CALL = 'custom_call_target="tpu_custom_call"'
TRITON_CALL = "__gpu$xla.gpu.triton"


def libtpu_path() -> str | None:
  """The libtpu shared library to compile with, or None (module docstring)."""
  from_env = os.environ.get("TPU_LIBRARY_PATH")
  if from_env and os.path.isfile(from_env):
    return from_env
  spec = importlib.util.find_spec("libtpu")
  candidates = [os.path.join(sys.prefix, LIBTPU_DIR, "libtpu", "libtpu.so")]
  if spec is not None and spec.submodule_search_locations:
    candidates.insert(0, os.path.join(spec.submodule_search_locations[0], "libtpu.so"))
  return next((path for path in candidates if os.path.isfile(path)), None)


def tpu_devices(topology: str, chips: int | None = None) -> list:
  """Compile-only devices of a TPU slice, e.g. 'v5e:2x2', 'v5p:2x2x2'.

  Args:
    topology: '<generation>:<chips per dim>' as `topologies.get_topology_desc` takes it.
    chips: the first `chips` devices only (e.g. 1 of a 2x2 slice), default all.

  Raises:
    SptUserError: libtpu is not installed, or the topology is unknown.
  """
  path = libtpu_path()
  if path is None:
    raise SptUserError(
        "compiling for TPU needs libtpu: `make setup` installs it under "
        f"{os.path.join(sys.prefix, LIBTPU_DIR)}, `pip install -e '.[tpu]'` "
        "installs it as a package, or set TPU_LIBRARY_PATH to libtpu.so")
  for key, value in _COMPILE_ONLY_ENV.items():
    os.environ.setdefault(key, value)
  os.environ["TPU_LIBRARY_PATH"] = path
  try:
    devices = list(topologies.get_topology_desc(topology, "tpu").devices)
  except (RuntimeError, ValueError) as error:
    raise SptUserError(f"TPU topology {topology!r}: {error}") from None
  return devices[:chips] if chips else devices


def device_hbm_bytes(device) -> int:
  """HBM of one TPU device (a chip, or both cores of a megacore) by its kind."""
  chip = tpu_info.chip_version_from_device_kind(device.device_kind)
  if chip is None:
    raise SptUserError(f"unknown TPU device kind {device.device_kind!r}")
  cores = getattr(device, "num_cores", 1)  # per-core figures (megacore: 2 cores)
  return pltpu.get_tpu_info_for_chip(chip, cores).hbm_capacity_bytes * cores


@dataclasses.dataclass(frozen=True)
class Figures:
  """What one device of a compiled program holds and runs (bytes, counts).

  peak: arguments + temporaries + outputs not aliased to (donated) arguments.
  mosaic_calls / triton_calls: fused kernel calls in the compiled program.
  collectives: {kind: count} of the cross-device operations.
  hbm_bytes: HBM traffic per device with loops counted by their trip counts
    (`hbm_traffic`); unknown_trip_loops: loops counted once, their trip count unknown.
  """
  arguments: int
  temp: int
  outputs: int
  aliased: int
  mosaic_calls: int
  triton_calls: int
  collectives: dict[str, int]
  hbm_bytes: float = 0.0
  unknown_trip_loops: int = 0

  @property
  def peak(self) -> int:
    return self.arguments + self.temp + self.outputs - self.aliased


def figures(compiled) -> Figures:
  """Figures of a `jax.stages.Compiled` (its memory analysis and optimised HLO)."""
  memory = compiled.memory_analysis()
  text = compiled.as_text()
  counts = collections.Counter(_COLLECTIVE.findall(text))
  return Figures(
      arguments=memory.argument_size_in_bytes, temp=memory.temp_size_in_bytes,
      outputs=memory.output_size_in_bytes, aliased=memory.alias_size_in_bytes,
      mosaic_calls=text.count(MOSAIC_CALL), triton_calls=text.count(TRITON_CALL),
      collectives={kind: counts[kind] for kind in COLLECTIVES if counts[kind]},
      **dict(zip(("hbm_bytes", "unknown_trip_loops"), hbm_traffic(text))))


# --- HBM traffic of a compiled program, loops counted with their trip counts ---------
# cost_analysis() counts a while loop's body once; this walks the optimised HLO text
# and multiplies each body by its trip count.

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s4": 0.5, "u4": 0.5, "bf16": 2, "f16": 2,
                "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8,
                "u64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,<=]*)\](\{[^}]*\})?")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([\w\-]+)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_OPERAND = re.compile(r"%([\w.\-]+)")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_INT_CONSTANT = re.compile(r"[su](?:32|64)\[\]\S* constant\((\d+)\)")
_CALLED = re.compile(r"\b(body|condition|to_apply|true_computation|false_computation)"
                     r"=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_KERNEL_BYTES = re.compile(r'"cost_estimate":\{[^}]*"bytes_accessed":"(\d+)"')
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
         "partition-id", "replica-id", "opt-barrier", "add-dependency"}


def _array_bytes(shape: str) -> float:
  """Bytes of the arrays of a shape (e.g. f32[8,16]{1,0} or a tuple of them), leaving
  out those placed in a memory space other than HBM (layout ...S(n), e.g. VMEM)."""
  total = 0.0
  for dtype, dims, layout in _ARRAY.findall(shape):
    if dtype not in _DTYPE_BYTES or (layout and "S(" in layout):
      continue
    count = 1
    for dim in filter(None, dims.split(",")):
      count *= int(dim.replace("<=", ""))
    total += count * _DTYPE_BYTES[dtype]
  return total


def _split_operands(rest: str) -> tuple[str, str]:
  """'operands), attributes' -> (operands, attributes), by matching parentheses."""
  depth = 1
  for position, char in enumerate(rest):
    depth += {"(": 1, ")": -1}.get(char, 0)
    if depth == 0:
      return rest[:position], rest[position + 1:]
  return rest, ""


def _computations(text: str) -> tuple[dict[str, list[str]], str]:
  """({computation name: its instruction lines}, the entry computation's name)."""
  computations, entry, current = {}, None, None
  for line in text.splitlines():
    if current is None:
      match = _COMPUTATION.match(line)
      if match:
        current = match.group(1)
        computations[current] = []
        entry = current if line.startswith("ENTRY") else entry
    elif line.startswith("}"):
      current = None
    else:
      computations[current].append(line)
  return computations, entry


class _Instruction(NamedTuple):
  """One instruction line of HLO text."""
  name: str
  shape: str  # of its result
  opcode: str
  arguments: str  # the text inside its parentheses
  attributes: str  # the text after them
  root: bool

  @property
  def operands(self) -> list[str]:
    return _OPERAND.findall(self.arguments)


def _instructions(lines: list[str]) -> list[_Instruction]:
  """The instructions among a computation's lines."""
  parsed = []
  for line in lines:
    match = _INSTRUCTION.match(line)
    if match:
      name, shape, opcode, rest = match.groups()
      parsed.append(_Instruction(name, shape, opcode, *_split_operands(rest),
                                 root=line.lstrip().startswith("ROOT")))
  return parsed


_FUSED = re.compile(r"\bcalls=%?([\w.\-]+)")


def _moved_bytes(instruction: _Instruction, operand_shapes: list[str],
                 fused: list[_Instruction] | None) -> float:
  """HBM bytes an instruction reads and writes (`fused`: a fusion's computation).

  A dynamic slice reads only its slice, and a dynamic update slice writes only its
  update into the buffer it updates in place (as XLA does in loops that fill stacked
  outputs): counted so at the top level and for a fusion's parameters that only such
  slices use and a fused root (or root tuple element) that is such an update. An
  asynchronous copy or slice (e.g. HBM -> VMEM) moves its destination's bytes once per
  side of it in HBM."""
  opcode, shape = instruction.opcode, instruction.shape
  whole = [_array_bytes(s) for s in operand_shapes]
  if opcode in ("copy-start", "slice-start"):  # (source, destination, context)
    arrays = _ARRAY.findall(shape)
    if len(arrays) >= 2:
      source, destination = arrays[0], arrays[1]
      size = _array_bytes("{}[{}]".format(*destination[:2]))
      return size * sum(not (layout and "S(" in layout)
                        for _, _, layout in (source, destination))
  if opcode == "dynamic-slice":
    return 2 * _array_bytes(shape)
  if opcode == "dynamic-update-slice":
    return 2 * _array_bytes(operand_shapes[1]) if len(operand_shapes) > 1 else sum(whole)
  if fused is None:
    return _array_bytes(shape) + sum(whole)
  by_name = {i.name: i for i in fused}
  uses = collections.defaultdict(list)  # name -> [(user opcode, operand position)]
  for user in fused:
    for position, operand in enumerate(user.operands):
      uses[operand].append((user.opcode, position))
  root = next((i for i in fused if i.root), None)
  roots = ([] if root is None else
           [by_name[name] for name in root.operands] if root.opcode == "tuple" else [root])
  updated = {r.operands[0] for r in roots if r.opcode == "dynamic-update-slice"
             and by_name[r.operands[0]].opcode == "parameter"}
  read = 0.0
  for parameter in (i for i in fused if i.opcode == "parameter"):
    index = int(parameter.arguments)
    users = uses[parameter.name]
    if users and all(use == ("dynamic-slice", 0) for use in users):
      read += sum(_array_bytes(i.shape) for i in fused if i.opcode == "dynamic-slice"
                  and i.operands[:1] == [parameter.name])
    elif not (parameter.name in updated and users == [("dynamic-update-slice", 0)]):
      read += whole[index] if index < len(whole) else 0.0
  if root is None:
    return read + _array_bytes(shape)
  return read + sum(
      _array_bytes(by_name[r.operands[1]].shape)
      if r.opcode == "dynamic-update-slice" and r.operands[0] in updated
      else _array_bytes(r.shape) for r in roots)


def _trip_count(attributes: str, condition: list[str]) -> int | None:
  """A while loop's trip count: XLA's known_trip_count, else the integer constant its
  condition compares the counter with (loops from 0 by 1, as scans lower); None when
  neither is there."""
  known = _TRIP_COUNT.search(attributes)
  if known:
    return int(known.group(1))
  constants = [int(c) for line in condition for c in _INT_CONSTANT.findall(line)]
  return max(constants) if constants else None


_OP_NAME = re.compile(r'op_name="([^"]*)"')
# Path components of an op_name that name no place in the model (transformations,
# loop plumbing).
_PLUMBING = re.compile(r"\(|^(while|body|cond|closed_call|checkpoint|remat|rematted_computation)$")


def traffic_source(op_name: str, depth: int = 4) -> str:
  """Where in the model an instruction comes from, from its op_name metadata: the
  first `depth` module components (block indices folded: blocks_3 -> blocks_*) and
  the primitive, 'bwd ' in front for the backward (transpose) pass."""
  parts = [p for p in op_name.split("/") if p and not _PLUMBING.search(p)]
  parts = [re.sub(r"_\d+$", "_*", p) for p in parts]
  place = "/".join(parts[:-1][:depth] + parts[-1:]) or "?"
  return ("bwd " if "transpose(" in op_name else "") + place


def hbm_traffic_by_source(text: str, depth: int = 4) -> tuple[collections.Counter, int]:
  """({`traffic_source`: bytes read and written from HBM}, loops of unknown trip count,
  counted once) of a compiled program's optimised HLO text (`compiled.as_text()`):
  every top-level instruction of the entry computation and of the computations it
  calls reads its operands and writes its result (a fusion as a whole, not its inside;
  arrays placed outside HBM left out; dynamic slices and in-place updates by their
  slices, asynchronous copies and slices by what they move in or out of HBM,
  `_moved_bytes`), a kernel call (Mosaic) its own
  `pl.CostEstimate` bytes (which count the blocks it reads again), a while loop's body
  and condition `_trip_count` times, a conditional as its costliest branch."""
  computations, entry = _computations(text)
  unknown = [0]
  cache = {}

  def cost(name: str) -> collections.Counter:
    if name in cache:
      return cache[name]
    parsed = _instructions(computations.get(name, []))
    shapes = {i.name: i.shape for i in parsed}
    total = collections.Counter()
    for instruction in parsed:
      opcode, attributes = instruction.opcode, instruction.attributes
      called = dict(_CALLED.findall(attributes))
      if opcode in _FREE or opcode.endswith("-done"):
        continue
      if opcode == "while":
        trips = _trip_count(attributes, computations.get(called["condition"], []))
        unknown[0] += trips is None
        for part in (cost(called["body"]), cost(called["condition"])):
          total.update({key: (trips or 1) * value for key, value in part.items()})
      elif opcode == "conditional":
        branches = _BRANCHES.search(attributes)
        names = ([b.strip().lstrip("%") for b in branches.group(1).split(",")] if branches
                 else [called[k] for k in ("true_computation", "false_computation")])
        total.update(max((cost(branch) for branch in names),
                         key=lambda part: sum(part.values())))
      elif opcode == "call":
        total.update(cost(called["to_apply"]))
      else:
        op_name = _OP_NAME.search(attributes)
        source = traffic_source(op_name.group(1) if op_name else "", depth)
        kernel = _KERNEL_BYTES.search(attributes) if opcode == "custom-call" else None
        if kernel:  # a kernel's re-reads too
          total[source] += int(kernel.group(1))
        else:
          fused = _FUSED.search(attributes) if opcode == "fusion" else None
          total[source] += _moved_bytes(
              instruction, [shapes.get(o, "") for o in instruction.operands],
              _instructions(computations.get(fused.group(1), [])) if fused else None)
    cache[name] = total
    return total

  return cost(entry), unknown[0]


def hbm_traffic(text: str) -> tuple[float, int]:
  """(bytes read and written from HBM, loops of unknown trip count) of a compiled
  program's optimised HLO text: the sum of `hbm_traffic_by_source`."""
  sources, unknown = hbm_traffic_by_source(text)
  return float(sum(sources.values())), unknown
