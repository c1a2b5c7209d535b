"""SAM's mask decoder in Flax: two-way transformer, 4x upscaling, hypernetwork masks, IoU head."""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from spt_jax.models.config import AdapterSpec, NO_ADAPTERS, SamSpec
from spt_jax.models.layers import MLP, ConvTranspose2x2, exact_gelu, layer_norm
from spt_jax.models.transformer import TwoWayTransformer
from spt_jax.spt.vra import relate_prompt_tokens

UPSCALE_LN_EPS = 1e-6
Dtype = Any


class MaskDecoder(nn.Module):
  """Meta's `MaskDecoder` over a batch of images with P prompts each.

  Outputs mask logits at 4x the embedding grid (256 x 256 for SAM). With
  `multimask_output` the three multimask tokens' masks (1..3) are returned, else the
  single-mask token's (0), as Meta does. With a VRA adapter the image tokens are
  related through the image embedding itself (`spt_jax.spt.vra`).
  """
  spec: SamSpec
  adapters: AdapterSpec = NO_ADAPTERS
  dtype: Dtype = jnp.float32
  relation_impl: str = "auto"

  @nn.compact
  def __call__(self, image_embeddings: jax.Array, image_pe: jax.Array,
               sparse: jax.Array, dense: jax.Array,
               multimask_output: bool) -> tuple[jax.Array, jax.Array]:
    """Predicts masks for P prompts per image.

    Args:
      image_embeddings: (B, h, w, D).
      image_pe: (h, w, D).
      sparse: (B, P, T, D) point/box prompt embeddings.
      dense: (B, P, h, w, D) mask prompt embeddings.
      multimask_output: static; 3 masks per prompt instead of 1.

    Returns:
      mask logits (B, P, M, 4h, 4w) and IoU predictions (B, P, M), M = 3 or 1.
    """
    spec = self.spec
    dim = spec.prompt_embed_dim
    num_mask_tokens = spec.num_multimask_outputs + 1
    batch, prompts, num_sparse = sparse.shape[:3]
    _, height, width, _ = image_embeddings.shape

    iou_token = nn.Embed(1, dim, name="iou_token").embedding
    mask_tokens = nn.Embed(num_mask_tokens, dim, name="mask_tokens").embedding
    output_tokens = jnp.concatenate([iou_token, mask_tokens], axis=0)
    output_tokens = jnp.broadcast_to(output_tokens,
                                     (batch * prompts,) + output_tokens.shape)
    tokens = jnp.concatenate(
        [output_tokens, sparse.reshape(batch * prompts, num_sparse, dim)], axis=1)
    tokens = tokens.astype(self.dtype)

    src = image_embeddings[:, None].astype(self.dtype) + dense.astype(self.dtype)
    src = src.reshape(batch * prompts, height * width, dim)
    relation_fn = None
    if self.adapters.vra:
      relation_fn = functools.partial(
          relate_prompt_tokens, image_embeddings.reshape(batch, height * width, dim),
          alpha=self.adapters.vra_alpha, impl=self.relation_impl)
    transformer = TwoWayTransformer(
        spec.decoder_depth, spec.decoder_num_heads, spec.decoder_mlp_dim,
        spec.attention_downsample_rate, self.adapters, self.dtype, name="transformer")
    hs, src = transformer(src, image_pe.reshape(height * width, dim), tokens, relation_fn)
    iou_token_out = hs[:, 0]
    mask_tokens_out = hs[:, 1:1 + num_mask_tokens]

    upscaled = self._upscale(src.reshape(batch * prompts, height, width, dim))
    hyper_in = jnp.stack([
        MLP(dim, dim // 8, 3, dtype=self.dtype,
            name=f"output_hypernetworks_mlps_{i}")(mask_tokens_out[:, i])
        for i in range(num_mask_tokens)], axis=1)
    masks = jnp.einsum("bmc,bhwc->bmhw", hyper_in, upscaled)
    iou_pred = MLP(spec.iou_head_hidden_dim, num_mask_tokens, spec.iou_head_depth,
                   dtype=self.dtype, name="iou_prediction_head")(iou_token_out)

    chosen = slice(1, None) if multimask_output else slice(0, 1)
    masks = masks[:, chosen].astype(jnp.float32)
    iou_pred = iou_pred[:, chosen].astype(jnp.float32)
    return (masks.reshape((batch, prompts) + masks.shape[1:]),
            iou_pred.reshape(batch, prompts, -1))

  def _upscale(self, x):
    """(B, h, w, D) -> (B, 4h, 4w, D / 8): two 2x transposed convs (torch indices 0..4)."""
    dim = self.spec.prompt_embed_dim
    x = ConvTranspose2x2(dim // 4, self.dtype, name="output_upscaling_0")(x)
    x = exact_gelu(layer_norm(UPSCALE_LN_EPS, self.dtype, name="output_upscaling_1")(x))
    x = ConvTranspose2x2(dim // 8, self.dtype, name="output_upscaling_3")(x)
    return exact_gelu(x)
