r"""The main job: train, resume, evaluate and predict with SPT.

    python -m spt_jax.main                                  # embedded default, temp workdir
    python -m spt_jax.main --config=configs/visa.py:vit_b --workdir=runs/visa_b \
        [--mode=train_and_eval|train|eval|predict] [--config.train.num_epochs=16 ...]

A run in an existing workdir resumes from its newest checkpoint. Mistakes in the
config, flags or inputs stop the job before anything compiles, with one line naming
the field or file (exit code 2).
"""

import os
import sys
import tempfile

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from configs import CONFIG_DIR
from spt_jax import config as config_lib
from spt_jax.errors import USER_ERROR_EXIT_CODE, SptUserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(CONFIG_DIR, "default.py"), "Config file (configs/*.py[:variant]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "Output directory (default: a new temp dir).")
_MODE = flags.DEFINE_enum("mode", "train_and_eval", config_lib.MODES, "What to run.")


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(USER_ERROR_EXIT_CODE)


def _parse_flags(argv):
  """absl flag parsing with one-line errors (unknown config fields included)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    _fail(f"{error} (see --helpfull; config fields are listed in spt_jax/config.py)")
  except SptUserError as error:
    _fail(str(error))


def _run(config, workdir: str, mode: str) -> None:
  # Imported here so that flag errors are reported before the heavy imports.
  from spt_jax import jobs  # pylint: disable=g-import-not-at-top
  jobs.check_config(config, mode)
  jobs.run(config, workdir, mode)


def main(argv) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; use --flag=value")
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="spt_jax_")
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    print(f"workdir: {workdir}", flush=True)
  logging.set_verbosity(logging.INFO)
  try:
    _run(_CONFIG.value, workdir, _MODE.value)
  except SptUserError as error:
    _fail(str(error))


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
