"""The SPT authors' checkpoint layout (THU-MIG/SAM-SPT) and how it maps to ours.

Their state dict is Meta's SAM plus:
  image_encoder.blocks.{i}.attn.qkv.lora_A (2r, in) / lora_B (2 * dim, r)  [q and v]
  {mask,draft}_decoder.transformer.{layers.{j}.{self_attn,cross_attn_token_to_image,
    cross_attn_image_to_token},final_attn_token_to_image}.{q,v}_proj.lora_A|lora_B
  {mask,draft}_decoder.transformer.layers.{j}.lora_sim_scale (gamma)
  draft_decoder.* (the refine step; keys it lacks are copied from mask_decoder.*).
Ours stacks the two decoders on a leading axis under `decoders/mask_decoder`: index 0
is their `mask_decoder` (draft step), index 1 their `draft_decoder` (refine step).

Their code scales every LoRA delta B A by 1 / r (alpha fixed at 1); ours by alpha / r.
Exports therefore carry lora_B times alpha (`to_authors_lora_scale`), and their files
are read with alpha = 1: the same function on both sides.
"""

import re

import numpy as np

from spt_jax.errors import SptUserError
from spt_jax.models.config import AdapterSpec, SamSpec
from weights_conversion.infer_spec import preset_name
from weights_conversion.key_table import flax_to_torch
from weights_conversion.mapping import KeyLayout, Location, SAM_LAYOUT

DECODER_PREFIXES = ("mask_decoder", "draft_decoder")  # step 0 (draft), step 1 (refine)
AUTHORS_LORA_ALPHA = 1.0
_STACK = "decoders"


def _locate(key: str) -> Location:
  prefix, _, rest = key.partition(".")
  if prefix in DECODER_PREFIXES:
    inner = SAM_LAYOUT.locate("mask_decoder." + rest)
    flat_key = (inner.flat_key[0], _STACK) + inner.flat_key[1:]
    return Location(flat_key, DECODER_PREFIXES.index(prefix), inner.layout)
  return SAM_LAYOUT.locate(key)


def _torch_key(flat_key, index):
  if flat_key[1] == _STACK:
    key = flax_to_torch(flat_key[2:])
    return DECODER_PREFIXES[index] + key[len("mask_decoder"):]
  return flax_to_torch(flat_key[1:])


SPT_LAYOUT = KeyLayout(locate=_locate, torch_key=_torch_key,
                       stacked=lambda flat_key: flat_key[1] == _STACK)


def is_spt_state(state: dict[str, np.ndarray]) -> bool:
  """Whether a state dict carries SPT parts (adapters or a second decoder)."""
  return any(key.startswith("draft_decoder.") or ".lora_" in key for key in state)


def has_sam_weights(state: dict[str, np.ndarray]) -> bool:
  return "image_encoder.patch_embed.proj.weight" in state


def with_refine_decoder(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Fills every draft_decoder.* key the checkpoint lacks from its mask_decoder.* twin.

  As the authors' loader does: the refine decoder starts as a copy of the draft
  decoder (SAM's), and whatever the checkpoint holds for it (e.g. only its adapters)
  replaces the copy.
  """
  copies = {"draft_decoder" + key[len("mask_decoder"):]: value
            for key, value in state.items() if key.startswith("mask_decoder.")}
  return {**copies, **state}


def infer_adapter_spec(state: dict[str, np.ndarray], source: str, *, lora_alpha: float,
                       vra_block: int, vra_alpha: float) -> AdapterSpec:
  """LoRA rank and placement, and whether VRA gammas exist, from the keys and shapes.

  The authors' encoder LoRA A is (2r, in) (q and v stacked), a decoder's is (r, in).
  Which block uses gamma (`vra_block`), lora_alpha and vra_alpha are not in the file.
  """
  ranks = set()
  for key, value in state.items():
    if key.endswith(".lora_A"):
      ranks.add(np.shape(value)[0] // (2 if key.startswith("image_encoder.") else 1))
  if len(ranks) > 1:
    raise SptUserError(f"{source}: LoRA ranks differ between layers: {sorted(ranks)}")
  return AdapterSpec(
      lora_rank=ranks.pop() if ranks else 0, lora_alpha=lora_alpha,
      lora_encoder=any(k.startswith("image_encoder.") and k.endswith(".lora_A") for k in state),
      lora_decoder=any(re.match(r"(mask|draft)_decoder\..*\.lora_A$", k) for k in state),
      vra=any(k.endswith(".lora_sim_scale") for k in state), vra_block=vra_block,
      vra_alpha=vra_alpha)


def drop_unused_gammas(state: dict[str, np.ndarray], adapters: AdapterSpec) -> dict:
  """The authors store gamma in every block; with one VRA block the others are unused."""
  if adapters.vra_block == -1:
    return state
  keep = f".layers.{adapters.vra_block - 1}.lora_sim_scale"
  return {k: v for k, v in state.items()
          if not k.endswith(".lora_sim_scale") or k.endswith(keep)}


def to_authors_lora_scale(state: dict[str, np.ndarray], adapters: AdapterSpec) -> dict:
  """`state` with every lora_B scaled so that their alpha gives the delta ours gives."""
  factor = np.float32(adapters.lora_alpha / AUTHORS_LORA_ALPHA)
  return {key: value * factor if key.endswith(".lora_B") else value
          for key, value in state.items()}


def unexportable(adapters: AdapterSpec, sdt_steps: int) -> list[str]:
  """Why the layout cannot hold the model at all (empty when it can)."""
  reasons = []
  if sdt_steps != len(DECODER_PREFIXES):
    reasons.append(f"{sdt_steps} SDT steps (the layout has a draft and a refine decoder)")
  if adapters.mlp_adapter_dim or adapters.vpt_tokens:
    reasons.append("MLP adapters or VPT tokens (the layout has LoRA and gamma only)")
  return reasons


def nonstandard(spec: SamSpec, adapters: AdapterSpec) -> list[str]:
  """Why the authors' code would not build this model (empty when it would)."""
  reasons = []
  if preset_name(spec) == "custom":
    reasons.append("its SAM size is none of vit_b, vit_l, vit_h (the only sizes of "
                   "sam_model_registry)")
  if not (adapters.lora_rank and adapters.lora_encoder and adapters.lora_decoder):
    reasons.append("it lacks LoRA in the encoder or the decoders")
  if not adapters.vra:
    reasons.append("it has no VRA gammas")
  return reasons
