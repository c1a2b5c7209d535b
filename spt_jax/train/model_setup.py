"""The model and its starting variables from the config: base weights + fresh adapters.

The frozen base comes from a converted directory (or random init for tests, or the
embedded pretrained base); its content hash identifies it in training checkpoints,
which store only what trains.
"""

import dataclasses
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from spt_jax.errors import SptUserError
from spt_jax.models.config import AdapterSpec, EncoderSpec, SamSpec, sam_preset
from spt_jax.models.sam import init_variables
from spt_jax.pretrained import load_pretrained, model_directory
from spt_jax.spt.model import Spt, sam_params_to_spt

# A small SAM-architecture model for laptop runs and tests (256 px, 16x16 tokens).
TINY_SPEC = SamSpec(
    encoder=EncoderSpec(image_size=256, patch_size=16, embed_dim=128, depth=4,
                        num_heads=4, window_size=8, global_attn_indexes=(1, 3),
                        out_chans=128),
    prompt_embed_dim=128, mask_in_chans=16, decoder_mlp_dim=256, decoder_num_heads=4,
    iou_head_hidden_dim=128)



@dataclasses.dataclass(frozen=True)
class ModelSetup:
  model: Spt
  variables: dict[str, Any]
  base: dict[str, str]  # {'path', 'sha256'} of the frozen base


def tree_sha256(tree) -> str:
  """Hash of every leaf's path, dtype, shape and bytes (identifies a frozen base)."""
  digest = hashlib.sha256()
  for path, value in sorted(traverse_util.flatten_dict(tree, sep="/").items()):
    value = np.asarray(value)
    digest.update(f"{path}:{value.dtype}:{value.shape}".encode())
    digest.update(np.ascontiguousarray(value).tobytes())
  return digest.hexdigest()


def spec_for(model_type: str) -> SamSpec:
  return TINY_SPEC if model_type == "tiny" else sam_preset(model_type)


def adapter_spec(config) -> AdapterSpec:
  return AdapterSpec(**config.model.adapters.to_dict())


def _spt(spec, adapters, sdt_steps, config):
  return Spt(spec, adapters, dtype=jnp.dtype(config.model.dtype),
             query_chunk=config.model.query_chunk, remat=config.model.remat,
             global_attention_impl=config.model.global_attention_impl,
             window_attention_impl=config.model.window_attention_impl,
             relation_impl=config.model.relation_impl, sdt_steps=sdt_steps,
             prompt_chunk=config.model.prompt_chunk)


def _check_same(what, from_file, from_config, base):
  if from_file != from_config:
    raise SptUserError(f"model.base {base} holds an SPT model with {what} {from_file}, "
                       f"but the config asks for {from_config}; make the config match")


def setup_model(config, rng: jax.Array) -> ModelSetup:
  """The SPT model of `config` and its initial variables (base + adapters)."""
  base = config.model.base
  adapters = adapter_spec(config)
  if not base:
    model = _spt(spec_for(config.model.type), adapters, config.model.sdt_steps, config)
    variables = init_variables(model, rng)
    return ModelSetup(model, variables, {"path": "random-init",
                                         "sha256": tree_sha256(variables["params"])})
  pretrained = load_pretrained(model_directory(base))
  model = _spt(pretrained.spec, adapters, config.model.sdt_steps, config)
  if pretrained.metadata.get("model") == "spt":
    _check_same("adapters", pretrained.adapters, adapters, base)
    _check_same("sdt_steps", pretrained.metadata["sdt_steps"], config.model.sdt_steps, base)
    variables = pretrained.variables
  else:
    params = sam_params_to_spt(pretrained.variables["params"], model.sdt_steps)
    variables = {"params": params, **init_variables(model, rng, collections=("adapters",))}
  return ModelSetup(model, variables, {"path": base,
                                       "sha256": tree_sha256(variables["params"])})


def zero_shot_setup(setup: ModelSetup, config) -> ModelSetup:
  """SAM as it is: the same base with no adapters and the first (SAM's) decoder only."""
  model = _spt(setup.model.spec, AdapterSpec(), 1, config)
  params = dict(setup.variables["params"])
  params["decoders"] = jax.tree_util.tree_map(lambda x: np.asarray(x)[:1],
                                              params["decoders"])
  return ModelSetup(model, {"params": params}, setup.base)
