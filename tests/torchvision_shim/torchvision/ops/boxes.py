"""`box_area` and a greedy `batched_nms` in plain torch."""

import torch


def box_area(boxes):
  """(N, 4) xyxy boxes -> (N,) areas."""
  return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _pairwise_iou(box, boxes):
  top_left = torch.maximum(box[:2], boxes[:, :2])
  bottom_right = torch.minimum(box[2:], boxes[:, 2:])
  intersection = (bottom_right - top_left).clamp(min=0).prod(dim=1)
  return intersection / (box_area(box[None])[0] + box_area(boxes) - intersection)


def batched_nms(boxes, scores, idxs, iou_threshold):
  """Greedy non-maximum suppression within each category of `idxs`; kept indices by score."""
  order = torch.argsort(scores, descending=True)
  keep = []
  suppressed = torch.zeros(len(scores), dtype=torch.bool)
  for position, index in enumerate(order.tolist()):
    if suppressed[index]:
      continue
    keep.append(index)
    rest = order[position + 1:]
    same_class = rest[idxs[rest] == idxs[index]]
    if len(same_class):
      overlaps = _pairwise_iou(boxes[index], boxes[same_class])
      suppressed[same_class[overlaps > iou_threshold]] = True
  return torch.tensor(keep, dtype=torch.long)
