"""The precision of the fused kernels' matrix products for float32 operands.

The Triton kernels take the program's matmul precision (`jax_default_matmul_precision`),
as XLA:GPU's own products do: unset, the platform's default (TF32 on a GPU), 'highest'
full float32. The Mosaic kernels and the blocked XLA path keep full float32 either way.
The gradients' kernels (the custom VJP's backward) included.
"""

import jax
import jax.numpy as jnp
import pytest

from attached_gpu import PALLAS_GPU_OPTIONS
from jaxpr_sizes import dot_precisions
from spt_jax.kernels import global_attention as ga
from spt_jax.kernels import relation_attention

FULL = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
OPTIONS = {"xla": {}, "pallas_tpu": {"interpret": True}, "pallas_gpu": PALLAS_GPU_OPTIONS}


def _global(impl):
  spec = lambda last: jax.ShapeDtypeStruct((1, 2, 256, last), jnp.float32)
  loss = lambda *args: jnp.sum(ga.global_attention(*args, impl=impl, **OPTIONS[impl]))
  return loss, (spec(32), spec(32), spec(32), spec(16), spec(16))


def _relation(impl):
  e, v = (jax.ShapeDtypeStruct((1, 300, width), jnp.float32) for width in (64, 48))
  loss = lambda e, v: jnp.sum(relation_attention(e, v, alpha=0.5, impl=impl,
                                                 **OPTIONS[impl]))
  return loss, (e, v)


@pytest.mark.parametrize("op", [_global, _relation], ids=["global", "relation"])
@pytest.mark.parametrize("setting", [None, "highest"])
def test_float32_products_follow_the_matmul_precision(op, setting):
  def precisions(impl):
    loss, args = op(impl)
    with jax.default_matmul_precision(setting):
      grads = jax.grad(loss, argnums=tuple(range(len(args))))
      return dot_precisions(jax.make_jaxpr(grads)(*args).jaxpr)

  assert precisions("pallas_gpu") == {FULL if setting == "highest" else None}
  assert precisions("pallas_tpu") == precisions("xla") == {FULL}
