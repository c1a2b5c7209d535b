"""Logging of the command-line jobs: this project's INFO messages, not the libraries'.

At the default verbosity only this project's INFO records are shown, with every
library's warnings and errors except two that TFDS gives for every build of a local
data set (`NOISE`); TFDS's progress bars (terminal escapes in a log file) are off, the
builders log their own progress. `--verbosity=1` shows everything.
"""

import logging as std_logging
import os

from absl import logging

_PROJECT_DIRS = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name) + os.sep
    for name in ("spt_jax", "weights_conversion", "configs", "benchmarks"))
# Library warnings that say nothing to the user of a local data set.
NOISE = ("has no dataset_info.json", "Using custom data configuration")


class _LibraryChatterFilter(std_logging.Filter):
  """Drops the libraries' INFO records and the warnings in NOISE."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.pathname.startswith(_PROJECT_DIRS):
      return True
    if record.levelno <= std_logging.INFO:
      return False
    return not any(text in record.getMessage() for text in NOISE)


def set_up_logging() -> None:
  """INFO for this project's messages; the libraries' INFO too only at --verbosity >= 1."""
  if logging.get_verbosity() < logging.DEBUG:
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_LibraryChatterFilter())
    # pylint: disable-next=g-import-not-at-top  (heavy; only the jobs need it)
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
