"""From a data-pipeline batch (see `spt_jax.data.pipeline`) to model inputs and targets."""

import jax
import jax.numpy as jnp

from spt_jax.data.prompts import PromptConfig
from spt_jax.models.prompts import Prompts
from spt_jax.models.sam import normalize_and_mask


def model_images(batch) -> jax.Array:
  """(B, S, S, 3) normalised images, zero in the padding."""
  return normalize_and_mask(batch["image"], batch["input_size"])


def model_prompts(batch, config: PromptConfig) -> Prompts:
  """The prompts the config asked the pipeline for (a static structure)."""
  with_points = config.points_per_prompt > 0
  return Prompts(
      points=batch["points"] if with_points else None,
      point_labels=batch["point_labels"] if with_points else None,
      boxes=batch["boxes"] if config.box else None,
      masks=batch["mask_prompt"] if config.mask_prompt else None)


def prompt_targets(batch, config: PromptConfig) -> jax.Array:
  """(B, P, S, S) float target of each prompt: its region, or the whole defect mask."""
  if config.per_region:
    slots = jnp.arange(1, config.max_prompts + 1, dtype=jnp.int32)
    regions = batch["prompt_regions"].astype(jnp.int32)
    return (regions[:, None] == slots[None, :, None, None]).astype(jnp.float32)
  return jnp.broadcast_to(batch["mask"][:, None], batch["mask"].shape[:1] + (
      config.max_prompts,) + batch["mask"].shape[1:]).astype(jnp.float32)


def array_fields(batch) -> dict:
  """The numeric entries of a pipeline batch (drops the byte-string metadata)."""
  return {k: v for k, v in batch.items() if getattr(v, "dtype", None) is not None
          and v.dtype.kind not in "SUO"}
