"""The compile-for-accelerators tier: TPU programs compiled for slices that are not here
(libtpu), GPU programs exported for CUDA. Every test here carries the `accelerators`
marker; the TPU ones skip, saying why, where libtpu is not installed."""

import pytest

from spt_jax import aot


def pytest_collection_modifyitems(items):
  for item in items:
    if "tests/accelerators/" in str(item.fspath).replace("\\", "/"):
      item.add_marker(pytest.mark.accelerators)


@pytest.fixture(scope="session")
def tpu_devices():
  """topology name -> its compile-only devices (skips without libtpu)."""
  if aot.libtpu_path() is None:
    pytest.skip("libtpu is not installed (make setup puts it in .venv/libtpu; or "
                "pip install -e '.[tpu]'): cannot compile for TPU")
  return aot.tpu_devices
