"""A user's own production line: an images folder, a masks folder and a name rule.

Layout: <root>/<images>/<stem>.<ext> and <root>/<masks>/<mask_name>, where mask_name is a
format string of the image's {stem} (e.g. "{stem}_mask.png"). The label comes from the
mask. An image without a mask file is an error (or skipped, by on_bad_input) unless
missing_mask="normal", which takes it as a normal image. All options live in a
`FolderConfig`, whose name names the built dataset (<data_dir>/folder_dataset/<name>/).
"""

import dataclasses

import tensorflow_datasets as tfds

from spt_jax.data.builders import base
from spt_jax.errors import SptUserError

MISSING_MASK = ("error", "normal")


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """Options of a folder dataset; `name` is the dataset's name (a folder name)."""
  images: str = "images"
  masks: str = "masks"
  mask_name: str = "{stem}.png"
  split: str = "test"
  category: str = ""  # Default: the config's name.
  missing_mask: str = "error"
  mask_threshold: int = 128

  def __post_init__(self):
    if self.missing_mask not in MISSING_MASK:
      raise SptUserError(
          f"folder missing_mask={self.missing_mask!r}: expected one of {MISSING_MASK}")
    if "{stem}" not in self.mask_name:
      raise SptUserError(
          f"folder mask_name={self.mask_name!r}: expected a rule with {{stem}}, "
          "e.g. '{stem}_mask.png'")


class FolderDataset(base.ManualDirBuilder):
  """A folder of images with a folder of masks (FolderConfig)."""

  name = "folder"
  LAYOUT = "<root>/<images>/<stem>.<ext>\n<root>/<masks>/<mask_name with {stem}>"

  @property
  def MASK_THRESHOLD(self) -> int:  # pylint: disable=invalid-name
    return self.builder_config.mask_threshold

  def list_examples(self, root):
    config = self.builder_config
    if config is None:
      raise SptUserError("folder_dataset needs a FolderConfig (images, masks, mask_name)")
    images = base.image_files(root / config.images)
    if not images:
      raise self.wrong_root(root, f"no image files in {root / config.images}")
    examples = []
    for image in images:
      mask = root / config.masks / config.mask_name.format(stem=image.stem)
      problem = None
      if not mask.is_file():
        if config.missing_mask == "error":
          problem = (f"{image}: missing mask; expected {mask} (or set "
                     "missing_mask='normal' to take images without masks as normal)")
        mask = None
      examples.append(base.RawExample(
          image, mask, config.category or config.name, None, None, problem))
    return {config.split: examples}
