"""SAM's prompt encoder in Flax: points, boxes and a low-res mask -> sparse/dense embeddings."""

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from spt_jax.models.config import SamSpec
from spt_jax.models.layers import exact_gelu, layer_norm

MASK_LN_EPS = 1e-6
Dtype = Any


class PositionEmbeddingRandom(nn.Module):
  """Random Fourier features of 2-D coordinates in [0, 1]^2 (2F channels out)."""
  num_pos_feats: int

  def setup(self):
    self.positional_encoding_gaussian_matrix = self.param(
        "positional_encoding_gaussian_matrix", nn.initializers.normal(1.0),
        (2, self.num_pos_feats), jnp.float32)

  def encode(self, coords: jax.Array) -> jax.Array:
    """coords: (..., 2) xy in [0, 1] -> (..., 2F) [sin, cos]."""
    projected = (2.0 * coords - 1.0) @ self.positional_encoding_gaussian_matrix
    projected = 2.0 * math.pi * projected
    return jnp.concatenate([jnp.sin(projected), jnp.cos(projected)], axis=-1)

  def dense(self, height: int, width: int) -> jax.Array:
    """Encoding of every cell centre of an (h, w) grid: (h, w, 2F)."""
    ys = (jnp.arange(height, dtype=jnp.float32) + 0.5) / height
    xs = (jnp.arange(width, dtype=jnp.float32) + 0.5) / width
    grid = jnp.stack(jnp.meshgrid(xs, ys, indexing="xy"), axis=-1)
    return self.encode(grid)

  def pixels(self, coords: jax.Array, image_hw: tuple[int, int]) -> jax.Array:
    """coords: (..., 2) xy in input pixels -> (..., 2F)."""
    scale = jnp.array([image_hw[1], image_hw[0]], jnp.float32)
    return self.encode(coords.astype(jnp.float32) / scale)


class PromptEncoder(nn.Module):
  """Meta's `PromptEncoder`; labels: 1 positive, 0 negative, -1 not-a-point (padding)."""
  spec: SamSpec
  dtype: Dtype = jnp.float32

  def setup(self):
    dim, chans = self.spec.prompt_embed_dim, self.spec.mask_in_chans
    self.pe_layer = PositionEmbeddingRandom(dim // 2)
    # pos point, neg point, box top-left, box bottom-right
    self.point_embeddings = [nn.Embed(1, dim) for _ in range(4)]
    self.not_a_point_embed = nn.Embed(1, dim)
    self.no_mask_embed = nn.Embed(1, dim)
    self.mask_downscaling_0 = nn.Conv(chans // 4, (2, 2), strides=(2, 2), padding="VALID",
                                      dtype=self.dtype)
    self.mask_downscaling_1 = layer_norm(MASK_LN_EPS, self.dtype)
    self.mask_downscaling_3 = nn.Conv(chans, (2, 2), strides=(2, 2), padding="VALID",
                                      dtype=self.dtype)
    self.mask_downscaling_4 = layer_norm(MASK_LN_EPS, self.dtype)
    self.mask_downscaling_6 = nn.Conv(dim, (1, 1), dtype=self.dtype)

  @property
  def _input_hw(self):
    return (self.spec.image_size, self.spec.image_size)

  def get_dense_pe(self) -> jax.Array:
    """Positional encoding of the image embedding grid: (h, w, D)."""
    size = self.spec.embedding_size
    return self.pe_layer.dense(size, size)

  def embed_points(self, coords: jax.Array, labels: jax.Array, pad: bool) -> jax.Array:
    """coords: (B, K, 2) xy input pixels, labels: (B, K) -> (B, K (+1 if pad), D).

    `pad` appends a not-a-point token, as Meta does when no box is given.
    """
    coords = coords.astype(jnp.float32) + 0.5
    if pad:
      coords = jnp.concatenate([coords, jnp.zeros_like(coords[:, :1])], axis=1)
      labels = jnp.concatenate([labels, -jnp.ones_like(labels[:, :1])], axis=1)
    embedding = self.pe_layer.pixels(coords, self._input_hw)
    labels = labels[..., None]
    embedding = jnp.where(labels == -1, self.not_a_point_embed.embedding[0], embedding)
    embedding = jnp.where(labels == 0, embedding + self.point_embeddings[0].embedding[0],
                          embedding)
    return jnp.where(labels == 1, embedding + self.point_embeddings[1].embedding[0],
                     embedding)

  def embed_boxes(self, boxes: jax.Array) -> jax.Array:
    """boxes: (B, 4) xyxy input pixels -> (B, 2, D), one token per corner."""
    corners = boxes.astype(jnp.float32).reshape(-1, 2, 2) + 0.5
    embedding = self.pe_layer.pixels(corners, self._input_hw)
    corner_types = jnp.stack([self.point_embeddings[2].embedding[0],
                              self.point_embeddings[3].embedding[0]])
    return embedding + corner_types

  def embed_masks(self, masks: jax.Array) -> jax.Array:
    """masks: (B, 4h, 4w) low-res mask logits -> (B, h, w, D)."""
    x = self.mask_downscaling_0(masks[..., None].astype(self.dtype))
    x = exact_gelu(self.mask_downscaling_1(x))
    x = self.mask_downscaling_3(x)
    x = exact_gelu(self.mask_downscaling_4(x))
    return self.mask_downscaling_6(x)

  def no_mask_dense(self, batch: int) -> jax.Array:
    """The dense embedding when no mask is given: (B, h, w, D)."""
    size = self.spec.embedding_size
    return jnp.broadcast_to(self.no_mask_embed.embedding[0],
                            (batch, size, size, self.spec.prompt_embed_dim))

  def __call__(self, points: Optional[tuple[jax.Array, jax.Array]] = None,
               boxes: Optional[jax.Array] = None,
               masks: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
    """Sparse (B, T, D) and dense (B, h, w, D) embeddings; None means absent.

    points: ((B, K, 2), (B, K)); boxes: (B, 4); masks: (B, 4h, 4w). T = K (+1 when
    no box) + 2 if boxes.
    """
    present = [x for x in (points and points[0], boxes, masks) if x is not None]
    batch = present[0].shape[0] if present else 1
    sparse = [jnp.zeros((batch, 0, self.spec.prompt_embed_dim), jnp.float32)]
    if points is not None:
      sparse.append(self.embed_points(points[0], points[1], pad=boxes is None))
    if boxes is not None:
      sparse.append(self.embed_boxes(boxes))
    dense = self.embed_masks(masks) if masks is not None else self.no_mask_dense(batch)
    return jnp.concatenate(sparse, axis=1), dense
