"""Training checkpoints with Orbax: small (only what trains), async, keep-N and best.

Each step directory holds `state` (TrainState: step, trainable leaves, optimizer state,
RNG), `data` (the grain iterator's state, captured when the save is requested) and
`meta` (the frozen base's path and content hash, the config). The frozen base is never
copied: a resume recomputes its hash and refuses a different base. `best/` keeps the
one checkpoint with the best evaluation metric. When the newest checkpoint cannot be
read, the previous one is used, with a warning.
"""

import os
from typing import Any, Optional

from absl import logging
import orbax.checkpoint as ocp

from spt_jax.errors import SptUserError

_ITEMS = ("state", "data", "meta")


def _manager(directory, **options):
  return ocp.CheckpointManager(
      directory, item_names=_ITEMS,
      options=ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=True,
                                           **options))


class TrainCheckpoints:
  """workdir/checkpoints (the last `keep`) and workdir/best (by `best_metric`)."""

  def __init__(self, workdir: str, keep: int, best_metric: str, meta: dict[str, Any]):
    self.meta = meta
    self.best_metric = best_metric
    self.latest = _manager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                           max_to_keep=keep)
    self.best = _manager(os.path.join(os.path.abspath(workdir), "best"), max_to_keep=1,
                         best_fn=lambda metrics: metrics[best_metric], best_mode="max")

  def _save_args(self, state, iterator):
    return ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({"iterator": iterator.get_state().decode()}),
        meta=ocp.args.JsonSave(self.meta))

  def save(self, state, iterator) -> None:
    self.latest.save(int(state.step), args=self._save_args(state, iterator))

  def save_best(self, state, iterator, metrics: dict[str, float]) -> None:
    if self.best_metric not in metrics:
      raise SptUserError(f"train.best_metric {self.best_metric!r} is not an evaluation "
                         f"metric; expected one of {sorted(metrics)}")
    self.best.save(int(state.step), args=self._save_args(state, iterator),
                   metrics={k: float(v) for k, v in metrics.items()})

  def restore_latest(self, abstract_state, iterator) -> Optional[Any]:
    """The newest readable state (iterator moved to its position), or None."""
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        restored = self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        self._check_base(restored.meta)
        iterator.set_state(restored.data["iterator"].encode())
      except SptUserError:
        raise
      except Exception as error:  # pylint: disable=broad-except  (any unreadable file)
        logging.warning("checkpoint at step %d is unreadable (%s: %s); trying the "
                        "previous one", step, type(error).__name__, error)
        continue
      logging.info("resumed from step %d", step)
      return restored.state
    return None

  def _check_base(self, saved_meta):
    saved, current = saved_meta["base"], self.meta["base"]
    if saved["sha256"] != current["sha256"]:
      raise SptUserError(
          f"the checkpoints in this workdir were trained on base {saved['path']} "
          f"(sha256 {saved['sha256'][:12]}...), but model.base is {current['path']} "
          f"(sha256 {current['sha256'][:12]}...); use the same base or a new workdir")

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def restore_trainable(workdir: str, which: str = "latest") -> Optional[tuple[Any, dict]]:
  """(trainable leaves, meta) of the latest or best checkpoint in `workdir`, or None."""
  if which not in ("latest", "best"):
    raise SptUserError(f"eval.checkpoint={which!r}: expected 'latest' or 'best'")
  directory = os.path.join(os.path.abspath(workdir),
                           "checkpoints" if which == "latest" else "best")
  if not os.path.isdir(directory):
    return None
  manager = ocp.CheckpointManager(directory, item_names=_ITEMS)
  step = manager.latest_step()  # best/ keeps a single checkpoint
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  manager.close()
  return restored.state["trainable"], restored.meta
