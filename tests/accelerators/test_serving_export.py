"""Serving exports for CUDA and TPU from this CPU host: each platform's artefacts hold its
own kernels (Triton, Mosaic), for the encoder's global attention and the VRA relation."""

import os

import jax
from jax import export as jax_export

from small_models import MICRO_SPEC
from spt_jax import aot
from spt_jax import export
from spt_jax.models.sam import init_variables
from spt_jax.spt.model import SPT_ADAPTERS, Spt

KERNEL_CALL = {"cuda": aot.TRITON_CALL, "tpu": "tpu_custom_call"}


def test_spt_exports_for_cuda_and_tpu_with_their_kernels(tmp_path):
  model = Spt(MICRO_SPEC, SPT_ADAPTERS)
  output = str(tmp_path / "serving")
  document = export.export_model(model, init_variables(model, jax.random.PRNGKey(0)),
                                 output, platforms=("cuda", "tpu"), prompt_buckets=(2,))
  for platform, call in KERNEL_CALL.items():
    for name in ("embed_b1", "decode_box_b1_p2"):
      with open(os.path.join(output, document["programs"][f"{platform}/{name}"]["file"]),
                "rb") as f:
        text = jax_export.deserialize(bytearray(f.read())).mlir_module()
      other = KERNEL_CALL["tpu" if platform == "cuda" else "cuda"]
      assert call in text and other not in text, (platform, name)
