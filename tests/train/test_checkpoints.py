"""Training checkpoints: round trip, iterator position, base check, unreadable steps."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from checkpoint_faults import corrupt_step
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


def test_corrupt_latest_is_set_aside_and_saved_again(tmp_path, caplog, capfd):
  saved(tmp_path, [1, 2]).close()
  corrupt_step(tmp_path / "checkpoints" / "2")
  iterator = FakeIterator()
  checkpoints = TrainCheckpoints(str(tmp_path), 3, "iou", META)
  restored = checkpoints.restore_latest(state_at(0), iterator)
  assert int(restored.step) == 1 and iterator.position == 10
  assert "checkpoint at step 2 is unreadable" in caplog.text
  assert (tmp_path / "unreadable_checkpoints" / "2" / "state").is_dir()
  checkpoints.save(state_at(2), FakeIterator(20))  # the run reaches step 2 again
  checkpoints.wait()
  checkpoints.close()
  again = TrainCheckpoints(str(tmp_path), 3, "iou", META)
  assert int(again.restore_latest(state_at(0), FakeIterator()).step) == 2
  again.close()
  assert "Traceback" not in capfd.readouterr().err


def test_a_step_that_does_not_read_back_is_set_aside_at_the_next_save(tmp_path, caplog):
  checkpoints = TrainCheckpoints(str(tmp_path), 3, "iou", META)
  checkpoints.save(state_at(1), FakeIterator(10))
  checkpoints.latest.wait_until_finished()
  corrupt_step(tmp_path / "checkpoints" / "1")  # torn while the run goes on
  checkpoints.save(state_at(2), FakeIterator(20))
  checkpoints.wait()
  checkpoints.close()
  assert "checkpoint at step 1 does not read back" in caplog.text
  assert (tmp_path / "unreadable_checkpoints" / "1" / "state").is_dir()
  assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [2]


def test_evaluation_skips_an_unreadable_step_and_names_the_folder_when_none_reads(
    tmp_path, caplog, capfd):
  saved(tmp_path, [1, 2]).close()
  corrupt_step(tmp_path / "checkpoints" / "2")
  trainable, _ = restore_trainable(str(tmp_path))
  assert float(trainable["adapters"]["w"][0]) == 1.0
  assert (tmp_path / "checkpoints" / "2").is_dir()  # evaluation moves nothing
  corrupt_step(tmp_path / "checkpoints" / "1")
  with pytest.raises(SptUserError, match=r"checkpoints: no readable checkpoint \(step 2: "):
    restore_trainable(str(tmp_path))
  assert "Traceback" not in capfd.readouterr().err


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
