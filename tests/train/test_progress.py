"""Progress lines of training and evaluation: period means, log-file friendly lines."""

import io

import jax.numpy as jnp
import numpy as np

from spt_jax.train.loop import PeriodMeans
from spt_jax.train.metric_writer import ProgressLine


def test_period_means_average_the_steps_since_the_last_report():
  period = PeriodMeans()
  for loss in (1.0, 2.0, 6.0):
    period.add({"loss": jnp.float32(loss), "grad_norm": jnp.float32(2 * loss)})
  means = period.means()
  np.testing.assert_allclose([means["loss"], means["grad_norm"]], [3.0, 6.0])
  period.add({"loss": jnp.float32(5.0), "grad_norm": jnp.float32(0.0)})
  assert period.means() == {"loss": 5.0, "grad_norm": 0.0}


def test_progress_in_a_log_file_prints_tenths_with_rate_and_no_carriage_return():
  stream = io.StringIO()
  progress = ProgressLine("eval synthetic", 100, "images", stream=stream)
  for done in range(8, 100, 8):
    progress.update(done)
  progress.update(100)
  lines = stream.getvalue().splitlines()
  assert "\r" not in stream.getvalue()
  assert lines[0] == "eval synthetic: 8/100 images"  # the first batch: no rate yet
  assert len(lines) == 11 and lines[-1].startswith("eval synthetic: 100/100 images, ")
  assert all("images/s, ETA " in line for line in lines[1:])
