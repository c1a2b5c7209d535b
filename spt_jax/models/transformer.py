"""SAM's two-way transformer (tokens <-> image) in Flax, with SPT's adapter hooks.

Hooks, all off for plain SAM: LoRA on q_proj/v_proj of every attention
(`AdapterSpec.lora_decoder`), and the VRA-Adapter gamma after norm4
(`AdapterSpec.vra`), which adds gamma * relation(keys) to the image tokens.
"""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from spt_jax.models.config import AdapterSpec, NO_ADAPTERS
from spt_jax.models.layers import ADAPTERS, Dense, MLPBlock, layer_norm
from spt_jax.ops import lean_autodiff

TRANSFORMER_LN_EPS = 1e-5
Dtype = Any
# keys (B, N, C) -> relation-weighted keys (B, N, C); see spt_jax/spt/vra.py.
RelationFn = Callable[[jax.Array], jax.Array]


class Attention(nn.Module):
  """Multi-head attention whose q/k/v are projected to embed_dim / downsample_rate; its
  backward keeps the projections token-major (`lean_autodiff.multi_head_attention`)."""
  num_heads: int
  downsample_rate: int = 1
  lora_rank: int = 0
  lora_scaling: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """q: (B, Nq, D), k/v: (B, Nk, D) -> (B, Nq, D)."""
    dim = q.shape[-1]
    internal = dim // self.downsample_rate
    lora = dict(lora_rank=self.lora_rank, lora_scaling=self.lora_scaling, dtype=self.dtype)
    q = Dense(internal, name="q_proj", **lora)(q)
    k = Dense(internal, dtype=self.dtype, name="k_proj")(k)
    v = Dense(internal, name="v_proj", **lora)(v)
    out = lean_autodiff.multi_head_attention(q, k, v, self.num_heads)
    return Dense(dim, dtype=self.dtype, name="out_proj")(out)


class TwoWayAttentionBlock(nn.Module):
  """Self-attn of tokens, tokens->image, MLP on tokens, image->tokens [, VRA]."""
  num_heads: int
  mlp_dim: int
  downsample_rate: int
  skip_first_layer_pe: bool
  adapters: AdapterSpec = NO_ADAPTERS
  use_vra: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, queries, keys, query_pe, key_pe,
               relation_fn: Optional[RelationFn] = None):
    """queries/query_pe: (B, T, D); keys/key_pe: (B, N, D) -> (queries, keys)."""
    lora = dict(lora_rank=self.adapters.decoder_lora_rank(),
                lora_scaling=self.adapters.lora_scaling, dtype=self.dtype)
    norm = lambda name: layer_norm(TRANSFORMER_LN_EPS, self.dtype, name=name)
    self_attn = Attention(self.num_heads, name="self_attn", **lora)
    if self.skip_first_layer_pe:
      queries = self_attn(queries, queries, queries)
    else:
      q = queries + query_pe
      queries = queries + self_attn(q, q, queries)
    queries = norm("norm1")(queries)

    q, k = queries + query_pe, keys + key_pe
    queries = queries + Attention(self.num_heads, self.downsample_rate,
                                  name="cross_attn_token_to_image", **lora)(q, k, keys)
    queries = norm("norm2")(queries)

    mlp = MLPBlock(self.mlp_dim, nn.relu, dtype=self.dtype, name="mlp")
    queries = norm("norm3")(queries + mlp(queries))

    q, k = queries + query_pe, keys + key_pe
    keys = keys + Attention(self.num_heads, self.downsample_rate,
                            name="cross_attn_image_to_token", **lora)(k, q, queries)
    keys = norm("norm4")(keys)

    if self.use_vra:
      gamma = self.variable(ADAPTERS, "lora_sim_scale",
                            lambda: jnp.zeros((keys.shape[-1],), jnp.float32))
      keys = keys + relation_fn(keys) * gamma.value.astype(keys.dtype)
    return queries, keys


class TwoWayTransformer(nn.Module):
  """`depth` two-way blocks, then a final token->image attention and LayerNorm."""
  depth: int
  num_heads: int
  mlp_dim: int
  downsample_rate: int = 2
  adapters: AdapterSpec = NO_ADAPTERS
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, image_embedding, image_pe, point_embedding,
               relation_fn: Optional[RelationFn] = None):
    """image_embedding: (B, N, D), image_pe: (N, D), point_embedding: (B, T, D).

    Returns the processed tokens (B, T, D) and image tokens (B, N, D).
    """
    queries, keys = point_embedding, image_embedding
    image_pe = image_pe[None].astype(keys.dtype)
    for i in range(self.depth):
      use_vra = self.adapters.vra_in_block(i)
      if use_vra and relation_fn is None:
        raise ValueError("a VRA adapter needs relation_fn")
      queries, keys = TwoWayAttentionBlock(
          self.num_heads, self.mlp_dim, self.downsample_rate, skip_first_layer_pe=i == 0,
          adapters=self.adapters, use_vra=use_vra, dtype=self.dtype,
          name=f"layers_{i}")(queries, keys, point_embedding, image_pe, relation_fn)
    q, k = queries + point_embedding, keys + image_pe
    final = Attention(self.num_heads, self.downsample_rate,
                      lora_rank=self.adapters.decoder_lora_rank(),
                      lora_scaling=self.adapters.lora_scaling, dtype=self.dtype,
                      name="final_attn_token_to_image")
    queries = queries + final(q, k, keys)
    queries = layer_norm(TRANSFORMER_LN_EPS, self.dtype, name="norm_final_attn")(queries)
    return queries, keys
