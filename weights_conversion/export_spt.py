r"""Export an spt_jax SPT model to the SPT authors' PyTorch key layout.

    python -m weights_conversion.export_spt --checkpoint converted/spt_vit_b \
        --output spt_vit_b.pth [--adapters-only] [--allow-nonstandard]

--checkpoint is a model directory written by `convert_sam`, or a training workdir (its
newest checkpoint), its `checkpoints` / `best` folder or one step's folder.
The output is a `.pth` state dict (needs torch) or `.safetensors`, with the keys the
authors' code (THU-MIG/SAM-SPT) loads: Meta's SAM keys, `draft_decoder.*`, and the
`lora_A`/`lora_B`/`lora_sim_scale` adapters. `--adapters-only` writes only the keys
with 'lora_' in their name (load them over a SAM checkpoint).

The file computes what the model computes when run by the authors' code: their LoRA
scale is 1 / r, so lora_B is written times this model's alpha. Beside it goes
`<name>.spt_jax.json` (the spec; `convert_sam` reads it back). A model their code cannot
build (a SAM size outside vit_b/l/h, no LoRA or no VRA) is refused with exit 2 unless
--allow-nonstandard is given; then only this project reads it back, through that spec.
"""

import argparse
import dataclasses
import os
import sys

import numpy as np

from spt_jax.errors import SptUserError, exit_code
from spt_jax.pretrained import load_pretrained
from weights_conversion import spt_layout
from weights_conversion.export_spec import ExportSpec, spec_path, write_export_spec
from weights_conversion.mapping import variables_to_state_dict


def write_state_dict(state: dict[str, np.ndarray], path: str) -> None:
  """Writes `.safetensors` with numpy, anything else with `torch.save`."""
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
  torch.save({k: torch.from_numpy(v if v.flags.writeable else v.copy())
              for k, v in state.items()}, path)


def export(checkpoint: str, output: str, adapters_only: bool = False,
           allow_nonstandard: bool = False) -> None:
  for path in (output, spec_path(output)):
    if os.path.exists(path):
      raise SptUserError(f"{path} exists; choose a new output file or delete it")
  pretrained = load_pretrained(checkpoint)
  if pretrained.metadata.get("model") != "spt":
    raise SptUserError(f"{checkpoint}: holds a plain SAM model, not SPT; nothing to export")
  adapters, sdt_steps = pretrained.adapters, pretrained.metadata["sdt_steps"]
  reasons = spt_layout.unexportable(adapters, sdt_steps)
  if reasons:
    raise SptUserError(f"{checkpoint}: the SPT authors' layout cannot hold this model: "
                       + "; ".join(reasons))
  reasons = spt_layout.nonstandard(pretrained.spec, adapters)
  if reasons and not allow_nonstandard:
    raise SptUserError(f"{checkpoint}: the SPT authors' code cannot build this model ("
                       + "; ".join(reasons) + "); --allow-nonstandard exports it anyway, "
                       f"readable by convert_sam through {spec_path(output)}")
  state = variables_to_state_dict(pretrained.variables, spt_layout.SPT_LAYOUT)
  state = spt_layout.to_authors_lora_scale(state, adapters)
  if adapters_only:
    state = {k: v for k, v in state.items() if "lora_" in k}
  write_state_dict(state, output)
  exported = dataclasses.replace(adapters, lora_alpha=spt_layout.AUTHORS_LORA_ALPHA)
  spec_file = write_export_spec(output, ExportSpec(pretrained.spec, exported, sdt_steps))
  print(f"wrote {len(state)} tensors to {output}, the spec to {spec_file}", flush=True)
  if adapters.lora_rank and adapters.lora_alpha != spt_layout.AUTHORS_LORA_ALPHA:
    print(f"LoRA alpha {adapters.lora_alpha:g} here, {spt_layout.AUTHORS_LORA_ALPHA:g} in "
          f"the authors' code: lora_B written times {adapters.lora_alpha:g}", flush=True)
  if adapters.vra_block != -1 or adapters.vra_alpha:
    print(f"run the authors' code with vatt_pos={adapters.vra_block} and "
          f"vatt_alpha={adapters.vra_alpha:g} (not in the tensors)", flush=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m weights_conversion.export_spt",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help="spt_jax model directory")
  parser.add_argument("--output", required=True, help=".pth or .safetensors file")
  parser.add_argument("--adapters-only", action="store_true",
                      help="only the LoRA and gamma tensors")
  parser.add_argument("--allow-nonstandard", action="store_true",
                      help="export a model the authors' code cannot build (spec in the "
                      "JSON beside the output)")
  args = parser.parse_args(argv)
  return exit_code(export, args.checkpoint, args.output, args.adapters_only,
                   args.allow_nonstandard)


if __name__ == "__main__":
  sys.exit(main())
