"""SAM's pre- and post-processing (Meta's `ResizeLongestSide`, padding, mask upsampling).

Shared by the predictors and the evaluator so both see exactly the same pixels:
images are resized on the host with PIL's bilinear filter (what Meta's SamPredictor
does through torchvision), padded at the bottom/right, and low-res mask logits are
upsampled with torch's bilinear `align_corners=False` rule through interpolation
matrices (see `spt_jax.ops.resize`).
"""

import numpy as np
from PIL import Image

from spt_jax.errors import SptUserError
from spt_jax.ops.resize import linear_resize_matrix, sam_postprocess_matrix


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
  """(h, w) after scaling the longer side to `long_side` (Meta's rounding)."""
  scale = long_side / max(height, width)
  return int(height * scale + 0.5), int(width * scale + 0.5)


def check_rgb_image(image: np.ndarray, name: str = "image") -> np.ndarray:
  """`image` as an HxWx3 uint8 array, or a `SptUserError` saying what was wrong."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise SptUserError(f"{name}: expected an HxWx3 array, got shape {image.shape}")
  if image.dtype != np.uint8:
    raise SptUserError(f"{name}: expected dtype uint8 (values 0..255), got {image.dtype}")
  return image


def resize_image_pil(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """HxWx3 uint8 -> (h, w, 3) uint8 with PIL's bilinear filter (torchvision's for PIL)."""
  return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), Image.BILINEAR))


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
  """HxWx3 uint8 -> resized uint8 with the longer side `long_side` (PIL bilinear)."""
  return resize_image_pil(image, preprocess_shape(image.shape[0], image.shape[1], long_side))


def pad_to_square(x: np.ndarray, size: int) -> np.ndarray:
  """Zero-pads x (h, w, ...) at the bottom/right to (size, size, ...); h, w <= size."""
  height, width = x.shape[:2]
  if height > size or width > size:
    raise ValueError(f"cannot pad an array of shape {x.shape} to {size} x {size}")
  return np.pad(x, [(0, size - height), (0, size - width)] + [(0, 0)] * (x.ndim - 2))


def scale_coords(coords: np.ndarray, original_size: tuple[int, int],
                 long_side: int) -> np.ndarray:
  """xy coordinates (..., 2) in original pixels -> model input pixels (float32)."""
  new_h, new_w = preprocess_shape(original_size[0], original_size[1], long_side)
  scale = np.array([new_w / original_size[1], new_h / original_size[0]])
  return (np.asarray(coords, np.float64) * scale).astype(np.float32)


def postprocess_matrices(low_res: int, image_size: int, input_size: tuple[int, int],
                         original_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """(H0, low_res) and (W0, low_res) matrices: upsample, crop padding, resize to original."""
  return (sam_postprocess_matrix(low_res, image_size, input_size[0], original_size[0]),
          sam_postprocess_matrix(low_res, image_size, input_size[1], original_size[1]))


def postprocess_masks(low_res_logits: np.ndarray, image_size: int,
                      input_size: tuple[int, int],
                      original_size: tuple[int, int]) -> np.ndarray:
  """Meta's `Sam.postprocess_masks` on the host: (..., l, l) -> (..., H0, W0) logits."""
  rows, cols = postprocess_matrices(low_res_logits.shape[-1], image_size, input_size,
                                    original_size)
  return np.einsum("ph,...hw,qw->...pq", rows, np.asarray(low_res_logits, np.float32),
                   cols, optimize=True)


def postprocess_matrix(protocol: str, low_res: int, image_size: int, input_len: int,
                       original_len: int, canvas: int) -> np.ndarray:
  """(canvas, low_res) matrix: low-res logits -> original pixels along one axis, rows
  past the original length zero. protocol 'sam': Meta's postprocessing; 'paper': a
  straight resize to the original length (the SPT authors' evaluation)."""
  if protocol == "sam":
    matrix = sam_postprocess_matrix(low_res, image_size, input_len, original_len)
  elif protocol == "paper":
    matrix = linear_resize_matrix(low_res, original_len)
  else:
    raise SptUserError(f"resize protocol {protocol!r}: expected 'sam' or 'paper'")
  return np.pad(matrix, ((0, canvas - original_len), (0, 0)))


def postprocess_matrices_batch(protocol: str, low_res: int, image_size: int,
                               input_sizes: np.ndarray, original_sizes: np.ndarray,
                               canvas: int) -> tuple[np.ndarray, np.ndarray]:
  """rows (B, canvas, l) and cols (B, canvas, l) of a batch (`postprocess_matrix` per
  image; input_sizes and original_sizes (B, 2) as (h, w))."""
  rows, cols = [], []
  for input_size, original_size in zip(input_sizes, original_sizes):
    rows.append(postprocess_matrix(protocol, low_res, image_size, int(input_size[0]),
                                   int(original_size[0]), canvas))
    cols.append(postprocess_matrix(protocol, low_res, image_size, int(input_size[1]),
                                   int(original_size[1]), canvas))
  return np.stack(rows), np.stack(cols)
