"""The prompt bundle the models take: points, boxes, mask inputs for P prompts per image."""

from typing import NamedTuple, Optional

import jax


class Prompts(NamedTuple):
  """Prompts for a batch of B images with P prompts each; None means "not given".

  Coordinates are in model-input pixels (after resizing, before padding).
  points: (B, P, K, 2) xy; point_labels: (B, P, K) int, 1 positive, 0 negative,
  -1 padding; boxes: (B, P, 4) xyxy; masks: (B, P, 4h, 4w) low-res mask logits.
  Which fields are None is part of the compiled program's structure.
  """
  points: Optional[jax.Array] = None
  point_labels: Optional[jax.Array] = None
  boxes: Optional[jax.Array] = None
  masks: Optional[jax.Array] = None

  def batch_shape(self) -> tuple[int, int]:
    """(B, P) from whichever field is present."""
    for field in (self.points, self.boxes, self.masks):
      if field is not None:
        return tuple(field.shape[:2])
    raise ValueError("Prompts has no points, boxes or masks")

  def flat(self):
    """(points, boxes, masks) with the (B, P) axes merged, as the prompt encoder takes."""
    merge = lambda x: None if x is None else x.reshape((-1,) + x.shape[2:])
    points = None
    if self.points is not None:
      points = (merge(self.points), merge(self.point_labels))
    return points, merge(self.boxes), merge(self.masks)
