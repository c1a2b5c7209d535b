"""GELU, LayerNorm and the decoder's multi-head attention with lean backwards: the plain
values and gradients, fewer residuals; windowed encoder blocks through the fused
attention: the chunked core's function."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from small_models import SMALL_SPEC
from spt_jax.models.config import AdapterSpec
from spt_jax.models.image_encoder import ImageEncoder
from spt_jax.ops import lean_autodiff

CHANNELS = 48


def _inputs(dtype):
  x = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (4, 5, CHANNELS)) + 1.0
  scale = 1.0 + 0.1 * jax.random.normal(jax.random.PRNGKey(1), (CHANNELS,))
  bias = 0.1 * jnp.arange(CHANNELS, dtype=jnp.float32)
  weights = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  return x.astype(dtype), scale, bias, weights


def _flax_layer_norm(dtype):
  norm = nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, dtype=dtype)
  return lambda x, scale, bias: norm.apply({"params": {"scale": scale, "bias": bias}}, x)


def _residual_elements(f, *args):
  """Elements of everything `jax.vjp` keeps for f's backward."""
  residuals = jax.tree_util.tree_leaves(jax.vjp(f, *args)[1])
  return sum(int(np.prod(r.shape)) for r in residuals)


def _grads(f, args, weights):
  loss = lambda *a: jnp.sum(f(*a).astype(jnp.float32) * weights)
  return jax.grad(loss, argnums=tuple(range(len(args))))(*args)


def test_gelu_values_gradient_and_residuals():
  x, _, _, weights = _inputs(jnp.float32)
  exact = lambda x: jax.nn.gelu(x, approximate=False)
  np.testing.assert_array_equal(lean_autodiff.gelu(x), exact(x))
  (got,), (want,) = _grads(lean_autodiff.gelu, (x,), weights), _grads(exact, (x,), weights)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert _residual_elements(lean_autodiff.gelu, x) == x.size
  assert _residual_elements(exact, x) >= 3 * x.size


def test_gelu_bfloat16_gradient_is_the_float32_one_rounded():
  x, _, _, weights = _inputs(jnp.bfloat16)
  weights = weights.astype(jnp.bfloat16).astype(jnp.float32)  # the cotangent gelu sees
  (got,) = _grads(lean_autodiff.gelu, (x,), weights)
  (want,) = _grads(lean_autodiff.gelu, (x.astype(jnp.float32),), weights)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(got, want.astype(jnp.bfloat16))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_matches_flax(dtype):
  x, scale, bias, weights = _inputs(dtype)
  lean = lambda x, scale, bias: lean_autodiff.layer_norm(x, scale, bias, 1e-6, dtype)
  reference = _flax_layer_norm(dtype)
  out = lean(x, scale, bias)
  assert out.dtype == dtype
  np.testing.assert_array_equal(out, reference(x, scale, bias))
  # Flax's gradient in bfloat16 rounds in between; compare both to float32 then.
  x_ref = x.astype(jnp.float32)
  want = _grads(_flax_layer_norm(jnp.float32), (x_ref, scale, bias), weights)
  got = _grads(lean, (x, scale, bias), weights)
  tolerance = 1e-5 if dtype == jnp.float32 else 1e-2
  for name, g, w in zip(("x", "scale", "bias"), got, want):
    np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=tolerance,
                               atol=tolerance * np.abs(w).max(), err_msg=name)


def test_layer_norm_keeps_its_input_and_statistics_only():
  x, scale, bias, _ = _inputs(jnp.float32)
  lean = lambda x: lean_autodiff.layer_norm(x, scale, bias, 1e-6, jnp.float32)
  tokens = x.size // CHANNELS
  assert _residual_elements(lean, x) == x.size + 2 * tokens + CHANNELS
  assert _residual_elements(lambda x: _flax_layer_norm(jnp.float32)(x, scale, bias),
                            x) >= 3 * x.size


def _plain_attention(q, k, v, num_heads):
  """SAM's decoder attention as autodiff sees it (the formula before the custom VJP)."""
  heads = lambda x: x.reshape(x.shape[:2] + (num_heads, -1))
  q, k, v = heads(q), heads(k), heads(v)
  scores = jnp.einsum("bqhc,bkhc->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhc->bqhc", probs, v).reshape(q.shape[:2] + (-1,))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_multi_head_attention_values_gradients_and_residuals(dtype):
  """Image tokens attending to 7 prompt tokens and back, 8 heads of 16 channels (the
  decoder's shapes, smaller N): the plain formula's value, its gradients (float32 within
  1e-5; bfloat16 against float32 within 2e-2), and only q, k, v kept."""
  keys = jax.random.split(jax.random.PRNGKey(3), 4)
  image, tokens = (jax.random.normal(key, (2, n, 128)) for key, n in zip(keys, (96, 7)))
  weights = jax.random.normal(keys[2], (2, 96, 128))
  lean = lambda q, k, v: lean_autodiff.multi_head_attention(q, k, v, 8)
  plain = lambda q, k, v: _plain_attention(q, k, v, 8)
  args = tuple(x.astype(dtype) for x in (2.0 * image, tokens, tokens))
  assert lean(*args).dtype == dtype
  np.testing.assert_array_equal(lean(*args), plain(*args))
  want = _grads(plain, tuple(x.astype(jnp.float32) for x in args), weights)
  tolerance = 1e-5 if dtype == jnp.float32 else 2e-2
  for name, g, w in zip(("q", "k", "v"), _grads(lean, args, weights), want):
    assert g.dtype == dtype
    np.testing.assert_allclose(np.asarray(g, np.float32), w, rtol=tolerance,
                               atol=tolerance * np.abs(w).max(), err_msg=name)
  assert _residual_elements(lean, *args) == sum(x.size for x in args)
  assert _residual_elements(plain, *args) >= sum(x.size for x in args) + 2 * 8 * 96 * 7


def test_windowed_blocks_fused_equal_chunked():
  """SMALL_SPEC's padded 5 x 5 windows, LoRA in every block: output and the LoRA
  gradients with the fused windowed attention equal the chunked core's."""
  adapters = AdapterSpec(lora_rank=4)
  images = jax.random.normal(jax.random.PRNGKey(3), (2, 256, 256, 3))
  encoder = lambda impl: ImageEncoder(SMALL_SPEC.encoder, adapters,
                                      window_attention_impl=impl)
  variables = jax.jit(encoder("chunked").init)(jax.random.PRNGKey(0), images)
  variables["adapters"] = jax.tree_util.tree_map(lambda a: a + 0.05, variables["adapters"])

  def run(impl):
    def loss(trained):
      out = encoder(impl).apply({"params": variables["params"], "adapters": trained},
                                images)
      return jnp.sum(jnp.sin(out)), out
    return jax.jit(jax.grad(loss, has_aux=True))(variables["adapters"])

  want_grads, want_out = run("chunked")
  for impl in ("xla", "reference"):
    got_grads, got_out = run(impl)
    np.testing.assert_allclose(got_out, want_out, rtol=1e-5, atol=1e-5, err_msg=impl)
    for got, want in zip(jax.tree_util.tree_leaves(got_grads),
                         jax.tree_util.tree_leaves(want_grads)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(),
                                 err_msg=impl)
