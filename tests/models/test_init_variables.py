"""Fresh adapters over a loaded base: only that collection is made, with the full init's
values, from a program that holds no more than the adapters' initialisers."""

import jax
import numpy as np

from small_models import MICRO_SPEC
from spt_jax.models.config import AdapterSpec
from spt_jax.models.sam import init_variables, variables_initializer
from spt_jax.spt.model import Spt

ADAPTERS = AdapterSpec(lora_rank=4, vra=True, mlp_adapter_dim=8, vpt_tokens=2)


def test_adapters_only_equal_the_full_init():
  model = Spt(MICRO_SPEC, ADAPTERS)
  full = init_variables(model, jax.random.PRNGKey(3))
  only = init_variables(model, jax.random.PRNGKey(3), collections=("adapters",))
  assert set(only) == {"adapters"}
  jax.tree_util.tree_map(np.testing.assert_array_equal, only["adapters"], full["adapters"])
  assert init_variables(Spt(MICRO_SPEC, AdapterSpec()), jax.random.PRNGKey(3),
                        collections=("adapters",)) == {}


def test_adapters_only_program_leaves_out_the_forward():
  """The compiled program has far fewer operations than the full initialisation's
  (which runs the forward pass and initialises every base parameter)."""
  model = Spt(MICRO_SPEC, ADAPTERS)

  def compiled_size(collections):
    init = jax.jit(variables_initializer(model, collections))
    return len(init.lower(jax.random.PRNGKey(0)).compile().as_text())

  assert compiled_size(("adapters",)) * 3 < compiled_size(None)
