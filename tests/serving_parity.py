"""Runs a serving export on the images an evaluation saved predictions for (run as a
script, in a process that has imported no model code) and compares, bit for bit.

    python tests/serving_parity.py <export dir> <workdir with predictions/>

Prints one JSON line: images compared, how many masks / scores / predicted IoUs are
bit-identical, the largest score difference, whether flax got imported, and whether
the loader's preprocessing gave the evaluation's input sizes.
"""

import csv
import json
import os
import sys

import numpy as np
from PIL import Image

from spt_jax import transforms
from spt_jax.serving import ServingModel


def compare(export_dir: str, workdir: str) -> dict:
  model = ServingModel.load(export_dir)
  with open(os.path.join(workdir, "results.csv")) as f:
    paths = [row["image_path"] for row in csv.DictReader(f)]  # the evaluation's order
  saved = [np.load(os.path.join(workdir, "predictions", path.replace("/", "__") + ".npz"))
           for path in paths]
  images = [np.asarray(Image.open(os.path.join(str(s["source_root"]), path)).convert("RGB"))
            for s, path in zip(saved, paths)]
  prepared = [model.preprocess(image) for image in images]
  input_sizes = np.array([size for _, size in prepared])
  embeddings = model.embed(np.stack([padded for padded, _ in prepared]), input_sizes)
  original = np.array([s["original_size"] for s in saved])
  canvas = int(original.max())
  rows, cols = transforms.postprocess_matrices_batch(
      "sam", model.low_res_size, model.image_size, input_sizes, original, canvas)
  outputs = model.decode(embeddings, {"boxes": np.stack([s["prompt_boxes"] for s in saved])},
                         rows, cols)
  same = {"masks": 0, "scores": 0, "iou": 0}
  largest = 0.0
  for i, s in enumerate(saved):
    height, width = s["original_size"]
    for name in ("masks", "scores"):
      same[name] += bool(np.array_equal(outputs[name][i, :, :, :height, :width], s[name]))
    same["iou"] += bool(np.array_equal(outputs["iou"][i], s["iou"]))
    largest = max(largest, float(np.abs(outputs["scores"][i, :, :, :height, :width]
                                        - s["scores"]).max()))
  return {"images": len(saved), "same": same, "largest_score_difference": largest,
          "input_sizes_match": bool(all(np.array_equal(size, s["input_size"])
                                        for size, s in zip(input_sizes, saved))),
          "flax_imported": "flax" in sys.modules}


if __name__ == "__main__":
  print(json.dumps(compare(*sys.argv[1:3])))
