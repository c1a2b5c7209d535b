"""Training checkpoints with Orbax: small (only what trains), async, keep-N and best.

Each step directory holds `state` (TrainState: step, trainable leaves, optimizer state,
RNG), `data` (the grain iterator's state, captured when the save is requested) and
`meta` (the frozen base's path and content hash, the config). The frozen base is never
copied: a resume recomputes its hash and refuses a different base. `best/` keeps the
one checkpoint with the best evaluation metric. Each saved step is read back once it
is written (at the next save, or when training ends).

When the newest checkpoint cannot be read, the previous one is used, with a warning. A
resuming run moves the unreadable step aside (to workdir/unreadable_checkpoints), once
an older step has read, so it saves that step again rather than keep an unreadable
"latest"; evaluation and export only skip it. No readable step at all is one clear
error, and moves nothing.
"""

import contextlib
import gc
import os
import shutil
import sys
from typing import Any, Callable, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from spt_jax.errors import SptUserError, describe

_ITEMS = ("state", "data", "meta")
UNREADABLE_DIR = "unreadable_checkpoints"


@contextlib.contextmanager
def _quiet_abandoned_reads():
  """A failed Orbax read leaves its pending async reads behind; when they are collected
  with their event loop closed, Python prints 'Exception ignored in: <coroutine ...>'
  tracebacks. Collect them here, where only those are silenced."""
  default_hook = sys.unraisablehook

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and "Event loop is closed" in str(unraisable.exc_value)):
      default_hook(unraisable)

  sys.unraisablehook = hook
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = default_hook


def _restore_newest(manager, restore: Callable[[int], Any],
                    on_unreadable: Callable[[int], None] = lambda step: None,
                    step: Optional[int] = None) -> Optional[tuple[int, Any]]:
  """(step, restore(step)) for the newest step that reads (only `step` if given), or
  None when the folder holds no step. `on_unreadable(s)` for each newer step s that
  failed, once an older one has read (so a fault of the reader, or of every step,
  leaves them all in place).

  Raises:
    SptUserError: from `restore`, or when every step is unreadable.
  """
  steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
  failures, unreadable = [], []
  for candidate in steps:
    try:
      with _quiet_abandoned_reads():
        restored = restore(candidate)
    except SptUserError:
      raise
    except Exception as error:  # pylint: disable=broad-except  (any unreadable file)
      failures.append(f"step {candidate}: {describe(error)}")
      logging.warning("checkpoint at step %d is unreadable (%s); trying the previous one",
                      candidate, failures[-1])
      unreadable.append(candidate)
      continue
    for bad in unreadable:
      on_unreadable(bad)
    return candidate, restored
  if failures:
    raise SptUserError(f"{manager.directory}: no readable checkpoint (" +
                       "; ".join(failures) + ")")
  return None


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
    self.workdir = os.path.abspath(workdir)
    self._unverified = None  # (step, abstract state) of the last save, not yet read back
    self.latest = _manager(os.path.join(self.workdir, "checkpoints"), max_to_keep=keep)
    self.best = _manager(os.path.join(self.workdir, "best"), max_to_keep=1,
                         best_fn=lambda metrics: metrics[best_metric], best_mode="max")

  def _save_args(self, state, iterator):
    return ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave({"iterator": iterator.get_state().decode()}),
        meta=ocp.args.JsonSave(self.meta))

  def save(self, state, iterator) -> None:
    """Saves `state` (async), after reading back the step saved before (`_verify`)."""
    self._verify()
    self.latest.save(int(state.step), args=self._save_args(state, iterator))
    self._unverified = (int(state.step), jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state))

  def _verify(self) -> None:
    """Reads back the last step saved, once written: a step that does not read (a torn
    write, a faulty file system) is moved aside when it happens, not met at a resume."""
    if self._unverified is None:
      return
    (step, abstract), self._unverified = self._unverified, None
    self.latest.wait_until_finished()
    try:
      with _quiet_abandoned_reads():
        self.latest.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract)))
    except Exception as error:  # pylint: disable=broad-except  (any unreadable file)
      logging.error("checkpoint at step %d does not read back (%s)", step, describe(error))
      self._set_aside(step)

  def save_best(self, state, iterator, metrics: dict[str, float]) -> None:
    if self.best_metric not in metrics:
      raise SptUserError(f"train.best_metric {self.best_metric!r} is not an evaluation "
                         f"metric; expected one of {sorted(metrics)}")
    self.best.save(int(state.step), args=self._save_args(state, iterator),
                   metrics={k: float(v) for k, v in metrics.items()})

  def restore_latest(self, abstract_state, iterator) -> Optional[Any]:
    """The newest readable state (iterator moved to its position), or None; unreadable
    newer steps are moved aside."""

    def restore(step):
      restored = self.latest.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
          meta=ocp.args.JsonRestore()))
      self._check_base(restored.meta)
      iterator.set_state(restored.data["iterator"].encode())
      return restored.state

    found = _restore_newest(self.latest, restore, self._set_aside)
    if found is None:
      return None
    logging.info("resumed from step %d", found[0])
    return found[1]

  def _set_aside(self, step: int) -> None:
    """Moves step `step` out of the checkpoints (all processes agree, one moves it)."""
    if jax.process_index() == 0:
      source = os.path.join(str(self.latest.directory), str(step))
      target = os.path.join(self.workdir, UNREADABLE_DIR, str(step))
      suffix = 1
      while os.path.exists(target):
        target = os.path.join(self.workdir, UNREADABLE_DIR, f"{step}.{suffix}")
        suffix += 1
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(source, target)
      logging.warning("moved the unreadable step %d to %s", step, target)
    multihost_utils.sync_global_devices(f"spt_jax: set aside checkpoint {step}")
    self.latest.reload()

  def _check_base(self, saved_meta):
    saved, current = saved_meta["base"], self.meta["base"]
    if saved["sha256"] != current["sha256"]:
      raise SptUserError(
          f"the checkpoints in this workdir were trained on base {saved['path']} "
          f"(sha256 {saved['sha256'][:12]}...), but model.base is {current['path']} "
          f"(sha256 {current['sha256'][:12]}...); use the same base or a new workdir")

  def wait(self) -> None:
    """Waits for the saves to be written; reads back the last (`_verify`)."""
    self._verify()
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def restore_trainable(workdir: str, which: str = "latest") -> Optional[tuple[Any, dict]]:
  """(trainable leaves, meta) of the newest readable latest or best checkpoint in
  `workdir`, or None when there is none (an unreadable one is an SptUserError)."""
  if which not in ("latest", "best"):
    raise SptUserError(f"eval.checkpoint={which!r}: expected 'latest' or 'best'")
  directory = os.path.join(os.path.abspath(workdir),
                           "checkpoints" if which == "latest" else "best")
  if not os.path.isdir(directory):
    return None
  restored = restore_step(directory)
  return None if restored is None else restored[:2]


def restore_step(directory: str, step: Optional[int] = None
                 ) -> Optional[tuple[Any, dict, int]]:
  """(trainable leaves, meta, step) of `step`, or of the newest readable step, of a
  folder of step checkpoints (workdir/checkpoints or workdir/best), on this process's
  first device whatever saved it (one process or many); None when it holds none.

  Raises:
    SptUserError: no step reads (or `step` does not).
  """
  manager = ocp.CheckpointManager(directory, item_handlers={
      "state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
      "meta": ocp.JsonCheckpointHandler()})
  # Onto this process's first device, whatever mesh and processes saved it.
  here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def restore(candidate):
    saved = manager.item_metadata(candidate)["state"]
    target = jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=here), saved)
    return manager.restore(candidate, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))

  try:
    found = _restore_newest(manager, restore, step=step)
  finally:
    manager.close()
  if found is None:
    return None
  step, restored = found
  return restored.state["trainable"], restored.meta, step
