"""A training workdir read as a model directory: its frozen base plus its trained leaves.

Training keeps only what trains (workdir/checkpoints/<step>, workdir/best/<step>); each
step's `meta` names the base (path and content hash) and holds the run's config. Loading
a step rebuilds the model from that config, reads the base, checks its hash and puts the
trained leaves over it. So `load_pretrained`, the predictors and `export_spt` take a
workdir (its newest step), its `checkpoints` or `best` folder, or one step's folder.
"""

import json
import os
from typing import Optional

import jax
import ml_collections

from spt_jax.errors import SptUserError
from spt_jax.pretrained import Pretrained
from spt_jax.train.checkpoints import restore_step
from spt_jax.train.model_setup import setup_model, tree_sha256
from spt_jax.train.trainable import merge, partition

_STEP_FOLDERS = ("checkpoints", "best")


def _is_step(path: str) -> bool:
  return os.path.basename(os.path.normpath(path)).isdigit() and os.path.isdir(
      os.path.join(path, "meta"))


def _holds_steps(path: str) -> bool:
  return os.path.isdir(path) and any(_is_step(os.path.join(path, name))
                                     for name in os.listdir(path))


def locate_step(directory: str) -> Optional[tuple[str, Optional[int]]]:
  """(folder of steps, step or None for its newest) that `directory` names, or None when
  it is no training output (module docstring)."""
  directory = os.path.abspath(directory)
  if _is_step(directory):
    return os.path.dirname(directory), int(os.path.basename(directory))
  if _holds_steps(directory):
    return directory, None
  for name in _STEP_FOLDERS:  # a workdir: its newest step, 'best' if it kept no other
    if _holds_steps(os.path.join(directory, name)):
      return os.path.join(directory, name), None
  return None


def load_trained(directory: str) -> Pretrained:
  """The SPT model of a training step as `load_pretrained` returns a converted one.

  Raises:
    SptUserError: `directory` holds no step, no readable one (or the named step does
      not read), or its base is missing or no longer the base it was trained on.
  """
  located = locate_step(directory)
  if located is None:
    raise SptUserError(f"{directory}: no training checkpoint here (expected a workdir, its "
                       f"{' or '.join(_STEP_FOLDERS)} folder, or one step's folder)")
  folder, step = located
  trained, meta, step = restore_step(folder, step)
  config = ml_collections.ConfigDict(json.loads(meta["config"]))
  setup = setup_model(config, jax.random.PRNGKey(config.train.seed))  # as the run did
  if tree_sha256(setup.variables["params"]) != meta["base"]["sha256"]:
    raise SptUserError(f"{folder}/{step}: trained on base {meta['base']['path']}, which "
                       "now holds different weights; restore that base to load this model")
  variables = merge(trained, partition(setup.variables, config.trainable)[1])
  return Pretrained(setup.model.spec, setup.model.adapters, variables, {
      "model": "spt", "sdt_steps": setup.model.sdt_steps, "source": f"{folder}/{step}",
      "base": meta["base"]})
