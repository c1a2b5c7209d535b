"""The one table mapping PyTorch SAM/SPT state-dict keys to Flax variables, both ways.

A torch key `a.b.3.c.weight` names module path `a/b_3/c` (an index joins its list's
name, as Flax names list members), and its leaf and layout come from the first rule
whose pattern matches the key. Every layout has an exact inverse, used to export.
"""

import dataclasses
import re
from typing import Callable

import numpy as np

PARAMS = "params"
ADAPTERS = "adapters"


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a torch tensor becomes a Flax array; `groups` is G of grouped LoRA tensors."""
  name: str
  to_flax: Callable[[np.ndarray, int], np.ndarray]
  to_torch: Callable[[np.ndarray, int], np.ndarray]


def _lora_a_to_flax(a, groups):  # (G * r, I) -> (G, I, r)
  return a.reshape(groups, -1, a.shape[-1]).transpose(0, 2, 1)


def _lora_b_to_flax(b, groups):  # (G * O, r) -> (G, r, O)
  return b.reshape(groups, -1, b.shape[-1]).transpose(0, 2, 1)


IDENTITY = Layout("identity", lambda x, g: x, lambda x, g: x)
# nn.Linear (out, in) <-> Dense kernel (in, out).
LINEAR = Layout("linear", lambda x, g: x.T, lambda x, g: x.T)
# nn.Conv2d (out, in, kh, kw) <-> (kh, kw, in, out).
CONV = Layout("conv", lambda x, g: x.transpose(2, 3, 1, 0), lambda x, g: x.transpose(3, 2, 0, 1))
# nn.ConvTranspose2d (in, out, kh, kw) <-> (kh, kw, in, out).
CONV_TRANSPOSE = Layout("conv_transpose", lambda x, g: x.transpose(2, 3, 0, 1),
                        lambda x, g: x.transpose(2, 3, 0, 1))
LORA_A = Layout("lora_a", _lora_a_to_flax,
                lambda x, g: x.transpose(0, 2, 1).reshape(-1, x.shape[1]))
LORA_B = Layout("lora_b", _lora_b_to_flax,
                lambda x, g: x.transpose(0, 2, 1).reshape(-1, x.shape[1]))


@dataclasses.dataclass(frozen=True)
class Rule:
  pattern: str  # regex on the torch key; group 1 is the module path
  leaf: str  # Flax leaf name
  layout: Layout
  collection: str = PARAMS


_NORMS = r"(?:norm\d|norm_final_attn|neck\.[13]|mask_downscaling\.[14]|output_upscaling\.1)"
_CONVS = r"(?:patch_embed\.proj|neck\.[02]|mask_downscaling\.[036])"
_EMBEDS = (r"(?:point_embeddings\.\d+|not_a_point_embed|no_mask_embed|iou_token|"
           r"mask_tokens)")

RULES = (
    Rule(r"^(.*)\.lora_A$", "lora_a", LORA_A, ADAPTERS),
    Rule(r"^(.*)\.lora_B$", "lora_b", LORA_B, ADAPTERS),
    Rule(r"^(.*)\.(lora_sim_scale)$", None, IDENTITY, ADAPTERS),
    Rule(rf"^(.*\.{_NORMS})\.weight$", "scale", IDENTITY),
    Rule(rf"^(.*\.{_CONVS})\.weight$", "kernel", CONV),
    Rule(r"^(.*\.output_upscaling\.[03])\.weight$", "kernel", CONV_TRANSPOSE),
    Rule(rf"^(.*\.{_EMBEDS})\.weight$", "embedding", IDENTITY),
    Rule(r"^(.*)\.weight$", "kernel", LINEAR),
    Rule(r"^(.*)\.bias$", "bias", IDENTITY),
    # pos_embed, rel_pos_h/w, positional_encoding_gaussian_matrix
    Rule(r"^(.*)\.(\w+)$", None, IDENTITY),
)


@dataclasses.dataclass(frozen=True)
class Target:
  collection: str
  path: tuple[str, ...]
  layout: Layout


def _module_path(dotted: str) -> tuple[str, ...]:
  """'mask_decoder.transformer.layers.0.mlp' -> ('mask_decoder', 'transformer', 'layers_0', 'mlp')."""
  parts = []
  for part in dotted.split("."):
    if part.isdigit() and parts:
      parts[-1] = f"{parts[-1]}_{part}"
    else:
      parts.append(part)
  return tuple(parts)


def torch_to_flax(key: str) -> Target:
  """Where torch key `key` lives in the Flax variables, and how to transform it."""
  for rule in RULES:
    match = re.match(rule.pattern, key)
    if match:
      leaf = rule.leaf or match.group(2)
      return Target(rule.collection, _module_path(match.group(1)) + (leaf,), rule.layout)
  raise ValueError(f"no rule for key {key!r}")


_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight",
               "lora_a": "lora_A", "lora_b": "lora_B"}


def flax_to_torch(path: tuple[str, ...]) -> str:
  """Inverse of `torch_to_flax` on the key: ('a', 'b_3', 'kernel') -> 'a.b.3.weight'."""
  *modules, leaf = path
  dotted = [re.sub(r"_(\d+)$", r".\1", name) for name in modules]
  return ".".join(dotted + [_TORCH_LEAF.get(leaf, leaf)])
