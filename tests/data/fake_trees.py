"""Tiny trees in each benchmark's real layout (with its quirks), for the builder tests.

Each writer returns the expected examples per split as {split: [(category, label,
defect pixels)]} in listing order.
"""

import csv
import pathlib

import numpy as np
from PIL import Image

H, W = 24, 32  # Image size (non-square on purpose).


def write_image(path: pathlib.Path, mode: str = "RGB", size=(H, W), seed: int = 0,
                fmt: str | None = None):
  """A random image; fmt overrides the format chosen from the suffix (e.g. .JPG)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  shape = size if mode == "L" else size + (3,)
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path, format=fmt)


def write_mask(path: pathlib.Path, boxes, size=(H, W), value: int = 255,
               mode: str = "L") -> int:
  """A mask with `value` in each (y0, y1, x0, x1) box; returns its number of pixels."""
  path.parent.mkdir(parents=True, exist_ok=True)
  mask = np.zeros(size, np.uint8)
  for y0, y1, x0, x1 in boxes:
    mask[y0:y1, x0:x1] = value
  image = Image.fromarray(mask)
  if mode == "P":
    image = image.convert("P")
  image.save(path)
  return int((mask > 0).sum())


def write_mvtec(root: pathlib.Path, categories=(("bottle", "RGB"), ("grid", "L"))):
  """MVTec AD layout; "grid" is grayscale like the real one; a LICENSE file at the top."""
  root.mkdir(parents=True, exist_ok=True)
  (root / "license.txt").write_text("CC BY-NC-SA 4.0")
  expected = {"train": [], "test": []}
  for c, (category, mode) in enumerate(categories):
    base = root / category
    for n in range(2):
      write_image(base / "train" / "good" / f"{n:03d}.png", mode, seed=c * 10 + n)
      expected["train"].append((category, 0, 0))
    for defect in ("crack", "good"):  # Listing order is sorted: crack before good.
      for n in range(2 if defect == "crack" else 1):
        write_image(base / "test" / defect / f"{n:03d}.png", mode, seed=c * 10 + 5 + n)
        pixels = 0
        if defect != "good":
          pixels = write_mask(base / "ground_truth" / defect / f"{n:03d}_mask.png",
                              [(2 + n, 9, 3, 12)])
        expected["test"].append((category, int(defect != "good"), pixels))
  return expected


def write_btad(root: pathlib.Path):
  """BTAD: 01 BMP images with PNG masks, 02 PNG, 03 BMP images with BMP masks.

  Masks are not two-valued: a 200 core (defect) inside a 100 halo (not, <= 128).
  """
  expected = {"train": [], "test": []}
  kinds = {"01": ("bmp", "png"), "02": ("png", "png"), "03": ("bmp", "bmp")}
  for c, (category, (image_ext, mask_ext)) in enumerate(kinds.items()):
    write_image(root / category / "train" / "ok" / f"0000.{image_ext}", seed=c)
    expected["train"].append((category, 0, 0))
    write_image(root / category / "test" / "ko" / f"0000.{image_ext}", seed=c + 3)
    path = root / category / "ground_truth" / "ko" / f"0000.{mask_ext}"
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((H, W), np.uint8)
    mask[4:14, 4:20] = 100
    mask[6:10, 8:16] = 200
    Image.fromarray(mask).save(path)
    expected["test"].append((category, 1, 4 * 8))
    write_image(root / category / "test" / "ok" / f"0000.{image_ext}", seed=c + 6)
    expected["test"].append((category, 0, 0))
  return expected


def write_visa(root: pathlib.Path):
  """VisA with split_csv/1cls.csv, upper-case .JPG images and label-id masks (1, 2)."""
  rows = []
  expected = {"train": [], "test": []}
  for c, category in enumerate(("candle", "pcb1")):
    images = pathlib.Path(category) / "Data" / "Images"
    masks = pathlib.Path(category) / "Data" / "Masks" / "Anomaly"
    write_image(root / images / "Normal" / "0000.JPG", seed=c, fmt="JPEG")
    rows.append([category, "train", "normal", str(images / "Normal" / "0000.JPG"), ""])
    expected["train"].append((category, 0, 0))
    write_image(root / images / "Normal" / "0001.JPG", seed=c + 2, fmt="JPEG")
    rows.append([category, "test", "normal", str(images / "Normal" / "0001.JPG"), ""])
    expected["test"].append((category, 0, 0))
    write_image(root / images / "Anomaly" / "000.JPG", seed=c + 4, fmt="JPEG")
    path = root / masks / "000.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    label_ids = np.zeros((H, W), np.uint8)
    label_ids[2:6, 2:6] = 1
    label_ids[10:14, 20:30] = 2
    image = Image.fromarray(label_ids)
    (image.convert("P") if c else image).save(path)  # pcb1's mask is a palette PNG.
    rows.append([category, "test", "anomaly", str(images / "Anomaly" / "000.JPG"),
                 str(masks / "000.png")])
    expected["test"].append((category, 1, 16 + 40))
  table = root / "split_csv" / "1cls.csv"
  table.parent.mkdir(parents=True, exist_ok=True)
  with open(table, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["object", "split", "label", "image", "mask"])
    writer.writerows(rows)
  return expected


def write_ksdd2(root: pathlib.Path):
  """KSDD2: <split>/<id>.png with <id>_GT.png; negatives have all-zero GT."""
  expected = {"train": [], "test": []}
  for split, start in (("train", 10000), ("test", 20000)):
    for n, positive in enumerate((False, True)):
      name = f"{start + n}"
      write_image(root / split / f"{name}.png", seed=start + n)
      pixels = write_mask(root / split / f"{name}_GT.png",
                          [(5, 15, 10, 13)] if positive else [])
      expected[split].append(("ksdd2", int(positive), pixels))
  return expected


def write_spt_archive(root: pathlib.Path):
  """The SPT authors' archive: <dataset>/test/<name>.jpg with <name>.png beside it."""
  expected = {"test": []}
  for d, dataset in enumerate(("mvtec", "visa")):
    for n, boxes in enumerate(([(3, 8, 3, 8)], [])):
      folder = root / dataset / "test"
      write_image(folder / f"{n:03d}.jpg", seed=d * 10 + n)
      pixels = write_mask(folder / f"{n:03d}.png", boxes)
      expected["test"].append((dataset, int(pixels > 0), pixels))
  return expected


def write_folder(root: pathlib.Path):
  """A user's line: images/, masks/<stem>_mask.png; c.jpg has no mask (normal)."""
  expected = {"test": []}
  for name, boxes in (("a", [(0, 4, 0, 4), (10, 12, 20, 31)]), ("b", []), ("c", None)):
    write_image(root / "images" / f"{name}.{'jpg' if name == 'c' else 'png'}")
    pixels = 0
    if boxes is not None:
      pixels = write_mask(root / "masks" / f"{name}_mask.png", boxes)
    expected["test"].append(("line1", int(pixels > 0), pixels))
  return expected


def write_normal_abnormal_folder(root: pathlib.Path):
  """anomalib's Folder layout: good/ (normal), defect/ with masks/<same name>."""
  expected = {"test": []}
  for n in range(3):
    write_image(root / "good" / f"ok_{n}.png", seed=40 + n)
    expected["test"].append(("line2", 0, 0))
  for n, boxes in enumerate(([(2, 9, 3, 12)], [(0, 4, 0, 4), (10, 12, 20, 31)])):
    write_image(root / "defect" / f"scratch_{n}.png", seed=50 + n)
    pixels = write_mask(root / "masks" / f"scratch_{n}.png", boxes)
    expected["test"].append(("line2", 1, pixels))
  return expected
