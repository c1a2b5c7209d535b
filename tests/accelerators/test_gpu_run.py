"""The GPU tier that runs: SPT's Triton kernels compiled by XLA:GPU and run on an
attached CUDA GPU, against the materialised references on the same GPU. Skips, saying
why, where no GPU is attached (this project's build machine has none; the kernel tests
in tests/kernels run the same kernels compiled there too, `attached_gpu`).

float32 products at full precision on both sides (tests/conftest.py), so the float32
tolerance is the CPU tests': max |x - ref| <= 2e-5 x max |ref| per tensor for a kernel,
1e-4 for a model's gradients (four attention blocks and two decoder steps in series);
bfloat16 kernels 3e-2.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attached_gpu import GPU_ATTACHED
from kernel_tolerances import TOLERANCE, assert_close
from small_models import SMALL_SPEC
from spt_jax import aot
from spt_jax.kernels import global_attention as ga
from spt_jax.models.config import AdapterSpec
from spt_jax.models.prompts import Prompts
from spt_jax.models.sam import init_variables
from spt_jax.spt.model import Spt

pytestmark = pytest.mark.skipif(not GPU_ATTACHED, reason="no CUDA GPU attached: the "
                                "Triton kernels are exported for CUDA, not run, here")



@functools.partial(jax.jit, static_argnums=0)
def _attention_value_and_grads(impl, qkv, table_h, table_w, d_out):
  fn = functools.partial(ga.attention_from_qkv, num_heads=12, impl=impl)
  out, vjp = jax.vjp(fn, qkv, table_h, table_w)
  return (out, *vjp(d_out))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_global_attention_on_vit_b_grid(dtype):
  """vit_b's global blocks: 12 heads of 64 channels over the 64 x 64 grid, the encoder's
  token-major entry point (the kernels' default blocks), value and the gradients of qkv
  and both rel-pos tables."""
  keys = jax.random.split(jax.random.key(0), 4)
  qkv = jax.random.normal(keys[0], (1, 64, 64, 3 * 768))
  qkv = (qkv * jnp.repeat(jnp.array([3.0, 1.0, 1.0]), 768)).astype(dtype)
  table_h, table_w = (jax.random.normal(key, (64, 64, 64)).astype(dtype) for key in keys[1:3])
  d_out = jax.random.normal(keys[3], (1, 64, 64, 768)).astype(dtype)
  inputs = (qkv, table_h, table_w, d_out)
  text = _attention_value_and_grads.lower("auto", *inputs).compile().as_text()
  assert text.count(aot.TRITON_CALL) >= 3  # forward, query and key gradients
  got = _attention_value_and_grads("auto", *inputs)
  want = _attention_value_and_grads("reference", *inputs)
  for name, g, w in zip(("out", "d_qkv", "d_table_h", "d_table_w"), got, want):
    assert_close(f"{dtype} {name}", g, w, TOLERANCE[dtype])


def test_spt_adapter_gradients_on_gpu():
  """The SPT forward and the gradients of every adapter (the encoder's LoRA through its
  global blocks, VRA and LoRA in both decoder steps), two images x three boxes:
  impl 'auto' (the Triton kernels on this GPU) against the materialised references."""
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 256, 256, 3))
  boxes = jnp.array([[[30.0, 40.0, 200.0, 150.0]]]) + 9.0 * jnp.arange(3.0)[None, :, None]
  prompts = Prompts(boxes=jnp.tile(boxes, (2, 1, 1)))
  adapters = AdapterSpec(lora_rank=4, vra=True)
  variables = init_variables(Spt(SMALL_SPEC, adapters), jax.random.PRNGKey(0))
  variables["adapters"] = jax.tree_util.tree_map(lambda x: x + 0.1, variables["adapters"])

  def logits_and_grads(impl):
    model = Spt(SMALL_SPEC, adapters, relation_impl=impl, global_attention_impl=impl)

    def loss(trained):
      out = model.apply({"params": variables["params"], "adapters": trained}, images,
                        prompts).logits
      return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape))), out

    program = jax.jit(jax.value_and_grad(loss, has_aux=True))
    if impl == "auto":
      assert program.lower(variables["adapters"]).compile().as_text().count(
          aot.TRITON_CALL) >= 4
    (_, out), grads = program(variables["adapters"])
    return out, jax.tree_util.tree_leaves_with_path(grads)

  out, grads = logits_and_grads("auto")
  want_out, want_grads = logits_and_grads("reference")
  assert_close("logits", out, want_out, 1e-4)
  assert len(grads) == len(want_grads) > 0
  for (path, got), (_, want) in zip(grads, want_grads):
    assert np.abs(want).max() > 0, jax.tree_util.keystr(path)
    assert_close(jax.tree_util.keystr(path), got, want, 1e-4)
