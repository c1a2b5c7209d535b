"""Architecture specs of SAM (encoder, prompt encoder, decoder) and of its adapters.

A `SamSpec` fully determines the parameter shapes; it is what a converted checkpoint
stores beside its weights (`model_spec.json`), so loading needs no flags. The three
published sizes are presets; any other size is a `SamSpec` with different numbers.
"""

import dataclasses
from typing import Any, Mapping

from spt_jax.errors import SptUserError
from spt_jax.fields import known_fields


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  """ViT image encoder (Meta's `ImageEncoderViT`)."""
  image_size: int = 1024
  patch_size: int = 16
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  window_size: int = 14
  global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
  out_chans: int = 256

  @property
  def grid_size(self) -> int:
    """Tokens per side of the patch grid (64 for 1024 / 16)."""
    return self.image_size // self.patch_size

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads


@dataclasses.dataclass(frozen=True)
class SamSpec:
  """Whole SAM: encoder plus prompt encoder and two-way transformer decoder."""
  encoder: EncoderSpec = EncoderSpec()
  prompt_embed_dim: int = 256
  mask_in_chans: int = 16
  decoder_depth: int = 2
  decoder_num_heads: int = 8
  decoder_mlp_dim: int = 2048
  attention_downsample_rate: int = 2
  num_multimask_outputs: int = 3
  iou_head_depth: int = 3
  iou_head_hidden_dim: int = 256

  @property
  def image_size(self) -> int:
    return self.encoder.image_size

  @property
  def embedding_size(self) -> int:
    """Side of the image embedding grid (64 for SAM)."""
    return self.encoder.grid_size

  @property
  def low_res_size(self) -> int:
    """Side of the decoder's low-resolution mask logits (256 for SAM)."""
    return 4 * self.encoder.grid_size

  def validate(self) -> "SamSpec":
    enc = self.encoder
    problems = []
    if enc.image_size % enc.patch_size:
      problems.append(f"encoder.image_size {enc.image_size} is not a multiple of "
                      f"patch_size {enc.patch_size}")
    if enc.embed_dim % enc.num_heads:
      problems.append(f"encoder.embed_dim {enc.embed_dim} is not divisible by "
                      f"num_heads {enc.num_heads}")
    bad = [i for i in enc.global_attn_indexes if not 0 <= i < enc.depth]
    if bad:
      problems.append(f"encoder.global_attn_indexes {bad} outside 0..{enc.depth - 1}")
    if enc.out_chans != self.prompt_embed_dim:
      problems.append(f"encoder.out_chans {enc.out_chans} differs from prompt_embed_dim "
                      f"{self.prompt_embed_dim}")
    internal = self.prompt_embed_dim // self.attention_downsample_rate
    if internal % self.decoder_num_heads:
      problems.append(f"decoder internal dim {internal} is not divisible by "
                      f"decoder_num_heads {self.decoder_num_heads}")
    if problems:
      raise SptUserError("invalid SAM spec: " + "; ".join(problems))
    return self

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: Mapping[str, Any], source: str = "model spec") -> "SamSpec":
    """Inverse of `to_dict`; unknown fields are a `SptUserError`."""
    data = known_fields(cls, data, source)
    encoder = known_fields(EncoderSpec, data.pop("encoder", {}), f"{source}: encoder")
    if "global_attn_indexes" in encoder:
      encoder["global_attn_indexes"] = tuple(encoder["global_attn_indexes"])
    return cls(encoder=EncoderSpec(**encoder), **data).validate()


_PRESET_ENCODERS = {
    "vit_b": EncoderSpec(embed_dim=768, depth=12, num_heads=12,
                         global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": EncoderSpec(embed_dim=1024, depth=24, num_heads=16,
                         global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": EncoderSpec(embed_dim=1280, depth=32, num_heads=16,
                         global_attn_indexes=(7, 15, 23, 31)),
}
PRESETS = tuple(_PRESET_ENCODERS)


def sam_preset(name: str) -> SamSpec:
  """The published SAM sizes: 'vit_b', 'vit_l' or 'vit_h'."""
  if name not in _PRESET_ENCODERS:
    raise SptUserError(f"unknown SAM model type {name!r}; expected one of {list(PRESETS)}")
  return SamSpec(encoder=_PRESET_ENCODERS[name])


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
  """What trainable adapters the model carries (all off = plain, frozen SAM).

  lora_rank: rank r of LoRA (0 = no LoRA); scaling is lora_alpha / r.
  lora_encoder: LoRA on q and v of every encoder block's fused qkv projection.
  lora_decoder: LoRA on q_proj and v_proj of every decoder attention.
  vra: VRA-Adapter gamma after norm4 of two-way blocks.
  vra_block: -1 for every two-way block, else the 1-based block index (authors'
    `vatt_pos`).
  vra_alpha: relation sparsification threshold (0 = dense softmax).
  mlp_adapter_dim: width of a parallel bottleneck adapter beside every encoder block's
    MLP (AdaptFormer-style; 0 = none), scaled by mlp_adapter_scale.
  vpt_tokens: learned prompt tokens per encoder block (deep visual prompt tuning, as
    extra keys/values of every window's and the global attention; 0 = none).
  """
  lora_rank: int = 0
  lora_alpha: float = 1.0
  lora_encoder: bool = True
  lora_decoder: bool = True
  vra: bool = False
  vra_block: int = -1
  vra_alpha: float = 0.0
  mlp_adapter_dim: int = 0
  mlp_adapter_scale: float = 0.1
  vpt_tokens: int = 0

  @property
  def lora_scaling(self) -> float:
    return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0

  def encoder_lora_rank(self) -> int:
    return self.lora_rank if self.lora_encoder else 0

  def decoder_lora_rank(self) -> int:
    return self.lora_rank if self.lora_decoder else 0

  def vra_in_block(self, index: int) -> bool:
    """Whether two-way block `index` (0-based) carries a VRA gamma."""
    return self.vra and (self.vra_block == -1 or self.vra_block == index + 1)


NO_ADAPTERS = AdapterSpec()

