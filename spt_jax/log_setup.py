"""Logging of the command-line jobs: this project's INFO messages, not the libraries'."""

import logging as std_logging

from absl import logging


class _LibraryChatterFilter(std_logging.Filter):
  """Drops the INFO records of the checkpointing library (every save logs a dozen)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno > std_logging.INFO or "/orbax/" not in record.pathname


def set_up_logging() -> None:
  """INFO for this project's messages; the libraries' INFO too only at --verbosity >= 1."""
  if logging.get_verbosity() < logging.DEBUG:
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_LibraryChatterFilter())
