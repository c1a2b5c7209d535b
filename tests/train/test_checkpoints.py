"""Training checkpoints: round trip, iterator position, base check, corrupt-latest fallback."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax.errors import SptUserError
from spt_jax.train.checkpoints import TrainCheckpoints, restore_trainable
from spt_jax.train.step import TrainState


class FakeIterator:
  def __init__(self, position=0):
    self.position = position

  def get_state(self):
    return str(self.position).encode()

  def set_state(self, state):
    self.position = int(state.decode())


def state_at(step):
  return TrainState(step=jnp.asarray(step, jnp.int32),
                    trainable={"adapters": {"w": jnp.full((3,), float(step))}},
                    opt_state=(jnp.zeros(3), jnp.asarray(step)), rng=jnp.zeros(2, jnp.uint32))


META = {"base": {"path": "base", "sha256": "abc"}}


def saved(workdir, steps):
  checkpoints = TrainCheckpoints(str(workdir), keep=3, best_metric="iou", meta=META)
  for step in steps:
    checkpoints.save(state_at(step), FakeIterator(10 * step))
  checkpoints.wait()
  return checkpoints


def test_restores_the_newest_state_and_iterator_position(tmp_path):
  saved(tmp_path, [1, 2]).close()
  iterator = FakeIterator()
  restored = TrainCheckpoints(str(tmp_path), 3, "iou", META).restore_latest(state_at(0),
                                                                             iterator)
  assert int(restored.step) == 2 and iterator.position == 20
  np.testing.assert_array_equal(restored.trainable["adapters"]["w"], [2.0, 2.0, 2.0])
  trainable, meta = restore_trainable(str(tmp_path))
  assert meta == META and float(trainable["adapters"]["w"][0]) == 2.0


def test_corrupt_latest_falls_back_to_the_previous_with_a_warning(tmp_path, caplog):
  saved(tmp_path, [1, 2]).close()
  state_dir = tmp_path / "checkpoints" / "2" / "state"
  for root, _, files in os.walk(state_dir):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  iterator = FakeIterator()
  restored = TrainCheckpoints(str(tmp_path), 3, "iou", META).restore_latest(state_at(0),
                                                                             iterator)
  assert int(restored.step) == 1 and iterator.position == 10
  assert "checkpoint at step 2 is unreadable" in caplog.text


def test_a_different_base_is_refused(tmp_path):
  saved(tmp_path, [1]).close()
  other = TrainCheckpoints(str(tmp_path), 3, "iou", {"base": {"path": "x", "sha256": "def"}})
  with pytest.raises(SptUserError, match="were trained on base base"):
    other.restore_latest(state_at(0), FakeIterator())


def test_best_keeps_the_best_metric(tmp_path):
  checkpoints = TrainCheckpoints(str(tmp_path), 3, "iou", META)
  for step, iou in ((1, 0.5), (2, 0.7), (3, 0.6)):
    checkpoints.save_best(state_at(step), FakeIterator(step), {"iou": iou})
  checkpoints.wait()
  checkpoints.close()
  trainable, _ = restore_trainable(str(tmp_path), "best")
  assert float(trainable["adapters"]["w"][0]) == 2.0
  with pytest.raises(SptUserError, match="best_metric 'dice' is not an evaluation metric"):
    TrainCheckpoints(str(tmp_path), 3, "dice", META).save_best(state_at(4), FakeIterator(),
                                                                {"iou": 0.1})
