"""Scalars to TensorBoard event files (tensorboardX) and to a JSON-lines file; progress lines.

Only the main process writes (see `jax.process_index()`).
"""

import json
import os
import time

import jax
import tensorboardX


class MetricWriter:
  """workdir/tensorboard/<name>/events.* and workdir/metrics_<name>.jsonl."""

  def __init__(self, workdir: str, name: str):
    self.enabled = jax.process_index() == 0
    if self.enabled:
      self._writer = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard", name))
      self._jsonl = open(os.path.join(workdir, f"metrics_{name}.jsonl"), "a")

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    for key, value in scalars.items():
      self._writer.add_scalar(key, value, step)
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    self._writer.flush()

  def close(self) -> None:
    if self.enabled:
      self._writer.close()
      self._jsonl.close()


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


class Progress:
  """Rate and ETA over the steps since the previous report (excludes the first, compile)."""

  def __init__(self, total_steps: int, examples_per_step: int):
    self.total_steps = total_steps
    self.examples_per_step = examples_per_step
    self._last_step, self._last_time = None, None

  def report(self, step: int) -> dict[str, float]:
    """Marks `step` done; returns {'examples_per_second', 'eta_seconds'} when known."""
    now = time.perf_counter()
    measured = {}
    if self._last_step is not None and step > self._last_step:
      seconds_per_step = (now - self._last_time) / (step - self._last_step)
      measured = {"examples_per_second": self.examples_per_step / seconds_per_step,
                  "eta_seconds": seconds_per_step * (self.total_steps - step)}
    self._last_step, self._last_time = step, now
    return measured
