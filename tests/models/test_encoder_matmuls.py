"""The encoder floor benchmark lists exactly the matmuls our encoder runs."""

import math

import jax
import jax.numpy as jnp
import pytest

from benchmarks.encoder_floor import encoder_matmuls
from spt_jax.models.config import sam_preset
from spt_jax.models.sam import Sam
from small_models import SMALL_SPEC


def _matmul_flops(jaxpr) -> float:
  """2 x multiply-adds of every dot_general and convolution in `jaxpr`, sub-jaxprs too
  (a scan's body times its length)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    out_size = math.prod(eqn.outvars[0].aval.shape)
    if eqn.primitive.name == "dot_general":
      (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
      lhs_shape = eqn.invars[0].aval.shape
      total += 2.0 * out_size * math.prod(lhs_shape[d] for d in lhs_contracting)
    elif eqn.primitive.name == "conv_general_dilated":
      rhs_shape = eqn.invars[1].aval.shape
      out_features = rhs_shape[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += 2.0 * out_size * math.prod(rhs_shape) / out_features
    assert eqn.primitive.name != "while", "a loop of unknown trip count"
    trips = eqn.params["length"] if eqn.primitive.name == "scan" else 1
    for sub in jax.core.jaxprs_in_params(eqn.params):
      total += trips * _matmul_flops(sub)
  return total


def _rel_pos_bias_flops(spec) -> float:
  """The decomposed rel-pos bias products (q . table), which the benchmark leaves out."""
  enc = spec.encoder
  heads, head_dim = enc.num_heads, enc.embed_dim // enc.num_heads
  per_side = -(-enc.grid_size // enc.window_size)
  windowed = per_side ** 2 * 2 * heads * enc.window_size ** 3 * head_dim * 2
  global_ = 2 * heads * enc.grid_size ** 3 * head_dim * 2
  num_global = len(enc.global_attn_indexes)
  return (enc.depth - num_global) * windowed + num_global * global_


@pytest.mark.parametrize("spec", [SMALL_SPEC, sam_preset("vit_b")], ids=["small", "vit_b"])
def test_listed_matmuls_are_the_encoders(spec):
  # The CPU's fused attention ('auto' also holds the accelerators' kernels, which a
  # CPU program drops when lowered).
  model = Sam(spec, query_chunk=spec.encoder.grid_size ** 2, global_attention_impl="xla",
              window_attention_impl="xla")
  size = spec.encoder.image_size
  variables = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)),
                         method=Sam.embed_images))
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, method=Sam.embed_images))(
      variables, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  listed = sum(s.flops * s.count for s in encoder_matmuls(spec.encoder))
  assert _matmul_flops(jaxpr.jaxpr) == pytest.approx(listed + _rel_pos_bias_flops(spec),
                                                      rel=1e-12)
