r"""Convert a PyTorch SAM or SPT checkpoint to spt_jax.

    # Meta's SAM (.pth or .safetensors)
    python -m weights_conversion.convert_sam --checkpoint sam_vit_b_01ec64.pth \
        --output converted/sam_vit_b [--model-type auto|vit_b|vit_l|vit_h]
    # the SPT authors' checkpoint: a full state dict, or adapters only plus --base
    python -m weights_conversion.convert_sam --checkpoint spt_vit_b.pth \
        [--base sam_vit_b_01ec64.pth] --output converted/spt_vit_b

Writes an Orbax checkpoint and `model_spec.json` into --output, loadable with
`spt_jax.pretrained.load_pretrained` (and the predictors' `from_pretrained`). Problems
with the input (unreadable file, not SAM, missing/unexpected keys, wrong shapes) exit
with code 2 and one message naming the file and keys.

The architecture comes from the tensor shapes; an SPT file's adapters run as the
authors' code runs them (LoRA alpha 1, i.e. scale 1 / r). What shapes cannot say (the
decoder's heads, the VRA block and sparsification, the LoRA alpha) comes from the
`<name>.spt_jax.json` that `export_spt` writes beside its files, when present, else
from the flags.
"""

import argparse
import dataclasses
import hashlib
import sys

from spt_jax.errors import SptUserError, exit_code
from spt_jax.models.config import PRESETS
from spt_jax.models.sam import Sam, init_variables
from spt_jax.pretrained import save_pretrained
from spt_jax.spt.model import Spt
from weights_conversion import spt_layout
from weights_conversion.export_spec import read_export_spec, spec_path
from weights_conversion.infer_spec import preset_name, resolve_spec
from weights_conversion.mapping import expected_shapes, state_dict_to_variables
from weights_conversion.readers import read_state_dict


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _spt_state(checkpoint, state, base):
  """The full SPT state dict: the base SAM's weights under the checkpoint's own keys."""
  if base is not None:
    base_state = read_state_dict(base)
    if spt_layout.is_spt_state(base_state):
      raise SptUserError(f"--base {base}: expected a plain SAM checkpoint, it holds SPT "
                         "adapters")
    state = {**base_state, **state}
  elif not spt_layout.has_sam_weights(state):
    raise SptUserError(f"{checkpoint}: holds SPT adapters only, no SAM weights; pass the "
                       "SAM checkpoint it was trained from with --base")
  return spt_layout.with_refine_decoder(state)


# What an SPT file's shapes do not say, as the authors' code runs it.
ADAPTER_DEFAULTS = {"lora_alpha": spt_layout.AUTHORS_LORA_ALPHA, "vra_block": -1,
                    "vra_alpha": 0.0}


def _with_export_spec(spec, exported, checkpoint):
  """`spec` (from the shapes) with the decoder heads of the export spec, checked."""
  if exported is None:
    return spec
  recorded = exported.sam
  if dataclasses.replace(spec, decoder_num_heads=recorded.decoder_num_heads) != recorded:
    raise SptUserError(f"{spec_path(checkpoint)}: records a model other than the one in "
                       f"{checkpoint}'s tensors; delete or fix the spec file")
  return recorded


def _adapter_settings(exported, checkpoint, given):
  """lora_alpha, vra_block, vra_alpha: flags (None = not given) over the export spec
  over ADAPTER_DEFAULTS; a flag that contradicts the spec file is an error."""
  recorded = {} if exported is None else {
      name: getattr(exported.adapters, name) for name in ADAPTER_DEFAULTS}
  settings = dict(ADAPTER_DEFAULTS, **recorded)
  for name, value in given.items():
    if value is None:
      continue
    if name in recorded and recorded[name] != value:
      raise SptUserError(f"--{name.replace('_', '-')}={value}, but {spec_path(checkpoint)} "
                         f"records {recorded[name]}; drop the flag")
    settings[name] = value
  return settings


def convert(checkpoint: str, output: str, model_type: str = "auto", base: str = None,
            lora_alpha: float | None = None, vra_block: int | None = None,
            vra_alpha: float | None = None) -> None:
  """Reads, checks and converts `checkpoint` into the directory `output`.

  lora_alpha, vra_block, vra_alpha: None takes them from the export spec beside the
  checkpoint, if any, else ADAPTER_DEFAULTS.
  """
  print(f"reading {checkpoint}", flush=True)
  state = read_state_dict(checkpoint)
  exported = read_export_spec(checkpoint)
  if exported is not None:
    print(f"with the spec in {spec_path(checkpoint)}", flush=True)
  is_spt = spt_layout.is_spt_state(state)
  if base is not None and not is_spt:
    raise SptUserError(f"{checkpoint}: --base is only for SPT checkpoints, and this one has "
                       "no adapters or draft_decoder keys")
  if is_spt:
    state = _spt_state(checkpoint, state, base)
  sam_part = {k: v for k, v in state.items() if not k.startswith("draft_decoder.")}
  spec = _with_export_spec(resolve_spec(sam_part, model_type, checkpoint), exported,
                           checkpoint)
  enc = spec.encoder
  print(f"model: {preset_name(spec)} (image {enc.image_size}, dim {enc.embed_dim}, "
        f"depth {enc.depth}, heads {enc.num_heads}, global blocks "
        f"{list(enc.global_attn_indexes)})", flush=True)
  metadata = {"source": checkpoint, "source_sha256": file_sha256(checkpoint),
              "model_type": preset_name(spec)}
  if is_spt:
    adapters = spt_layout.infer_adapter_spec(state, checkpoint, **_adapter_settings(
        exported, checkpoint,
        dict(lora_alpha=lora_alpha, vra_block=vra_block, vra_alpha=vra_alpha)))
    print(f"SPT adapters: LoRA rank {adapters.lora_rank} (encoder {adapters.lora_encoder}, "
          f"decoders {adapters.lora_decoder}), VRA {adapters.vra}", flush=True)
    state = spt_layout.drop_unused_gammas(state, adapters)
    model = Spt(spec, adapters, sdt_steps=len(spt_layout.DECODER_PREFIXES))
    variables = state_dict_to_variables(state, expected_shapes(model, init_variables),
                                        checkpoint, spt_layout.SPT_LAYOUT)
    metadata.update(model="spt", sdt_steps=model.sdt_steps)
    if base is not None:
      metadata.update(base=base, base_sha256=file_sha256(base))
  else:
    adapters = Sam.adapters
    variables = state_dict_to_variables(state, expected_shapes(Sam(spec), init_variables),
                                        checkpoint)
    metadata.update(model="sam")
  save_pretrained(output, spec, variables, adapters, metadata=metadata)
  print(f"wrote {output}", flush=True)


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog="python -m weights_conversion.convert_sam", description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help=".pth/.pt or .safetensors file")
  parser.add_argument("--output", required=True, help="directory to create")
  parser.add_argument("--model-type", default="auto", choices=("auto",) + PRESETS,
                      help="expected size; 'auto' infers it from the tensor shapes")
  parser.add_argument("--base", default=None,
                      help="SAM checkpoint an adapters-only SPT checkpoint was trained on")
  parser.add_argument("--lora-alpha", type=float, default=None,
                      help="LoRA alpha the file's adapters are run with (default: the "
                      "spec file's, else the authors' 1)")
  parser.add_argument("--vra-block", type=int, default=None,
                      help="1-based two-way block that uses gamma (authors' vatt_pos); "
                      "default: the spec file's, else -1 (all)")
  parser.add_argument("--vra-alpha", type=float, default=None,
                      help="relation sparsification alpha (authors' vatt_alpha); default: "
                      "the spec file's, else 0")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  return exit_code(convert, args.checkpoint, args.output, args.model_type, args.base,
                   args.lora_alpha, args.vra_block, args.vra_alpha)


if __name__ == "__main__":
  sys.exit(main())
