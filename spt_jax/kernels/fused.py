"""One `custom_vjp` for every fused attention kernel: dispatch, per-shard runs, residuals.

A fused op has implementations (modules with `forward` and `backward`) that agree on
their residuals: `forward(*inputs, **kwargs) -> (out, *stats)` and
`backward(*inputs, out, *stats, d_out, **kwargs) -> one gradient per input`. The
backward recomputes whatever it needs blockwise from the inputs and the stats (e.g.
each row's log-sum-exp), so no N x N buffer is ever saved. `Fused` holds the static
part of a call: the implementation ('auto': chosen per lowering platform,
`spt_jax.kernels.dispatch`), its keyword arguments, and how the call is split over a
mesh (`spt_jax.kernels.partition`): both passes run per shard, and a gradient whose
input is whole across some logical axis while the computation is split along it (the
relation's embedding, shared by the stacked prompts' features) is summed over that
axis's shards.
"""

import dataclasses
import functools
import inspect
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from spt_jax.errors import SptUserError
from spt_jax.kernels import dispatch
from spt_jax.kernels import partition

Names = tuple[str | None, ...]


@dataclasses.dataclass(frozen=True)
class Fused:
  """Static part of a fused call (hashable: a `custom_vjp` non-differentiable argument).

  modules: (implementation name, module) pairs.
  impl: a name among them, or 'auto'.
  kwargs: (name, value) pairs passed to both passes.
  sharded: the call's split (unsplit without a mesh).
  input_names / output_names: logical names of the inputs' and of the forward's
    outputs' (out, *stats) dims.
  summed: (input index, logical axis) pairs: that input's gradient is summed over the
    axis's shards.
  """
  modules: tuple[tuple[str, Any], ...]
  impl: str
  kwargs: tuple[tuple[str, Any], ...]
  sharded: partition.Sharded
  input_names: tuple[Names, ...]
  output_names: tuple[Names, ...]
  summed: tuple[tuple[int, str], ...] = ()

  def _pass(self, name, *args):
    modules, kwargs = dict(self.modules), dict(self.kwargs)
    return dispatch.run(
        self.impl, modules, lambda impl, *a: getattr(modules[impl], name)(*a, **kwargs),
        *args)

  def forward(self, *inputs):
    """-> (out, *stats)."""
    return self.sharded.run(functools.partial(self._pass, "forward"), self.input_names,
                            self.output_names)(*inputs)

  def backward(self, *residuals_and_cotangent):
    """(*inputs, out, *stats, d_out) -> one gradient per input."""
    summed = dict(self.summed)

    def per_shard(*args):
      grads = self._pass("backward", *args)
      return tuple(self.sharded.sum_over(g, summed[i]) if i in summed else g
                   for i, g in enumerate(grads))

    return self.sharded.run(
        per_shard, self.input_names + self.output_names + self.output_names[:1],
        self.input_names)(*residuals_and_cotangent)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def apply(fused: Fused, *inputs):
  """The fused op's output (its stats are kept for the backward only)."""
  return fused.forward(*inputs)[0]


def _apply_fwd(fused, *inputs):
  outputs = fused.forward(*inputs)
  return outputs[0], (inputs, outputs)


def _apply_bwd(fused, residuals, d_out):
  inputs, outputs = residuals
  return tuple(fused.backward(*inputs, *outputs, d_out))


apply.defvjp(_apply_fwd, _apply_bwd)


def impl_names(modules) -> tuple[str, ...]:
  """'auto', 'reference' (the materialised formula) and the fused implementations."""
  return ("auto", "reference") + tuple(name for name, _ in modules)


def check_impl(caller: str, impl: str, modules, options: Mapping[str, Any]) -> str:
  """Returns impl if it is known and takes these options, else raises SptUserError.

  'auto' and 'reference' take none; a fused implementation takes the keyword
  arguments of its `forward` that are not operands or fixed by the op (those
  without a default).
  """
  names = impl_names(modules)
  if impl not in names:
    raise SptUserError(f"{caller}: impl must be one of {names}, got {impl!r}")
  if impl in ("auto", "reference"):
    if options:
      raise SptUserError(
          f"{caller}: impl={impl!r} takes no options, got {sorted(options)}; name an "
          "implementation to pass its options")
    return impl
  parameters = inspect.signature(dict(modules)[impl].forward).parameters.values()
  valid = {p.name for p in parameters
           if p.kind == p.KEYWORD_ONLY and p.default is not p.empty}
  unknown = sorted(set(options) - valid)
  if unknown:
    raise SptUserError(f"{caller}: unknown option(s) {unknown} for impl={impl!r}; "
                       f"expected some of {sorted(valid)}")
  return impl


def check_array(caller: str, name: str, x, rank: int, shape_doc: str) -> None:
  """Raises SptUserError unless x is a floating array of `rank` dims."""
  if not hasattr(x, "shape") or x.ndim != rank:
    got = getattr(x, "shape", type(x).__name__)
    raise SptUserError(f"{caller}: {name} must have shape {shape_doc}, got {got}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise SptUserError(f"{caller}: {name} must be a floating array (float32 or "
                       f"bfloat16), got dtype {x.dtype}")
