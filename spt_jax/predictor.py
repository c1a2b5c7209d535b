"""`SamPredictor` with Meta's contract, and `SptPredictor`, on the Flax models, jit-compiled.

    predictor = SamPredictor.from_pretrained("converted/sam_vit_b")
    predictor.set_image(image)                       # HxWx3 uint8 RGB
    masks, scores, low_res = predictor.predict(box=np.array([x0, y0, x1, y1]))

    spt = SptPredictor.from_pretrained("converted/spt_vit_b")
    spt.set_image(image)
    masks, scores, low_res, draft = spt.predict(box=box, return_draft=True)

`set_image` compiles once per model (every image is padded to the same square);
`predict` compiles once per prompt structure (which of points/box/mask are given,
how many points per prompt, multimask on/off) and prompt bucket, and is then reused:
P prompts are padded (with copies of the last one, whose outputs are dropped) to the
smallest of `prompt_buckets` that holds them, or run in chunks of the largest, so any
number of prompts costs at most `len(prompt_buckets)` compilations. The default (1, 8)
keeps one click or box at its own cost and 2 to 8 prompts in one call.

`multimask_output` defaults to what the model trained: Meta's checkpoints trained all
four outputs (True, Meta's default); the embedded base only the single mask (its
`model_spec.json` says `multimask_trained: false`), so it predicts one mask by default.
"""

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spt_jax import buckets
from spt_jax import transforms
from spt_jax.errors import SptUserError
from spt_jax.models.prompts import Prompts
from spt_jax.models.sam import Sam, init_variables, normalize_and_mask
from spt_jax.pretrained import MULTIMASK_TRAINED, build_model, load_pretrained
from spt_jax.spt.model import SPT_ADAPTERS, Spt, sam_params_to_spt


def _as_array(value, dtype, name, ndim, last=None):
  array = np.asarray(value, dtype)
  if array.ndim != ndim or (last is not None and array.shape[-1] != last):
    wanted = f"{ndim} dims" + (f" with last size {last}" if last is not None else "")
    raise SptUserError(f"{name}: expected {wanted}, got shape {array.shape}")
  return array


PROMPT_BUCKETS = (1, 8)


def take_prompts(prompts: Prompts, start: int, stop: int, size: int) -> Prompts:
  """Prompts start..stop-1 of every image, padded to `size` with copies of the last."""
  take = lambda x: None if x is None else buckets.pad_repeating(  # noqa: E731
      np.asarray(x)[:, start:stop], size, axis=1)
  return Prompts(*(take(field) for field in prompts))


def _batch_of_one(point_coords, point_labels, box, mask_input) -> dict[str, Any]:
  """`predict`'s single-prompt arguments as `predict_batch`'s with P = 1."""
  add_axis = lambda x: None if x is None else np.asarray(x)[None]
  return dict(point_coords=add_axis(point_coords), point_labels=add_axis(point_labels),
              boxes=None if box is None else np.asarray(box).reshape(1, 4),
              mask_input=add_axis(mask_input))


class SamPredictor:
  """Embeds one image once, then predicts masks for any prompts on it."""
  mask_threshold = 0.0

  def __init__(self, model: Sam, variables: dict[str, Any], multimask_default: bool = True,
               prompt_buckets: Sequence[int] = PROMPT_BUCKETS):
    """multimask_default: `multimask_output` when not given; prompt_buckets: the prompt
    counts compiled for (module docstring)."""
    if not prompt_buckets or min(prompt_buckets) < 1:
      raise SptUserError(f"prompt_buckets {tuple(prompt_buckets)}: expected counts >= 1")
    self.model = model
    self.multimask_default = multimask_default
    self.prompt_buckets = tuple(sorted(prompt_buckets))
    self.variables = jax.tree_util.tree_map(jnp.asarray, variables)
    self.image_size = model.spec.image_size
    self._embed = jax.jit(lambda v, images, sizes: model.apply(
        v, normalize_and_mask(images, sizes), method=Sam.embed_images))
    self._decode = jax.jit(self._decode_fn, static_argnums=3)
    self.reset_image()

  @classmethod
  def from_pretrained(cls, directory: str, dtype=jnp.float32,
                      prompt_buckets: Sequence[int] = PROMPT_BUCKETS, **model_kwargs):
    """Predictor for a directory written by `weights_conversion.convert_sam`, or
    'embedded' (the small base shipped in the package)."""
    pretrained = load_pretrained(directory)
    model = build_model(pretrained, dtype=dtype, **model_kwargs)
    if isinstance(model, Spt):
      raise SptUserError(f"{directory} holds an SPT model: use SptPredictor")
    return cls(model, pretrained.variables,
               multimask_default=pretrained.metadata.get(MULTIMASK_TRAINED, True),
               prompt_buckets=prompt_buckets)

  def _decode_fn(self, variables, embeddings, prompts, multimask_output):
    """-> (logits (1, P, M, l, l), iou (1, P, M), extra outputs)."""
    logits, iou = self.model.apply(variables, embeddings, prompts, multimask_output,
                                   method=Sam.decode)
    return logits, iou, {}

  def reset_image(self) -> None:
    self.is_image_set = False
    self.features = None
    self.original_size = None
    self.input_size = None

  def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
    """Computes the embedding of an HxWx3 uint8 image ('RGB' or 'BGR')."""
    if image_format not in ("RGB", "BGR"):
      raise SptUserError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    image = transforms.check_rgb_image(image)
    if image_format == "BGR":
      image = image[..., ::-1]
    resized = transforms.resize_longest_side(np.ascontiguousarray(image), self.image_size)
    self.reset_image()
    self.original_size = tuple(image.shape[:2])
    self.input_size = tuple(resized.shape[:2])
    padded = transforms.pad_to_square(resized, self.image_size)
    self.features = self._embed(self.variables, padded[None],
                                np.array([self.input_size], np.int32))
    self.is_image_set = True

  def get_image_embedding(self) -> np.ndarray:
    """(1, D, h, w) like Meta's (channels first)."""
    self._require_image()
    return np.asarray(self.features).transpose(0, 3, 1, 2)

  def _require_image(self):
    if not self.is_image_set:
      raise SptUserError("an image must be set with .set_image(...) before this call")

  def predict(self, point_coords: Optional[np.ndarray] = None,
              point_labels: Optional[np.ndarray] = None,
              box: Optional[np.ndarray] = None, mask_input: Optional[np.ndarray] = None,
              multimask_output: Optional[bool] = None, return_logits: bool = False):
    """Meta's `SamPredictor.predict` for one prompt.

    Args:
      point_coords: (N, 2) xy in original image pixels; point_labels: (N,) 1/0.
      box: (4,) xyxy in original pixels.
      mask_input: (1, 256, 256) low-res logits from a previous prediction.
      multimask_output: 3 masks instead of 1 (default: `multimask_default`).
      return_logits: masks as logits instead of booleans.

    Returns:
      masks (C, H, W), scores (C,), low_res_logits (C, 256, 256); numpy.
    """
    outputs = self.predict_batch(
        **_batch_of_one(point_coords, point_labels, box, mask_input),
        multimask_output=multimask_output, return_logits=return_logits)
    return tuple(output[0] for output in outputs)

  def prepare_prompts(self, point_coords=None, point_labels=None, boxes=None,
                      mask_input=None) -> Prompts:
    """Checks and maps prompts in original pixels to a one-image `Prompts` bundle."""
    self._require_image()
    if point_coords is not None and point_labels is None:
      raise SptUserError("point_labels must be given with point_coords")
    if point_coords is None and boxes is None and mask_input is None:
      raise SptUserError("give at least one prompt: point_coords, box(es) or mask_input")
    low_res = self.model.spec.low_res_size
    points = labels = box_array = masks = None
    if point_coords is not None:
      coords = _as_array(point_coords, np.float32, "point_coords", 3, last=2)
      labels = _as_array(point_labels, np.int32, "point_labels", 2)
      if labels.shape != coords.shape[:2]:
        raise SptUserError(f"point_labels shape {labels.shape} does not match "
                           f"point_coords {coords.shape[:2]}")
      points = transforms.scale_coords(coords, self.original_size, self.image_size)[None]
      labels = labels[None]
    if boxes is not None:
      box_array = _as_array(boxes, np.float32, "boxes", 2, last=4)
      box_array = transforms.scale_coords(box_array.reshape(-1, 2, 2), self.original_size,
                                          self.image_size).reshape(1, -1, 4)
    if mask_input is not None:
      masks = _as_array(mask_input, np.float32, "mask_input", 4)
      if masks.shape[1:] != (1, low_res, low_res):
        raise SptUserError(f"mask_input: expected (P, 1, {low_res}, {low_res}) low-res "
                           f"logits, got {masks.shape}")
      masks = masks[None, :, 0]
    prompts = Prompts(points, labels, box_array, masks)
    counts = {len(x[0]) for x in (points, box_array, masks) if x is not None}
    if len(counts) > 1:
      raise SptUserError(f"prompt counts differ between points/boxes/masks: {sorted(counts)}")
    return prompts

  def predict_batch(self, point_coords=None, point_labels=None, boxes=None,
                    mask_input=None, multimask_output: Optional[bool] = None,
                    return_logits: bool = False):
    """P prompts on the current image in one call (Meta's `predict_torch` contract).

    Args:
      point_coords: (P, N, 2) original pixels; point_labels: (P, N).
      boxes: (P, 4) xyxy original pixels.
      mask_input: (P, 1, 256, 256).

    Returns:
      masks (P, C, H, W), scores (P, C), low_res_logits (P, C, 256, 256); numpy.
    """
    masks, scores, low_res, _ = self._predict_with_extras(
        point_coords, point_labels, boxes, mask_input, multimask_output, return_logits)
    return masks, scores, low_res

  def _predict_with_extras(self, point_coords, point_labels, boxes, mask_input,
                           multimask_output, return_logits):
    prompts = self.prepare_prompts(point_coords, point_labels, boxes, mask_input)
    if multimask_output is None:
      multimask_output = self.multimask_default
    logits, iou, extras = self._decode_in_buckets(prompts, bool(multimask_output))
    low_res = np.asarray(logits[0])
    masks = transforms.postprocess_masks(low_res, self.image_size, self.input_size,
                                         self.original_size)
    if not return_logits:
      masks = masks > self.mask_threshold
    extras = {name: np.asarray(value[0]) for name, value in extras.items()}
    return masks, np.asarray(iou[0]), low_res, extras

  def _decode_in_buckets(self, prompts: Prompts, multimask_output: bool):
    """`_decode` over the prompt chunks (module docstring); outputs (1, P, ...)."""
    parts = []
    for start, stop, size in buckets.chunks(prompts.batch_shape()[1], self.prompt_buckets):
      outputs = self._decode(self.variables, self.features,
                             take_prompts(prompts, start, stop, size), multimask_output)
      parts.append(jax.tree_util.tree_map(lambda x, n=stop - start: np.asarray(x)[:, :n],
                                          outputs))
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=1), *parts)


class SptPredictor(SamPredictor):
  """The SamPredictor contract on SPT: masks are the refined (final) step's.

  One mask per prompt (SPT refines the single-mask output); the IoU score is the
  draft step's, as in the authors' model. `return_draft=True` adds the draft's
  low-res logits as a fourth output.
  """

  @classmethod
  def from_pretrained(cls, directory: str, dtype=jnp.float32,
                      prompt_buckets: Sequence[int] = PROMPT_BUCKETS, **model_kwargs):
    """An SPT directory, a training workdir, or a plain SAM one (or 'embedded') with
    fresh adapters (zero-shot SPT = SAM)."""
    pretrained = load_pretrained(directory)
    model = build_model(pretrained, dtype=dtype, **model_kwargs)
    if isinstance(model, Spt):
      return cls(model, pretrained.variables, prompt_buckets=prompt_buckets)
    model = Spt(pretrained.spec, SPT_ADAPTERS, dtype=dtype, **model_kwargs)
    fresh = init_variables(model, jax.random.PRNGKey(0), collections=("adapters",))
    params = sam_params_to_spt(pretrained.variables["params"], model.sdt_steps)
    return cls(model, {"params": params, **fresh}, prompt_buckets=prompt_buckets)

  def _decode_fn(self, variables, embeddings, prompts, multimask_output):
    output = self.model.apply(variables, embeddings, prompts, multimask_output,
                              method=Spt.decode)
    return output.final, output.iou, {"draft": output.draft}

  def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None,
              multimask_output: bool = False, return_logits: bool = False,
              return_draft: bool = False):
    """As `SamPredictor.predict`; with `return_draft`, also the draft (1, 256, 256)."""
    outputs = self.predict_batch(
        **_batch_of_one(point_coords, point_labels, box, mask_input),
        multimask_output=multimask_output, return_logits=return_logits,
        return_draft=return_draft)
    return tuple(output[0] for output in outputs)

  def predict_batch(self, point_coords=None, point_labels=None, boxes=None,
                    mask_input=None, multimask_output: bool = False,
                    return_logits: bool = False, return_draft: bool = False):
    """As `SamPredictor.predict_batch`; with `return_draft`, also (P, 1, 256, 256)."""
    masks, scores, low_res, extras = self._predict_with_extras(
        point_coords, point_labels, boxes, mask_input, multimask_output, return_logits)
    if return_draft:
      return masks, scores, low_res, extras["draft"]
    return masks, scores, low_res
