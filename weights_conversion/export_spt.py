r"""Export an spt_jax SPT model to the SPT authors' PyTorch key layout.

    python -m weights_conversion.export_spt --checkpoint converted/spt_vit_b \
        --output spt_vit_b.pth [--adapters-only]

--checkpoint is a directory written by `convert_sam` or by training (see README).
The output is a `.pth` state dict (needs torch) or `.safetensors`, with the keys the
authors' code (THU-MIG/SAM-SPT) loads: Meta's SAM keys, `draft_decoder.*`, and the
`lora_A`/`lora_B`/`lora_sim_scale` adapters. `--adapters-only` writes only the keys
with 'lora_' in their name (load them over a SAM checkpoint).
"""

import argparse
import os
import sys

import numpy as np

from spt_jax.errors import SptUserError, exit_code
from spt_jax.pretrained import load_pretrained
from weights_conversion.mapping import variables_to_state_dict
from weights_conversion.spt_layout import SPT_LAYOUT


def write_state_dict(state: dict[str, np.ndarray], path: str) -> None:
  """Writes `.safetensors` with numpy, anything else with `torch.save`."""
  if os.path.exists(path):
    raise SptUserError(f"{path} exists; choose a new output file or delete it")
  state = {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}
  if path.endswith(".safetensors"):
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    save_file(state, path)
    return
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise SptUserError("writing a .pth needs PyTorch: pip install 'spt_jax[convert]', or "
                       "write .safetensors") from None
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)


def export(checkpoint: str, output: str, adapters_only: bool = False) -> None:
  pretrained = load_pretrained(checkpoint)
  if pretrained.metadata.get("model") != "spt":
    raise SptUserError(f"{checkpoint}: holds a plain SAM model, not SPT; nothing to export")
  state = variables_to_state_dict(pretrained.variables, SPT_LAYOUT)
  if adapters_only:
    state = {k: v for k, v in state.items() if "lora_" in k}
  write_state_dict(state, output)
  print(f"wrote {len(state)} tensors to {output}", flush=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m weights_conversion.export_spt",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help="spt_jax model directory")
  parser.add_argument("--output", required=True, help=".pth or .safetensors file")
  parser.add_argument("--adapters-only", action="store_true",
                      help="only the LoRA and gamma tensors")
  args = parser.parse_args(argv)
  return exit_code(export, args.checkpoint, args.output, args.adapters_only)


if __name__ == "__main__":
  sys.exit(main())
