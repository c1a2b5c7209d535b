"""SAM's ViT image encoder in Flax (NHWC), parameter names mirroring Meta's torch keys.

Windowed blocks attend inside non-overlapping windows (the grid is zero-padded at the
bottom/right, each side by its own amount); global blocks attend over the whole grid.
Both add the decomposed relative position bias of MViTv2. A neck maps the tokens to
the prompt embedding width.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spt_jax.errors import SptUserError
from spt_jax.kernels import global_attention
from spt_jax.models import attention
from spt_jax.models.config import AdapterSpec, EncoderSpec, NO_ADAPTERS
from spt_jax.models.layers import (ADAPTERS, Dense, MLPBlock, ParallelAdapter, exact_gelu,
                                   layer_norm)
from spt_jax.ops.resize import linear_resize_matrix

ENCODER_LN_EPS = 1e-6
Dtype = Any
# The encoder's own attention core (`spt_jax.models.attention`: autodiff over query
# chunks); every other name is an implementation of `spt_jax.kernels.global_attention`.
CHUNKED = "chunked"
ATTENTION_IMPLS = (CHUNKED,) + global_attention.IMPLS
# What the backward pass keeps of each encoder block (`ImageEncoder.remat`): 'none'
# (everything autodiff saves), 'blocks' (the block's input only: the block's forward
# runs again in the backward), or a `jax.checkpoint_policies` policy, which also keeps
# what it names (e.g. the weight matmuls' outputs).
REMAT = ("none", "blocks", "dots_saveable", "dots_with_no_batch_dims_saveable")


def remat_policy(remat: str | bool):
  """(rematerialise?, jax.checkpoint policy or None) of a `REMAT` name; True is
  'blocks' and False 'none' (the former boolean)."""
  name = {True: "blocks", False: "none"}.get(remat, remat)
  if name not in REMAT:
    raise SptUserError(f"model.remat={remat!r}: expected one of {REMAT}")
  return name != "none", (getattr(jax.checkpoint_policies, name)
                          if name not in ("none", "blocks") else None)


def uses_chunked_core(global_attention_impl: str, window_attention_impl: str,
                      adapters: AdapterSpec) -> bool:
  """Whether an encoder with these settings runs its own chunked attention core
  (CHUNKED) in some block: by impl, or for prompt tokens (`AdapterSpec.vpt_tokens`),
  which only that core attends to."""
  return (CHUNKED in (global_attention_impl, window_attention_impl)
          or bool(adapters.vpt_tokens))


def window_partition(x: jax.Array, window: int) -> tuple[jax.Array, tuple[int, int]]:
  """(B, H, W, C) -> (B * nH * nW, window, window, C) and the padded (Hp, Wp)."""
  batch, height, width, channels = x.shape
  pad_h, pad_w = -height % window, -width % window
  x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
  padded_h, padded_w = height + pad_h, width + pad_w
  x = x.reshape(batch, padded_h // window, window, padded_w // window, window, channels)
  windows = x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window, window, channels)
  return windows, (padded_h, padded_w)


def window_unpartition(windows: jax.Array, window: int, padded_hw: tuple[int, int],
                       hw: tuple[int, int]) -> jax.Array:
  """Inverse of `window_partition`: (B * nH * nW, w, w, C) -> (B, H, W, C)."""
  padded_h, padded_w = padded_hw
  channels = windows.shape[-1]
  x = windows.reshape(-1, padded_h // window, padded_w // window, window, window, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, padded_h, padded_w, channels)
  return x[:, :hw[0], :hw[1]]


def relative_position_table(rel_pos: jax.Array, q_size: int, k_size: int) -> jax.Array:
  """Bias table (q_size, k_size, C) from rel_pos (L, C), Meta's `get_rel_pos` rule.

  rel_pos is linearly resized (torch align_corners=False) to 2 * max(q, k) - 1 entries
  when its length differs; the shorter side's coordinates are scaled up.
  """
  max_dist = 2 * max(q_size, k_size) - 1
  if rel_pos.shape[0] != max_dist:
    resize = linear_resize_matrix(rel_pos.shape[0], max_dist)
    rel_pos = jnp.einsum("ml,lc->mc", jnp.asarray(resize, rel_pos.dtype), rel_pos,
                         precision=jax.lax.Precision.HIGHEST)
  q_coords = np.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
  k_coords = np.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
  offsets = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
  return rel_pos[offsets.astype(np.int64)]


class EncoderAttention(nn.Module):
  """Multi-head self-attention over a token grid with decomposed rel-pos bias.

  Attributes:
    num_heads: heads H.
    rel_pos_grid: (h, w) the rel-pos parameters are sized for (2h - 1, 2w - 1 rows).
    query_chunk: queries processed per step of the global attention (memory bound).
    vpt_tokens: learned prompt tokens (ADAPTERS) projected by qkv and attended to as
      extra keys/values by every query, without position bias (0 = none).
    impl: CHUNKED or a fused global attention implementation (used where there
      are no prompt tokens).
  """
  num_heads: int
  rel_pos_grid: tuple[int, int]
  query_chunk: int
  impl: str = CHUNKED
  lora_rank: int = 0
  lora_scaling: float = 0.0
  vpt_tokens: int = 0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, h, w, D) -> (B, h, w, D)."""
    batch, height, width, dim = x.shape
    head_dim = dim // self.num_heads
    qkv_layer = Dense(3 * dim, lora_rank=self.lora_rank, lora_scaling=self.lora_scaling,
                      num_slots=3, lora_slots=(0, 2), dtype=self.dtype, name="qkv")
    qkv = qkv_layer(x)  # (B, h, w, 3 D): q, k, v slots, each heads x channels
    rel_pos_h = self.param("rel_pos_h", nn.initializers.zeros,
                           (2 * self.rel_pos_grid[0] - 1, head_dim), jnp.float32)
    rel_pos_w = self.param("rel_pos_w", nn.initializers.zeros,
                           (2 * self.rel_pos_grid[1] - 1, head_dim), jnp.float32)
    table_h = relative_position_table(rel_pos_h, height, height).astype(self.dtype)
    table_w = relative_position_table(rel_pos_w, width, width).astype(self.dtype)
    extra_kv = None
    if self.vpt_tokens:
      tokens = self.variable(ADAPTERS, "vpt_tokens", lambda: 0.02 * jax.random.normal(
          self.make_rng("params"), (self.vpt_tokens, dim)))
      extra = qkv_layer(tokens.value).reshape(self.vpt_tokens, 3, self.num_heads, head_dim)
      extra_kv = (extra[:, 1].swapaxes(0, 1), extra[:, 2].swapaxes(0, 1))  # (H, T, C)
    if extra_kv is None and self.impl != CHUNKED:
      out = global_attention.attention_from_qkv(qkv, table_h, table_w,
                                                num_heads=self.num_heads, impl=self.impl)
    else:
      q, k, v = qkv.reshape(batch, height, width, 3, self.num_heads, head_dim).transpose(
          3, 0, 4, 1, 2, 5)  # each (B, H, h, w, C)
      out = attention.grid_attention_with_rel_pos(q, k, v, table_h, table_w,
                                                  query_chunk=self.query_chunk,
                                                  extra_kv=extra_kv)
      out = out.transpose(0, 2, 3, 1, 4).reshape(batch, height, width, dim)
    return Dense(dim, dtype=self.dtype, name="proj")(out)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block; `window` 0 means global attention. The attention
  runs by `global_attention_impl` or, in windowed blocks, `window_attention_impl`
  (see EncoderAttention.impl; a window is a 14 x 14 grid of its own)."""
  spec: EncoderSpec
  window: int
  adapters: AdapterSpec = NO_ADAPTERS
  query_chunk: int = 1024
  dtype: Dtype = jnp.float32
  global_attention_impl: str = "auto"
  window_attention_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, h, w, D) -> (B, h, w, D)."""
    height, width = x.shape[1:3]
    shortcut = x
    x = layer_norm(ENCODER_LN_EPS, self.dtype, name="norm1")(x)
    if self.window:
      x, padded_hw = window_partition(x, self.window)
    rel_pos_grid = ((self.window, self.window) if self.window
                    else (self.spec.grid_size, self.spec.grid_size))
    impl = self.window_attention_impl if self.window else self.global_attention_impl
    x = EncoderAttention(self.spec.num_heads, rel_pos_grid, self.query_chunk, impl,
                         lora_rank=self.adapters.encoder_lora_rank(),
                         lora_scaling=self.adapters.lora_scaling,
                         vpt_tokens=self.adapters.vpt_tokens, dtype=self.dtype,
                         name="attn")(x)
    if self.window:
      x = window_unpartition(x, self.window, padded_hw, (height, width))
    x = shortcut + x
    mlp = MLPBlock(int(self.spec.embed_dim * self.spec.mlp_ratio), exact_gelu,
                   dtype=self.dtype, name="mlp")
    normed = layer_norm(ENCODER_LN_EPS, self.dtype, name="norm2")(x)
    out = x + mlp(normed)
    if self.adapters.mlp_adapter_dim:
      out = out + ParallelAdapter(self.adapters.mlp_adapter_dim,
                                  self.adapters.mlp_adapter_scale, self.dtype,
                                  name="mlp_adapter")(normed)
    return out


class PatchEmbed(nn.Module):
  """Non-overlapping patch projection: Meta's strided convolution, as patches x kernel.

  The same function and parameters as `nn.Conv(D, (p, p), strides=p)` (`proj/kernel`
  (p, p, 3, D), `proj/bias` (D,)), computed as a reshape of the image into its
  patches and one matmul. On TPU this matters: a convolution's (B, S, S, 3) operand
  puts 3 channels on the 128-lane minor axis, about 42 times its bytes (a 1024 px
  image in float32: 512 MiB); the patches (B, S/p, S/p, p p 3) are dense.
  """
  embed_dim: int
  patch_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, S, S, 3) -> (B, S / p, S / p, D)."""
    return _PatchProjection(self.embed_dim, self.patch_size, self.dtype, name="proj")(x)


class _PatchProjection(nn.Module):
  """`PatchEmbed`'s parameters (`nn.Conv`'s names, shapes and initialisers)."""
  features: int
  patch_size: int
  dtype: Dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    p = self.patch_size
    if height % p or width % p:
      raise SptUserError(f"PatchEmbed: image size {height} x {width} is not a multiple "
                         f"of the patch size {p}")
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (p, p, channels, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    patches = x.reshape(batch, height // p, p, width // p, p, channels)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(
        batch, height // p, width // p, p * p * channels)
    out = jnp.dot(patches.astype(self.dtype),
                  kernel.reshape(p * p * channels, self.features).astype(self.dtype))
    return out + bias.astype(self.dtype)


class ImageEncoder(nn.Module):
  """Meta's `ImageEncoderViT`: (B, S, S, 3) normalised, padded images -> embeddings."""
  spec: EncoderSpec
  adapters: AdapterSpec = NO_ADAPTERS
  query_chunk: int = 1024
  remat: str | bool = "none"
  dtype: Dtype = jnp.float32
  global_attention_impl: str = "auto"
  window_attention_impl: str = "auto"

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """images: (B, S, S, 3) -> (B, S / p, S / p, out_chans)."""
    spec = self.spec
    x = PatchEmbed(spec.embed_dim, spec.patch_size, self.dtype, name="patch_embed")(images)
    pos_embed = self.param("pos_embed", nn.initializers.zeros,
                           (1, spec.grid_size, spec.grid_size, spec.embed_dim), jnp.float32)
    x = x + pos_embed.astype(self.dtype)
    rematerialise, policy = remat_policy(self.remat)
    block_type = nn.remat(EncoderBlock, policy=policy) if rematerialise else EncoderBlock
    for i in range(spec.depth):
      window = 0 if i in spec.global_attn_indexes else spec.window_size
      x = block_type(spec, window, self.adapters, self.query_chunk, self.dtype,
                     self.global_attention_impl, self.window_attention_impl,
                     name=f"blocks_{i}")(x)
    return self._neck(x)

  def _neck(self, x):
    """1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d: (B, h, w, D) -> (B, h, w, out)."""
    out = self.spec.out_chans
    x = nn.Conv(out, (1, 1), use_bias=False, dtype=self.dtype, name="neck_0")(x)
    x = layer_norm(ENCODER_LN_EPS, self.dtype, name="neck_1")(x)
    x = nn.Conv(out, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                name="neck_2")(x)
    return layer_norm(ENCODER_LN_EPS, self.dtype, name="neck_3")(x)
