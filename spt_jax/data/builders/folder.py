"""A user's own production line: folders of normal and defective images and their masks.

Layout under the root (manual_dir), each folder given relative to it (anomalib's Folder
data set names them alike):

  <normal_dir>/*     normal images (label 0; no mask read)
  <abnormal_dir>/*   defective images; each needs a mask
  <images_dir>/*     mixed images: the label comes from the mask (an image without a
                     mask is an error unless missing_mask="normal")
  <mask_dir>/*       masks, single-channel or RGB, defect pixels > mask_threshold

At least one of normal_dir, abnormal_dir, images_dir is given; folders are read
without their subfolders. Pairing: an image <stem>.<ext> takes the mask file named by
`mask_name` (a rule with {stem} and/or {name}, e.g. "{stem}_mask.png"), or, when
mask_name is empty, the first that exists of MASK_RULES: the same file name, <stem>.png,
<stem>_mask.png. A defective image without a mask is an error (or skipped, by
on_bad_input); mask files that no image takes are listed in a warning and not read.

Splits: every image goes to `split` (default "test", the split SPT trains and
evaluates on), or, with test_fraction > 0, to "test" or "train" by a hash of its path
relative to the root: the same image always lands in the same split, also when files
are added. All options live in a `FolderConfig`; its name names the built data set
(<data_dir>/folder/<name>/), by default the root folder's name.
"""

import dataclasses
import hashlib
import pathlib

from absl import logging
import tensorflow_datasets as tfds

from spt_jax.data.builders import base
from spt_jax.errors import SptUserError

MISSING_MASK = ("error", "normal")
MASK_RULES = ("{name}", "{stem}.png", "{stem}_mask.png")
IMAGE_FOLDERS = ("normal_dir", "abnormal_dir", "images_dir")


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """Options of a folder data set (module docstring); `name` names the built set."""
  normal_dir: str = ""
  abnormal_dir: str = ""
  images_dir: str = ""
  mask_dir: str = "masks"
  mask_name: str = ""
  split: str = "test"
  test_fraction: float = 0.0
  category: str = ""  # Default: the config's name.
  missing_mask: str = "error"
  mask_threshold: int = 128

  def __post_init__(self):
    if self.missing_mask not in MISSING_MASK:
      raise SptUserError(
          f"folder missing_mask={self.missing_mask!r}: expected one of {MISSING_MASK}")
    if self.mask_name and "{stem}" not in self.mask_name and "{name}" not in self.mask_name:
      raise SptUserError(
          f"folder mask_name={self.mask_name!r}: expected a rule with {{stem}} or "
          "{name}, e.g. '{stem}_mask.png'")
    if not any(getattr(self, field) for field in IMAGE_FOLDERS):
      raise SptUserError("folder data set: give normal_dir, abnormal_dir and/or images_dir "
                         "(folders under manual_dir; see spt_jax/data/builders/folder.py)")
    if not 0.0 <= self.test_fraction < 1.0:
      raise SptUserError(f"folder test_fraction={self.test_fraction}: expected 0 <= f < 1 "
                         "(0: every image in `split`)")

  def mask_rules(self) -> tuple[str, ...]:
    return (self.mask_name,) if self.mask_name else MASK_RULES


def split_of(relative_path: str, test_fraction: float) -> str:
  """'test' for a fraction `test_fraction` of paths (a stable hash), else 'train'."""
  digest = hashlib.sha256(relative_path.encode()).digest()
  return "test" if int.from_bytes(digest[:8], "big") / 2 ** 64 < test_fraction else "train"


class FolderDataset(base.ManualDirBuilder):
  """Folders of normal and defective images with a folder of masks (FolderConfig)."""

  name = "folder"
  LAYOUT = ("<root>/<normal_dir>/<name>.<ext>   (normal)\n"
            "<root>/<abnormal_dir>/<stem>.<ext> (defective, with a mask)\n"
            "<root>/<images_dir>/<stem>.<ext>   (label from the mask)\n"
            "<root>/<mask_dir>/<mask_name, or the image's name, <stem>.png, <stem>_mask.png>")

  @property
  def MASK_THRESHOLD(self) -> int:  # pylint: disable=invalid-name
    return self.builder_config.mask_threshold

  def _folder(self, root: pathlib.Path, field: str) -> list[pathlib.Path]:
    relative = getattr(self.builder_config, field)
    if not relative:
      return []
    folder = root / relative
    if not folder.is_dir():
      raise self.wrong_root(root, f"{field}={relative!r}: no folder {folder}")
    images = base.image_files(folder)
    if not images:
      raise self.wrong_root(root, f"{field}={relative!r}: no image files in {folder}")
    return images

  def _mask_of(self, root: pathlib.Path, image: pathlib.Path) -> pathlib.Path | None:
    folder = root / self.builder_config.mask_dir
    for rule in self.builder_config.mask_rules():
      candidate = folder / rule.format(stem=image.stem, name=image.name)
      if candidate.is_file() and candidate != image:
        return candidate
    return None

  def _expected_masks(self, root: pathlib.Path, image: pathlib.Path) -> str:
    folder = root / self.builder_config.mask_dir
    return " or ".join(str(folder / rule.format(stem=image.stem, name=image.name))
                       for rule in self.builder_config.mask_rules())

  def list_examples(self, root):
    config = self.builder_config
    if config is None:
      raise SptUserError("the folder data set needs a FolderConfig (normal_dir, "
                         "abnormal_dir, images_dir, mask_dir, ...)")
    folders = {field: self._folder(root, field) for field in IMAGE_FOLDERS}
    category = config.category or config.name
    masks = {}  # image -> its mask file
    for field in ("abnormal_dir", "images_dir"):
      for image in folders[field]:
        masks[image] = self._mask_of(root, image)
    taken = {mask for mask in masks.values() if mask is not None}
    examples = []
    for image in folders["normal_dir"]:
      if image not in taken:  # a mask kept beside the images is not an image
        examples.append(base.RawExample(image, None, category, None, 0))
    for field in ("abnormal_dir", "images_dir"):
      for image in folders[field]:
        if image in taken:
          continue
        mask, problem, label = masks[image], None, 1 if field == "abnormal_dir" else None
        if mask is None and (field == "abnormal_dir" or config.missing_mask == "error"):
          problem = (f"{image}: missing mask; expected {self._expected_masks(root, image)}"
                     + ("" if field == "abnormal_dir" else
                        " (or set missing_mask='normal' to take images without masks as "
                        "normal)"))
        examples.append(base.RawExample(image, mask, category, None, label, problem))
    self._warn_unused_masks(root, taken, set(masks) | set(folders["normal_dir"]))
    if not config.test_fraction:
      return {config.split: examples}
    splits = {"train": [], "test": []}
    for example in examples:
      splits[split_of(str(example.image.relative_to(root)), config.test_fraction)].append(
          example)
    return splits

  def _warn_unused_masks(self, root, taken, images) -> None:
    folder = root / self.builder_config.mask_dir
    unused = [m for m in base.image_files(folder) if m not in taken and m not in images]
    if unused:
      logging.warning("%s: %d mask file(s) in %s match no image and are not read: %s%s",
                      self.builder_config.name, len(unused), folder,
                      ", ".join(m.name for m in unused[:8]), " ..." if len(unused) > 8 else "")
