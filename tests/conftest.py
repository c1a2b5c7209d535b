"""Shared test set-up.

Reference tests import `meta_reference` (this directory is on sys.path through this
conftest), which puts the test-only torchvision shim in place for Meta's code.

The tests compile many small programs, several of them more than once (the same model
initialised in different tests); a session-wide persistent compilation cache compiles
each distinct program once. The jobs' host memory policy applies to the tests too
(spt_jax.host_memory; set before JAX starts its backend). Beside a CUDA GPU the
kernel tests run the Triton kernels on it, float32 products at full precision
(`attached_gpu`).
"""

from spt_jax import host_memory

host_memory.keep_freed_memory()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from attached_gpu import GPU_ATTACHED  # pylint: disable=g-import-not-at-top,wrong-import-position

if GPU_ATTACHED:  # full float32 products for the references (attached_gpu)
  jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
  yield
