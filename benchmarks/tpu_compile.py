r"""What one TPU chip holds for the full-size SPT train step and evaluation, compiled here.

    python -m benchmarks.tpu_compile --model vit_b --topology v5e:2x4 --mesh 2x2x2 \
        [--images 8] [--prompts 8] [--dtype float32] [--remat none] \
        [--programs train,eval] [--attention auto] [--prompt-chunk 0] \
        [--traffic-sources 0]

Compiles with the real TPU compiler (libtpu, compile-only devices of the slice: see
spt_jax/aot.py; nothing is allocated) the programs the main job runs on that slice,
built by the project's own code: the sharded train step (the paper's point-sampled
loss, AdamW, SPT's trainable rules) for a global batch of `--images` 1024 px images
with `--prompts` per-region box prompts each, and the evaluator's per-batch forward
(`--images` images, one box each, metrics at a 1024 px canvas). `--attention` is
the encoder's global attention (`model.global_attention_impl`: 'auto', the fused
kernels, or 'chunked', the former core), `--remat` what the backward keeps of each
encoder block (`model.remat`), `--prompt-chunk` the decoders' prompts per
rematerialised pass (`model.prompt_chunk`, 0: all at once). `--model`, `--mesh`,
`--dtype`, `--attention`, `--remat` and `--prompt-chunk` take comma-separated lists;
every combination is one row.

Per chip, from `compiled.memory_analysis()`: arguments (this chip's shards of the
frozen base, the train state and the batch), temp (XLA's temporaries), peak
(arguments + temp + outputs not aliased to donated arguments) against the chip's HBM;
the fused kernel calls in the compiled program (Mosaic), its collectives by kind, and
the compile time on this host; its HBM traffic per chip with every loop counted by its
trip count (`aot.hbm_traffic`: each top-level instruction's operands and result in
HBM, an estimate), and that traffic's time at the HBM bandwidth of a v5e chip and of an
H100 (the memory side of a roofline: both programs are memory-bound, README).
`--traffic-sources N` lists after each row the N places in the model that move the
most of that traffic (`aot.hbm_traffic_by_source`); `--hlo-dir DIR` writes each
compiled program's optimised HLO text there, to count or read again without compiling;
`--xla-dump-dir DIR` has the TPU compiler dump its passes and buffer assignment there
(the `*memory-usage-report.txt` files list the buffers that make up the temp).
"""

import argparse
import itertools
import math
import os
import time

import jax
import jax.numpy as jnp

from spt_jax import aot
from spt_jax import config as config_lib
from spt_jax import parallel
from spt_jax.data.pipeline import DataConfig, batch_spec
from spt_jax.data.prompts import PromptConfig
from spt_jax.evaluate.evaluator import Evaluator
from spt_jax.models.config import sam_preset
from spt_jax.models.sam import init_variables
from spt_jax.spt.losses import LossSpec
from spt_jax.spt.model import Spt
from spt_jax.train.optimizer import OptimizerSpec, make_optimizer
from spt_jax.train.sharded_step import sharded_train_step
from spt_jax.train.trainable import SPT_TRAINABLE

GIB = 2 ** 30
HBM_BANDWIDTH = {"v5e": 819e9, "H100": 3.35e12}  # bytes/s, the vendors' figures
ABBREVIATIONS = {"all-reduce": "AR", "all-gather": "AG", "reduce-scatter": "RS",
                 "all-to-all": "A2A", "collective-permute": "CP"}


def compile_program(program: str, model_name: str, dtype: str, attention: str, remat: str,
                    prompt_chunk: int, mesh_shape, devices, args):
  """(figures, compile seconds, the compiled program's optimised HLO text) of one
  program of `model_name` on the mesh."""
  model = Spt(sam_preset(model_name), dtype=jnp.dtype(dtype), remat=remat,
              global_attention_impl=attention, relation_impl="auto",
              prompt_chunk=prompt_chunk)
  variables = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0)))
  spec = parallel.MeshSpec(shape=mesh_shape)
  start = time.perf_counter()
  if program == "train":
    prompt = PromptConfig(per_region=True, max_prompts=args.prompts)
    step = sharded_train_step(model, variables, SPT_TRAINABLE,
                              make_optimizer(OptimizerSpec()), LossSpec(), prompt,
                              parallel.make_mesh(spec, devices), spec.rules)
    batch = batch_spec(DataConfig(image_size=model.spec.image_size,
                                  batch_size=args.images, prompt=prompt))
    lowered = step.step.lower(*step.abstract_inputs(variables, batch))
  else:
    config = config_lib.base_config()
    config.data.eval.batch_size = args.images
    config.data.eval.original_canvas = model.spec.image_size
    forward, inputs = Evaluator(config, model, "", spec,
                                parallel.make_mesh(spec, devices)).program(variables)
    lowered = forward.lower(*inputs)
  options = {"xla_dump_to": args.xla_dump_dir} if args.xla_dump_dir else None
  compiled = lowered.compile(options)
  return aot.figures(compiled), time.perf_counter() - start, compiled.as_text()


def print_traffic_sources(text: str, count: int):
  sources, _ = aot.hbm_traffic_by_source(text)
  total = sum(sources.values())
  for source, size in sources.most_common(count):
    print(f"|   | {size / 1e9:.2f} GB ({size / total:.0%}) | {source} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default="vit_b", help="vit_b, vit_l, vit_h; comma list")
  parser.add_argument("--topology", default="v5e:2x4",
                      help="TPU slice, e.g. v5e:2x4 (8 chips), v5p:2x2x2, v4:2x2x1")
  parser.add_argument("--mesh", default="8x1x1",
                      help="data x fsdp x model, e.g. 2x2x2; comma list")
  parser.add_argument("--images", type=int, default=8, help="global batch")
  parser.add_argument("--prompts", type=int, default=8, help="per image, training")
  parser.add_argument("--dtype", default="float32", help="float32, bfloat16; comma list")
  parser.add_argument("--remat", default="none",
                      help="none, blocks, dots_with_no_batch_dims_saveable, ...; comma list")
  parser.add_argument("--prompt-chunk", default="0",
                      help="model.prompt_chunk: prompts per decoder pass; comma list")
  parser.add_argument("--programs", default="train,eval")
  parser.add_argument("--attention", default="auto",
                      help="global attention: auto (fused), chunked; comma list")
  parser.add_argument("--traffic-sources", type=int, default=0,
                      help="after each row, the N sources of the most HBM traffic")
  parser.add_argument("--hlo-dir", default="",
                      help="write each compiled program's optimised HLO text here")
  parser.add_argument("--xla-dump-dir", default="",
                      help="XLA's dumps of every compile here (HLO passes, buffer "
                      "assignment, memory-usage report: what is live at the peak)")
  args = parser.parse_args()
  jax.config.update("jax_platforms", "cpu")  # this host's own backend; TPU: compile only
  all_devices = aot.tpu_devices(args.topology)
  hbm = aot.device_hbm_bytes(all_devices[0])
  print(f"{args.topology}: {len(all_devices)} {all_devices[0].device_kind} devices, "
        f"{hbm / GIB:.1f} GiB HBM each; global batch {args.images} images at 1024 px, "
        f"{args.prompts} box prompts each in training (1 in eval); GiB per chip, compiled "
        "by libtpu")
  header = ("| model | program | dtype | attention | remat | prompt chunk | mesh d x f x m | "
            "args | temp | "
            "peak | fits | Mosaic calls | collectives | HBM GB | ms at v5e / H100 HBM | "
            "compile s |")
  print(header)
  print("|" + "---|" * (header.count("|") - 1))
  meshes = [tuple(int(s) for s in m.split("x")) for m in args.mesh.split(",")]
  print("(HBM GB*: a loop of unknown trip count counted once)")
  for model_name in args.model.split(","):
    for program in args.programs.split(","):
      for dtype, attention, remat, chunk, mesh_shape in itertools.product(
          args.dtype.split(","), args.attention.split(","), args.remat.split(","),
          [int(c) for c in args.prompt_chunk.split(",")], meshes):
        figures, seconds, text = compile_program(
            program, model_name, dtype, attention, remat, chunk, mesh_shape,
            all_devices[:math.prod(mesh_shape)], args)
        gib = lambda n: f"{n / GIB:.2f}"
        collectives = ", ".join(f"{ABBREVIATIONS[k]} {v}"
                                for k, v in figures.collectives.items()) or "none"
        print(f"| {model_name} | {program} | {dtype} | {attention} | {remat} | {chunk} | "
              f"{'x'.join(map(str, mesh_shape))} | {gib(figures.arguments)} | "
              f"{gib(figures.temp)} | {gib(figures.peak)} | "
              f"{'yes' if figures.peak <= hbm else 'NO'} | {figures.mosaic_calls} | "
              f"{collectives} | {figures.hbm_bytes / 1e9:.1f}"
              f"{'*' if figures.unknown_trip_loops else ''} | "
              f"{' / '.join(f'{figures.hbm_bytes / bw * 1e3:.0f}' for bw in HBM_BANDWIDTH.values())}"
              f" | {seconds:.0f} |", flush=True)
        if args.traffic_sources:
          print_traffic_sources(text, args.traffic_sources)
        if args.hlo_dir:
          os.makedirs(args.hlo_dir, exist_ok=True)
          name = (f"{model_name}-{program}-{dtype}-{attention}-{remat}-chunk{chunk}-"
                  f"{'x'.join(map(str, mesh_shape))}.hlo")
          with open(os.path.join(args.hlo_dir, name), "w") as f:
            f.write(text)


if __name__ == "__main__":
  main()
