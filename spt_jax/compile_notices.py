"""A line while a long XLA compilation runs, so a job is never silent for minutes.

JAX reports the start and the duration of every backend compilation
(`jax.monitoring`, with the jitted function's name). `install()` starts a timer at
each start: when a compilation is still running after `after_seconds`, it prints
`compiling <program> ...`, and `... compiled in <s>` when it ends. Compilations
answered by the persistent cache, and the many small ones, print nothing.
"""

import sys
import threading
from typing import Callable

from jax import monitoring

# JAX's event names (jax._src.dispatch): recorded as a scalar (its start time) when a
# backend compilation starts, as a duration when it ends.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

# The project's programs by the name of their jitted function.
PROGRAM_NAMES = {
    "train_step": "the train step",
    "_forward_fn": "the evaluation program",
    "init": "the model's initial variables",
}


def program_name(fun_name: str) -> str:
  """'jit(train_step)' -> 'the train step'; names not in PROGRAM_NAMES as they are."""
  inner = fun_name[4:-1] if fun_name.startswith("jit(") and fun_name.endswith(")") else (
      fun_name)
  return PROGRAM_NAMES.get(inner, fun_name)


class CompileNotices:
  """Prints a line for each compilation running longer than `after_seconds`."""

  def __init__(self, after_seconds: float = 3.0, write: Callable[[str], None] = None):
    self.after_seconds = after_seconds
    self.write = write or (lambda line: print(line, file=sys.stdout, flush=True))
    self._running = {}  # fun_name -> (timer, [True] once announced)
    self._lock = threading.Lock()

  def started(self, event: str, value: float, **kwargs) -> None:
    if event != BACKEND_COMPILE_EVENT:
      return
    name = str(kwargs.get("fun_name", "a program"))
    announced = []

    def announce():
      announced.append(True)
      self.write(f"compiling {program_name(name)} ...")

    timer = threading.Timer(self.after_seconds, announce)
    timer.daemon = True
    with self._lock:
      self._running[name] = (timer, announced)
    timer.start()

  def ended(self, event: str, duration: float, **kwargs) -> None:
    if event != BACKEND_COMPILE_EVENT:
      return
    name = str(kwargs.get("fun_name", "a program"))
    with self._lock:
      running = self._running.pop(name, None)
    if running is None:
      return
    timer, announced = running
    timer.cancel()
    if announced:
      self.write(f"compiled {program_name(name)} in {duration:.1f} s")


_INSTALLED = []


def install(after_seconds: float = 3.0) -> CompileNotices:
  """Registers the notices with JAX's monitoring (once per process)."""
  if not _INSTALLED:
    notices = CompileNotices(after_seconds)
    monitoring.register_scalar_listener(notices.started)
    monitoring.register_event_duration_secs_listener(notices.ended)
    _INSTALLED.append(notices)
  return _INSTALLED[0]
