r"""The main job: train, resume, evaluate and predict with SPT.

    python -m spt_jax.main                                  # embedded default, temp workdir
    python -m spt_jax.main --config=configs/visa.py:vit_b --workdir=runs/visa_b \
        [--mode=train_and_eval|train|eval|predict|export] [--config.train.num_epochs=16 ...]

A run in an existing workdir resumes from its newest checkpoint. Mistakes in the
config, flags or inputs stop the job before anything compiles, with one line naming
the field or file (exit code 2). On SIGTERM (preemption) training saves a step all
processes agree on and exits with code 75; the same command resumes it.
"""

import difflib
import os
import sys
import tempfile

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

from configs import CONFIG_DIR
from spt_jax import compile_notices
from spt_jax import config as config_lib
from spt_jax import host_memory
from spt_jax import parallel
from spt_jax.errors import USER_ERROR_EXIT_CODE, SptUserError
from spt_jax.log_setup import set_up_logging
from spt_jax.train.preemption import PREEMPTED_EXIT_CODE, Preempted

DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "default.py")
# No default here: config_flags would load it and apply --config.* overrides while this
# module is imported, before errors can be reported cleanly; see _with_default_config.
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, configs/*.py[:variant] (default: configs/default.py).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", "", "Output directory (default: a new temp dir).")
_MODE = flags.DEFINE_enum("mode", "train_and_eval", config_lib.MODES, "What to run.")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", os.path.join("~", ".cache", "spt_jax", "xla"),
    "Persistent XLA compilation cache (a resumed or repeated run skips compiling); "
    "'' disables it.")


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(USER_ERROR_EXIT_CODE)


def _with_default_config(argv):
  given = any(a == "--config" or a.startswith("--config=") for a in argv[1:])
  return argv if given else argv[:1] + [f"--config={DEFAULT_CONFIG}"] + argv[1:]


def _check_config_flags(argv) -> None:
  """The config file loads and every --config.a.b=... names an existing field."""
  specs = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
  if not specs:
    raise SptUserError("use --config=<file.py[:variant]> (with '=')")
  config = config_lib.load_config_file(specs[-1])
  overrides = [a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
  for override in overrides:
    node = config
    for depth, part in enumerate(override.split(".")[1:]):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        parent = ".".join(override.split(".")[:depth + 1])
        known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(part, known, n=1)
        hint = f" (did you mean {parent}.{close[0]}?)" if close else ""
        raise SptUserError(f"--{override}: {parent} has no field {part!r}{hint}; its fields "
                           f"are {known}")
      node = node[part]


def _parse_flags(argv):
  """absl flag parsing with one-line errors (unknown config fields included)."""
  argv = _with_default_config(argv)
  try:
    _check_config_flags(argv)
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as error:
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
  set_up_logging()
  compile_notices.install()
  try:
    host_memory.keep_freed_memory()  # before JAX starts its backend
    parallel.maybe_initialize_distributed(
        parallel.MeshSpec.from_config(_CONFIG.value.mesh).distributed)
  except SptUserError as error:
    _fail(str(error))
  workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="spt_jax_")
  os.makedirs(workdir, exist_ok=True)
  if parallel.is_main_process():
    print(f"workdir: {workdir}", flush=True)
  if _COMPILATION_CACHE.value and not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser(_COMPILATION_CACHE.value))
  try:
    _run(_CONFIG.value, workdir, _MODE.value)
  except SptUserError as error:
    _fail(str(error))
  except Preempted as stopped:
    print(str(stopped), file=sys.stderr, flush=True)
    sys.exit(PREEMPTED_EXIT_CODE)
  if parallel.is_main_process():
    print(f"done; outputs in the workdir: {workdir}", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
