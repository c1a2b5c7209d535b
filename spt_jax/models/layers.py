"""Layers shared by SAM's modules: a Dense with optional LoRA, LayerNorm, MLPs, 2x2 up-conv.

Frozen weights live in the `params` collection; every trainable adapter weight lives in
the `adapters` collection (`ADAPTERS`), so a train step can differentiate and optimise
that collection alone.
"""

import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from spt_jax.ops import lean_autodiff

ADAPTERS = "adapters"
Dtype = Any


def exact_gelu(x):
  """GELU with the erf form, as torch.nn.GELU() (not the tanh approximation); its
  backward keeps only x (`spt_jax.ops.lean_autodiff`)."""
  return lean_autodiff.gelu(x)


class LayerNorm(nn.Module):
  """LayerNorm over the last (channel) axis with torch's two-pass variance; on NHWC
  tensors also Meta's `LayerNorm2d`. Its backward keeps only the input and per-token
  statistics (`spt_jax.ops.lean_autodiff`).

  Variables: params/scale (C,) (ones), params/bias (C,) (zeros), float32.
  """
  epsilon: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (..., C) -> (..., C) in `dtype`."""
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
    return lean_autodiff.layer_norm(x, scale, bias, self.epsilon, self.dtype)


def layer_norm(epsilon: float, dtype: Dtype, name: Optional[str] = None) -> LayerNorm:
  """A `LayerNorm` (the helper the modules build their norms with)."""
  return LayerNorm(epsilon, dtype, name=name)


def lora_a_init(key, shape, dtype=jnp.float32):
  """Kaiming-uniform with a = sqrt(5) over fan-in `shape[-2]`: U(-1/sqrt(in), 1/sqrt(in))."""
  bound = 1.0 / math.sqrt(shape[-2])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class Dense(nn.Module):
  """y = x @ kernel + bias, plus an optional LoRA delta on some output slots.

  The output features are split into `num_slots` equal slots; LoRA (rank
  `lora_rank`) adds (x @ A_g) @ B_g * `lora_scaling` to each slot listed in
  `lora_slots`. A plain projection has one slot; SAM's fused encoder qkv has three
  (q, k, v) with LoRA on slots (0, 2).

  Attributes:
    features: output width F.
    use_bias: whether the projection has a bias.
    lora_rank: r; 0 disables LoRA.
    lora_scaling: alpha / r.
    num_slots: S, equal parts of the output.
    lora_slots: which of the S slots get a LoRA delta (G of them).
    collection: where kernel and bias live ('params', or ADAPTERS for a trainable
      layer of an adapter).
    kernel_init: initializer of the kernel.
    dtype: compute dtype; parameters are float32.

  Variables: params/kernel (I, F), params/bias (F,); adapters/lora_a (G, I, r),
  adapters/lora_b (G, r, F / S).
  """
  features: int
  use_bias: bool = True
  lora_rank: int = 0
  lora_scaling: float = 0.0
  num_slots: int = 1
  lora_slots: Sequence[int] = (0,)
  collection: str = "params"
  kernel_init: Callable = nn.initializers.lecun_normal()
  dtype: Dtype = jnp.float32

  def _weight(self, name, init, shape):
    if self.collection == "params":
      return self.param(name, init, shape, jnp.float32)
    return self.variable(self.collection, name,
                         lambda: init(self.make_rng("params"), shape, jnp.float32)).value

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (..., I) -> (..., F)."""
    kernel = self._weight("kernel", self.kernel_init, (x.shape[-1], self.features))
    x = x.astype(self.dtype)
    y = jnp.dot(x, kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self._weight("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
    if self.lora_rank:
      y = y + self._lora_delta(x)
    return y

  def _lora_delta(self, x):
    groups, slot_width = len(self.lora_slots), self.features // self.num_slots
    lora_a = self.variable(
        ADAPTERS, "lora_a",
        lambda: lora_a_init(self.make_rng("params"), (groups, x.shape[-1], self.lora_rank)))
    lora_b = self.variable(
        ADAPTERS, "lora_b", lambda: jnp.zeros((groups, self.lora_rank, slot_width)))
    low_rank = jnp.einsum("...i,gir->...gr", x, lora_a.value.astype(self.dtype))
    deltas = jnp.einsum("...gr,grf->...gf", low_rank, lora_b.value.astype(self.dtype))
    deltas = deltas * self.lora_scaling
    zeros = jnp.zeros(x.shape[:-1] + (slot_width,), deltas.dtype)
    per_slot = [zeros] * self.num_slots
    for group, slot in enumerate(self.lora_slots):
      per_slot[slot] = deltas[..., group, :]
    return jnp.concatenate(per_slot, axis=-1)


class MLPBlock(nn.Module):
  """lin2(act(lin1(x))): the transformer MLP of the encoder and the two-way blocks."""
  mlp_dim: int
  activation: Callable[[jax.Array], jax.Array]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (..., D) -> (..., D)."""
    hidden = self.activation(Dense(self.mlp_dim, dtype=self.dtype, name="lin1")(x))
    return Dense(x.shape[-1], dtype=self.dtype, name="lin2")(hidden)


class ParallelAdapter(nn.Module):
  """scale * up(relu(down(x))), all trainable (ADAPTERS); up starts at zero (a no-op)."""
  bottleneck: int
  scale: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (..., D) -> (..., D)."""
    down = Dense(self.bottleneck, collection=ADAPTERS, dtype=self.dtype, name="down")
    up = Dense(x.shape[-1], collection=ADAPTERS, kernel_init=nn.initializers.zeros,
               dtype=self.dtype, name="up")
    return self.scale * up(nn.relu(down(x)))


class MLP(nn.Module):
  """`num_layers` Dense layers with ReLU between them (the decoder's heads)."""
  hidden_dim: int
  output_dim: int
  num_layers: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (..., I) -> (..., output_dim)."""
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      x = Dense(self.output_dim if last else self.hidden_dim, dtype=self.dtype,
                name=f"layers_{i}")(x)
      if not last:
        x = nn.relu(x)
    return x


class ConvTranspose2x2(nn.Module):
  """Transposed convolution with kernel 2 and stride 2 (each pixel -> a 2x2 patch).

  Variables: params/kernel (2, 2, I, O) with kernel[a, c, i, o] the weight from
  input channel i to output channel o at offset (a, c) of the patch; params/bias (O,).
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, H, W, I) -> (B, 2H, 2W, O)."""
    batch, height, width, in_features = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (2, 2, in_features, self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    patches = jnp.einsum("bhwi,acio->bhawco", x.astype(self.dtype),
                         kernel.astype(self.dtype))
    out = patches.reshape(batch, 2 * height, 2 * width, self.features)
    return out + bias.astype(self.dtype)
