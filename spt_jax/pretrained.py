"""A converted model on disk: Orbax-saved variables plus `model_spec.json`.

    DIR/model_spec.json   {"format", "sam": SamSpec, "adapters": AdapterSpec,
                           "model": "sam" | "spt", "sdt_steps", "source", ...}
    DIR/variables/        Orbax checkpoint of {'params': ..., ['adapters': ...]}

`load_pretrained(DIR)` needs no flags: the spec says what to build (`build_model`). It
also reads a training workdir or one of its checkpoints (`spt_jax.train.trained_model`).
"""

import dataclasses
import json
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from spt_jax.errors import SptUserError
from spt_jax.fields import known_fields
from spt_jax.models.config import AdapterSpec, SamSpec
from spt_jax.models.sam import Sam
from spt_jax.spt.model import Spt

SPEC_FILE = "model_spec.json"
VARIABLES_DIR = "variables"
FORMAT = "spt_jax.pretrained/1"
# Metadata key: False where only SAM's single-mask output was trained (the embedded
# base), so the predictors default to it; Meta's checkpoints train all four outputs.
MULTIMASK_TRAINED = "multimask_trained"
# The name 'embedded' stands for the small SAM shipped in the package
# (spt_jax/assets/tiny_sam/RECIPE.md says how it was made).
EMBEDDED = "embedded"
EMBEDDED_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets",
                             "tiny_sam")


def model_directory(name: str) -> str:
  """The directory a model name stands for: 'embedded' is EMBEDDED_BASE."""
  return EMBEDDED_BASE if name == EMBEDDED else name


@dataclasses.dataclass(frozen=True)
class Pretrained:
  spec: SamSpec
  adapters: AdapterSpec
  variables: dict[str, Any]
  metadata: dict[str, Any]


def save_pretrained(directory: str, spec: SamSpec, variables: dict[str, Any],
                    adapters: AdapterSpec = AdapterSpec(),
                    metadata: Optional[dict[str, Any]] = None) -> None:
  """Writes `variables` and the spec to `directory` (created; must not hold a model)."""
  directory = os.path.abspath(directory)
  if os.path.exists(os.path.join(directory, SPEC_FILE)):
    raise SptUserError(f"{directory} already holds a converted model; choose a new output "
                       "directory or delete it")
  os.makedirs(directory, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(directory, VARIABLES_DIR),
                    jax.tree_util.tree_map(np.asarray, variables))
  checkpointer.wait_until_finished()
  document = {"format": FORMAT, "sam": spec.to_dict(),
              "adapters": dataclasses.asdict(adapters), **(metadata or {})}
  with open(os.path.join(directory, SPEC_FILE), "w") as f:
    json.dump(document, f, indent=2)


def load_spec(directory: str) -> tuple[SamSpec, AdapterSpec, dict[str, Any]]:
  """The model spec of a converted model directory (without loading the weights)."""
  directory = model_directory(directory)
  spec_path = os.path.join(directory, SPEC_FILE)
  if not os.path.isfile(spec_path):
    raise SptUserError(f"{directory}: not a model directory (no {SPEC_FILE}, no training "
                       "checkpoints); create one with `python -m "
                       "weights_conversion.convert_sam`, or train into it")
  try:
    with open(spec_path) as f:
      document = json.load(f)
  except json.JSONDecodeError as error:
    raise SptUserError(f"{spec_path}: not valid JSON ({error})") from None
  if document.get("format") != FORMAT:
    raise SptUserError(f"{spec_path}: format {document.get('format')!r}, expected {FORMAT!r}")
  spec = SamSpec.from_dict(document["sam"], source=spec_path)
  adapters = AdapterSpec(**known_fields(AdapterSpec, document.get("adapters", {}),
                                         f"{spec_path}: adapters"))
  metadata = {k: v for k, v in document.items() if k not in ("format", "sam", "adapters")}
  return spec, adapters, metadata


def load_pretrained(directory: str) -> Pretrained:
  """Spec and variables (numpy arrays) of a directory written by `save_pretrained`, of
  a training workdir or checkpoint (`spt_jax.train.trained_model`), or 'embedded'."""
  directory = model_directory(directory)
  if not os.path.isfile(os.path.join(directory, SPEC_FILE)):
    # pylint: disable-next=g-import-not-at-top  (it builds on this module)
    from spt_jax.train import trained_model
    if trained_model.locate_step(directory) is not None:
      return trained_model.load_trained(directory)
  spec, adapters, metadata = load_spec(directory)
  variables_path = os.path.join(os.path.abspath(directory), VARIABLES_DIR)
  if not os.path.isdir(variables_path):
    raise SptUserError(f"{directory}: missing {VARIABLES_DIR}/ (incomplete conversion?)")
  variables = ocp.StandardCheckpointer().restore(variables_path)
  return Pretrained(spec, adapters, variables, metadata)


def build_model(pretrained: Pretrained, **model_kwargs):
  """The `Sam` or `Spt` module a converted directory holds variables for."""
  if pretrained.metadata.get("model", "sam") == "spt":
    return Spt(pretrained.spec, pretrained.adapters,
               sdt_steps=pretrained.metadata["sdt_steps"], **model_kwargs)
  return Sam(pretrained.spec, pretrained.adapters, **model_kwargs)
