"""Meta's PyTorch SAM (the `reference` extra) built from our specs, with random weights.

Meta's builders zero-initialise the position embeddings, rel-pos tables and LayerNorm
shifts, which would hide bugs in exactly those places; `randomize_` perturbs every
tensor so each one matters in the parity tests.
"""

from functools import partial
import importlib.util
import os
import sys

import numpy as np
import pytest

_SHIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torchvision_shim")


def _use_torchvision_shim_if_needed():
  """Puts the test-only torchvision shim on sys.path unless a working one is installed."""
  if importlib.util.find_spec("torchvision") is not None:
    try:
      import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
      return
    except Exception:  # pylint: disable=broad-except  (PyPI build beside torch 2.13 fails)
      sys.modules.pop("torchvision", None)
  if _SHIM_DIR not in sys.path:
    sys.path.insert(0, _SHIM_DIR)


torch = pytest.importorskip("torch")
_use_torchvision_shim_if_needed()
segment_anything = pytest.importorskip("segment_anything")
from segment_anything import modeling as meta  # pylint: disable=g-import-not-at-top

from spt_jax.models.config import SamSpec  # pylint: disable=g-import-not-at-top


def build_meta_sam(spec: SamSpec):
  """Meta's `Sam` with the architecture of `spec` (eval mode)."""
  enc = spec.encoder
  grid = enc.grid_size
  model = meta.Sam(
      image_encoder=meta.ImageEncoderViT(
          depth=enc.depth, embed_dim=enc.embed_dim, img_size=enc.image_size,
          mlp_ratio=enc.mlp_ratio, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
          num_heads=enc.num_heads, patch_size=enc.patch_size, qkv_bias=True,
          use_rel_pos=True, global_attn_indexes=enc.global_attn_indexes,
          window_size=enc.window_size, out_chans=enc.out_chans),
      prompt_encoder=meta.PromptEncoder(
          embed_dim=spec.prompt_embed_dim, image_embedding_size=(grid, grid),
          input_image_size=(enc.image_size, enc.image_size),
          mask_in_chans=spec.mask_in_chans),
      mask_decoder=meta.MaskDecoder(
          num_multimask_outputs=spec.num_multimask_outputs,
          transformer=meta.TwoWayTransformer(
              depth=spec.decoder_depth, embedding_dim=spec.prompt_embed_dim,
              mlp_dim=spec.decoder_mlp_dim, num_heads=spec.decoder_num_heads,
              attention_downsample_rate=spec.attention_downsample_rate),
          transformer_dim=spec.prompt_embed_dim, iou_head_depth=spec.iou_head_depth,
          iou_head_hidden_dim=spec.iou_head_hidden_dim),
  )
  return model.eval()


@torch.no_grad()
def randomize_(model, seed: int = 0):
  """Adds noise to every parameter/buffer (std 0.05; 0.5 for pos-embed and rel-pos)."""
  generator = torch.Generator().manual_seed(seed)
  for name, tensor in model.state_dict().items():
    if not tensor.is_floating_point():
      continue
    scale = 0.5 if ("pos_embed" in name or "rel_pos" in name) else 0.05
    tensor.add_(torch.randn(tensor.shape, generator=generator) * scale)
  return model


def save_state_dict(model, path):
  torch.save(model.state_dict(), path)
  return path


def make_test_image(height: int, width: int, seed: int = 0) -> np.ndarray:
  """A smooth, non-square RGB uint8 image with structure (gradients and blobs)."""
  rng = np.random.default_rng(seed)
  ys, xs = np.mgrid[0:height, 0:width] / max(height, width)
  channels = []
  for _ in range(3):
    fx, fy, phase = rng.uniform(2, 9, size=3)
    channels.append(np.sin(fx * xs * np.pi + phase) * np.cos(fy * ys * np.pi))
  image = (np.stack(channels, -1) * 0.5 + 0.5) * 200 + rng.uniform(0, 55, (height, width, 3))
  return image.clip(0, 255).astype(np.uint8)
