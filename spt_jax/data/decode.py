"""Image and mask decoding with errors that name the file and what was expected.

Images: any PIL-readable file (PNG, JPEG, BMP, TIFF; 8 or 16 bit; grayscale, palette,
RGB, RGBA) becomes uint8 RGB (H, W, 3); grayscale is repeated over the three channels as
the authors' loader does. Raw masks become bool (H, W) by `value > threshold`, where a
mask's value is its pixel (grayscale), its palette index (label-id masks such as VisA's)
or its largest colour channel (RGB masks). Masks are stored in the built datasets as
single-channel PNG with values {0, 255} (`encode_mask_png` / `decode_mask_png`).
"""

import io
import os

import numpy as np
from PIL import Image

from spt_jax.errors import SptUserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def is_image_file(name: str) -> bool:
  """True if `name` ends with one of IMAGE_EXTENSIONS, in any case (VisA uses .JPG)."""
  return name.lower().endswith(IMAGE_EXTENSIONS)


def read_bytes(path: str | os.PathLike) -> bytes:
  """The file's bytes, or SptUserError naming it."""
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise SptUserError(f"{path}: cannot read the file ({e.strerror or e})") from e


def _open(data: bytes, path: str, what: str) -> Image.Image:
  """A fully loaded PIL image; empty, truncated or unreadable data raises SptUserError."""
  if not data:
    raise SptUserError(f"{path}: the {what} file is empty (0 bytes)")
  image_stream = io.BytesIO(data)
  try:
    image = Image.open(image_stream)
    image.load()
    return image
  except _PIL_ERRORS as e:
    reason = str(e).replace(f" {image_stream!r}", "")  # PIL names the stream, not the file
    raise SptUserError(
        f"{path}: unreadable or truncated {what} ({reason}); expected a complete image file "
        f"({', '.join(IMAGE_EXTENSIONS)})") from e


def decode_image(data: bytes, path: str) -> np.ndarray:
  """Encoded image bytes -> uint8 RGB (H, W, 3). `path` is for error messages."""
  image = _open(data, path, "image")
  if image.mode.startswith("I;16") or image.mode == "I":
    # 16/32-bit grayscale: keep the top 8 of the 16 significant bits.
    gray = (np.asarray(image, dtype=np.uint32) >> 8).clip(0, 255).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)
  if image.mode == "L":
    return np.repeat(np.asarray(image)[:, :, None], 3, axis=2)
  return np.asarray(image.convert("RGB"))


def image_size(data: bytes, path: str) -> tuple[int, int]:
  """(H, W) of an encoded image after fully decoding it (truncation is an error)."""
  width, height = _open(data, path, "image").size
  return height, width


def mask_values(data: bytes, path: str) -> np.ndarray:
  """Encoded raw mask -> its values (H, W): gray level, palette index or max colour."""
  image = _open(data, path, "mask")
  values = np.asarray(image)
  if image.mode == "1":
    return values.astype(np.uint8) * 255
  if values.ndim == 3:
    colour = values[:, :, :3] if image.mode in ("RGB", "RGBA") else values[:, :, :1]
    return colour.max(axis=2)
  return values


def binarise_mask(data: bytes, path: str, threshold: int) -> np.ndarray:
  """Encoded raw mask -> bool (H, W), True where the value is > threshold."""
  return mask_values(data, path) > threshold


def encode_mask_png(mask: np.ndarray) -> bytes:
  """bool (H, W) -> single-channel PNG bytes with values {0, 255} (deterministic)."""
  buffer = io.BytesIO()
  Image.fromarray(mask.astype(np.uint8) * 255).save(buffer, format="PNG", compress_level=6)
  return buffer.getvalue()


def decode_mask_png(data: bytes, path: str) -> np.ndarray:
  """A stored mask (`encode_mask_png`) -> bool (H, W)."""
  return binarise_mask(data, path, 127)
