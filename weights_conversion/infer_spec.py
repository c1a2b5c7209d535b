"""Infer a `SamSpec` from the tensor shapes of a SAM state dict (torch keys).

Embed dim and patch size from the patch projection, image size from the absolute
position embedding, depth from the block indices, heads from the rel-pos head dim,
global blocks from the rel-pos length (2 * grid - 1; windowed blocks have
2 * window - 1). The decoder's head count does not show in any shape: SAM's 8 is used.
"""

import re

import numpy as np

from spt_jax.errors import SptUserError
from spt_jax.models.config import PRESETS, EncoderSpec, SamSpec, sam_preset

_ENC = "image_encoder."
_DEC = "mask_decoder."


def _shape(state, key, source):
  if key not in state:
    raise SptUserError(f"{source}: not a SAM checkpoint, missing key {key!r}")
  return np.shape(state[key])


def _count(state, prefix):
  """Number of list entries `prefix.N.` among the keys."""
  indices = {int(m.group(1)) for key in state
             if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", key))}
  return max(indices) + 1 if indices else 0


def infer_sam_spec(state: dict[str, np.ndarray], source: str) -> SamSpec:
  """The architecture the state dict was saved from; `source` names the file in errors."""
  if not any(key.startswith(_ENC) for key in state):
    raise SptUserError(f"{source}: not a SAM checkpoint, no 'image_encoder.*' keys "
                       f"(found e.g. {sorted(state)[:3]})")
  embed_dim, _, patch, _ = _shape(state, _ENC + "patch_embed.proj.weight", source)
  grid = _shape(state, _ENC + "pos_embed", source)[1]
  depth = _count(state, _ENC + "blocks")
  rel_len, head_dim = _shape(state, _ENC + "blocks.0.attn.rel_pos_h", source)
  global_len = 2 * grid - 1
  global_blocks, window_lens = [], set()
  for i in range(depth):
    length = _shape(state, f"{_ENC}blocks.{i}.attn.rel_pos_h", source)[0]
    if length == global_len:
      global_blocks.append(i)
    else:
      window_lens.add(length)
  if len(window_lens) > 1:
    raise SptUserError(f"{source}: windowed blocks have different rel-pos lengths "
                       f"{sorted(window_lens)}; expected one window size")
  window = (window_lens.pop() + 1) // 2 if window_lens else (rel_len + 1) // 2
  mlp_dim = _shape(state, _ENC + "blocks.0.mlp.lin1.weight", source)[0]
  out_chans = _shape(state, _ENC + "neck.0.weight", source)[0]
  encoder = EncoderSpec(
      image_size=int(grid * patch), patch_size=int(patch), embed_dim=int(embed_dim),
      depth=depth, num_heads=int(embed_dim // head_dim), mlp_ratio=mlp_dim / embed_dim,
      window_size=int(window), global_attn_indexes=tuple(global_blocks),
      out_chans=int(out_chans))
  layer0 = _DEC + "transformer.layers.0."
  prompt_dim = _shape(state, "prompt_encoder.no_mask_embed.weight", source)[1]
  internal = _shape(state, layer0 + "cross_attn_token_to_image.q_proj.weight", source)[0]
  return SamSpec(
      encoder=encoder,
      prompt_embed_dim=int(prompt_dim),
      mask_in_chans=int(_shape(state, "prompt_encoder.mask_downscaling.3.weight", source)[0]),
      decoder_depth=_count(state, _DEC + "transformer.layers"),
      decoder_mlp_dim=int(_shape(state, layer0 + "mlp.lin1.weight", source)[0]),
      attention_downsample_rate=int(prompt_dim // internal),
      num_multimask_outputs=int(_shape(state, _DEC + "mask_tokens.weight", source)[0] - 1),
      iou_head_depth=_count(state, _DEC + "iou_prediction_head.layers"),
      iou_head_hidden_dim=int(
          _shape(state, _DEC + "iou_prediction_head.layers.0.weight", source)[0]),
  ).validate()


def preset_name(spec: SamSpec) -> str:
  """'vit_b'/'vit_l'/'vit_h' when `spec` is exactly a published size, else 'custom'."""
  return next((name for name in PRESETS if sam_preset(name) == spec), "custom")


def resolve_spec(state: dict[str, np.ndarray], model_type: str, source: str) -> SamSpec:
  """The inferred spec, checked against `model_type` unless it is 'auto'."""
  inferred = infer_sam_spec(state, source)
  if model_type == "auto":
    return inferred
  wanted = sam_preset(model_type)
  if wanted != inferred:
    found, expected = _flat(inferred.to_dict()), _flat(wanted.to_dict())
    diffs = [f"{field}: checkpoint {found[field]}, {model_type} {expected[field]}"
             for field in expected if found[field] != expected[field]]
    raise SptUserError(f"{source}: does not hold a {model_type} model "
                       f"(it looks like {preset_name(inferred)}): " + "; ".join(diffs))
  return wanted


def _flat(spec_dict, prefix=""):
  flat = {}
  for key, value in spec_dict.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat
