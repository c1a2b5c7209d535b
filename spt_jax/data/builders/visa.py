"""VisA (Zou et al., ECCV 2022), read through its `split_csv/1cls.csv`.

The csv has the columns object, split, label, image, mask; image and mask paths are
relative to the root (images end in upper-case .JPG, e.g.
candle/Data/Images/Anomaly/000.JPG; masks are PNG files whose pixels hold label ids, so
any non-zero value is a defect). 1cls.csv gives no defect type: it is "anomaly" or
"normal" as in its label column.
"""

import csv

from spt_jax.data.builders import base

_COLUMNS = ("object", "split", "label", "image", "mask")
_LABELS = {"normal": 0, "anomaly": 1}


class Visa(base.ManualDirBuilder):
  """VisA (Visual Anomaly): 12 categories of objects, split by split_csv/1cls.csv."""

  LAYOUT = ("<root>/split_csv/1cls.csv  (object,split,label,image,mask)\n"
            "<root>/<object>/Data/Images/{Normal,Anomaly}/<name>.JPG\n"
            "<root>/<object>/Data/Masks/Anomaly/<name>.png  (label ids)")
  MASK_THRESHOLD = 0

  def list_examples(self, root):
    table = root / "split_csv" / "1cls.csv"
    if not table.is_file():
      raise self.wrong_root(root, f"no split file {table}")
    with open(table, newline="", encoding="utf-8") as f:
      rows = list(csv.DictReader(f))
    if not rows or any(c not in rows[0] for c in _COLUMNS):
      raise self.wrong_root(
          root, f"{table} has columns {list(rows[0]) if rows else []}; expected {_COLUMNS}")
    splits = {}
    for line, row in enumerate(rows, start=2):
      where = f"{table} line {line}"
      image = root / row["image"]
      label = _LABELS.get(row["label"])
      mask = root / row["mask"] if label and row["mask"] else None
      problem = None
      if label is None:
        problem = f"{where}: label {row['label']!r}; expected one of {sorted(_LABELS)}"
      elif not image.is_file():
        problem = f"{image} (listed in {where}): no such image file"
      elif label and (mask is None or not mask.is_file()):
        problem = (f"{image}: missing mask for this anomalous image; expected "
                   f"{mask or 'a mask path'} (from {where})")
      splits.setdefault(row["split"], []).append(
          base.RawExample(image, mask, row["object"], row["label"], label, problem))
    return splits
