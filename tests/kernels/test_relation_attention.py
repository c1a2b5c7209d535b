"""Relation attention: every implementation against the materialised reference.

The Pallas kernels run in interpret mode on CPU: the same kernel code that runs
on TPU / GPU, executed by XLA (beside an attached GPU the Triton kernels run
compiled on it: tests/attached_gpu.py). Forward outputs and both gradients (w.r.t. e and
v, for a random cotangent) are compared with autodiff of the reference.

Tolerance: max |x - ref| <= tol * max |ref| per tensor, tol 2e-5 for float32
and 3e-2 for bfloat16 (the kernels feed the matrix unit bfloat16 operands:
normalised E, weights, score gradients; outputs are rounded to bfloat16).

Inputs for alpha > 0 are clustered embeddings (plus 5% outliers) whose weights
are bimodal, so that no weight lies near the threshold alpha / N: a weight
within rounding of it would flip the mask between implementations. Every case
checks that margin, and the outliers give rows that keep nothing.
"""

import dataclasses
import functools
import itertools

import jax
from jax.experimental.pallas import tpu as pltpu
import jax.numpy as jnp
import numpy as np
import pytest

from attached_gpu import PALLAS_GPU_OPTIONS
from jaxpr_sizes import largest_intermediate
from kernel_tolerances import TOLERANCE, assert_close
from spt_jax.errors import SptUserError
from spt_jax.kernels import IMPLS
from spt_jax.kernels import relation_attention
from spt_jax.kernels import relation_attention_reference
from spt_jax.kernels import relation_attention_shared
from spt_jax.kernels import relation_pallas_tpu
from spt_jax.kernels import relation_reference

C = 256
ALPHA = 1.55  # Between the two modes of the clustered inputs' weights (x N).
FUSED = {
    "xla": {},
    "pallas_tpu": {"interpret": True},
    "pallas_gpu": PALLAS_GPU_OPTIONS,
}


@dataclasses.dataclass(frozen=True)
class Case:
  n: int
  d: int
  alpha: float
  dtype: str
  batch: int = 1

  def __str__(self):
    return f"n{self.n}-d{self.d}-a{self.alpha}-{self.dtype}-b{self.batch}"


DEFAULT_CASES = (
    Case(4096, 256, 0.0, "float32"),
    Case(1100, 1024, ALPHA, "float32", batch=2),
    Case(4000, 256, ALPHA, "bfloat16"),
)
SLOW_CASES = tuple(
    Case(n, d, alpha, dtype)
    for n, d, alpha, dtype in itertools.product(
        (4096, 4000), (256, 1024), (0.0, ALPHA), ("float32", "bfloat16"))
    if Case(n, d, alpha, dtype) not in DEFAULT_CASES)


def _clustered_inputs(case, seed=0):
  """e (B, N, C), v and a cotangent (B, N, D), in case.dtype."""
  keys = jax.random.split(jax.random.key(seed), 7)
  shape = (case.batch, case.n)
  centers = jax.random.normal(keys[0], (16, C))
  e = centers[jax.random.randint(keys[1], shape, 0, 16)]
  e += 0.5 * jax.random.normal(keys[2], (*shape, C))
  outlier = jax.random.uniform(keys[3], (*shape, 1)) < 0.05
  e = jnp.where(outlier, jax.random.normal(keys[4], (*shape, C)), e)
  v = jax.random.normal(keys[5], (*shape, case.d))
  d_out = jax.random.normal(keys[6], (*shape, case.d))
  return tuple(x.astype(case.dtype) for x in (e, v, d_out))


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grads(fn, e, v, d_out):
  """fn(e, v) and its vjp for cotangent d_out: (out, de, dv)."""
  out, vjp = jax.vjp(fn, e, v)
  return (out, *vjp(d_out))


@functools.lru_cache(maxsize=4)
def _reference(case):
  """Inputs and the reference's (out, de, dv), as numpy, for one case."""
  e, v, d_out = _clustered_inputs(case)
  if case.alpha:
    weights = np.asarray(
        relation_reference.relation_weights_reference(e, alpha=0.0))
    margin = np.min(np.abs(weights * case.n - case.alpha)) / case.alpha
    assert margin > 0.05, f"test inputs too close to the threshold: {margin}"
  fn = functools.partial(relation_attention_reference, alpha=case.alpha)
  results = _value_and_grads(fn, e, v, d_out)
  return (e, v, d_out), tuple(np.asarray(x, np.float32) for x in results)


def _check_against_reference(impl, case):
  (e, v, d_out), want = _reference(case)
  fn = functools.partial(relation_attention, alpha=case.alpha, impl=impl,
                         **FUSED[impl])
  got = _value_and_grads(fn, e, v, d_out)
  assert got[0].dtype == v.dtype and got[0].shape == v.shape
  for name, g, w in zip(("out", "de", "dv"), got, want):
    assert_close(f"{impl} {case} {name}", g, w, TOLERANCE[case.dtype])


@pytest.mark.parametrize("case", DEFAULT_CASES, ids=str)
@pytest.mark.parametrize("impl", FUSED)
def test_matches_reference(impl, case):
  _check_against_reference(impl, case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids=str)
@pytest.mark.parametrize("impl", FUSED)
def test_matches_reference_all_sizes(impl, case):
  _check_against_reference(impl, case)


@pytest.mark.parametrize("impl", FUSED)
def test_edge_cases(impl):
  """A zero row of E, odd C and D, batch 3; N = 1 (only the excluded diagonal)."""
  fused = functools.partial(relation_attention, impl=impl, **FUSED[impl])
  keys = jax.random.split(jax.random.key(1), 2)
  e = jax.random.normal(keys[0], (3, 37, 40)).at[:, 5].set(0.0)
  v = jax.random.normal(keys[1], (3, 37, 24))
  for alpha, n in ((0.0, 37), (0.5, 37), (0.5, 1)):
    args = (e[:, :n], v[:, :n], jnp.ones_like(v[:, :n]))
    got = _value_and_grads(functools.partial(fused, alpha=alpha), *args)
    want = _value_and_grads(functools.partial(
        relation_attention_reference, alpha=alpha), *args)
    for name, g, w in zip(("out", "de", "dv"), got, want):
      assert_close(f"{impl} n{n} {name}", g, np.asarray(w),
                    TOLERANCE["float32"])
  np.testing.assert_allclose(got[0], v[:, :1], rtol=1e-6)


def test_pallas_tpu_interpret_params():
  """The TPU kernels under the TPU-faithful interpreter (small, alpha > 0)."""
  case = Case(200, 128, ALPHA, "float32")
  e, v, d_out = _clustered_inputs(case)
  fn = functools.partial(relation_attention, alpha=case.alpha,
                         impl="pallas_tpu", block_q=128, block_k=128,
                         interpret=pltpu.InterpretParams())
  got = _value_and_grads(fn, e, v, d_out)
  want = _value_and_grads(
      functools.partial(relation_attention_reference, alpha=case.alpha),
      e, v, d_out)
  for name, g, w in zip(("out", "de", "dv"), got, want):
    assert_close(f"tpu-interpreter {name}", g, np.asarray(w),
                  TOLERANCE["float32"])


@pytest.mark.parametrize("platform", ("tpu", "cuda"))
def test_kernels_lower_for_accelerators(platform):
  """Forward and backward lower to Mosaic / Triton (cross-platform, on CPU).

  This runs each backend's Pallas lowering (shapes, ops, block specs); the
  accelerator's own compiler does not run here.
  """
  impl = {"tpu": "pallas_tpu", "cuda": "pallas_gpu"}[platform]
  for alpha, dtype in itertools.product((0.0, ALPHA), ("float32", "bfloat16")):
    e = jax.ShapeDtypeStruct((1, 1000, C), dtype)
    v = jax.ShapeDtypeStruct((1, 1000, 512), dtype)
    fn = jax.jit(jax.grad(
        lambda e, v, alpha=alpha: jnp.sum(relation_attention(
            e, v, alpha=alpha, impl=impl).astype(jnp.float32)),
        argnums=(0, 1)))
    hlo = fn.trace(e, v).lower(lowering_platforms=(platform,)).as_text()
    assert hlo.count("tpu_custom_call" if platform == "tpu" else "triton") >= 3


@pytest.mark.parametrize("impl", FUSED)
def test_no_n_by_n_intermediate(impl):
  n, d = 2048, 256
  e = jax.ShapeDtypeStruct((1, n, C), jnp.float32)
  v = jax.ShapeDtypeStruct((1, n, d), jnp.float32)
  loss = lambda e, v: jnp.sum(relation_attention(
      e, v, alpha=ALPHA, impl=impl, **FUSED[impl]))
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(e, v).jaxpr
  assert largest_intermediate(jaxpr) <= n * 256
  ref = jax.make_jaxpr(jax.grad(lambda e, v: jnp.sum(
      relation_attention_reference(e, v)), argnums=(0, 1)))(e, v).jaxpr
  assert largest_intermediate(ref) >= n * n


def test_xla_path_memory():
  """Compiled temp memory at N = 4096: the fused forward stays under 8 MiB."""
  e = jax.ShapeDtypeStruct((1, 4096, C), jnp.float32)
  v = jax.ShapeDtypeStruct((1, 4096, 256), jnp.float32)
  temp = lambda impl: jax.jit(functools.partial(
      relation_attention, impl=impl)).lower(e, v).compile().memory_analysis(
          ).temp_size_in_bytes
  assert temp("xla") < 8 * 2**20
  assert temp("reference") >= 64 * 2**20


def test_shared_embedding_is_one_call():
  keys = jax.random.split(jax.random.key(2), 2)
  e = jax.random.normal(keys[0], (2, 96, 32))
  v = jax.random.normal(keys[1], (2, 3, 96, 16))
  for impl, alpha in (("xla", 0.0), ("pallas_gpu", ALPHA)):
    shared = functools.partial(relation_attention_shared, alpha=alpha,
                               impl=impl, **FUSED[impl])
    jaxpr = str(jax.make_jaxpr(shared)(e, v))
    assert jaxpr.count("custom_vjp_call") == 1
    got = _value_and_grads(shared, e, v, jnp.ones_like(v))
    per_prompt = lambda e, v: jnp.stack([
        jnp.concatenate([
            relation_attention_reference(e[b:b + 1], v[b, p:p + 1], alpha=alpha)
            for p in range(v.shape[1])]) for b in range(v.shape[0])])
    want = _value_and_grads(per_prompt, e, v, jnp.ones_like(v))
    for name, g, w in zip(("out", "de", "dv"), got, want):
      assert_close(f"shared {impl} {name}", g, np.asarray(w),
                    TOLERANCE["float32"])


@pytest.mark.parametrize("block_d", (None, 256, 128))
def test_pallas_tpu_feature_tiles(block_d):
  """D cut into feature tiles (the last one padded) equals the reference."""
  case = Case(300, 700, ALPHA, "float32", batch=2)
  (e, v, d_out), want = _reference(case)
  fn = functools.partial(relation_attention, alpha=case.alpha,
                         impl="pallas_tpu", interpret=True, block_q=128,
                         block_k=256, block_d=block_d)
  got = _value_and_grads(fn, e, v, d_out)
  for name, g, w in zip(("out", "de", "dv"), got, want):
    assert_close(f"block_d={block_d} {name}", g, w, TOLERANCE["float32"])


def test_pallas_tpu_blocks_fit_vmem():
  """Unset blocks come from the VMEM budget: D up to 16 prompts x 256 fits
  16 MiB with feature tiles, and large D is cut into tiles, not refused."""
  layout = relation_pallas_tpu._Layout.choose  # pylint: disable=protected-access
  for d, itemsize in itertools.product((256, 2048, 4096, 8192), (4, 2)):
    for backward in (False, True):
      lay = layout(4096, C, d, itemsize, backward=backward, block_q=None,
                   block_k=None, block_d=None, vmem_limit_bytes=16 * 2**20)
      estimate = relation_pallas_tpu._pass_vmem_bytes(  # pylint: disable=protected-access
          backward, lay.block_q, lay.block_k, lay.block_d, C, itemsize, lay.tiles > 1)
      assert estimate <= 0.8 * 16 * 2**20
      assert lay.d_pad >= d and lay.d_pad % lay.block_d == 0
  small = layout(4096, C, 256, 4, backward=True, block_q=None, block_k=None,
                 block_d=None, vmem_limit_bytes=16 * 2**20)
  assert (small.block_q, small.block_k, small.tiles) == (256, 256, 1)
  big = layout(4096, C, 4096, 4, backward=True, block_q=None, block_k=None,
               block_d=None, vmem_limit_bytes=16 * 2**20)
  assert big.tiles > 1


def test_auto_picks_by_lowering_platform():
  """One traced program: XLA's path on CPU, Mosaic on TPU, Triton on CUDA."""
  e, v = jnp.ones((1, 300, 32)), jnp.ones((1, 300, 64))
  grads = jax.jit(jax.grad(lambda e, v: jnp.sum(relation_attention(e, v)),
                           argnums=(0, 1)))
  traced = grads.trace(e, v)
  texts = {p: traced.lower(lowering_platforms=(p,)).as_text()
           for p in ("cpu", "tpu", "cuda")}
  mosaic, triton = "@tpu_custom_call", "@__gpu$xla.gpu.triton"
  assert mosaic not in texts["cpu"] and triton not in texts["cpu"]
  # Forward, then the backward's row and column kernels (and dV's on GPU).
  assert (texts["tpu"].count(mosaic), texts["tpu"].count(triton)) == (3, 0)
  assert (texts["cuda"].count(mosaic), texts["cuda"].count(triton)) == (0, 4)
  want = jax.jit(jax.grad(lambda e, v: jnp.sum(relation_attention(
      e, v, impl="xla")), argnums=(0, 1)))(e, v)
  for got, ref in zip(grads(e, v), want):
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("args, kwargs, match", [
    ((np.ones((8, 4)), np.ones((1, 8, 2))), {}, "e must have shape"),
    ((np.ones((1, 8, 4)), np.ones((1, 7, 2))), {}, "v must have shape"),
    ((np.ones((1, 0, 4)), np.ones((1, 0, 2))), {}, "at least one token"),
    ((np.ones((1, 8, 4), np.int32), np.ones((1, 8, 2))), {}, "floating"),
    ((np.ones((1, 8, 4)), np.ones((1, 8, 2))), {"impl": "cuda"},
     "impl must be one of"),
    ((np.ones((1, 8, 4)), np.ones((1, 8, 2))), {"alpha": -0.1}, "alpha"),
    ((np.ones((1, 8, 4)), np.ones((1, 8, 2))), {"impl": "xla", "blk": 8},
     "unknown option"),
    ((np.ones((1, 8, 4)), np.ones((1, 8, 2))),
     {"impl": "pallas_tpu", "interpret": True, "block_q": 100}, "block_q"),
    ((np.ones((1, 8, 4)), np.ones((1, 8, 2))),
     {"impl": "pallas_tpu", "interpret": True, "block_d": 64}, "block_d"),
    ((np.ones((1, 8, 4)), np.ones((1, 8, 2))), {"block_q": 128},
     "takes no options"),
])
def test_user_errors(args, kwargs, match):
  with pytest.raises(SptUserError, match=match):
    relation_attention(*args, **kwargs)


def test_shared_user_errors():
  with pytest.raises(SptUserError, match="relation_attention_shared: v"):
    relation_attention_shared(np.ones((1, 8, 4)), np.ones((1, 2, 7, 3)))
  with pytest.raises(SptUserError, match="relation_attention_shared: v"):
    relation_attention_shared(np.ones((2, 8, 4)), np.ones((1, 2, 8, 3)))
  with pytest.raises(SptUserError, match="relation_attention_shared: e"):
    relation_attention_shared(np.ones((8, 4)), np.ones((1, 2, 8, 3)))


def test_impl_names():
  assert IMPLS == ("auto", "reference", "xla", "pallas_tpu", "pallas_gpu")
