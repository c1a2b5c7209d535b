"""The SPT authors' evaluation archive: <root>/<dataset>/test/<name>.jpg + <name>.png.

This is what the authors' `main.py --val-data` reads (one sub-folder per benchmark, the
mask beside its image). Each sub-folder becomes a category; the label comes from the
mask (> 128, the authors' rule), and the authors leave empty masks out of evaluation as
the pipeline does.
"""

from spt_jax.data.builders import base


class SptArchive(base.ManualDirBuilder):
  """The SPT authors' evaluation archive (data/ad in their repository)."""

  LAYOUT = "<root>/<dataset>/test/<name>.jpg\n<root>/<dataset>/test/<name>.png"

  def list_examples(self, root):
    examples = []
    for dataset in base.list_dir(root):
      folder = root / dataset / "test"
      for image in base.image_files(folder):
        if image.suffix.lower() != ".jpg":
          continue
        mask = image.with_suffix(".png")
        problem = None if mask.is_file() else f"{image}: missing mask; expected {mask}"
        examples.append(base.RawExample(image, mask, dataset, None, None, problem))
    if not examples:
      raise self.wrong_root(root, "no <dataset>/test/<name>.jpg images")
    return {"test": examples}
