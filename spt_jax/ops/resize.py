"""Linear/bilinear resizing with torch's `align_corners=False` rule and no antialiasing.

Resizing is expressed as multiplication by interpolation matrices built on the host:
exact torch semantics (half-pixel centres, source index clamped at 0, right neighbour
clamped at the edge), and on TPU/GPU a resize is a matmul. Two successive resizes
compose into one matrix.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=256)
def linear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) float32 matrix M with resized = M @ signal (torch rule)."""
  scale = in_size / out_size
  source = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
  left = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
  right = np.minimum(left + 1, in_size - 1)
  right_weight = source - left
  matrix = np.zeros((out_size, in_size), np.float64)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, left), 1.0 - right_weight)
  np.add.at(matrix, (rows, right), right_weight)
  matrix.setflags(write=False)
  return matrix.astype(np.float32)


def sam_postprocess_matrix(low_res: int, image_size: int, input_len: int,
                           original_len: int) -> np.ndarray:
  """One axis of SAM's mask postprocessing as a (original_len, low_res) matrix.

  low-res logits -> bilinear to `image_size` -> crop the first `input_len` (the
  un-padded resized image) -> bilinear to `original_len`.
  """
  to_padded = linear_resize_matrix(low_res, image_size).astype(np.float64)
  to_original = linear_resize_matrix(input_len, original_len).astype(np.float64)
  return (to_original @ to_padded[:input_len]).astype(np.float32)


def resize_hw(x: jax.Array, height_matrix, width_matrix) -> jax.Array:
  """Apply (H', H) and (W', W) matrices to the last two axes: (..., H, W) -> (..., H', W')."""
  x = jnp.einsum("ph,...hw->...pw", jnp.asarray(height_matrix, x.dtype), x,
                 precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum("qw,...pw->...pq", jnp.asarray(width_matrix, x.dtype), x,
                    precision=jax.lax.Precision.HIGHEST)


def resize_bilinear(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
  """Bilinear resize of the last two axes, torch `align_corners=False`, no antialias."""
  height, width = x.shape[-2:]
  return resize_hw(x, linear_resize_matrix(height, out_hw[0]),
                   linear_resize_matrix(width, out_hw[1]))
