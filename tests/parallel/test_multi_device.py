"""Runs the multi-device checks in their own processes (this one has 1 CPU device).

- 8 simulated devices: test_eight_devices.py in a subprocess with
  --xla_force_host_platform_device_count=8 (sharding rules and batches here; the tiny
  SPT's train step and forward on three meshes under -m slow).
- 2 processes: launch/multiprocess.py starts two_process_worker.py twice (4 CPU
  devices each, jax.distributed on localhost, gloo collectives); the losses, the
  trained adapters and the forward outputs must equal this process's one-device run.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from sharded_tiny import run_on_mesh
from spt_jax import parallel

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _run(command, extra_env, timeout):
  env = dict(os.environ, **extra_env)
  env.pop("SPT_DISTRIBUTED", None)
  result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
  assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
  return result.stdout


def _eight_devices(marker, timeout):
  flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  # One process (-n 0): the eight devices are this child's, beside the suite's workers.
  return _run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-m", marker,
               "-p", "no:cacheprovider", os.path.join(HERE, "test_eight_devices.py")],
              {"XLA_FLAGS": flags.strip()}, timeout)


def test_rules_and_batches_on_eight_simulated_devices():
  assert " passed" in _eight_devices("not slow", timeout=600)


@pytest.mark.slow
def test_train_and_eval_on_three_meshes_of_eight_simulated_devices():
  assert " passed" in _eight_devices("slow", timeout=1200)


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
  _run([sys.executable, os.path.join(ROOT, "launch", "multiprocess.py"), "--processes=2",
        "--cpu_devices_per_process=4", "--", sys.executable,
        os.path.join(HERE, "two_process_worker.py"), str(tmp_path)], {}, timeout=900)
  report = np.load(tmp_path / "report.npz")
  assert int(report["process_count"]) == 2 and int(report["global_devices"]) == 8
  assert report["qkv_spec"] == str(jax.sharding.PartitionSpec("fsdp", "model"))
  reference = run_on_mesh(parallel.MeshSpec(shape=(1, 1, 1)), jax.devices()[:1])
  np.testing.assert_allclose(report["losses"], reference.losses, rtol=1e-5)
  expected_mu = traverse_util.flatten_dict(reference.state.opt_state[0].mu, sep="/")
  for key, value in expected_mu.items():  # linear in the gradients: tight
    np.testing.assert_allclose(report["mu/" + key], np.asarray(value), rtol=1e-3, atol=1e-7,
                               err_msg=key)
  # Adam moves a leaf by about lr * sign(gradient): allow 1 % of a step (lr 5e-2).
  trainable = traverse_util.flatten_dict(reference.state.trainable, sep="/")
  for key, value in trainable.items():
    np.testing.assert_allclose(report["trainable/" + key], np.asarray(value), rtol=1e-4,
                               atol=5e-4, err_msg=key)
  for name in ("draft", "final"):
    np.testing.assert_allclose(report[name], reference.forward[name], rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(report["iou"], reference.forward["iou"])
