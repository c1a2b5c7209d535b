"""The spec file beside an export: round trip, and one clear error for a bad file."""

import json

import pytest

from spt_jax.errors import SptUserError
from spt_jax.models.config import AdapterSpec, sam_preset
from weights_conversion.export_spec import (ExportSpec, read_export_spec, spec_path,
                                            write_export_spec)

SPEC = ExportSpec(sam_preset("vit_b"), AdapterSpec(lora_rank=8, vra=True, vra_block=2), 2)


def test_round_trip_and_absent_file(tmp_path):
  checkpoint = str(tmp_path / "spt.pth")
  assert read_export_spec(checkpoint) is None
  assert write_export_spec(checkpoint, SPEC) == str(tmp_path / "spt.spt_jax.json")
  assert read_export_spec(checkpoint) == SPEC


@pytest.mark.parametrize("content, message", [
    ("{not json", "unreadable"),
    (json.dumps({"format": "other/1"}), "format 'other/1', expected 'spt_jax.export_spec/1'"),
    (json.dumps({"format": "spt_jax.export_spec/1", "sam": {}}), "missing adapters, sdt_steps"),
])
def test_a_bad_spec_file_is_named(tmp_path, content, message):
  checkpoint = str(tmp_path / "spt.pth")
  with open(spec_path(checkpoint), "w") as f:
    f.write(content)
  with pytest.raises(SptUserError, match=message) as error:
    read_export_spec(checkpoint)
  assert spec_path(checkpoint) in str(error.value)
