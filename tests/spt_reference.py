"""An independent PyTorch SPT: Meta's `segment_anything` modules plus SPT's additions.

Its state dict has the SPT authors' key layout (`image_encoder.blocks.i.attn.qkv.lora_A`,
`{mask,draft}_decoder...{q,v}_proj.lora_A|lora_B`, `...layers.j.lora_sim_scale`), so
it doubles as a generator of authors'-layout checkpoints.
"""

import copy
import types

import numpy as np

from meta_reference import build_meta_sam, randomize_, torch  # also installs the shim
from segment_anything.modeling import Sam as MetaSam
from segment_anything.modeling import transformer as meta_transformer
from segment_anything.utils.transforms import ResizeLongestSide
from weights_conversion.export_spec import read_export_spec

nn = torch.nn


class LoraLinear(nn.Module):
  """nn.Linear plus LoRA deltas on some equal output slots (weight/bias keep their names).

  Slot g's delta is x @ A_g^T @ B_g^T * alpha / r, with A = [A_0; A_1; ...] (G r, in) and
  B = [B_0; B_1; ...] (G slot, r), as the authors store a grouped (q, v) LoRA.
  """

  def __init__(self, base: nn.Linear, rank: int, slots=(True,), alpha: float = 1.0):
    super().__init__()
    self.weight, self.bias = base.weight, base.bias
    self.slots, self.rank, self.scaling = tuple(slots), rank, alpha / rank
    groups, slot_width = sum(slots), base.out_features // len(slots)
    self.lora_A = nn.Parameter(torch.zeros(groups * rank, base.in_features))
    self.lora_B = nn.Parameter(torch.zeros(groups * slot_width, rank))

  def forward(self, x):
    out = nn.functional.linear(x, self.weight, self.bias)
    slot_width = self.weight.shape[0] // len(self.slots)
    deltas, group = [], 0
    for enabled in self.slots:
      if enabled:
        a = self.lora_A[group * self.rank:(group + 1) * self.rank]
        b = self.lora_B[group * slot_width:(group + 1) * slot_width]
        deltas.append(x @ a.T @ b.T * self.scaling)
        group += 1
      else:
        deltas.append(torch.zeros(x.shape[:-1] + (slot_width,), dtype=x.dtype,
                                  device=x.device))
    return out + torch.cat(deltas, dim=-1)


def relation_matrix(embedding, alpha=0.0):
  """The VRA relation matrix S for embedding (1, N, C): (1, N, N), rows renormalised."""
  normalized = embedding / (embedding.norm(dim=-1, keepdim=True) + 1e-16)
  similarity = normalized @ normalized.transpose(-2, -1)
  similarity = similarity + torch.eye(similarity.shape[-1], device=embedding.device)[None] * -1e16
  relation = torch.softmax(similarity, dim=-1)
  if alpha > 0:
    kept = relation * (relation > alpha / relation.shape[-1]).float()
    sums = kept.sum(dim=-1, keepdim=True)
    relation = kept / torch.where(sums == 0, torch.ones_like(sums), sums)
  return relation


def _vra_forward(self, queries, keys, query_pe, key_pe):
  queries, keys = meta_transformer.TwoWayAttentionBlock.forward(
      self, queries, keys, query_pe, key_pe)
  if self.use_vra:
    keys = keys + (self.relation @ keys) * self.lora_sim_scale
  return queries, keys


def _add_decoder_adapters(decoder, rank, alpha, vra_block):
  for attention in decoder.modules():
    if isinstance(attention, meta_transformer.Attention):
      attention.q_proj = LoraLinear(attention.q_proj, rank, alpha=alpha)
      attention.v_proj = LoraLinear(attention.v_proj, rank, alpha=alpha)
  for index, block in enumerate(decoder.transformer.layers):
    block.lora_sim_scale = nn.Parameter(torch.zeros(block.norm4.weight.shape[0]))
    block.use_vra = vra_block == -1 or vra_block == index + 1
    block.forward = types.MethodType(_vra_forward, block)


class TorchSpt(nn.Module):
  """SAM + LoRA + VRA + SDT; `forward` gives (draft, final) low-res logits and IoU."""

  def __init__(self, spec, rank=8, alpha=1.0, vra_block=-1, vra_alpha=0.0):
    super().__init__()
    sam = build_meta_sam(spec)
    self.image_encoder, self.prompt_encoder = sam.image_encoder, sam.prompt_encoder
    self.mask_decoder = sam.mask_decoder
    self.draft_decoder = copy.deepcopy(sam.mask_decoder)
    self.vra_alpha = vra_alpha
    for block in self.image_encoder.blocks:
      block.attn.qkv = LoraLinear(block.attn.qkv, rank, slots=(True, False, True), alpha=alpha)
    for decoder in (self.mask_decoder, self.draft_decoder):
      _add_decoder_adapters(decoder, rank, alpha, vra_block)
    self.eval()

  @torch.no_grad()
  def forward(self, images, points=None, boxes=None, masks=None):
    """images: (1, 3, S, S) normalised and padded; prompts in model input pixels."""
    embedding = self.image_encoder(images)
    relation = relation_matrix(embedding.flatten(2).permute(0, 2, 1), self.vra_alpha)
    for decoder in (self.mask_decoder, self.draft_decoder):
      for block in decoder.transformer.layers:
        block.relation = relation
    sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
    pe = self.prompt_encoder.get_dense_pe()
    draft, iou = self.mask_decoder(embedding, pe, sparse, dense, multimask_output=False)
    _, refine_dense = self.prompt_encoder(points=None, boxes=None, masks=draft.detach())
    final, _ = self.draft_decoder(embedding, pe, sparse, refine_dense, multimask_output=False)
    return draft, final, iou


@torch.no_grad()
def randomize_adapters_(model, seed=0, scale=0.05):
  """Gives every LoRA A/B and gamma non-zero random values (they start at 0 otherwise)."""
  generator = torch.Generator().manual_seed(seed)
  for name, tensor in model.state_dict().items():
    if "lora_" in name:
      tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
  return model


def random_torch_spt(spec, seed=0, **kwargs):
  """A TorchSpt with every tensor (base and adapters) random; decoders differ."""
  model = TorchSpt(spec, **kwargs)
  randomize_(model, seed=seed)
  return randomize_adapters_(model, seed=seed + 1, scale=0.2)


def authors_state_dict(model) -> dict[str, np.ndarray]:
  return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def load_exported(checkpoint: str) -> TorchSpt:
  """The TorchSpt an `export_spt` file describes (its spec file beside it), loaded
  strictly: every key present, none extra, shapes equal."""
  exported = read_export_spec(checkpoint)
  adapters = exported.adapters
  model = TorchSpt(exported.sam, rank=adapters.lora_rank, alpha=adapters.lora_alpha,
                   vra_block=adapters.vra_block, vra_alpha=adapters.vra_alpha)
  model.load_state_dict(torch.load(checkpoint, weights_only=True), strict=True)
  return model


class TorchSide:
  """Meta's pre/post-processing around the torch SPT."""

  def __init__(self, model, image, image_size):
    self.model = model
    self.sam = MetaSam(model.image_encoder, model.prompt_encoder, model.mask_decoder)
    self.transform = ResizeLongestSide(image_size)
    resized = self.transform.apply_image(image)
    self.original_size, self.input_size = image.shape[:2], resized.shape[:2]
    tensor = torch.as_tensor(resized).permute(2, 0, 1)[None].float()
    self.images = self.sam.preprocess(tensor)

  def predict(self, box=None, point_coords=None, point_labels=None):
    boxes = points = None
    if box is not None:
      boxes = torch.as_tensor(self.transform.apply_boxes(box[None], self.original_size)).float()
    if point_coords is not None:
      coords = self.transform.apply_coords(point_coords, self.original_size)
      points = (torch.as_tensor(coords)[None].float(), torch.as_tensor(point_labels)[None])
    draft, final, iou = self.model(self.images, points=points, boxes=boxes)
    masks = self.sam.postprocess_masks(final, self.input_size, self.original_size) > 0
    return masks[0].numpy(), iou[0].numpy(), final[0].numpy(), draft[0].numpy()
