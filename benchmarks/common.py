"""Helpers shared by the benchmarks: timing, Meta's reference code, converted weights."""

import argparse
import dataclasses
import os
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from spt_jax import host_memory
from spt_jax.models.sam import Sam, init_variables
from weights_conversion.mapping import expected_shapes, state_dict_to_variables

_TESTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")


def import_meta_reference():
  """The tests' `meta_reference` module (Meta's segment_anything with the shim)."""
  if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)
  import meta_reference  # pylint: disable=g-import-not-at-top
  return meta_reference


def reference_benchmark_parser(doc: str, runs: int) -> argparse.ArgumentParser:
  """A parser with the flags every benchmark against Meta's reference takes.

  --model, --runs and --host-malloc: the process's malloc policy, shared by both
  frameworks measured.
  """
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("--model", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
  parser.add_argument("--runs", type=int, default=runs)
  parser.add_argument(
      "--host-malloc", default="keep", choices=host_memory.POLICIES,
      help="'keep' (as spt_jax's jobs run on a CPU: freed memory stays in the process), "
           "'system' (the C library's defaults) or 'auto' (the jobs' rule); applies to "
           "PyTorch and JAX alike")
  return parser


def start_reference_benchmark(parser: argparse.ArgumentParser):
  """Parses the flags, applies --host-malloc before any framework allocates, imports Meta's
  reference code. Returns (args, a line on the malloc policy for the header, the
  tests' `meta_reference` module)."""
  args = parser.parse_args()
  policy = host_memory.resolve_policy(args.host_malloc)
  applied = host_memory.keep_freed_memory(policy)
  malloc_note = f"host malloc {policy}" + ("" if applied or policy == "system"
                                           else " (not applicable here)")
  return args, malloc_note, import_meta_reference()


def meta_sam_with_variables(reference, spec):
  """Meta's SAM of `spec` (random init) and the same weights as our Sam's variables."""
  meta_model = reference.build_meta_sam(spec)
  state = {k: v.numpy() for k, v in meta_model.state_dict().items()}
  variables = state_dict_to_variables(state, expected_shapes(Sam(spec), init_variables),
                                      "meta model")
  return meta_model, jax.tree_util.tree_map(jnp.asarray, variables)


@dataclasses.dataclass(frozen=True)
class EncoderComparison:
  """Meta's and our image encoder on the same image: times (s) and embedding difference."""
  torch_seconds: float
  jax_seconds: float
  compile_seconds: float
  max_abs_diff: float


def compare_encoders(reference, meta_model, model: Sam, variables,
                     runs: int) -> EncoderComparison:
  """Both encoders on one random image: the first call of each is the warm-up whose
  embeddings are compared, then the minimum of `runs` calls."""
  size = model.spec.image_size
  image = np.random.default_rng(0).standard_normal((1, size, size, 3)).astype(np.float32)
  image_torch = reference.torch.from_numpy(image).permute(0, 3, 1, 2).contiguous()
  with reference.torch.no_grad():
    torch_embedding = meta_model.image_encoder(image_torch)
    torch_seconds = min_time(lambda: meta_model.image_encoder(image_torch), runs, warmup=0)
  embed = jax.jit(lambda v, x: model.apply(v, x, method=Sam.embed_images))
  compiled, compile_seconds = timed(lambda: embed.lower(variables, image).compile())
  jax_embedding = compiled(variables, image).block_until_ready()
  jax_seconds = min_time(lambda: compiled(variables, image).block_until_ready(), runs,
                         warmup=0)
  diff = np.abs(np.asarray(jax_embedding) - torch_embedding.permute(0, 2, 3, 1).numpy())
  return EncoderComparison(torch_seconds, jax_seconds, compile_seconds, float(diff.max()))


def min_time(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
  """Minimum wall time of `fn()` over `runs` calls after `warmup` calls (seconds)."""
  for _ in range(warmup):
    fn()
  best = float("inf")
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def interleaved_min_times(calls: dict, runs: int) -> dict:
  """Minimum seconds of each zero-argument call (its result waited for), the calls'
  runs interleaved round-robin, which spreads a shared machine's noise over all."""
  best = {name: float("inf") for name in calls}
  for _ in range(runs):
    for name, call in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(call())
      best[name] = min(best[name], time.perf_counter() - start)
  return best


def timed(fn: Callable[[], object]) -> tuple[object, float]:
  """(fn(), seconds)."""
  start = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - start
