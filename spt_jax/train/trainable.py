"""Which variables train: regex rules on 'collection/module/.../leaf' paths.

SPT trains exactly the `adapters` collection; baselines are other rule sets (e.g. the
decoders' params for decoder-only fine-tuning). The frozen rest is split off before the
gradient, so it gets no gradient and no optimizer state.
"""

import re
from typing import Any, Sequence

from flax import traverse_util

from spt_jax.errors import SptUserError

SPT_TRAINABLE = (r"adapters/.*",)


def _join(path):
  return "/".join(path)


def partition(variables: dict[str, Any], patterns: Sequence[str]) -> tuple[dict, dict]:
  """(trainable, frozen) nested dicts; a leaf is trainable when a pattern fully matches."""
  compiled = [re.compile(p) for p in patterns]
  trainable, frozen = {}, {}
  for path, value in traverse_util.flatten_dict(variables).items():
    target = trainable if any(c.fullmatch(_join(path)) for c in compiled) else frozen
    target[path] = value
  if not trainable:
    raise SptUserError(f"trainable patterns {list(patterns)} match no variable; "
                       f"paths look like {_join(next(iter(traverse_util.flatten_dict(variables))))!r}")
  return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def merge(trainable: dict[str, Any], frozen: dict[str, Any]) -> dict[str, Any]:
  """Inverse of `partition`."""
  flat = traverse_util.flatten_dict(frozen)
  flat.update(traverse_util.flatten_dict(trainable))
  return traverse_util.unflatten_dict(flat)
