"""Pretraining a SAM-architecture model from random init on generated shapes.

Every parameter trains. Each image is encoded once; of its P targets the first P // 2
are prompted with their box, the others with K points (K cycles through
1..max_points over the steps: one compiled step per K). Each prompt is decoded twice,
as in SAM's interactive training and SPT's refine step: with the sparse prompt alone
(the draft), then with the same prompt plus the draft's low-res logits, gradient
stopped, as the mask input (the refine), so the prompt encoder's mask path learns too.
Only the single-mask output (mask token 0) trains; the three multimask outputs keep
their random init (use `multimask_output=False`).

Loss of each pass (`mask_loss`): Dice + BCE between the low-res logits and the target
resized to their size, the BCE class-balanced at first and plain after
`balanced_steps`, plus `iou_loss_weight` times the squared error between the predicted
IoU and the IoU of the thresholded logits with the thresholded resized target, so the
predictor's scores mean something. Init: `prompt_following_init`. AdamW with linear
warm-up, x0.1 at 80% of the steps, gradient clipping (`spt_jax.train.optimizer`).
Without the balanced start and the init, the model sits on empty masks for hundreds
of steps (tuning runs here: still empty after 200 steps of 8 images).
"""

import dataclasses
import os
import time
from typing import Any, Callable

from flax import traverse_util
import jax
import jax.numpy as jnp
import optax

from spt_jax.errors import SptUserError
from spt_jax.models.config import SamSpec
from spt_jax.models.prompts import Prompts
from spt_jax.models.sam import Sam, init_variables, normalize_and_mask
from spt_jax.ops.resize import resize_bilinear
from spt_jax.pretrain import shapes
from spt_jax.pretrained import SPEC_FILE
from spt_jax.spt.losses import dice_loss
from spt_jax.train.metric_writer import Progress, format_duration
from spt_jax.train.optimizer import OptimizerSpec, learning_rate_schedule, make_optimizer
from spt_jax.train.step import TrainState, init_train_state

QK_INIT_GAIN = 2.0
NECK_INIT_SCALE = 0.1
PASSES = ("draft", "refine")


@dataclasses.dataclass(frozen=True)
class PretrainSpec:
  """The recipe: steps, batch (B images, P targets each), optimizer, data seed."""
  steps: int = 2200
  batch_size: int = 8
  num_targets: int = 4
  max_points: int = 2
  seed: int = 0
  learning_rate: float = 1e-3
  warmup_steps: int = 50
  weight_decay: float = 0.01
  clip_grad_norm: float = 1.0
  iou_loss_weight: float = 1.0
  balanced_steps: int = 600  # class-balanced BCE fades into plain BCE over these steps
  log_every: int = 25

  def check(self) -> "PretrainSpec":
    """Returns self, or raises SptUserError naming the bad option."""
    minimum = dict(steps=0, batch_size=1, num_targets=2, max_points=1, learning_rate=0,
                   warmup_steps=0, weight_decay=0, clip_grad_norm=0, iou_loss_weight=0,
                   balanced_steps=0, log_every=1)
    for name, low in minimum.items():
      if getattr(self, name) < low:
        raise SptUserError(f"pretrain {name}={getattr(self, name)}: expected >= {low}")
    return self

  @property
  def num_box_prompts(self) -> int:
    return self.num_targets // 2

  def num_points(self, step: int) -> int:
    """K of (1-based) `step`."""
    return 1 + (step - 1) % self.max_points

  def optimizer(self) -> OptimizerSpec:
    return OptimizerSpec(learning_rate=self.learning_rate, weight_decay=self.weight_decay,
                         warmup_steps=self.warmup_steps,
                         decay_steps=(max(int(0.8 * self.steps), self.warmup_steps + 1),),
                         clip_grad_norm=self.clip_grad_norm)


def mask_iou(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """IoU of logits > 0 with targets > 0.5 over the last two axes: (..., l, l) -> (...)."""
  pred, truth = logits > 0, targets > 0.5
  union = (pred | truth).sum((-2, -1))
  return jnp.where(union > 0, (pred & truth).sum((-2, -1)) / jnp.maximum(union, 1), 1.0)


def prompt_following_init(params: dict[str, Any], gain: float = QK_INIT_GAIN,
                          neck_scale: float = NECK_INIT_SCALE) -> dict:
  """Init changes that let a random model follow the prompts early.

  Every decoder attention's k_proj starts equal to its q_proj, kernels times `gain`:
  attention scores then start as similarities of the inputs, whose positional
  encodings are alike where an image position and a prompt coincide, so attention
  starts out local. The encoder's last LayerNorm scale starts at `neck_scale`, so its
  random features do not drown the positional encodings. From plain random init the
  model predicts empty masks for hundreds of steps before it follows the prompts.
  """
  flat = traverse_util.flatten_dict(params, sep="/")
  flat["image_encoder/neck_3/scale"] = flat["image_encoder/neck_3/scale"] * neck_scale
  for path in [p for p in flat if p.startswith("mask_decoder/") and "/q_proj/" in p]:
    tied = flat[path] * (gain if path.endswith("kernel") else 1.0)
    flat[path], flat[path.replace("/q_proj/", "/k_proj/")] = tied, tied.copy()
  return traverse_util.unflatten_dict(flat, sep="/")


def prompt_groups(batch, num_box: int) -> tuple[tuple[str, Prompts, slice], ...]:
  """(name, prompts (B, P_g, ...), target slots) of the box and the point prompts."""
  points = slice(num_box, None)
  return (("box", Prompts(boxes=batch["boxes"][:, :num_box]), slice(0, num_box)),
          ("points", Prompts(points=batch["points"][:, points],
                             point_labels=batch["point_labels"][:, points]), points))


def mask_loss(logits: jax.Array, targets: jax.Array, plain: jax.Array) -> jax.Array:
  """Dice + BCE per mask: (N, l, l) logits and targets in [0, 1] -> (N,).

  The BCE is `plain` (0..1) times the mean over pixels plus (1 - plain) times the
  class-balanced BCE (the positives' mean and the negatives' mean weigh alike), which
  keeps a fresh model from settling on empty masks.
  """
  logits = logits.reshape(logits.shape[0], -1)
  targets = targets.reshape(targets.shape[0], -1)
  bce = optax.sigmoid_binary_cross_entropy(logits, targets)
  class_mean = lambda weight: (bce * weight).sum(-1) / (weight.sum(-1) + 1.0)
  balanced = 0.5 * (class_mean(targets) + class_mean(1.0 - targets))
  return dice_loss(logits, targets) + plain * bce.mean(-1) + (1.0 - plain) * balanced


def embed_square_images(model: Sam, variables, images: jax.Array):
  """Embeddings of generated images that fill their S x S input (no padding).

  images: uint8 (B, S, S, 3) -> (embeddings (B, s, s, C), input sizes (B, 2) all S).
  """
  sizes = jnp.full((images.shape[0], 2), images.shape[1], jnp.int32)
  embeddings = model.apply(variables, normalize_and_mask(images, sizes),
                           method=Sam.embed_images)
  return embeddings, sizes


def pretrain_loss(model: Sam, params, batch, step: jax.Array, spec: PretrainSpec):
  """Mean over prompts and passes of Dice + BCE + w * IoU error; metrics per group/pass.

  batch: image uint8 (B, S, S, 3), masks (B, P, S, S), boxes (B, P, 4), points
  (B, P, K, 2), point_labels (B, P, K) (`shapes.make_batch`).
  """
  variables = {"params": params}
  embeddings, _ = embed_square_images(model, variables, batch["image"])
  low_res = model.spec.low_res_size
  targets = resize_bilinear(batch["masks"].astype(jnp.float32), (low_res, low_res))
  plain = jnp.minimum(1.0, step / max(spec.balanced_steps, 1))
  total, metrics = 0.0, {}
  for name, prompts, slots in prompt_groups(batch, spec.num_box_prompts):
    target = targets[:, slots]
    for pass_name in PASSES:
      logits, iou = model.apply(variables, embeddings, prompts, False, method=Sam.decode)
      logits, iou = logits[:, :, 0], iou[:, :, 0]
      flat = lambda x: x.reshape((-1,) + x.shape[2:])
      masks_loss = mask_loss(flat(logits), flat(target), plain).mean()
      actual = jax.lax.stop_gradient(mask_iou(logits, target))
      iou_loss = jnp.mean((iou - actual) ** 2)
      total = total + masks_loss + spec.iou_loss_weight * iou_loss
      metrics.update({f"{name}_{pass_name}_iou": actual.mean(),
                      f"{name}_{pass_name}_iou_error": iou_loss})
      prompts = prompts._replace(masks=jax.lax.stop_gradient(logits))
  total = total / (2 * len(PASSES))
  metrics["loss"] = total
  return total, metrics


def make_pretrain_step(model: Sam, optimizer: optax.GradientTransformation,
                       spec: PretrainSpec) -> Callable:
  """(state, batch) -> (state, metrics), all parameters in `state.trainable`; jitted."""

  def step(state: TrainState, batch):
    grad_fn = jax.value_and_grad(lambda p: pretrain_loss(model, p, batch, state.step, spec),
                                 has_aux=True)
    (_, metrics), grads = grad_fn(state.trainable)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    metrics["grad_norm"] = optax.global_norm(grads)
    return state.replace(step=state.step + 1,
                         trainable=optax.apply_updates(state.trainable, updates),
                         opt_state=opt_state), metrics

  return jax.jit(step, donate_argnums=(0,))


def check_output(output: str) -> None:
  """--output must not hold a model yet (checked before hours of training)."""
  if os.path.exists(os.path.join(output, SPEC_FILE)):
    raise SptUserError(f"--output {output} already holds a model ({SPEC_FILE}); choose a "
                       "new directory or delete it")


def pretrain(model_spec: SamSpec, spec: PretrainSpec,
             data: shapes.ShapesConfig | None = None,
             log: Callable[[str], None] = print) -> tuple[dict[str, Any], dict[str, Any]]:
  """Trains `Sam(model_spec)` from random init; returns ({'params'}, summary)."""
  spec.check()
  data = (data or shapes.ShapesConfig(image_size=model_spec.image_size)).check()
  if data.image_size != model_spec.image_size:
    raise SptUserError(f"shapes image_size {data.image_size} differs from the model's "
                       f"{model_spec.image_size}")
  model = Sam(model_spec)
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(spec.seed))
  params = prompt_following_init(init_variables(model, init_rng)["params"])
  optimizer_spec = spec.optimizer()
  optimizer = make_optimizer(optimizer_spec)
  learning_rate = learning_rate_schedule(optimizer_spec)
  state = init_train_state(params, optimizer, state_rng)
  train_step = make_pretrain_step(model, optimizer, spec)
  num_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  log(f"pretraining {num_params} parameters: {spec.steps} steps of {spec.batch_size} "
      f"images x {spec.num_targets} targets, seed {spec.seed}")
  progress = Progress(spec.steps, spec.batch_size)
  start = time.perf_counter()
  data_seconds, metrics = 0.0, {}
  for step in range(1, spec.steps + 1):
    tick = time.perf_counter()
    batch = shapes.make_batch(spec.seed, "train", (step - 1) * spec.batch_size,
                              spec.batch_size, spec.num_targets, spec.num_points(step), data)
    batch.pop("targets")
    data_seconds += time.perf_counter() - tick
    state, step_metrics = train_step(state, batch)
    if step % spec.log_every == 0 or step in (1, spec.steps):
      metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
      rate = progress.report(step)
      parts = [f"step {step}/{spec.steps}", f"loss {metrics['loss']:.4f}",
               f"box IoU {metrics['box_refine_iou']:.3f}",
               f"points IoU {metrics['points_refine_iou']:.3f}",
               f"lr {float(learning_rate(step - 1)):.2e}"]
      if rate:
        parts += [f"{rate['examples_per_second']:.2f} img/s",
                  f"ETA {format_duration(rate['eta_seconds'])}"]
      log(" | ".join(parts + [f"data {data_seconds / step:.3f} s/step"]))
  params = jax.device_get(state.trainable)
  wall = time.perf_counter() - start
  summary = {"steps": spec.steps, "wall_seconds": round(wall, 1),
             "images": spec.steps * spec.batch_size, "final_metrics": metrics,
             "recipe": dataclasses.asdict(spec)}
  return {"params": params}, summary
