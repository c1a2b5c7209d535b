r"""Convert a PyTorch SAM checkpoint (Meta's `.pth` or `.safetensors`) to spt_jax.

    python -m weights_conversion.convert_sam --checkpoint sam_vit_b_01ec64.pth \
        --output converted/sam_vit_b [--model-type auto|vit_b|vit_l|vit_h]

Writes an Orbax checkpoint and `model_spec.json` into --output, loadable with
`spt_jax.pretrained.load_pretrained` (and `SamPredictor.from_pretrained`). Problems with
the input (unreadable file, not SAM, missing/unexpected keys, wrong shapes) exit with
code 2 and one message naming the file and keys.
"""

import argparse
import hashlib
import sys

from spt_jax.errors import USER_ERROR_EXIT_CODE, SptUserError
from spt_jax.models.config import PRESETS
from spt_jax.models.sam import Sam, init_variables
from spt_jax.pretrained import save_pretrained
from weights_conversion.infer_spec import preset_name, resolve_spec
from weights_conversion.mapping import expected_shapes, state_dict_to_variables
from weights_conversion.readers import read_state_dict


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def convert(checkpoint: str, output: str, model_type: str = "auto") -> None:
  """Reads, checks and converts `checkpoint` into the directory `output`."""
  print(f"reading {checkpoint}", flush=True)
  state = read_state_dict(checkpoint)
  spec = resolve_spec(state, model_type, checkpoint)
  enc = spec.encoder
  print(f"model: {preset_name(spec)} (image {enc.image_size}, dim {enc.embed_dim}, "
        f"depth {enc.depth}, heads {enc.num_heads}, global blocks "
        f"{list(enc.global_attn_indexes)})", flush=True)
  variables = state_dict_to_variables(state, expected_shapes(Sam(spec), init_variables),
                                      checkpoint)
  save_pretrained(output, spec, variables, metadata={
      "source": checkpoint, "source_sha256": file_sha256(checkpoint),
      "model_type": preset_name(spec)})
  print(f"wrote {output}", flush=True)


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog="python -m weights_conversion.convert_sam", description=__doc__.split("\n")[0])
  parser.add_argument("--checkpoint", required=True, help=".pth/.pt or .safetensors file")
  parser.add_argument("--output", required=True, help="directory to create")
  parser.add_argument("--model-type", default="auto", choices=("auto",) + PRESETS,
                      help="expected size; 'auto' infers it from the tensor shapes")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    convert(args.checkpoint, args.output, args.model_type)
  except SptUserError as error:
    print(f"error: {error}", file=sys.stderr)
    return USER_ERROR_EXIT_CODE
  return 0


if __name__ == "__main__":
  sys.exit(main())
