"""Strict conversion between a torch state dict and the Flax variables of a model.

A `KeyLayout` says where each torch key lives: a Flax variable path, optionally an
index along that variable's leading (stacked) axis, and the tensor layout. Every torch
key must land on a variable the model has, with the right shape, and every variable
(every stacked slice) must receive a key; otherwise a `SptUserError` names the torch
keys at fault, with the shapes found and expected.
"""

import dataclasses
from typing import Any, Callable, Optional

import flax
import jax
import numpy as np

from spt_jax.errors import SptUserError
from weights_conversion.key_table import (LORA_A, LORA_B, Layout, flax_to_torch,
                                          torch_to_flax)

_SHOWN = 8  # keys listed per problem kind in an error message
FlatKey = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Location:
  """A torch key's place: variable (collection, *path), slice of a stacked axis, layout."""
  flat_key: FlatKey
  index: Optional[int]
  layout: Layout


@dataclasses.dataclass(frozen=True)
class KeyLayout:
  """locate: torch key -> Location (ValueError if unknown);
  torch_key: (flat_key, index) -> torch key; stacked: is this variable stacked."""
  locate: Callable[[str], Location]
  torch_key: Callable[[FlatKey, Optional[int]], str]
  stacked: Callable[[FlatKey], bool]


def _sam_locate(key):
  target = torch_to_flax(key)
  return Location((target.collection,) + target.path, None, target.layout)


SAM_LAYOUT = KeyLayout(locate=_sam_locate,
                       torch_key=lambda flat_key, index: flax_to_torch(flat_key[1:]),
                       stacked=lambda flat_key: False)


def _groups(layout, shape):
  return shape[0] if layout in (LORA_A, LORA_B) else 1


def _listing(keys):
  shown = ", ".join(keys[:_SHOWN])
  return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else "")


def _slices(flat_key, shape, layout):
  """[(index, per-slice shape)] of a variable: one slice unless it is stacked."""
  if layout.stacked(flat_key):
    return [(i, tuple(shape[1:])) for i in range(shape[0])]
  return [(None, tuple(shape))]


def state_dict_to_variables(state: dict[str, np.ndarray], expected: Any, source: str,
                            layout: KeyLayout = SAM_LAYOUT) -> dict[str, Any]:
  """Maps `state` (torch keys) onto the structure of `expected` (a shape tree).

  Args:
    state: torch key -> array.
    expected: {'params': ..., ['adapters': ...]} of ShapeDtypeStructs (jax.eval_shape
      of the model's init).
    source: the file name, for messages.
    layout: where torch keys go (plain SAM by default).

  Returns:
    The structure of `expected` holding float32 numpy arrays.
  """
  wanted = flax.traverse_util.flatten_dict(expected)
  produced, unexpected, mismatched = {}, [], []
  for key, tensor in state.items():
    try:
      where = layout.locate(key)
    except ValueError:
      unexpected.append(key)
      continue
    if where.flat_key not in wanted or (where.index is not None) != layout.stacked(
        where.flat_key):
      unexpected.append(key)
      continue
    full_shape = tuple(wanted[where.flat_key].shape)
    shape = full_shape[1:] if where.index is not None else full_shape
    groups = _groups(where.layout, shape)
    torch_shape = where.layout.to_torch(np.zeros(shape, np.float32), groups).shape
    if tuple(np.shape(tensor)) != torch_shape:
      mismatched.append(f"{key} has shape {tuple(np.shape(tensor))}, expected {torch_shape}")
      continue
    produced[(where.flat_key, where.index)] = np.asarray(
        where.layout.to_flax(np.asarray(tensor), groups), np.float32)
  missing = [layout.torch_key(flat_key, index)
             for flat_key, struct in wanted.items()
             for index, _ in _slices(flat_key, struct.shape, layout)
             if (flat_key, index) not in produced]
  problems = []
  if missing:
    problems.append(f"missing key(s): {_listing(sorted(missing))}")
  if unexpected:
    problems.append(f"unexpected key(s): {_listing(sorted(unexpected))}")
  if mismatched:
    problems.append(f"shape mismatch: {_listing(mismatched)}")
  if problems:
    raise SptUserError(f"{source}: " + "; ".join(problems))
  variables = {}
  for flat_key, struct in wanted.items():
    parts = [produced[(flat_key, index)] for index, _ in _slices(flat_key, struct.shape,
                                                                 layout)]
    variables[flat_key] = np.stack(parts) if layout.stacked(flat_key) else parts[0]
  return flax.traverse_util.unflatten_dict(variables)


def variables_to_state_dict(variables: Any,
                            layout: KeyLayout = SAM_LAYOUT) -> dict[str, np.ndarray]:
  """Inverse of `state_dict_to_variables`: Flax variables -> torch keys and layouts."""
  state = {}
  for flat_key, array in flax.traverse_util.flatten_dict(variables).items():
    array = np.asarray(array)
    for index, _ in _slices(flat_key, array.shape, layout):
      key = layout.torch_key(flat_key, index)
      part = array if index is None else array[index]
      tensor_layout = layout.locate(key).layout
      state[key] = tensor_layout.to_torch(part, _groups(tensor_layout, part.shape))
  return state


def expected_shapes(model, init_fn) -> Any:
  """Shape tree of `init_fn(model, rng)` without allocating it."""
  return jax.eval_shape(lambda: init_fn(model, jax.random.PRNGKey(0)))
