"""The fused global attention with decomposed rel-pos against the materialised reference.

Forward and every gradient (q, k, v and, through the rel-pos terms, both tables) of
each implementation are compared with autodiff of the reference on the same inputs:
max |x - ref| <= tol * max |ref| per tensor (2e-5 float32, 3e-2 bfloat16). Queries
are scaled up so that scores reach ~100: a missing or wrong max shift overflows.
The Pallas kernels run in interpret mode, beside an attached GPU the Triton ones
compiled on it (tests/attached_gpu.py).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attached_gpu import PALLAS_GPU_OPTIONS
from jaxpr_sizes import kernel_products, largest_intermediate
from kernel_tolerances import TOLERANCE, assert_close
from spt_jax.errors import SptUserError
from spt_jax.kernels import global_attention as ga

FUSED = {"xla": {}, "pallas_tpu": {"interpret": True}, "pallas_gpu": PALLAS_GPU_OPTIONS}


def _inputs(batch, heads, height, width, channels, dtype, seed=0):
  keys = jax.random.split(jax.random.key(seed), 6)
  grid = (batch, heads, height, width, channels)
  q = 3.0 * jax.random.normal(keys[0], grid)
  k, v = (jax.random.normal(key, grid) for key in keys[1:3])
  table_h = jax.random.normal(keys[3], (height, height, channels))
  table_w = jax.random.normal(keys[4], (width, width, channels))
  d_out = jax.random.normal(keys[5], (batch, heads, height * width, channels))
  return tuple(x.astype(dtype) for x in (q, k, v, table_h, table_w, d_out))


def _grid_attention(impl, options, q, k, v, table_h, table_w):
  rel_h, rel_w = ga.rel_pos_terms(q, table_h, table_w)
  flat = lambda x: x.reshape(x.shape[:2] + (-1, x.shape[-1]))
  return ga.global_attention(flat(q), flat(k), flat(v), rel_h, rel_w, impl=impl,
                             **options)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _value_and_grads(impl, options, q, k, v, table_h, table_w, d_out):
  fn = lambda *args: _grid_attention(impl, dict(options), *args)
  out, vjp = jax.vjp(fn, q, k, v, table_h, table_w)
  return (out, *vjp(d_out))


# (B, H, h, w, C, dtype, options of each impl): grids that do and do not fill whole
# blocks (96 and 256 tokens), blocks that do not divide them.
CASES = [
    ((2, 3, 8, 12, 16), "float32", {}),
    ((1, 2, 16, 16, 32), "float32", {"xla": {"block_q": 40, "block_q_bwd": 96},
                                     "pallas_tpu": {"block_q": 128, "block_k": 256},
                                     "pallas_gpu": {"block_q": 32, "block_k": 128}}),
    ((1, 2, 16, 16, 32), "bfloat16", {"xla": {"block_q": 64},
                                      "pallas_tpu": {"block_q": 256, "block_k": 128},
                                      "pallas_gpu": {"block_k": 32}}),
    ((1, 1, 6, 10, 20), "float32", {}),  # C, h, w padded to powers of two on GPU
    # Key blocks of one grid row each (pallas_gpu's bias without one-hot maps), with
    # query blocks that pad the tokens (pallas_gpu) or fill them.
    ((1, 2, 6, 16, 16), "float32", {"pallas_gpu": {"block_q": 64, "block_k": 16}}),
    ((1, 2, 8, 32, 16), "bfloat16", {"pallas_gpu": {"block_q": 64, "block_k": 32}}),
]


@pytest.mark.parametrize("shape, dtype, options", CASES, ids=str)
@pytest.mark.parametrize("impl", FUSED)
def test_matches_reference(impl, shape, dtype, options):
  *inputs, d_out = _inputs(*shape, dtype)
  want = _value_and_grads("reference", (), *inputs, d_out)
  options = {**FUSED[impl], **options.get(impl, {})}
  got = _value_and_grads(impl, tuple(sorted(options.items())), *inputs, d_out)
  assert got[0].dtype == jnp.dtype(dtype) and got[0].shape == want[0].shape
  for name, g, w in zip(("out", "dq", "dk", "dv", "d_table_h", "d_table_w"), got, want):
    assert_close(f"{impl} {shape} {dtype} {name}", g, w, TOLERANCE[dtype])


@pytest.mark.parametrize("impl", FUSED)
def test_no_n_by_n_intermediate(impl):
  """vit_b's global grid, one head: no value of N x N in the forward or backward."""
  n, channels = 64 * 64, 64
  spec = lambda last: jax.ShapeDtypeStruct((1, 1, n, last), jnp.float32)
  loss = lambda q, k, v, rel_h, rel_w: jnp.sum(ga.global_attention(
      q, k, v, rel_h, rel_w, impl=impl, **FUSED[impl]))
  args = (spec(channels), spec(channels), spec(channels), spec(64), spec(64))
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=range(5)))(*args).jaxpr
  assert largest_intermediate(jaxpr) <= n * 1024
  reference = jax.make_jaxpr(jax.grad(lambda *a: jnp.sum(ga.global_attention(
      *a, impl="reference")), argnums=range(5)))(*args).jaxpr
  assert largest_intermediate(reference) >= n * n


@pytest.mark.parametrize("block_k, products", [
    (64, [2, 3, 4]),  # flash attention's: q k^T, P V; + dO V^T, dS K; + dS^T Q, P^T dO
    (32, [4, 7, 6]),  # + the one-hot bias (two per pass) and its gradients (two)
])
def test_gpu_row_blocks_add_no_products(block_k, products):
  """vit_b's global grid (w = 64): key blocks of one grid row take the rel-pos bias
  and its gradients without the one-hot products (forward, query and key kernels)."""
  n, channels = 64 * 64, 64
  spec = lambda last: jax.ShapeDtypeStruct((1, 1, n, last), jnp.float32)
  loss = lambda *args: jnp.sum(ga.global_attention(
      *args, impl="pallas_gpu", block_k=block_k, interpret=True))
  args = (spec(channels), spec(channels), spec(channels), spec(64), spec(64))
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=range(5)))(*args).jaxpr
  assert kernel_products(jaxpr) == products


@pytest.mark.parametrize("options", [{}, {"impl": "pallas_gpu", "block_k": 32}], ids=str)
def test_lowers_the_triton_kernels_for_cuda(options):
  """vit_b's global grid, forward and backward lowered for CUDA (Pallas's Triton
  lowering; compiling needs a GPU): 'auto' picks the Triton kernels, with row blocks
  (block_k = w, the default) or the one-hot bias."""
  q, rel = jnp.ones((1, 2, 64 * 64, 64)), jnp.ones((1, 2, 64 * 64, 64))
  grads = jax.jit(jax.grad(lambda *args: jnp.sum(ga.global_attention(*args, **options)),
                           argnums=range(5)))
  text = grads.trace(q, q, q, rel, rel).lower(lowering_platforms=("cuda",)).as_text()
  assert text.count("@__gpu$xla.gpu.triton") == 3  # forward, query and key gradients


@pytest.mark.parametrize("kwargs, match", [
    (dict(impl="cuda"), "impl must be one of"),
    (dict(impl="auto", block_q=8), "takes no options"),
    (dict(impl="xla", blk=8), "unknown option"),
])
def test_user_errors(kwargs, match):
  q = np.ones((1, 2, 12, 4), np.float32)
  with pytest.raises(SptUserError, match=match):
    ga.global_attention(q, q, q, np.ones((1, 2, 12, 3)), np.ones((1, 2, 12, 4)), **kwargs)


@pytest.mark.parametrize("shapes, match", [
    (((1, 2, 12, 4), (1, 2, 12, 3), (1, 2, 12, 5)), "h \\* w = N"),
    (((1, 2, 12), (1, 2, 12, 3), (1, 2, 12, 4)), "q must have shape"),
])
def test_shape_errors(shapes, match):
  q_shape, h_shape, w_shape = shapes
  q = np.ones(q_shape, np.float32)
  with pytest.raises(SptUserError, match=match):
    ga.global_attention(q, q, q, np.ones(h_shape), np.ones(w_shape))


def _from_qkv_inputs(batch, heads, height, width, channels, seed=1):
  keys = jax.random.split(jax.random.key(seed), 4)
  qkv = jax.random.normal(keys[0], (batch, height, width, 3 * heads * channels))
  qkv = qkv * jnp.repeat(jnp.array([3.0, 1.0, 1.0]), heads * channels)  # q scaled up
  table_h = jax.random.normal(keys[1], (height, height, channels))
  table_w = jax.random.normal(keys[2], (width, width, channels))
  d_out = jax.random.normal(keys[3], (batch, height, width, heads * channels))
  return qkv, table_h, table_w, d_out


def _split_heads_attention(qkv, table_h, table_w, *, heads):
  """The encoder's former route: heads split, rel-pos terms, the reference, merged."""
  batch, height, width, _ = qkv.shape
  grid = qkv.reshape(batch, height, width, 3, heads, -1).transpose(3, 0, 4, 1, 2, 5)
  out = _grid_attention("reference", {}, grid[0], grid[1], grid[2], table_h, table_w)
  return out.reshape(grid.shape[1:]).transpose(0, 2, 3, 1, 4).reshape(
      batch, height, width, -1)


@pytest.mark.parametrize("impl", ["reference", "xla", "pallas_tpu"])
def test_attention_from_qkv(impl):
  """Token-major qkv in, token-major out: the value and gradients (qkv, both tables) of
  splitting heads by hand; 14 x 14 is a vit_b window (196 tokens, padded on TPU)."""
  heads = 2
  qkv, table_h, table_w, d_out = _from_qkv_inputs(2, heads, 14, 14, 16)
  options = FUSED.get(impl, {})
  fn = functools.partial(ga.attention_from_qkv, num_heads=heads, impl=impl, **options)
  want_out, want_vjp = jax.vjp(functools.partial(_split_heads_attention, heads=heads),
                               qkv, table_h, table_w)
  got_out, got_vjp = jax.vjp(fn, qkv, table_h, table_w)
  names = ("out", "d_qkv", "d_table_h", "d_table_w")
  for name, g, w in zip(names, (got_out, *got_vjp(d_out)), (want_out, *want_vjp(d_out))):
    assert_close(f"{impl} {name}", g, w, TOLERANCE["float32"])


def test_attention_from_qkv_keeps_qkv_output_and_statistics():
  """What the backward keeps: qkv and the output token-major, each row's log-sum-exp,
  the tables; no head-major copy and no rel-pos terms."""
  heads, height, width, channels = 2, 14, 14, 16
  qkv, table_h, table_w, _ = _from_qkv_inputs(2, heads, height, width, channels)
  fn = lambda qkv: ga.attention_from_qkv(qkv, table_h, table_w, num_heads=heads,
                                         impl="xla")
  kept = jax.tree_util.tree_leaves(jax.vjp(fn, qkv)[1])
  want = qkv.size + qkv.size // 3 + 2 * heads * height * width + table_h.size + table_w.size
  assert sum(x.size for x in kept) == want


def test_attention_from_qkv_shape_error():
  with pytest.raises(SptUserError, match="qkv must have shape .* H = 3"):
    ga.attention_from_qkv(np.ones((1, 4, 4, 16), np.float32), np.ones((4, 4, 2)),
                          np.ones((4, 4, 2)), num_heads=3)
