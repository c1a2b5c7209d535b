"""Mask losses: the paper's point-sampled BCE + Dice, and dense BCE / Dice / focal.

Point-sampled (PointRend-style, as HQ-SAM and SPT train): draw `num_points *
oversample` random points, keep the `importance` fraction with the most uncertain
predictions (|logit| smallest) and fill up with fresh random points; both the
low-res logits and the full-resolution target are sampled bilinearly at those points
(torch `grid_sample`, align_corners=False, zero outside). Point selection carries no
gradient.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from spt_jax.ops.resize import resize_bilinear


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """Which mask loss, its terms' weights, and the weights of the SDT steps.

  kind: 'point_sampled' (the paper) or 'dense'.
  step_weights: weight of each decoder step's loss (draft, final).
  """
  kind: str = "point_sampled"
  bce_weight: float = 1.0
  dice_weight: float = 1.0
  focal_weight: float = 0.0
  focal_gamma: float = 2.0
  focal_alpha: float = 0.25
  step_weights: tuple[float, ...] = (1.0, 1.0)
  num_points: int = 112 * 112
  oversample_ratio: float = 3.0
  importance_sample_ratio: float = 0.75


def point_sample(maps: jax.Array, coords: jax.Array) -> jax.Array:
  """Bilinear samples of maps (N, H, W) at coords (N, P, 2) xy in [0, 1] -> (N, P)."""
  height, width = maps.shape[-2:]
  x = coords[..., 0] * width - 0.5
  y = coords[..., 1] * height - 0.5
  sample = lambda m, yy, xx: jax.scipy.ndimage.map_coordinates(
      m, [yy, xx], order=1, mode="constant", cval=0.0)
  return jax.vmap(sample)(maps, y, x)


def uncertain_point_coords(logits: jax.Array, rng: jax.Array, spec: LossSpec) -> jax.Array:
  """(N, H, W) logits -> (N, num_points, 2) coords, importance-sampled by uncertainty."""
  logits = jax.lax.stop_gradient(logits)
  count = logits.shape[0]
  candidates = int(spec.num_points * spec.oversample_ratio)
  num_uncertain = int(spec.importance_sample_ratio * spec.num_points)
  rng_candidates, rng_random = jax.random.split(rng)
  coords = jax.random.uniform(rng_candidates, (count, candidates, 2))
  uncertainty = -jnp.abs(point_sample(logits, coords))
  _, top = jax.lax.top_k(uncertainty, num_uncertain)
  chosen = jnp.take_along_axis(coords, top[..., None], axis=1)
  random = jax.random.uniform(rng_random, (count, spec.num_points - num_uncertain, 2))
  return jnp.concatenate([chosen, random], axis=1)


def dice_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """1 - (2|p t| + 1) / (|p| + |t| + 1) per mask over the last axis: (N, P) -> (N,)."""
  probs = jax.nn.sigmoid(logits)
  numerator = 2.0 * jnp.sum(probs * targets, axis=-1)
  return 1.0 - (numerator + 1.0) / (probs.sum(-1) + targets.sum(-1) + 1.0)


def focal_loss(logits, targets, gamma, alpha):
  """Sigmoid focal loss averaged over the last axis: (N, P) -> (N,)."""
  return optax.sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma).mean(-1)


def _terms(logits, targets, spec):
  """Per-mask loss terms for flat (N, P) logits/targets."""
  terms = {
      "bce": optax.sigmoid_binary_cross_entropy(logits, targets).mean(-1),
      "dice": dice_loss(logits, targets),
  }
  if spec.focal_weight:
    terms["focal"] = focal_loss(logits, targets, spec.focal_gamma, spec.focal_alpha)
  return terms


def mask_loss_terms(logits: jax.Array, targets: jax.Array, rng: jax.Array,
                    spec: LossSpec) -> dict[str, jax.Array]:
  """Per-mask loss terms.

  Args:
    logits: (N, l, l) low-res mask logits.
    targets: (N, S, S) ground truth in [0, 1] at model input resolution.
    rng: key for the point sampling.
    spec: the loss.

  Returns:
    {'bce', 'dice' [, 'focal']} each (N,).
  """
  logits = logits.astype(jnp.float32)
  targets = targets.astype(jnp.float32)
  if spec.kind == "point_sampled":
    coords = uncertain_point_coords(logits, rng, spec)
    return _terms(point_sample(logits, coords),
                  jax.lax.stop_gradient(point_sample(targets, coords)), spec)
  if spec.kind == "dense":
    targets = resize_bilinear(targets, logits.shape[-2:])
    flat = lambda x: x.reshape(x.shape[0], -1)
    return _terms(flat(logits), flat(targets), spec)
  raise ValueError(f"unknown loss kind {spec.kind!r}")


def weighted_total(terms: dict[str, jax.Array], spec: LossSpec) -> jax.Array:
  """bce_weight * bce + dice_weight * dice + focal_weight * focal, per mask."""
  weights = {"bce": spec.bce_weight, "dice": spec.dice_weight, "focal": spec.focal_weight}
  return sum(weights[name] * value for name, value in terms.items())
