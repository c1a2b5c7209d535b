"""Host-side resizing to the model input: SAM's longest-side protocol and the paper's.

Two protocols (config `resize`):
  "sam":   longest side to S, aspect kept (Meta's ResizeLongestSide): the image with PIL
           bilinear (what SamPredictor does), the {0,1} mask likewise as float, then
           > 0.5; both zero-padded at bottom/right to S x S. input_size = (h, w).
  "paper": exactly S x S, aspect not kept (the SPT authors' evaluation): torch's
           `F.interpolate(mode="bilinear", align_corners=False)` without antialiasing on
           the float image, then truncated to uint8 (the authors' `astype(np.uint8)`);
           the mask as 0/255 float, then > 128 (the authors' masks_to_boxes rule).
           input_size = (S, S).
`resize_bilinear` reproduces torch's rule in numpy (to float32 rounding: after the
truncation to uint8 a rare value differs by 1) and can compute only a window of the
output, which the large-scale-jitter augmentation uses to skip the cropped-away part.
"""

import numpy as np
from PIL import Image

from spt_jax import transforms
from spt_jax.errors import SptUserError

PROTOCOLS = ("sam", "paper")


def _torch_linear_taps(in_size: int, out_size: int, start: int, count: int):
  """Indices (i0, i1) and weights (w0, w1), each (count,), of output pixels start..+count.

  torch's align_corners=False rule in float32: source = max(scale * (i + 0.5) - 0.5, 0)
  with scale = in / out, left neighbour floor(source), right neighbour clamped at the edge.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  dst = np.arange(start, start + count, dtype=np.float32)
  source = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
  i0 = np.minimum(source.astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = np.clip(source - i0.astype(np.float32), 0, 1).astype(np.float32)
  return i0, i1, np.float32(1) - w1, w1


def resize_bilinear(x: np.ndarray, out_hw: tuple[int, int],
                    window: tuple[int, int, int, int] | None = None) -> np.ndarray:
  """torch bilinear (align_corners=False, no antialias) of x (H, W[, C]) to out_hw.

  window: (top, left, h, w) of the resized image to compute; default all of it.
  Returns float32 (h, w[, C]). Interpolates along x inside, then along y, in float32,
  the order of torch's CPU kernel; the x pass runs once per source row needed.
  """
  out_h, out_w = out_hw
  top, left, h, w = window if window is not None else (0, 0, out_h, out_w)
  y0, y1, wy0, wy1 = _torch_linear_taps(x.shape[0], out_h, top, h)
  x0, x1, wx0, wx1 = _torch_linear_taps(x.shape[1], out_w, left, w)
  rows, inverse = np.unique(np.concatenate([y0, y1]), return_inverse=True)
  source = np.take(x, rows, axis=0).astype(np.float32)
  trailing = (1,) * (x.ndim - 2)
  wx0, wx1 = wx0.reshape((-1,) + trailing), wx1.reshape((-1,) + trailing)
  along_x = _weighted_sum(np.take(source, x0, axis=1), wx0, np.take(source, x1, axis=1), wx1)
  wy0, wy1 = wy0.reshape((-1, 1) + trailing), wy1.reshape((-1, 1) + trailing)
  return _weighted_sum(np.take(along_x, inverse[:h], axis=0), wy0,
                       np.take(along_x, inverse[h:], axis=0), wy1)


def _weighted_sum(a, wa, b, wb):
  """a * wa + b * wb, in place in the fresh arrays a and b (same rounding)."""
  a *= wa
  b *= wb
  a += b
  return a


def resize_mask_pil(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
  """bool (H, W) -> bool (h, w): PIL bilinear of the {0,1} float mask, then > 0.5."""
  resized = Image.fromarray(mask.astype(np.float32)).resize((hw[1], hw[0]), Image.BILINEAR)
  return np.asarray(resized) > 0.5


def resize_for_model(image: np.ndarray, mask: np.ndarray, size: int, protocol: str):
  """Resizes and pads one example for the model.

  Args:
    image: uint8 (H, W, 3).
    mask: bool (H, W).
    size: S, the model input size.
    protocol: "sam" or "paper" (module docstring).
  Returns:
    image uint8 (S, S, 3), mask float32 (S, S) in {0, 1}, input_size int32 (2,) = (h, w).
  """
  if protocol == "sam":
    hw = transforms.preprocess_shape(image.shape[0], image.shape[1], size)
    image = transforms.resize_image_pil(image, hw)
    mask = resize_mask_pil(mask, hw)
  elif protocol == "paper":
    hw = (size, size)
    image = resize_bilinear(image, hw).astype(np.uint8)
    mask = resize_bilinear(mask.astype(np.float32) * np.float32(255), hw) > 128
  else:
    raise SptUserError(f"resize={protocol!r}: expected one of {PROTOCOLS}")
  return (transforms.pad_to_square(image, size),
          transforms.pad_to_square(mask.astype(np.float32), size),
          np.asarray(hw, np.int32))
