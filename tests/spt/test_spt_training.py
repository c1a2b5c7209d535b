"""The adapter-only train step: what changes, what does not, what the optimizer holds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from small_models import TINY_SPEC
from spt_jax.data.prompts import PromptConfig
from spt_jax.models.prompts import Prompts
from spt_jax.models.sam import Sam, init_variables
from spt_jax.spt.losses import LossSpec
from spt_jax.spt.model import Spt, sam_params_to_spt
from spt_jax.train import step as train_step
from spt_jax.train.optimizer import OptimizerSpec, make_optimizer
from spt_jax.train.trainable import SPT_TRAINABLE, partition


def leaves(tree):
  return traverse_util.flatten_dict(tree)


def tiny_batch():
  rng = np.random.default_rng(0)
  mask = np.zeros((2, 64, 64), np.float32)
  mask[0, 10:30, 20:40] = 1
  mask[1, 40:60, 5:25] = 1
  return dict(image=rng.integers(0, 256, (2, 64, 64, 3)).astype(np.uint8),
              input_size=np.array([[64, 64], [64, 50]], np.int32), mask=mask,
              boxes=np.array([[[20, 10, 39, 29]], [[5, 40, 24, 59]]], np.float32),
              prompt_valid=np.ones((2, 1), bool))


@pytest.fixture(scope="module")
def trained():
  model = Spt(TINY_SPEC, relation_impl="xla")
  variables = init_variables(model, jax.random.PRNGKey(0))
  trainable, frozen = partition(variables, SPT_TRAINABLE)
  optimizer = make_optimizer(OptimizerSpec(learning_rate=5e-2))
  state = train_step.init_train_state(trainable, optimizer, jax.random.PRNGKey(1))
  step = jax.jit(train_step.make_train_step(model, optimizer, LossSpec(kind="dense"),
                                            PromptConfig()))
  losses, batch = [], tiny_batch()
  first = state
  for _ in range(8):
    state, metrics = step(state, frozen, batch)
    losses.append(float(metrics["loss"]))
  return variables, frozen, first, state, losses


def test_frozen_weights_are_bit_identical_and_only_adapters_train(trained):
  variables, frozen, _, state, _ = trained
  assert set(leaves(frozen)) == {k for k in leaves(variables) if k[0] == "params"}
  assert set(leaves(state.trainable)) == {k for k in leaves(variables) if k[0] == "adapters"}
  for key, value in leaves(frozen).items():
    np.testing.assert_array_equal(value, leaves(variables)[key])


def test_every_adapter_leaf_changed(trained):
  _, _, first, state, _ = trained
  before, after = leaves(first.trainable), leaves(state.trainable)
  unchanged = [k for k in before if np.array_equal(before[k], after[k])]
  assert not unchanged


def test_optimizer_state_holds_only_adapter_leaves(trained):
  _, frozen, _, state, _ = trained
  trainable = leaves(state.trainable)
  arrays = [x for x in jax.tree_util.tree_leaves(state.opt_state) if np.ndim(x) > 0]
  assert len(arrays) == 2 * len(trainable)  # Adam's first and second moments
  adapter_size = sum(np.size(x) for x in trainable.values())
  assert sum(np.size(x) for x in arrays) == 2 * adapter_size
  assert adapter_size < sum(np.size(x) for x in leaves(frozen).values()) / 5


def test_loss_decreases_on_a_fixed_batch(trained):
  losses = trained[-1]
  assert losses[-1] < losses[0] * 0.9, losses


def test_fresh_adapters_draft_equals_plain_sam_exactly():
  sam = Sam(TINY_SPEC)
  sam_variables = init_variables(sam, jax.random.PRNGKey(2))
  noise = lambda x: x + 0.1 * jax.random.normal(jax.random.PRNGKey(3), x.shape)
  sam_variables = jax.tree_util.tree_map(noise, sam_variables)
  spt = Spt(TINY_SPEC, relation_impl="xla")
  fresh = init_variables(spt, jax.random.PRNGKey(4))
  spt_variables = {"params": sam_params_to_spt(sam_variables["params"], spt.sdt_steps),
                   "adapters": fresh["adapters"]}
  images = jax.random.normal(jax.random.PRNGKey(5), (2, 64, 64, 3))
  prompts = Prompts(boxes=jnp.array([[[3.0, 4, 40, 50]], [[10, 10, 20, 30]]]))
  output = jax.jit(spt.apply)(spt_variables, images, prompts)
  logits, iou = jax.jit(sam.apply)(sam_variables, images, prompts)
  np.testing.assert_array_equal(output.draft, logits)
  np.testing.assert_array_equal(output.iou, iou)
  assert np.abs(output.final - output.draft).max() > 0  # the refine step sees the draft
