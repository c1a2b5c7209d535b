"""Scalars and images to TensorBoard event files (tensorboardX), scalars to a JSON-lines
file; progress lines.

Only the main process writes (see `jax.process_index()`).
"""

import json
import os
import sys
import time

import jax
import numpy as np
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

  def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """{tag: (H, W, 3) uint8} at `step` (TensorBoard's Images tab)."""
    if not self.enabled:
      return
    for tag, image in images.items():
      self._writer.add_image(tag, np.asarray(image), step, dataformats="HWC")
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


class ProgressLine:
  """`<label>: done/total <unit>, <rate>/s, ETA ...` for a loop over `total` items.

  On a terminal the line is redrawn in place at every update; in a log file (not a
  terminal) a line is printed at the first update, at each tenth of the total and at
  the end, so the log
  holds no carriage returns. Rate and ETA are measured from the first update on (the
  first batch includes compilation).
  """

  def __init__(self, label: str, total: int, unit: str, stream=None):
    self.label, self.total, self.unit = label, total, unit
    self.stream = stream or sys.stdout
    self.in_place = self.stream.isatty()
    self._first = None  # (done, time) at the first update
    self._printed_tenths = 0

  def line(self, done: int) -> str:
    text = f"{self.label}: {done}/{self.total} {self.unit}"
    first_done, first_time = self._first
    elapsed = time.perf_counter() - first_time
    if done > first_done and elapsed > 0:
      rate = (done - first_done) / elapsed
      text += f", {rate:.1f} {self.unit}/s, ETA {format_duration((self.total - done) / rate)}"
    return text

  def update(self, done: int) -> None:
    first = self._first is None
    if first:
      self._first = (done, time.perf_counter())
    if self.in_place:
      self.stream.write("\r" + self.line(done))
      if done >= self.total:
        self.stream.write("\n")
      self.stream.flush()
      return
    tenths = done * 10 // max(self.total, 1)
    if first or tenths > self._printed_tenths or done >= self.total:
      self._printed_tenths = tenths
      print(self.line(done), file=self.stream, flush=True)
