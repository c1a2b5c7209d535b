"""model.remat and model.prompt_chunk: the values they take, and that rematerialised
blocks and chunked prompts compute the same."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from small_models import MICRO_SPEC
from spt_jax.errors import SptUserError
from spt_jax.models.config import AdapterSpec
from spt_jax.models.image_encoder import remat_policy
from spt_jax.models.prompts import Prompts
from spt_jax.models.sam import init_variables
from spt_jax.spt.model import Spt


def test_names():
  assert remat_policy("none") == (False, None)
  assert remat_policy(False) == (False, None) and remat_policy(True) == (True, None)
  assert remat_policy("blocks") == (True, None)
  rematerialise, policy = remat_policy("dots_with_no_batch_dims_saveable")
  assert rematerialise and policy is jax.checkpoint_policies.dots_with_no_batch_dims_saveable
  with pytest.raises(SptUserError, match="model.remat='everything'.*expected one of"):
    remat_policy("everything")


def test_rematerialised_gradients_equal_plain_ones():
  """Remat changes what the backward keeps, not what it computes: the gradients of SPT's
  adapters (LoRA in the encoder's blocks, VRA and LoRA in the SDT decoder steps; three
  box prompts per image) with the blocks and the decoder steps rematerialised."""
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  prompts = Prompts(boxes=jnp.tile(jnp.array([[[3.0, 4.0, 20.0, 25.0]]]), (2, 3, 1)))
  adapters = AdapterSpec(lora_rank=4, vra=True)

  def adapter_grads(remat, variables):
    model = Spt(MICRO_SPEC, adapters, remat=remat)
    def loss(trained):
      out = model.apply({"params": variables["params"], "adapters": trained}, images,
                        prompts).logits
      return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))
    return jax.tree_util.tree_leaves(jax.jit(jax.grad(loss))(variables["adapters"]))

  variables = init_variables(Spt(MICRO_SPEC, adapters), jax.random.PRNGKey(0))
  # Nonzero LoRA B factors, so that every adapter leaf has a gradient.
  variables["adapters"] = jax.tree_util.tree_map(lambda x: x + 0.1, variables["adapters"])
  plain = adapter_grads("none", variables)
  encoder_leaves = len(jax.tree_util.tree_leaves(variables["adapters"]["image_encoder"]))
  assert encoder_leaves > 0 and all(np.abs(g).max() > 0 for g in plain)
  for remat in ("blocks", "dots_with_no_batch_dims_saveable"):
    for got, want in zip(adapter_grads(remat, variables), plain):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max(),
                                 err_msg=remat)


def test_prompt_chunks_compute_the_same():
  """model.prompt_chunk: five prompts per image decoded 2 or 3 at a time (the last chunk
  padded) give the logits, IoUs and adapter gradients of decoding all five at once."""
  images = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  boxes = jnp.array([[[3.0, 4.0, 20.0, 25.0]]]) + jnp.arange(5.0)[None, :, None]
  prompts = Prompts(boxes=jnp.tile(boxes, (2, 1, 1)))
  adapters = AdapterSpec(lora_rank=4, vra=True)
  variables = init_variables(Spt(MICRO_SPEC, adapters), jax.random.PRNGKey(0))
  variables["adapters"] = jax.tree_util.tree_map(lambda x: x + 0.1, variables["adapters"])

  def run(chunk):
    model = Spt(MICRO_SPEC, adapters, prompt_chunk=chunk)
    def loss(trained):
      out = model.apply({"params": variables["params"], "adapters": trained}, images,
                        prompts)
      weights = jnp.cos(jnp.arange(out.logits.size).reshape(out.logits.shape))
      return jnp.sum(out.logits * weights) + jnp.sum(out.iou), out
    return jax.jit(jax.grad(loss, has_aux=True))(variables["adapters"])

  want_grads, want = run(0)
  for chunk in (2, 3):
    grads, got = run(chunk)
    assert got.logits.shape == want.logits.shape == (2, 2, 5, 1, 16, 16)
    np.testing.assert_allclose(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got.iou, want.iou, rtol=1e-5, atol=1e-6)
    for g, w in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want_grads)):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max(),
                                 err_msg=f"chunk {chunk}")


def test_prompt_chunk_must_be_a_count():
  for bad in (-1, 2.5):
    with pytest.raises(SptUserError, match="model.prompt_chunk=.*expected 0"):
      init_variables(Spt(MICRO_SPEC, prompt_chunk=bad), jax.random.PRNGKey(0))
