"""What an exported SPT checkpoint's tensors do not say, in a JSON file beside it.

    spt_vit_b.pth  ->  spt_vit_b.spt_jax.json  {"format", "sam": SamSpec,
                                                "adapters": AdapterSpec, "sdt_steps"}

Shapes do not carry the decoder's head count, which two-way block uses gamma, the
relation sparsification or the LoRA scale. `export_spt` writes this file with every
export; `convert_sam` reads it when it lies beside the checkpoint, so export -> convert
gives back the same model, also for sizes outside Meta's presets.
"""

import dataclasses
import json
import os
from typing import Optional

from spt_jax.errors import SptUserError
from spt_jax.fields import known_fields
from spt_jax.models.config import AdapterSpec, SamSpec

SUFFIX = ".spt_jax.json"
FORMAT = "spt_jax.export_spec/1"


@dataclasses.dataclass(frozen=True)
class ExportSpec:
  sam: SamSpec
  adapters: AdapterSpec
  sdt_steps: int


def spec_path(checkpoint: str) -> str:
  """The spec file that belongs to `checkpoint` (its name with SUFFIX for its extension)."""
  return os.path.splitext(checkpoint)[0] + SUFFIX


def write_export_spec(checkpoint: str, spec: ExportSpec) -> str:
  """Writes the spec file of `checkpoint`; returns its path."""
  path = spec_path(checkpoint)
  with open(path, "w") as f:
    json.dump({"format": FORMAT, "sam": spec.sam.to_dict(),
               "adapters": dataclasses.asdict(spec.adapters), "sdt_steps": spec.sdt_steps},
              f, indent=2)
  return path


def read_export_spec(checkpoint: str) -> Optional[ExportSpec]:
  """The spec file beside `checkpoint`, or None when there is none."""
  path = spec_path(checkpoint)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      document = json.load(f)
  except (OSError, json.JSONDecodeError) as error:
    raise SptUserError(f"{path}: unreadable ({error})") from None
  if document.get("format") != FORMAT:
    raise SptUserError(f"{path}: format {document.get('format')!r}, expected {FORMAT!r}")
  missing = [key for key in ("sam", "adapters", "sdt_steps") if key not in document]
  if missing:
    raise SptUserError(f"{path}: missing {', '.join(missing)}")
  adapters = AdapterSpec(**known_fields(AdapterSpec, document["adapters"],
                                         f"{path}: adapters"))
  return ExportSpec(SamSpec.from_dict(document["sam"], source=path), adapters,
                    int(document["sdt_steps"]))
