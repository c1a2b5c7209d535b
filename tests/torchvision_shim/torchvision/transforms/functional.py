"""PIL-based `resize` and `to_pil_image`, as torchvision does them for PIL images."""

import numpy as np
from PIL import Image


def to_pil_image(pic):
  """HxWxC uint8 numpy array -> PIL image (torchvision's rule for uint8 arrays)."""
  array = np.asarray(pic)
  if array.dtype != np.uint8:
    raise TypeError(f"shim to_pil_image expects uint8, got {array.dtype}")
  return Image.fromarray(array)


def resize(img, size, interpolation=Image.BILINEAR):
  """Resize a PIL image to `size` = (h, w) with PIL's filter, like torchvision does."""
  if isinstance(size, int) or len(size) != 2:
    raise TypeError("shim resize supports only an explicit (h, w) size")
  height, width = size
  return img.resize((width, height), interpolation)
