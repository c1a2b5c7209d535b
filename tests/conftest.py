"""Shared test set-up: the torchvision shim for Meta's reference code, and markers."""

import importlib.util
import os
import sys

_SHIM_DIR = os.path.join(os.path.dirname(__file__), "torchvision_shim")


def _real_torchvision_loads():
  if importlib.util.find_spec("torchvision") is None:
    return False
  try:
    import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    return True
  except Exception:  # pylint: disable=broad-except  (PyPI build beside torch 2.13 fails)
    sys.modules.pop("torchvision", None)
    return False


if not _real_torchvision_loads():
  sys.path.insert(0, _SHIM_DIR)
