"""MVTec AD, and the MVTec-style layout that MPDD, BTAD and the synthetic set share.

Layout: <root>/<category>/train/<normal>/*, <root>/<category>/test/<defect>/*,
<root>/<category>/ground_truth/<defect>/<mask name>; the normal folder is "good" and the
mask of test/<defect>/<stem>.png is ground_truth/<defect>/<stem>_mask.png. Three MVTec
categories (grid, screw, zipper) are grayscale; the decoder makes them RGB.
"""

import pathlib

from spt_jax.data.builders import base


class MvtecAd(base.ManualDirBuilder):
  """MVTec AD (Bergmann et al., CVPR 2019): 15 categories of textures and objects."""

  LAYOUT = ("<root>/<category>/train/good/<name>.png\n"
            "<root>/<category>/test/<defect or good>/<name>.png\n"
            "<root>/<category>/ground_truth/<defect>/<name>_mask.png")
  # Name of the folder of normal images, in train/ and test/.
  NORMAL = "good"
  # Candidate mask file names for an image stem, tried in order.
  MASK_NAMES = ("{stem}_mask.png",)
  SPLITS = ("train", "test")

  def categories(self, root: pathlib.Path) -> list[str]:
    """Sorted category folders: those holding a train/ or test/ folder."""
    cats = [n for n in base.list_dir(root)
            if any((root / n / s).is_dir() for s in self.SPLITS)]
    if not cats:
      hint = ""
      if any((root / s).is_dir() for s in self.SPLITS):
        hint = " (this looks like one category's folder: pass the folder above it)"
      raise self.wrong_root(root, "no category folder holding train/ or test/" + hint)
    return cats

  def anomalous(self, root: pathlib.Path, category: str, defect: str,
                image: pathlib.Path) -> base.RawExample:
    """The entry of an anomalous image, with its mask or the problem of a missing one."""
    folder = root / category / "ground_truth" / defect
    candidates = [folder / n.format(stem=image.stem) for n in self.MASK_NAMES]
    for candidate in candidates:
      if candidate.is_file():
        return base.RawExample(image, candidate, category, defect, 1)
    return base.RawExample(
        image, None, category, defect, 1,
        problem=f"{image}: missing mask for this anomalous image; expected "
        + " or ".join(str(c) for c in candidates))

  def list_examples(self, root):
    splits = {}
    for category in self.categories(root):
      for split in self.SPLITS:
        for defect in base.list_dir(root / category / split):
          for image in base.image_files(root / category / split / defect):
            splits.setdefault(split, []).append(
                base.RawExample(image, None, category, defect, 0) if defect == self.NORMAL
                else self.anomalous(root, category, defect, image))
    if not splits:
      raise self.wrong_root(root, "no image files in <category>/train or <category>/test")
    return splits
