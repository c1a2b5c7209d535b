"""The jobs' host memory policy: repeated calls reuse freed pages instead of faulting."""

import os
import subprocess
import sys

import pytest

from spt_jax import host_memory
from spt_jax.errors import SptUserError

# Applies the policy in a fresh process, then allocates, fills and frees a 256 MiB block
# three times with the C library's malloc (as XLA's CPU buffers are), counting the page
# faults of each round.
_PROBE = r"""
import ctypes, ctypes.util, resource
from spt_jax import host_memory
applied = host_memory.keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 256 * 2**20
faults = []
for _ in range(3):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(size)
  ctypes.memset(block, 1, size)
  libc.free(block)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, *faults)
"""
_PAGES = 256 * 2**20 // os.sysconf("SC_PAGE_SIZE")


def _probe(policy):
  env = dict(os.environ, **{host_memory.ENV_VAR: policy})
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                       text=True, check=True).stdout.split()
  return out[0] == "True", [int(count) for count in out[1:]]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc policy")
def test_keep_policy_reuses_pages_system_policy_faults_them_in():
  applied, kept = _probe("keep")
  assert applied
  assert all(count < _PAGES // 100 for count in kept[1:]), (kept, _PAGES)
  applied, system = _probe("system")
  assert not applied
  assert all(count > _PAGES // 2 for count in system[1:]), (system, _PAGES)


def test_bad_policy_names_the_variable(monkeypatch):
  monkeypatch.setenv(host_memory.ENV_VAR, "lots")
  with pytest.raises(SptUserError, match="SPT_JAX_HOST_MALLOC='lots'.*keep, system"):
    host_memory.keep_freed_memory()


def test_auto_policy_keeps_memory_only_where_jax_runs_on_the_cpu(monkeypatch):
  monkeypatch.delenv(host_memory.ENV_VAR, raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host_memory.resolve_policy() == "keep"
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert host_memory.resolve_policy() == "system"
  assert host_memory.resolve_policy("keep") == "keep"
  monkeypatch.delenv("JAX_PLATFORMS")
  monkeypatch.setattr(host_memory.importlib.util, "find_spec",
                      lambda name: object() if name == "libtpu" else None)
  assert host_memory.resolve_policy("auto") == "system"
  monkeypatch.setenv(host_memory.ENV_VAR, "keep")
  assert host_memory.resolve_policy() == "keep"
