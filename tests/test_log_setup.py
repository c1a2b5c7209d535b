"""The jobs' log keeps this project's INFO messages and drops the libraries' chatter."""

import logging as std_logging
import os

from absl import logging
import pytest

from spt_jax import log_setup

PROJECT_FILE = os.path.join(os.path.dirname(log_setup.__file__), "data", "pipeline.py")
SITE = "/venv/lib/python3.11/site-packages"


def _record(level, pathname, message="message"):
  return std_logging.LogRecord("absl", level, pathname, 1, message, (), None)


@pytest.fixture
def handler():
  log_setup.set_up_logging()
  handler = logging.get_absl_handler()
  yield handler
  for installed in [f for f in handler.filters
                    if isinstance(f, log_setup._LibraryChatterFilter)]:  # pylint: disable=protected-access
    handler.removeFilter(installed)


def test_library_info_is_dropped_and_their_warnings_kept(handler):
  for library in (f"{SITE}/orbax/checkpoint/checkpoint_manager.py",
                  f"{SITE}/jax/_src/xla_bridge.py",
                  f"{SITE}/tensorflow_datasets/core/dataset_info.py"):
    assert not handler.filter(_record(std_logging.INFO, library))
    assert handler.filter(_record(std_logging.WARNING, library))
  assert handler.filter(_record(std_logging.INFO, PROJECT_FILE))


def test_tfds_warnings_about_local_builds_are_dropped(handler):
  tfds_file = f"{SITE}/tensorflow_datasets/core/dataset_builder.py"
  for message in ("Variant folder /x/mvtec_ad/1.0.0 has no dataset_info.json",
                  "Using custom data configuration: FolderConfig(name='mine')"):
    assert not handler.filter(_record(std_logging.WARNING, tfds_file, message))
  assert handler.filter(_record(std_logging.WARNING, tfds_file, "checksum mismatch"))
