"""Fused kernels on a device mesh: every device runs the kernel on its own shard.

XLA's SPMD partitioner cannot split a Mosaic (TPU) or Triton (GPU) custom call: in
a program compiled for several devices, a fused kernel must run under `shard_map`
over the mesh axes its operands are split on, with any reduction across shards
written out explicitly. A kernel names the dims of its operands with logical axes
('batch', 'prompts', 'heads'); the mesh, and the rules that turn logical axes into
mesh axes, come from the context the program is traced in:
`spt_jax.parallel.sharded_jit` traces under `partitioned(mesh, spec_of)`. Outside
such a context (a plain `jax.jit` on one device, the predictors) kernels run
unpartitioned.

Under a context the kernel always runs inside `shard_map`, a one-device mesh
included: inside it JAX knows the device kind being compiled for (what the TPU
kernels size their VMEM blocks by), also when compiling ahead of time for chips
that are not present.
"""

import contextlib
import contextvars
import dataclasses
from typing import Any, Callable, Iterator, Sequence

import jax
from jax.sharding import PartitionSpec

# Per dim: a logical axis name, a tuple of them (a flattened dim) or None.
LogicalNames = tuple[str | tuple[str, ...] | None, ...]
SpecOf = Callable[[LogicalNames, Sequence[int]], PartitionSpec]


@dataclasses.dataclass(frozen=True)
class _Context:
  mesh: Any  # jax.sharding.Mesh or AbstractMesh
  spec_of: SpecOf


_CURRENT: contextvars.ContextVar[_Context | None] = contextvars.ContextVar(
    "spt_kernel_partitioning", default=None)


@contextlib.contextmanager
def partitioned(mesh, spec_of: SpecOf) -> Iterator[None]:
  """Kernels traced within run per shard of `mesh`.

  Args:
    mesh: a `jax.sharding.Mesh` or `AbstractMesh`.
    spec_of: (logical names of an operand's dims, its shape) -> PartitionSpec,
      e.g. the sharding rules' `logical_to_spec` with divisibility fallbacks.
  """
  token = _CURRENT.set(_Context(mesh, spec_of))
  try:
    yield
  finally:
    _CURRENT.reset(token)


@dataclasses.dataclass(frozen=True)
class Sharded:
  """How one kernel call is split: hashable, so it can be a static argument.

  mesh: the mesh, or None to run unpartitioned.
  specs: logical name -> the mesh axes that split it in this call ('batch' for
    the leading image axis and the kernel's own, e.g. 'prompts').
  """
  mesh: Any = None
  specs: tuple[tuple[str, tuple[str, ...]], ...] = ()

  def axes(self, name: str) -> tuple[str, ...]:
    """The mesh axes of logical axis `name` in this call (empty: whole)."""
    return dict(self.specs).get(name, ())

  def spec(self, *names: str | None) -> PartitionSpec:
    """PartitionSpec of an operand whose dims are named `names` (None: whole)."""
    return PartitionSpec(*((self.axes(n) or None) if n else None for n in names))

  def run(self, fn: Callable, in_names: Sequence[tuple[str | None, ...]],
          out_names: Sequence[tuple[str | None, ...]]) -> Callable:
    """fn on each device's shard of its operands; fn itself without a mesh.

    Args:
      fn: the per-shard computation (it sees local shapes); returns a tuple.
      in_names: logical names of each positional operand's dims.
      out_names: the same for each of its outputs.
    """
    if self.mesh is None:
      return fn
    specs = lambda names_list: tuple(self.spec(*names) for names in names_list)
    return jax.shard_map(fn, mesh=self.mesh, in_specs=specs(in_names),
                         out_specs=specs(out_names), check_vma=False)

  def sum_over(self, x: jax.Array, name: str) -> jax.Array:
    """x summed over the shards of logical axis `name` (inside `run`'s fn)."""
    axes = self.axes(name)
    return jax.lax.psum(x, axes) if axes else x


def current(operands: Sequence[tuple[LogicalNames, Sequence[int]]]) -> Sharded:
  """The split of a kernel call whose operands have these (names, shape).

  Each logical name gets the mesh axes the context's rules give it in the first
  operand that names it (with the rules' divisibility fallbacks); a name that
  several operands carry must divide the same way in each (callers pass operands
  whose named dims agree in size). Without a context: unpartitioned.
  """
  context = _CURRENT.get()
  if context is None:
    return Sharded()
  specs = {}
  for names, shape in operands:
    for name, axes in zip(names, context.spec_of(names, shape)):
      if name is not None and name not in specs:
        specs[name] = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  return Sharded(context.mesh, tuple(sorted(specs.items())))
