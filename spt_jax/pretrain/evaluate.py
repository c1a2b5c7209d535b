"""Quality of a pretrained SAM: held-out generated shapes and zero-shot generated anomalies.

held_out_shapes     one target per image of the 'held_out' shape stream (never trained
                    on), prompted with its exact box, then with one positive point;
                    mean IoU and Boundary IoU at input resolution
                    (`spt_jax.evaluate.metrics`), and the mean absolute error of the
                    predicted IoU (the single-mask output throughout).
anomaly_zero_shot   the generated anomaly set's test split (`spt_jax.data.synthetic`,
                    the images of `configs/default.py`: 256 px, seed 0), each defect
                    image prompted with the box around its whole defect mask (the
                    paper's protocol) through `SamPredictor`; mean IoU per category.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spt_jax.data import synthetic
from spt_jax.data.prompts import mask_box
from spt_jax.evaluate.metrics import iou_np, segmentation_metrics
from spt_jax.models.prompts import Prompts
from spt_jax.models.sam import Sam
from spt_jax.ops.resize import resize_bilinear
from spt_jax.predictor import SamPredictor
from spt_jax.pretrain import shapes
from spt_jax.pretrain.train import embed_square_images

HELD_OUT_SEED = 0
ANOMALY_SEED = 0


def _held_out_forward(model: Sam, variables, batch):
  """-> {'box', 'points'}: (iou, boundary_iou, |predicted - actual IoU|) each (B,)."""
  size = batch["image"].shape[1]
  embeddings, sizes = embed_square_images(model, variables, batch["image"])
  truth = batch["masks"][:, 0]
  results = {}
  for name, prompts in (("box", Prompts(boxes=batch["boxes"])),
                        ("points", Prompts(points=batch["points"],
                                           point_labels=batch["point_labels"]))):
    logits, score = model.apply(variables, embeddings, prompts, False, method=Sam.decode)
    full = resize_bilinear(logits[:, 0, 0], (size, size))
    metrics = segmentation_metrics(full, truth, sizes)
    results[name] = (metrics.iou, metrics.boundary_iou, jnp.abs(score[:, 0, 0] - metrics.iou))
  return results


def held_out_shapes(model: Sam, variables: dict[str, Any], num_examples: int = 256,
                    batch_size: int = 16) -> dict[str, float]:
  """Box and 1-point IoU on held-out shapes (module docstring)."""
  config = dataclasses.replace(shapes.HELD_OUT, image_size=model.spec.image_size)
  forward = jax.jit(lambda v, b: _held_out_forward(model, v, b))
  collected = {}
  for start in range(0, num_examples, batch_size):
    count = min(batch_size, num_examples - start)
    batch = shapes.make_batch(HELD_OUT_SEED, "held_out", start, count, 1, 1, config)
    batch.pop("targets")
    for name, values in jax.device_get(forward(variables, batch)).items():
      collected.setdefault(name, []).append(np.stack(values))
  out = {"num_examples": num_examples}
  for name, parts in collected.items():
    iou, boundary_iou, score_error = np.concatenate(parts, axis=1).astype(np.float64)
    out.update({f"{name}_iou": float(iou.mean()),
                f"{name}_boundary_iou": float(boundary_iou.mean()),
                f"{name}_score_abs_error": float(score_error.mean())})
  return out


def anomaly_zero_shot(predictor: SamPredictor, num_per_defect: int = 6) -> dict[str, Any]:
  """Box-prompt IoU per category of the generated anomaly set's test split."""
  per_category = {}
  for category in synthetic.CATEGORY_NAMES:
    ious = []
    for _, _, _, image, mask in synthetic.category_images(
        category, image_size=256, num_train=0, num_test_good=0,
        num_test_per_defect=num_per_defect, seed=ANOMALY_SEED):
      if image.ndim == 2:  # a grayscale category
        image = np.repeat(image[:, :, None], 3, axis=2)
      predictor.set_image(image)
      masks, _, _ = predictor.predict(box=mask_box(mask), multimask_output=False)
      ious.append(iou_np(masks[0], mask))
    per_category[category] = float(np.mean(ious))
  return {"box_iou": per_category, "mean_box_iou": float(np.mean(list(per_category.values()))),
          "num_per_defect": num_per_defect}


def evaluate(model: Sam, variables: dict[str, Any], num_examples: int = 256,
             num_per_defect: int = 6) -> dict[str, Any]:
  """Both evaluations (module docstring) as one JSON-ready dict."""
  return {"held_out_shapes": held_out_shapes(model, variables, num_examples),
          "anomaly_zero_shot": anomaly_zero_shot(SamPredictor(model, variables),
                                                 num_per_defect)}
