"""KolektorSDD2 (Bozic et al., 2021): <root>/{train,test}/<id>.png with <id>_GT.png.

Every image has a ground-truth file; negatives have an all-zero one, so the label comes
from the mask (any non-zero pixel is a defect).
"""

from spt_jax.data.builders import base

_GT_SUFFIX = "_GT"


class Ksdd2(base.ManualDirBuilder):
  """KolektorSDD2: surface defects on electrical commutators, one category."""

  LAYOUT = "<root>/{train,test}/<id>.png\n<root>/{train,test}/<id>_GT.png"
  MASK_THRESHOLD = 0
  SPLITS = ("train", "test")

  def list_examples(self, root):
    splits = {}
    for split in self.SPLITS:
      for image in base.image_files(root / split):
        if image.stem.endswith(_GT_SUFFIX):
          continue
        mask = image.with_name(image.stem + _GT_SUFFIX + ".png")
        problem = None if mask.is_file() else f"{image}: missing mask; expected {mask}"
        splits.setdefault(split, []).append(
            base.RawExample(image, mask, "ksdd2", None, None, problem))
    if not splits:
      raise self.wrong_root(root, "no <id>.png images in train/ or test/")
    return splits
