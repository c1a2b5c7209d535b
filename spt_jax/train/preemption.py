"""Stopping for preemption: on SIGTERM, save a step every process agrees on, then exit.

Cloud TPU, GKE and SLURM send SIGTERM some time before they take a machine away. The
training loop asks `PreemptionWatch.reached(step)` after every step; once it is True the
loop saves that step and raises `Preempted`, and `spt_jax.main` exits with
PREEMPTED_EXIT_CODE. Running the same command again resumes from that step, bit for bit
as if never stopped.

With several processes, JAX's preemption sync manager (started by
`jax.distributed.initialize`) hears the signal on any of them and picks the step all of
them save: each process reaches it after the same number of steps. With one process a
signal handler (in the main thread) notes the request and the next finished step is
saved.
"""

import signal
import threading

from jax._src import distributed  # pylint: disable=g-importing-member  (the sync manager)
from jax.experimental import multihost_utils

# sysexits' EX_TEMPFAIL: a temporary failure, the same command should be run again.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
  """Training stopped at `step` for preemption, after saving that step."""

  def __init__(self, step: int):
    super().__init__(f"preempted: step {step} saved; run the same command again to resume")
    self.step = step


class PreemptionWatch:
  """Whether training should save and stop now (module docstring); close() when done."""

  def __init__(self):
    self._synced = distributed.global_state.preemption_sync_manager is not None
    self._requested = False
    self._previous = None
    if not self._synced and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._request)

  def _request(self, signum, frame):  # pylint: disable=unused-argument
    self._requested = True

  def reached(self, step: int) -> bool:
    """True at the step to save (all processes agree); call after every step."""
    if self._synced:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

