"""Writes a small data set in the folder layout of `configs/folder.py`, to try it on.

    python examples/make_folder.py runs/my_line
    python -m spt_jax.main --config=configs/folder.py:runs/my_line --workdir=runs/my_line_spt

<out>/good/part_<n>.png (normal), <out>/defect/part_<n>.png (defective) and
<out>/masks/part_<n>.png (255 on the defect): generated washers (spt_jax.data.synthetic),
as your own images and masks would be laid out.
"""

import pathlib
import sys

import numpy as np
from PIL import Image

from spt_jax.data import synthetic


def make_folder(out: str, normal: int = 12, per_defect: int = 8, seed: int = 0) -> None:
  root = pathlib.Path(out)
  for folder in ("good", "defect", "masks"):
    (root / folder).mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for n in range(normal):
    image, _ = synthetic.render("washer", None, 256, rng)
    Image.fromarray(image).save(root / "good" / f"part_{n:03d}.png")
  for n in range(per_defect * len(synthetic.DEFECTS)):
    image, mask = synthetic.render("washer", synthetic.DEFECTS[n % len(synthetic.DEFECTS)],
                                   256, rng)
    Image.fromarray(image).save(root / "defect" / f"part_{normal + n:03d}.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" /
                                                      f"part_{normal + n:03d}.png")


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: python examples/make_folder.py <output folder>")
  make_folder(sys.argv[1])
  print(f"wrote {sys.argv[1]}/good, defect and masks")
