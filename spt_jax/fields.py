"""Dataclass fields from a mapping or ml_collections ConfigDict, with unknown keys refused."""

import dataclasses
from typing import Any, Mapping

from spt_jax.errors import SptUserError


def known_fields(cls, config: Mapping[str, Any] | Any, what: str) -> dict[str, Any]:
  """`config` as a dict of `cls`'s fields; a key `cls` lacks is a SptUserError naming `what`."""
  fields = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise SptUserError(f"{what}: unknown key(s) {unknown}; expected some of {sorted(known)}")
  return fields
