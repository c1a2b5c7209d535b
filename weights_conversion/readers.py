"""Reading a PyTorch state dict from `.pth`/`.pt` (safe unpickling) or `.safetensors`.

A `.pth` is loaded with `torch.load(weights_only=True)`: a pickle that would run code
is refused, never executed. Every failure is a `SptUserError` naming the file.
"""

import os
import pickle
import re
import zipfile

import numpy as np

from spt_jax.errors import SptUserError, describe

StateDict = dict[str, np.ndarray]
# Wrappers some training scripts put around the state dict.
_WRAPPER_KEYS = ("state_dict", "model", "module")
# Terminal colour codes torch puts in its unpickling message.
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def read_state_dict(path: str) -> StateDict:
  """The tensors of a checkpoint file as float32/int numpy arrays, by torch key."""
  if os.path.isdir(path):
    raise SptUserError(f"{path}: is a directory, expected a checkpoint file (.pth, .pt or "
                       ".safetensors)")
  if not os.path.isfile(path):
    raise SptUserError(f"checkpoint file not found: {path}")
  if os.path.getsize(path) == 0:
    raise SptUserError(f"{path}: the checkpoint file is empty (0 bytes)")
  if path.endswith(".safetensors"):
    return _read_safetensors(path)
  return _read_torch_pickle(path)


def _read_safetensors(path: str) -> StateDict:
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  try:
    return dict(load_file(path))
  except Exception as error:  # pylint: disable=broad-except  (any parse failure)
    raise SptUserError(f"{path}: not a readable .safetensors file ({error})") from None


def _read_torch_pickle(path: str) -> StateDict:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise SptUserError(
        f"reading {path} needs PyTorch: pip install 'spt_jax[convert]' "
        "(or convert the file to .safetensors elsewhere)") from None
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as error:
    first_line = _ANSI_ESCAPE.sub("", str(error)).strip().splitlines()[0]
    raise SptUserError(
        f"{path}: refused to unpickle, the file holds objects other than tensors "
        f"(a pickle that carries code is never executed): {first_line}") from None
  except (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile) as error:
    raise SptUserError(f"{path}: unreadable or truncated PyTorch checkpoint "
                       f"({describe(error)})") from None
  state = _unwrap(loaded, path)
  arrays = {}
  for key, value in state.items():
    if not isinstance(value, torch.Tensor):
      raise SptUserError(f"{path}: entry {key!r} is a {type(value).__name__}, "
                         "expected a tensor in a state dict")
    arrays[key] = value.detach().to(torch.float32 if value.is_floating_point()
                                    else value.dtype).numpy()
  return arrays


def _unwrap(loaded, path):
  """The state dict itself, looking inside a single {'state_dict'|'model'|...} wrapper."""
  if not isinstance(loaded, dict):
    raise SptUserError(f"{path}: holds a {type(loaded).__name__}, expected a state dict")
  for key in _WRAPPER_KEYS:
    if key in loaded and isinstance(loaded[key], dict):
      return loaded[key]
  return loaded
