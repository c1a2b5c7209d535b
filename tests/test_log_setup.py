"""The jobs' log keeps this project's INFO messages and drops the checkpointer's chatter."""

import logging as std_logging

from absl import logging

from spt_jax import log_setup


def _record(level, pathname):
  return std_logging.LogRecord("absl", level, pathname, 1, "message", (), None)


def test_orbax_info_is_dropped_and_the_rest_kept():
  log_setup.set_up_logging()
  handler = logging.get_absl_handler()
  orbax = "/venv/lib/python3.11/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert not handler.filter(_record(std_logging.INFO, orbax))
  assert handler.filter(_record(std_logging.WARNING, orbax))
  assert handler.filter(_record(std_logging.INFO, "/work/spt_jax/data/pipeline.py"))
  for installed in [f for f in handler.filters
                    if isinstance(f, log_setup._LibraryChatterFilter)]:  # pylint: disable=protected-access
    handler.removeFilter(installed)
