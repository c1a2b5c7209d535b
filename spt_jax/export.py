r"""A serving export: the jit-compiled model as `jax.export` artefacts, run with no model code.

    python -m spt_jax.export --model runs/mvtec --output serving/mvtec \
        [--platforms cpu,cuda,tpu] [--batch-sizes 1,8] [--prompts box,points1] \
        [--prompt-buckets 1,8] [--dtype float32]

--model: a training workdir (its newest step), one step's folder, a converted model
directory, or 'embedded'. A plain SAM model is exported as SAM (one decoder step).
`--mode=export` of `spt_jax.main` exports the workdir's trained model the same way.

    python -m spt_jax.export --model runs/mvtec/best --output models/mvtec --model-directory

writes instead a self-contained model directory (`spt_jax.pretrained`: the base's
and the trained weights in one Orbax checkpoint, the spec, where they came from),
which the predictors, `export_spt` and model.base take without the training workdir
or the base it refers to.

The output directory holds (`SERVING_FILE` says all of it, `spt_jax.serving` runs it):

  serving.json        format, model spec and source, preprocessing, the programs'
                      input and output shapes, the batch sizes, prompt kinds, buckets
  weights.npz         the variables as a flat list of arrays (w00000, w00001, ...)
  <platform>/embed_b<B>.jax_exported
                      (weights, images (B, S, S, 3) uint8 padded, input_sizes (B, 2)
                      int32) -> embeddings (B, h, w, D) float32
  <platform>/decode_<kind>_b<B>_p<P>.jax_exported
                      (weights, embeddings, prompts, rows (B, H, l), cols (B, W, l))
                      -> masks (B, steps, P, H, W) bool, scores (same, float32: the
                      masks' sigmoid), iou (B, P), low_res_logits (B, steps, P, l, l)

The programs are `spt_jax.programs.embed` and `.decode`, the functions the evaluator
runs, so an export computes what `--mode=eval` computes (bit for bit at its batch
size on CPU). H and W are symbolic: one artefact serves every original size. One
artefact per platform (the TPU and GPU kernels lower for their own platform only).
Prompt kinds: 'box' (boxes (B, P, 4)), 'points<K>' (points (B, P, K, 2), point_labels
(B, P, K)), 'box+points<K>'; coordinates in model-input pixels. The Triton kernels
have no serialization compatibility guarantee: a CUDA artefact needs the jax version
it was exported with (`serving.json` records it).
"""

import argparse
import dataclasses
import json
import os
import re
import sys
from typing import Any, Sequence

import jax
from jax import export as jax_export
import jax.numpy as jnp
import numpy as np

from spt_jax import aot
from spt_jax import programs
from spt_jax.errors import SptUserError, exit_code
from spt_jax.models.config import AdapterSpec
from spt_jax.models.prompts import Prompts
from spt_jax.pretrained import build_model, load_pretrained, save_pretrained
from spt_jax.spt.model import Spt, sam_params_to_spt

SERVING_FILE = "serving.json"
WEIGHTS_FILE = "weights.npz"
FORMAT = "spt_jax.serving/1"
PLATFORMS = ("cpu", "cuda", "tpu")
# The Triton kernels' custom call has no serialization compatibility guarantee.
_TRITON = jax_export.DisabledSafetyCheck.custom_call(aot.TRITON_CALL)


@dataclasses.dataclass(frozen=True)
class PromptKind:
  """A prompt structure a decode program takes: a box and/or K points per prompt."""
  box: bool
  points: int

  @classmethod
  def parse(cls, text: str) -> "PromptKind":
    """'box', 'points<K>' (K >= 1) or 'box+points<K>'."""
    parts = text.split("+")
    points = [re.fullmatch(r"points([1-9]\d*)", part) for part in parts]
    box = parts[0] == "box"
    if len(parts) > 2 or (len(parts) == 2 and not (box and points[1])) or (
        len(parts) == 1 and not (box or points[0])):
      raise SptUserError(f"prompt kind {text!r}: expected 'box', 'points<K>' (K >= 1, e.g. "
                         "points1) or 'box+points<K>'")
    count = next((int(m.group(1)) for m in points if m), 0)
    return cls(box=box, points=count)

  @property
  def name(self) -> str:
    return "+".join((["box"] if self.box else []) +
                    ([f"points{self.points}"] if self.points else []))

  def input_shapes(self, batch: int, prompts: int) -> dict[str, jax.ShapeDtypeStruct]:
    shapes = {}
    if self.box:
      shapes["boxes"] = jax.ShapeDtypeStruct((batch, prompts, 4), jnp.float32)
    if self.points:
      shapes["points"] = jax.ShapeDtypeStruct((batch, prompts, self.points, 2), jnp.float32)
      shapes["point_labels"] = jax.ShapeDtypeStruct((batch, prompts, self.points), jnp.int32)
    return shapes


def program_file(platform: str, name: str) -> str:
  return os.path.join(platform, f"{name}.jax_exported")


def embed_name(batch: int) -> str:
  return f"embed_b{batch}"


def decode_name(kind: PromptKind, batch: int, prompts: int) -> str:
  return f"decode_{kind.name}_b{batch}_p{prompts}"


def servable_model(pretrained, dtype=jnp.float32) -> tuple[Spt, dict[str, Any]]:
  """The Spt model and variables of a loaded model; plain SAM as one decoder step."""
  model = build_model(pretrained, dtype=dtype)
  if isinstance(model, Spt):
    return model, pretrained.variables
  model = Spt(pretrained.spec, AdapterSpec(), dtype=dtype, sdt_steps=1)
  return model, {"params": sam_params_to_spt(pretrained.variables["params"], 1)}


def _shape_spec(x) -> dict[str, Any]:
  return {"shape": [str(d) for d in x.shape], "dtype": str(x.dtype)}


def _write_program(output: str, platform: str, name: str, exported) -> dict[str, Any]:
  """Writes one artefact; its entry in serving.json: file, the positional inputs after
  the weights and the outputs, each a shape and dtype (dicts keep their keys)."""
  path = os.path.join(output, program_file(platform, name))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(exported.serialize())
  specs = lambda tree, avals: jax.tree_util.tree_unflatten(  # noqa: E731
      tree, [_shape_spec(a) for a in avals])
  args, _ = specs(exported.in_tree, exported.in_avals)
  return {"file": program_file(platform, name), "inputs": ["weights", *args[1:]],
          "outputs": specs(exported.out_tree, exported.out_avals)}


def export_model(model: Spt, variables: dict[str, Any], output: str, *,
                 platforms: Sequence[str] = ("cpu",), batch_sizes: Sequence[int] = (1,),
                 prompt_kinds: Sequence[str] = ("box",),
                 prompt_buckets: Sequence[int] = (1, 8),
                 metadata: dict[str, Any] | None = None) -> dict[str, Any]:
  """Writes the serving export of `model` with `variables` to `output` (module
  docstring); returns the serving.json document."""
  unknown = sorted(set(platforms) - set(PLATFORMS))
  if unknown or not platforms:
    raise SptUserError(f"platforms {list(platforms)}: expected some of {list(PLATFORMS)}")
  if not batch_sizes or min(batch_sizes) < 1 or not prompt_buckets or min(prompt_buckets) < 1:
    raise SptUserError(f"batch sizes {list(batch_sizes)} and prompt buckets "
                       f"{list(prompt_buckets)}: expected counts >= 1")
  kinds = [PromptKind.parse(kind) for kind in prompt_kinds]
  if os.path.exists(os.path.join(output, SERVING_FILE)):
    raise SptUserError(f"{output} already holds a serving export; choose a new output "
                       "directory or delete it")
  leaves, treedef = jax.tree_util.tree_flatten(variables)
  weights = [jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype) for x in leaves]
  unflatten = lambda flat: jax.tree_util.tree_unflatten(treedef, flat)  # noqa: E731
  spec = model.spec
  size, low_res = spec.image_size, spec.low_res_size
  grid = size // spec.encoder.patch_size
  height, width = jax_export.symbolic_shape("H, W")

  def embed(flat, images, input_sizes):
    return programs.embed(model, unflatten(flat), images, input_sizes)

  def decode(flat, embeddings, prompts, rows, cols):
    outputs = programs.decode(model, unflatten(flat), embeddings, Prompts(**prompts),
                              rows, cols)
    return {"masks": outputs["logits"] > 0, "scores": jax.nn.sigmoid(outputs["logits"]),
            "iou": outputs["iou"], "low_res_logits": outputs["low_res_logits"]}

  os.makedirs(output, exist_ok=True)
  listed = {}
  for platform in platforms:
    exporter = lambda fn: jax_export.export(  # noqa: E731
        jax.jit(fn), platforms=(platform,), disabled_checks=[_TRITON])
    for batch in sorted(set(batch_sizes)):
      print(f"exporting {platform} programs, batch {batch}", flush=True)
      exported = exporter(embed)(
          weights, jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8),
          jax.ShapeDtypeStruct((batch, 2), jnp.int32))
      listed[f"{platform}/{embed_name(batch)}"] = _write_program(
          output, platform, embed_name(batch), exported)
      embeddings = jax.ShapeDtypeStruct((batch, grid, grid, spec.prompt_embed_dim),
                                        jnp.float32)
      for kind in kinds:
        for prompts in sorted(set(prompt_buckets)):
          exported = exporter(decode)(
              weights, embeddings, kind.input_shapes(batch, prompts),
              jax.ShapeDtypeStruct((batch, height, low_res), jnp.float32),
              jax.ShapeDtypeStruct((batch, width, low_res), jnp.float32))
          name = decode_name(kind, batch, prompts)
          listed[f"{platform}/{name}"] = _write_program(output, platform, name, exported)
  np.savez(os.path.join(output, WEIGHTS_FILE),
           **{f"w{i:05d}": np.asarray(x) for i, x in enumerate(leaves)})
  document = {
      "format": FORMAT, "jax_version": jax.__version__,
      "model": {"sam": spec.to_dict(), "sdt_steps": model.sdt_steps,
                "dtype": str(jnp.dtype(model.dtype)), **(metadata or {})},
      "image_size": size, "low_res_size": low_res,
      "embedding_shape": [grid, grid, spec.prompt_embed_dim],
      "preprocess": ("resize the longer side to image_size (PIL bilinear, Meta's "
                     "rounding), pad bottom/right with zeros to image_size^2; uint8 RGB; "
                     "the programs normalise"),
      "postprocess": ("rows/cols: spt_jax.transforms.postprocess_matrix('sam', ...); "
                      "masks where logits > 0"),
      "platforms": list(platforms), "batch_sizes": sorted(set(batch_sizes)),
      "prompt_kinds": [kind.name for kind in kinds],
      "prompt_buckets": sorted(set(prompt_buckets)), "weights": WEIGHTS_FILE,
      "programs": listed}
  with open(os.path.join(output, SERVING_FILE), "w") as f:
    json.dump(document, f, indent=2)
  print(f"wrote {output} ({len(listed)} programs)", flush=True)
  return document


def _counts(text: str) -> list[int]:
  try:
    return [int(x) for x in text.split(",")]
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated counts") from None


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m spt_jax.export",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True,
                      help="training workdir, step folder, converted model or 'embedded'")
  parser.add_argument("--output", required=True)
  parser.add_argument("--platforms", default="cpu", type=lambda s: s.split(","))
  parser.add_argument("--batch-sizes", default=[1], type=_counts)
  parser.add_argument("--prompts", default=["box"], type=lambda s: s.split(","),
                      help="prompt kinds: box, points<K>, box+points<K>")
  parser.add_argument("--prompt-buckets", default=[1, 8], type=_counts)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--model-directory", action="store_true",
                      help="write a self-contained model directory instead")
  return parser.parse_args(argv)


def main(argv: Sequence[str]) -> int:
  args = parse_args(argv)

  def run():
    pretrained = load_pretrained(args.model)
    if args.model_directory:
      save_pretrained(args.output, pretrained.spec, pretrained.variables,
                      pretrained.adapters, metadata={"source": args.model,
                                                     **pretrained.metadata})
      print(f"wrote {args.output}", flush=True)
      return
    model, variables = servable_model(pretrained, jnp.dtype(args.dtype))
    export_model(model, variables, args.output, platforms=args.platforms,
                 batch_sizes=args.batch_sizes, prompt_kinds=args.prompts,
                 prompt_buckets=args.prompt_buckets,
                 metadata={"source": args.model})

  return exit_code(run)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
