"""The SPT model: SAM's encoders, then SDT's draft -> refine as a scan over two decoders.

Both decoder steps have SAM's decoder architecture; their parameters (and adapters)
are stacked on a leading axis of length `sdt_steps` and the steps run as one
`nn.scan`. The carry is the dense prompt embedding: the user's mask prompt (or the
no-mask embedding) for the draft, then the draft's logits, gradient stopped, through
the prompt encoder's mask path for the refine step. Each step sees the same sparse
prompt embedding and the same image embedding (and, with VRA, its relation operator).

Variables: params/{image_encoder, prompt_encoder, decoders/mask_decoder (stacked)},
adapters/{image_encoder (LoRA), decoders/mask_decoder (stacked LoRA, gamma)}.
Step 0 of `decoders` is the authors' `mask_decoder` (draft), step 1 their
`draft_decoder` (refine).
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spt_jax.errors import SptUserError
from spt_jax.models.config import AdapterSpec, SamSpec
from spt_jax.models.image_encoder import remat_policy
from spt_jax.models.mask_decoder import MaskDecoder
from spt_jax.models.prompt_encoder import PromptEncoder
from spt_jax.models.prompts import Prompts
from spt_jax.models.sam import Sam, example_prompts

SPT_ADAPTERS = AdapterSpec(lora_rank=8, lora_alpha=1.0, vra=True)
Dtype = Any


class SptOutput(NamedTuple):
  """logits: (steps, B, P, 1, l, l) per SDT step (last = final); iou: (B, P, 1) of step 0."""
  logits: jax.Array
  iou: jax.Array

  @property
  def draft(self) -> jax.Array:
    return self.logits[0]

  @property
  def final(self) -> jax.Array:
    return self.logits[-1]


class _SdtStep(nn.Module):
  """One decoder step; scanned over the stacked decoder variables."""
  spec: SamSpec
  adapters: AdapterSpec
  dtype: Dtype
  relation_impl: str

  @nn.compact
  def __call__(self, dense, image_embeddings, image_pe, sparse, mask_embedding_params):
    """dense: (B, P, h, w, D) carry -> (next dense, (logits (B, P, 1, l, l), iou (B, P, 1)))."""
    decoder = MaskDecoder(self.spec, self.adapters, self.dtype, self.relation_impl,
                          name="mask_decoder")
    logits, iou = decoder(image_embeddings, image_pe, sparse, dense, multimask_output=False)
    batch, prompts = logits.shape[:2]
    draft = jax.lax.stop_gradient(logits[:, :, 0]).reshape((batch * prompts,) +
                                                           logits.shape[-2:])
    next_dense = PromptEncoder(self.spec, self.dtype).apply(
        {"params": mask_embedding_params}, draft, method=PromptEncoder.embed_masks)
    return next_dense.reshape(dense.shape).astype(dense.dtype), (logits, iou)


class Spt(Sam):
  """SAM + SPT. `sdt_steps` 2 is draft -> refine; 1 is a single (adapted) decoder pass.

  Attributes (beyond `Sam`'s):
    relation_impl: relation attention implementation for the VRA-Adapter.
    sdt_steps: number of decoder steps (stacked decoders).
    prompt_chunk: 0 decodes all P prompts of an image at once; c > 0 with P > c
      decodes them c at a time (a scan over ceil(P / c) chunks, the last padded),
      each chunk rematerialised in the backward: a train step then holds one chunk's
      image-sized decoder activations instead of P prompts' (for the decoders' forward
      run twice and VRA's relation weights once per chunk). Under a mesh whose model
      axis splits the prompts, c should be a multiple of its size.

  `remat` applies to the decoder steps too: rematerialised, a step's backward keeps
  only its inputs (the carry), not every prompt's image-sized activations.
  """
  adapters: AdapterSpec = SPT_ADAPTERS
  relation_impl: str = "auto"
  sdt_steps: int = 2
  prompt_chunk: int = 0

  def setup(self):
    if not isinstance(self.prompt_chunk, int) or self.prompt_chunk < 0:
      raise SptUserError(f"model.prompt_chunk={self.prompt_chunk!r}: expected 0 (all "
                         "prompts at once) or a positive number of prompts per pass")
    self.setup_encoders()
    rematerialise, policy = remat_policy(self.remat)
    step = nn.remat(_SdtStep, policy=policy) if rematerialise else _SdtStep
    scanned = nn.scan(step, variable_axes={"params": 0, "adapters": 0},
                      split_rngs={"params": True}, in_axes=nn.broadcast,
                      length=self.sdt_steps)
    self.decoders = scanned(self.spec, self.adapters, self.dtype, self.relation_impl)

  def decode(self, image_embeddings: jax.Array, prompts: Prompts,
             multimask_output: bool = False) -> SptOutput:
    """(B, h, w, D) embeddings + prompts -> SptOutput (single-mask output only)."""
    if multimask_output:
      raise SptUserError("SPT predicts one mask per prompt: use multimask_output=False")
    sparse, dense = self.encode_prompts(prompts)
    inputs = (sparse, dense.astype(jnp.float32), image_embeddings,
              self.prompt_encoder.get_dense_pe(), self.prompt_encoder.variables["params"])
    per_image = sparse.shape[1]
    if not self.prompt_chunk or per_image <= self.prompt_chunk:
      logits, iou = _decode_all(self, *inputs)
    else:
      logits, iou = self._decode_in_chunks(*inputs)
    return SptOutput(logits, iou[0])

  def _decode_in_chunks(self, sparse, dense, image_embeddings, image_pe, mask_params):
    """`_decode_all` over chunks of `prompt_chunk` prompts, a rematerialised scan.

    sparse (B, P, T, D), dense (B, P, h, w, D) -> logits (steps, B, P, 1, l, l), iou
    (steps, B, P, 1).
    """
    batch, per_image = sparse.shape[:2]
    chunk = self.prompt_chunk
    count = -(-per_image // chunk)

    def chunked(x):  # (B, P, ...) -> (count, B, chunk, ...), padded prompts zero
      pad = [(0, 0), (0, count * chunk - per_image)] + [(0, 0)] * (x.ndim - 2)
      x = jnp.pad(x, pad).reshape((batch, count, chunk) + x.shape[2:])
      return jnp.moveaxis(x, 1, 0)

    def body(module, carry, *args):
      return carry, _decode_all(module, *args)

    scan = nn.scan(nn.remat(body), variable_broadcast=("params", "adapters"),
                   split_rngs={"params": False},
                   in_axes=(0, 0) + (nn.broadcast,) * 3, length=count)
    _, outputs = scan(self, None, chunked(sparse), chunked(dense), image_embeddings,
                      image_pe, mask_params)

    def unchunked(x):  # (count, steps, B, chunk, ...) -> (steps, B, P, ...)
      x = jnp.moveaxis(x, 0, 2)
      return x.reshape(x.shape[:2] + (count * chunk,) + x.shape[4:])[:, :, :per_image]

    return tuple(unchunked(x) for x in outputs)

  def __call__(self, images: jax.Array, prompts: Prompts,
               multimask_output: bool = False) -> SptOutput:
    return self.decode(self.embed_images(images), prompts, multimask_output)

  def touch_all_parameters(self, images: jax.Array) -> SptOutput:
    self.prompt_encoder.no_mask_dense(1)
    return self(images, example_prompts(self.spec, batch=images.shape[0]))


def _decode_all(spt: Spt, sparse, dense, image_embeddings, image_pe, mask_params):
  """All SDT steps for every prompt at once: (logits (steps, B, P, 1, l, l), iou
  (steps, B, P, 1)); shapes as `Spt._decode_in_chunks`."""
  _, outputs = spt.decoders(dense, image_embeddings, image_pe, sparse, mask_params)
  return outputs


def sam_params_to_spt(sam_params: dict, sdt_steps: int) -> dict:
  """Plain SAM params -> SPT params: every decoder step starts as SAM's mask decoder.

  Stacked on the host (numpy): one eager device op per leaf would compile a program each.
  """
  params = {k: v for k, v in sam_params.items() if k != "mask_decoder"}
  stacked = jax.tree_util.tree_map(lambda x: np.stack([np.asarray(x)] * sdt_steps),
                                   sam_params["mask_decoder"])
  params["decoders"] = {"mask_decoder": stacked}
  return params
