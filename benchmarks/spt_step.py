r"""SPT on ViT-B at 1024: forward, train step, and the PyTorch reference, on this
machine's CPU or on an attached GPU.

    python -m benchmarks.spt_step [--model vit_b] [--runs 2] [--prompts 1] \
        [--host-malloc keep|system|auto] [--attention auto,chunked] [--remat none] \
        [--dtype float32] [--prompt-chunk 0] [--cpu-scheduler auto,default] \
        [--cpu-reductions xla,ynn]

Measures, after a warm-up, the minimum of several runs of
  - the spt_jax SPT forward (encoder + draft + refine) and its train step (forward,
    backward through the encoder's LoRA, AdamW update of the adapters only), once per
    global attention in `--attention` (`model.global_attention_impl`: 'auto', the
    fused kernels; 'chunked', the former core; 'reference', the materialised scores);
  - an independent PyTorch SPT (Meta's modules + LoRA + VRA + SDT, tests/spt_reference)
    forward on the same weights and input, float32, on the same device (a CUDA GPU
    where JAX runs on one and PyTorch sees it);
and prints step/forward (goal <= 2.5), torch/jax forward (goal >= 1.5), the compiled
temp memory of both JAX programs and the process's peak RSS (on a GPU also the
device's peak memory in use). `--attention`, `--remat` (`model.remat`), `--dtype`
(`model.dtype`), `--prompt-chunk` (`model.prompt_chunk`), `--cpu-scheduler`
(XLA:CPU's instruction scheduler, `model.cpu_scheduler`: 'auto' is the memory-optimised
one for the train step, XLA's default for the forward) and `--cpu-reductions` ('xla':
XLA:CPU's own loops, 'ynn': YNNPACK's fusions, jaxlib's default; 'auto': XLA's for a
train step without remat, as spt_jax compiles; all `spt_jax.parallel.cpu_compiler`,
ignored on a GPU) take comma lists; every combination is one row, all measured in
this one process.
"""

import itertools
import resource

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import (min_time, reference_benchmark_parser, start_reference_benchmark,
                               timed)
from spt_jax.data.prompts import PromptConfig
from spt_jax.parallel import cpu_compiler
from spt_jax.models.config import sam_preset
from spt_jax.models.prompts import Prompts
from spt_jax.models.sam import init_variables
from spt_jax.spt.losses import LossSpec
from spt_jax.spt.model import Spt
from spt_jax.train import step as step_lib
from spt_jax.train.optimizer import OptimizerSpec, make_optimizer
from spt_jax.train.trainable import SPT_TRAINABLE, partition
from weights_conversion.mapping import expected_shapes, state_dict_to_variables
from weights_conversion.spt_layout import SPT_LAYOUT


def _mib(num_bytes):
  return num_bytes / 2 ** 20


def _cpu_options(on_gpu, scheduler, reductions, training, remat, attention):
  """XLA's compiler options of a train step (`training`) or forward; None on a GPU.
  'auto' reductions are spt_jax's choice for the program (`reductions_for`)."""
  if on_gpu:
    return None
  if reductions == "auto":
    reductions = cpu_compiler.reductions_for(training, remat, attention == "chunked")
  return cpu_compiler.compiler_options(cpu_compiler.resolve(scheduler, training), reductions)


def main():
  parser = reference_benchmark_parser(__doc__, runs=2)
  parser.add_argument("--prompts", type=int, default=1, help="box prompts on the image")
  parser.add_argument("--remat", default="none",
                      help="model.remat: none, blocks, ...; comma list")
  parser.add_argument("--attention", default="auto,chunked",
                      help="the encoder's global attention implementations, comma list")
  parser.add_argument("--dtype", default="float32",
                      help="model.dtype: float32, bfloat16; comma list")
  parser.add_argument("--prompt-chunk", default="0",
                      help="model.prompt_chunk: 0 (all prompts at once) or prompts per "
                      "pass; comma list")
  parser.add_argument("--cpu-scheduler", default="auto",
                      help=f"XLA:CPU scheduler: {', '.join(cpu_compiler.CHOICES)}; "
                      "comma list")
  parser.add_argument("--cpu-reductions", default="auto",
                      help="XLA:CPU reductions by: auto (spt_jax's choice per program), "
                      f"{', '.join(cpu_compiler.REDUCTIONS)}; comma list")
  args, malloc_note, reference = start_reference_benchmark(parser)

  torch = reference.torch
  import spt_reference  # pylint: disable=g-import-not-at-top  (on the tests path now)
  spec = sam_preset(args.model)
  torch_model = spt_reference.random_torch_spt(spec, seed=0)
  state = spt_reference.authors_state_dict(torch_model)
  size = spec.image_size
  rng = np.random.default_rng(0)
  image = rng.standard_normal((1, size, size, 3)).astype(np.float32)
  boxes = np.tile(np.array([[200.0, 150.0, 700.0, 800.0]], np.float32), (args.prompts, 1))
  prompts = Prompts(boxes=jnp.asarray(boxes)[None])
  mask = np.zeros((1, size, size), np.float32)
  mask[0, 300:700, 250:650] = 1
  batch = {"image": (rng.uniform(0, 255, (1, size, size, 3))).astype(np.uint8),
           "input_size": np.array([[size, size]], np.int32), "mask": mask,
           "boxes": boxes[None], "prompt_valid": np.ones((1, args.prompts), bool),
           "prompt_regions": np.zeros((1, size, size), np.uint8)}
  prompt_config = PromptConfig(max_prompts=args.prompts, per_region=args.prompts > 1)

  on_gpu = jax.default_backend() == "gpu"
  device = "cuda" if on_gpu and torch.cuda.is_available() else "cpu"
  torch_model.to(device)
  image_torch = torch.from_numpy(image).permute(0, 3, 1, 2).contiguous().to(device)
  boxes_torch = torch.from_numpy(boxes).to(device)
  synchronize = torch.cuda.synchronize if device == "cuda" else lambda: None
  torch_time = min_time(lambda: (torch_model(image_torch, boxes=boxes_torch),
                                 synchronize()), args.runs)
  del torch_model, image_torch
  if device == "cuda":
    torch.cuda.empty_cache()

  print(f"{args.model}, {size}x{size}, {args.prompts} box prompt(s), "
        f"devices {jax.devices()}, torch on {device} ({torch.get_num_threads()} threads), "
        f"{malloc_note}")
  tf32 = f", TF32 products {torch.backends.cuda.matmul.allow_tf32}" if device == "cuda" else ""
  print(f"torch SPT forward (float32{tf32}): {torch_time:.3f} s; jax float32 products at "
        f"{jax.config.jax_default_matmul_precision or 'the default precision'}")
  print("| global attention | remat | dtype | prompt chunk | CPU scheduler | CPU reductions "
        "| jax forward s "
        "| temp MiB | "
        "train step s | temp MiB | step / forward (goal <= 2.5) | torch / jax forward "
        "(goal >= 1.5) | compile s |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  schedulers = ["-"] if on_gpu else args.cpu_scheduler.split(",")
  reductions = ["-"] if on_gpu else args.cpu_reductions.split(",")
  for attention, remat, dtype, chunk, scheduler, reduction in itertools.product(
      args.attention.split(","), args.remat.split(","), args.dtype.split(","),
      args.prompt_chunk.split(","), schedulers, reductions):
    model = Spt(spec, remat=remat, global_attention_impl=attention, dtype=dtype,
                prompt_chunk=int(chunk))
    variables = state_dict_to_variables(state, expected_shapes(model, init_variables),
                                        "torch SPT", SPT_LAYOUT)
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    forward = jax.jit(model.apply)
    forward_options, step_options = (
        _cpu_options(on_gpu, scheduler, reduction, training, remat, attention)
        for training in (False, True))
    compiled_forward, forward_compile = timed(lambda: forward.lower(
        variables, image, prompts).compile(forward_options))  # pylint: disable=cell-var-from-loop
    forward_time = min_time(lambda: jax.block_until_ready(compiled_forward(
        variables, image, prompts)), args.runs)  # pylint: disable=cell-var-from-loop
    trainable, frozen = partition(variables, SPT_TRAINABLE)
    optimizer = make_optimizer(OptimizerSpec())
    train_state = step_lib.init_train_state(trainable, optimizer, jax.random.PRNGKey(0))
    train_step = jax.jit(step_lib.make_train_step(model, optimizer, LossSpec(),
                                                  prompt_config))
    compiled_step, step_compile = timed(lambda: train_step.lower(
        train_state, frozen, batch).compile(step_options))  # pylint: disable=cell-var-from-loop
    step_time = min_time(lambda: jax.block_until_ready(compiled_step(
        train_state, frozen, batch)), args.runs)  # pylint: disable=cell-var-from-loop
    forward_temp = compiled_forward.memory_analysis().temp_size_in_bytes
    step_temp = compiled_step.memory_analysis().temp_size_in_bytes
    print(f"| {attention} | {remat} | {dtype} | {chunk} | {scheduler} | {reduction} "
          f"| {forward_time:.3f} "
          f"| {_mib(forward_temp):,.0f} | {step_time:.3f} | {_mib(step_temp):,.0f} | "
          f"{step_time / forward_time:.2f} | {torch_time / forward_time:.2f} | "
          f"{forward_compile:.0f} + {step_compile:.0f} |", flush=True)

  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
  print(f"peak RSS of this process (both frameworks, both models): {peak_rss:.1f} GiB")
  if on_gpu:
    stats = jax.devices()[0].memory_stats() or {}
    print(f"JAX's peak GPU memory in use: {_mib(stats.get('peak_bytes_in_use', 0)):,.0f} MiB")


if __name__ == "__main__":
  main()
