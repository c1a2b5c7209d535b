"""The paper's baselines: each trains exactly its own leaves and leaves the rest untouched."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from slow_cases import slow_except
from small_models import MICRO_SPEC
from spt_jax import config as config_lib
from spt_jax.data.prompts import PromptConfig
from spt_jax.models.config import AdapterSpec
from spt_jax.models.sam import Sam, init_variables, variables_initializer
from spt_jax.spt.losses import LossSpec
from spt_jax.spt.model import Spt
from spt_jax.train import step as train_step
from spt_jax.train.optimizer import OptimizerSpec, make_optimizer
from spt_jax.train.trainable import partition

ENCODER_BLOCKS = MICRO_SPEC.encoder.depth
DECODER_BLOCKS = MICRO_SPEC.decoder_depth
# q and v LoRA (A and B) on 3 attentions per two-way block and the final attention.
DECODER_LORA = (3 * DECODER_BLOCKS + 1) * 2 * 2
ENCODER_LORA = 2 * ENCODER_BLOCKS  # one grouped (q, v) A and B per block


def count_leaves(tree):
  return len(jax.tree_util.tree_leaves(tree))


def variable_shapes(model):
  return jax.eval_shape(variables_initializer(model), jax.random.PRNGKey(0))


SAM_DECODER_LEAVES = count_leaves(variable_shapes(Sam(MICRO_SPEC))["params"]["mask_decoder"])
EXPECTED_LEAVES = {
    "decoder": SAM_DECODER_LEAVES,
    "lora": ENCODER_LORA + DECODER_LORA,
    "adapter": 4 * ENCODER_BLOCKS,  # down/up kernel and bias per block
    "vpt": ENCODER_BLOCKS,  # one token matrix per block
    "sdt": ENCODER_LORA + DECODER_LORA,  # stacked over the 2 steps: same leaves
    "vra": ENCODER_LORA + DECODER_LORA + DECODER_BLOCKS,  # + a gamma per block
    "spt": ENCODER_LORA + DECODER_LORA + DECODER_BLOCKS,
}


def batch():
  rng = np.random.default_rng(0)
  mask = np.zeros((1, 32, 32), np.float32)
  mask[0, 5:20, 8:24] = 1
  return dict(image=rng.integers(0, 256, (1, 32, 32, 3)).astype(np.uint8),
              input_size=np.array([[32, 32]], np.int32), mask=mask,
              boxes=np.array([[[8, 5, 23, 19]]], np.float32),
              prompt_valid=np.ones((1, 1), bool))


def spt_model(method):
  spec = config_lib.METHODS[method]
  return Spt(MICRO_SPEC, AdapterSpec(**spec["adapters"]), relation_impl="xla",
             sdt_steps=spec["sdt_steps"])


@pytest.mark.parametrize("method", sorted(EXPECTED_LEAVES))
def test_trainable_set(method):
  trainable, _ = partition(variable_shapes(spt_model(method)),
                           config_lib.METHODS[method]["trainable"])
  assert count_leaves(trainable) == EXPECTED_LEAVES[method]


# Two methods train in the default suite: SPT's adapters collection and the decoder's
# params; the others' steps (the same step function on other leaves) are slow-marked.
@pytest.mark.parametrize("method", slow_except(sorted(EXPECTED_LEAVES), ("spt", "decoder")))
def test_a_few_steps_train_only_the_trainable_set(method):
  model = spt_model(method)
  variables = init_variables(model, jax.random.PRNGKey(1))
  trainable, frozen = partition(variables, config_lib.METHODS[method]["trainable"])
  optimizer = make_optimizer(OptimizerSpec(learning_rate=1e-2))
  state = train_step.init_train_state(trainable, optimizer, jax.random.PRNGKey(2))
  step = jax.jit(train_step.make_train_step(model, optimizer, LossSpec(kind="dense"),
                                            PromptConfig()))
  before = traverse_util.flatten_dict(trainable)
  for _ in range(2):
    state, metrics = step(state, frozen, batch())
  assert np.isfinite(float(metrics["loss"]))
  after = traverse_util.flatten_dict(state.trainable)
  assert after.keys() == before.keys()
  assert any(not np.array_equal(after[k], before[k]) for k in before)
  moments = [x for x in jax.tree_util.tree_leaves(state.opt_state) if np.ndim(x) > 0]
  assert sum(np.size(x) for x in moments) == 2 * sum(np.size(x) for x in after.values())
  untouched = traverse_util.flatten_dict(frozen)
  for key, value in traverse_util.flatten_dict(variables).items():
    if key in untouched:
      assert untouched[key] is value  # the frozen tree is the very same arrays


def test_zero_shot_trains_nothing():
  assert config_lib.METHODS["zero_shot"]["trainable"] == ()
