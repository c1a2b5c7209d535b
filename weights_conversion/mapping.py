"""Strict conversion of a torch state dict into Flax variables of a given model.

Every torch key must land on a variable the model has, with the right shape, and every
variable must receive a key; otherwise a `SptUserError` names the offending keys (torch
names, with the shapes found and expected).
"""

from typing import Any

import flax
import jax
import numpy as np

from spt_jax.errors import SptUserError
from weights_conversion.key_table import LORA_A, LORA_B, flax_to_torch, torch_to_flax

_SHOWN = 8  # keys listed per problem kind in an error message


def _groups(layout, expected_shape):
  return expected_shape[0] if layout in (LORA_A, LORA_B) else 1


def _listing(keys):
  shown = ", ".join(keys[:_SHOWN])
  return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN else "")


def state_dict_to_variables(state: dict[str, np.ndarray], expected: Any,
                            source: str) -> dict[str, Any]:
  """Maps `state` (torch keys) onto the structure of `expected` (shape tree).

  Args:
    state: torch key -> array.
    expected: {'params': ..., ['adapters': ...]} of ShapeDtypeStructs (jax.eval_shape
      of the model's init).
    source: the file name, for messages.

  Returns:
    The same structure as `expected` holding float32 numpy arrays.
  """
  wanted = flax.traverse_util.flatten_dict(expected)
  produced, unexpected, mismatched = {}, [], []
  for key, tensor in state.items():
    try:
      target = torch_to_flax(key)
    except ValueError:
      unexpected.append(key)
      continue
    flat_key = (target.collection,) + target.path
    if flat_key not in wanted:
      unexpected.append(key)
      continue
    shape = tuple(wanted[flat_key].shape)
    groups = _groups(target.layout, shape)
    torch_shape = target.layout.to_torch(np.zeros(shape, np.float32), groups).shape
    if tuple(np.shape(tensor)) != torch_shape:
      mismatched.append(f"{key} has shape {tuple(np.shape(tensor))}, expected {torch_shape}")
      continue
    produced[flat_key] = np.asarray(target.layout.to_flax(np.asarray(tensor), groups),
                                    np.float32)
  missing = [flax_to_torch(path[1:]) for path in wanted if path not in produced]
  problems = []
  if missing:
    problems.append(f"missing key(s): {_listing(sorted(missing))}")
  if unexpected:
    problems.append(f"unexpected key(s): {_listing(sorted(unexpected))}")
  if mismatched:
    problems.append(f"shape mismatch: {_listing(mismatched)}")
  if problems:
    raise SptUserError(f"{source}: " + "; ".join(problems))
  return flax.traverse_util.unflatten_dict(produced)


def variables_to_state_dict(variables: Any) -> dict[str, np.ndarray]:
  """Inverse of `state_dict_to_variables`: Flax variables -> torch keys and layouts."""
  state = {}
  for flat_key, array in flax.traverse_util.flatten_dict(variables).items():
    key = flax_to_torch(flat_key[1:])
    layout = torch_to_flax(key).layout
    array = np.asarray(array)
    state[key] = layout.to_torch(array, _groups(layout, array.shape))
  return state


def expected_shapes(model, init_fn) -> Any:
  """Shape tree of `init_fn(model, rng)` without allocating it."""
  return jax.eval_shape(lambda: init_fn(model, jax.random.PRNGKey(0)))
