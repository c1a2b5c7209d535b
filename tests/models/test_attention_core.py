"""The encoder's attention core against the plain formula it computes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax.models import attention


def _plain_attention(q, k, v, table_h, table_w, extra_kv):
  """softmax over [grid keys with rel-pos bias, extra keys] of one materialised matrix."""
  batch, heads, height, width, channels = q.shape
  queries = q.reshape(batch, heads, height * width, channels)
  keys = k.reshape(batch, heads, height * width, channels)
  values = v.reshape(batch, heads, height * width, channels)
  bias_h = np.einsum("bnyxc,ykc->bnyxk", q, table_h)  # (.., y, x, key row)
  bias_w = np.einsum("bnyxc,xkc->bnyxk", q, table_w)  # (.., y, x, key column)
  bias = (bias_h[..., :, None] + bias_w[..., None, :]).reshape(
      batch, heads, height * width, height * width)
  scores = np.einsum("bnqc,bnkc->bnqk", queries, keys) / np.sqrt(channels) + bias
  if extra_kv is not None:
    extra_k, extra_v = extra_kv  # (H, T, C)
    extra_scores = np.einsum("bnqc,ntc->bnqt", queries, extra_k) / np.sqrt(channels)
    scores = np.concatenate([scores, extra_scores], axis=-1)
    values = np.concatenate([values, np.broadcast_to(extra_v, (batch,) + extra_v.shape)],
                            axis=2)
  scores = scores - scores.max(-1, keepdims=True)
  probs = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
  out = np.einsum("bnqk,bnkc->bnqc", probs, values)
  return out.reshape(batch, heads, height, width, channels)


# (query scale, atol): scores of a few units, checked to float32 rounding of O(1)
# outputs; and scores of about 150, beyond exp()'s float32 range (~88), so a missing or
# wrong shift shows, where float32 rounding of each score alone is ~1e-5 of the output.
_SCALES = [(3.0, 1e-5), (30.0, 2e-4)]


@pytest.mark.parametrize("query_chunk", [64, 16, 8])  # whole grid, 2 rows, 1 row
@pytest.mark.parametrize("with_extra", [False, True])
@pytest.mark.parametrize("query_scale,atol", _SCALES)
def test_grid_attention_matches_the_plain_formula(query_chunk, with_extra, query_scale,
                                                  atol):
  rng = np.random.default_rng(0)
  batch, heads, height, width, channels, tokens = 2, 3, 8, 8, 16, 4
  q, k, v = (rng.standard_normal((batch, heads, height, width, channels)).astype(np.float32)
             for _ in range(3))
  q *= query_scale
  table_h = rng.standard_normal((height, height, channels)).astype(np.float32)
  table_w = rng.standard_normal((width, width, channels)).astype(np.float32)
  extra_kv = None
  if with_extra:
    extra_kv = tuple(rng.standard_normal((heads, tokens, channels)).astype(np.float32)
                     for _ in range(2))
  ours = attention.grid_attention_with_rel_pos(
      *map(jnp.asarray, (q, k, v, table_h, table_w)), query_chunk=query_chunk,
      extra_kv=None if extra_kv is None else tuple(map(jnp.asarray, extra_kv)))
  expected = _plain_attention(q.astype(np.float64), k.astype(np.float64),
                              v.astype(np.float64), table_h.astype(np.float64),
                              table_w.astype(np.float64),
                              None if extra_kv is None else
                              tuple(x.astype(np.float64) for x in extra_kv))
  assert ours.shape == expected.shape
  np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-4, atol=atol)


def test_grid_attention_gradient_matches_the_plain_formula():
  rng = np.random.default_rng(1)
  shape = (1, 2, 4, 4, 8)
  q, k, v = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(3))
  table_h, table_w = (jnp.asarray(rng.standard_normal((4, 4, 8)), jnp.float32)
                      for _ in range(2))
  weights = jnp.asarray(rng.standard_normal(shape), jnp.float32)

  def ours(q, k, v):
    return (attention.grid_attention_with_rel_pos(q, k, v, table_h, table_w,
                                                  query_chunk=8) * weights).sum()

  def plain(q, k, v):
    batch, heads, height, width, channels = q.shape
    flat = lambda x: x.reshape(batch, heads, height * width, channels)
    bias = (jnp.einsum("bnyxc,ykc->bnyxk", q, table_h)[..., :, None]
            + jnp.einsum("bnyxc,xkc->bnyxk", q, table_w)[..., None, :])
    scores = (jnp.einsum("bnqc,bnkc->bnqk", flat(q), flat(k)) / jnp.sqrt(channels)
              + bias.reshape(batch, heads, height * width, height * width))
    out = jnp.einsum("bnqk,bnkc->bnqc", jax.nn.softmax(scores, -1), flat(v))
    return (out.reshape(shape) * weights).sum()

  for ours_grad, plain_grad in zip(jax.grad(ours, (0, 1, 2))(q, k, v),
                                   jax.grad(plain, (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(ours_grad, plain_grad, rtol=1e-4, atol=1e-5)
