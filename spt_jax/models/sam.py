"""The Segment Anything Model in Flax: encoder once per image, then prompts -> masks."""

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from spt_jax.models.config import AdapterSpec, NO_ADAPTERS, SamSpec
from spt_jax.models.image_encoder import ImageEncoder
from spt_jax.models.mask_decoder import MaskDecoder
from spt_jax.models.prompt_encoder import PromptEncoder
from spt_jax.models.prompts import Prompts

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
Dtype = Any


def normalize_and_mask(images: jax.Array, input_sizes: jax.Array) -> jax.Array:
  """Meta's `Sam.preprocess` on already padded images.

  Args:
    images: (B, S, S, 3) uint8/float RGB, resized image at the top-left.
    input_sizes: (B, 2) int (h, w) of the resized image inside the S x S canvas.

  Returns:
    (B, S, S, 3) float32, (x - mean) / std inside, 0 in the padding.
  """
  size = images.shape[1]
  normalized = (images.astype(jnp.float32) - jnp.array(PIXEL_MEAN)) / jnp.array(PIXEL_STD)
  rows = jnp.arange(size)[None, :, None] < input_sizes[:, 0, None, None]
  cols = jnp.arange(size)[None, None, :] < input_sizes[:, 1, None, None]
  return jnp.where((rows & cols)[..., None], normalized, 0.0)


class Sam(nn.Module):
  """Image encoder, prompt encoder and mask decoder with Meta's parameter names.

  Attributes:
    spec: the architecture.
    adapters: which trainable adapters exist (none for plain SAM).
    dtype: compute dtype (parameters stay float32).
    query_chunk: query tokens per step of the encoder's own (chunked) attention core.
    remat: what the backward keeps of each encoder block (`image_encoder.REMAT`:
      'none', 'blocks' or a checkpoint policy; saves memory for compute).
    global_attention_impl: the encoder's global blocks' attention:
      `image_encoder.CHUNKED` or an implementation of `spt_jax.kernels.
      global_attention` ('auto': the lowering platform's fused kernel).
  """
  spec: SamSpec
  adapters: AdapterSpec = NO_ADAPTERS
  dtype: Dtype = jnp.float32
  query_chunk: int = 1024
  remat: str | bool = "none"
  global_attention_impl: str = "auto"
  window_attention_impl: str = "auto"

  def setup(self):
    self.setup_encoders()
    self.mask_decoder = MaskDecoder(self.spec, self.adapters, self.dtype)

  def setup_encoders(self):
    """The image and prompt encoders (shared with models that change the decoding)."""
    self.image_encoder = ImageEncoder(self.spec.encoder, self.adapters, self.query_chunk,
                                      self.remat, self.dtype, self.global_attention_impl,
                                      self.window_attention_impl)
    self.prompt_encoder = PromptEncoder(self.spec, self.dtype)

  def embed_images(self, images: jax.Array) -> jax.Array:
    """images: (B, S, S, 3) normalised and padded -> (B, h, w, D) float32."""
    return self.image_encoder(images).astype(jnp.float32)

  def encode_prompts(self, prompts: Prompts) -> tuple[jax.Array, jax.Array]:
    """-> sparse (B, P, T, D) and dense (B, P, h, w, D) prompt embeddings."""
    batch, per_image = prompts.batch_shape()
    sparse, dense = self.prompt_encoder(*prompts.flat())
    dense = jnp.broadcast_to(dense, (batch * per_image,) + dense.shape[1:])
    return (sparse.reshape((batch, per_image) + sparse.shape[1:]),
            dense.reshape((batch, per_image) + dense.shape[1:]))

  def decode(self, image_embeddings: jax.Array, prompts: Prompts,
             multimask_output: bool) -> tuple[jax.Array, jax.Array]:
    """(B, h, w, D) embeddings + prompts -> logits (B, P, M, 4h, 4w), iou (B, P, M)."""
    sparse, dense = self.encode_prompts(prompts)
    return self.mask_decoder(image_embeddings, self.prompt_encoder.get_dense_pe(),
                             sparse, dense, multimask_output)

  def __call__(self, images: jax.Array, prompts: Prompts,
               multimask_output: bool = False) -> tuple[jax.Array, jax.Array]:
    """Normalised padded images (B, S, S, 3) + prompts -> (logits, iou), see `decode`."""
    return self.decode(self.embed_images(images), prompts, multimask_output)

  def touch_all_parameters(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Runs every prompt path once (points, box, mask and no mask): for `init`."""
    self.prompt_encoder.no_mask_dense(1)
    return self(images, example_prompts(self.spec, batch=images.shape[0]))


def example_prompts(spec: SamSpec, batch: int = 1) -> Prompts:
  """One prompt per image with a point, a box and a mask input (all zeros)."""
  low_res = spec.low_res_size
  return Prompts(points=jnp.zeros((batch, 1, 1, 2)),
                 point_labels=jnp.ones((batch, 1, 1), jnp.int32),
                 boxes=jnp.zeros((batch, 1, 4)),
                 masks=jnp.zeros((batch, 1, low_res, low_res)))


def variables_initializer(model: Sam, collections: Optional[Sequence[str]] = None
                          ) -> Callable[[jax.Array], dict]:
  """key -> the variables of `model` (every collection, or only `collections`): the
  function `init_variables` compiles."""
  size = model.spec.image_size
  images = jnp.zeros((1, size, size, 3), jnp.float32)

  def init(key):
    variables = model.init({"params": key}, images,
                           method=type(model).touch_all_parameters)
    if collections is None:
      return dict(variables)
    return {name: variables[name] for name in collections if name in variables}

  return init


def init_variables(model: Sam, rng: jax.Array,
                   collections: Optional[Sequence[str]] = None) -> dict:
  """Variables of `model` ({'params': ..., 'adapters': ... if any}); only `collections`
  when given (e.g. ('adapters',) for fresh adapters over a loaded base).

  The whole model is traced, but XLA compiles only what the returned collections need:
  fresh adapters over a converted base cost a small program, not a full-model
  initialisation (their values are those the full `init` gives).
  """
  return jax.jit(variables_initializer(model, collections))(rng)
