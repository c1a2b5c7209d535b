"""Numerical parity of the Flax SAM with Meta's PyTorch SAM, module by module and end to end.

Weights: Meta's own modules built at a small size, every tensor randomised, saved as a
`.pth` and converted by our CLI. Tolerances (float32 on CPU):
- module outputs and embeddings: max |ours - torch| <= 1e-4 * max |torch|;
- mask logits: max |ours - torch| <= 1e-3 * max |torch logits|; masks >= 99.9% equal.
"""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from meta_reference import (build_meta_sam, randomize_, save_state_dict, make_test_image,
                            torch)
from segment_anything import SamPredictor as MetaSamPredictor
from segment_anything.modeling import image_encoder as meta_encoder
from small_models import SMALL_SPEC
from spt_jax.models import image_encoder
from spt_jax.models.image_encoder import EncoderBlock, ImageEncoder
from spt_jax.models.mask_decoder import MaskDecoder
from spt_jax.models.prompt_encoder import PromptEncoder
from spt_jax.predictor import SamPredictor
from spt_jax.pretrained import load_pretrained
from weights_conversion import convert_sam

pytestmark = pytest.mark.reference

MODULE_RTOL = 1e-4
LOGIT_RTOL = 1e-3
MASK_AGREEMENT = 0.999


def assert_close(ours, theirs, rtol=MODULE_RTOL):
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert ours.shape == theirs.shape
  if not theirs.size:
    return
  scale = np.abs(theirs).max()
  assert np.abs(ours - theirs).max() <= rtol * scale, (np.abs(ours - theirs).max(), scale)


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  """(Meta's randomised small SAM, our converted variables, converted directory)."""
  folder = tmp_path_factory.mktemp("small_sam")
  meta_model = randomize_(build_meta_sam(SMALL_SPEC), seed=1)
  checkpoint = save_state_dict(meta_model, str(folder / "small_sam.pth"))
  output = str(folder / "converted")
  assert convert_sam.main(["--checkpoint", checkpoint, "--output", output]) == 0
  return meta_model, load_pretrained(output).variables, output


def test_window_partition_pads_height_and_width_separately():
  x = np.random.default_rng(0).standard_normal((2, 11, 7, 3)).astype(np.float32)
  windows, padded = image_encoder.window_partition(jnp.asarray(x), 4)
  ref_windows, ref_padded = meta_encoder.window_partition(torch.from_numpy(x), 4)
  assert padded == ref_padded == (12, 8)
  np.testing.assert_array_equal(windows, ref_windows.numpy())
  restored = image_encoder.window_unpartition(windows, 4, padded, (11, 7))
  np.testing.assert_array_equal(restored, x)


@pytest.mark.parametrize("param_len,q_size,k_size", [(27, 14, 14), (27, 20, 20), (127, 40, 40)])
def test_relative_position_table_interpolates_like_meta(param_len, q_size, k_size):
  rel_pos = np.random.default_rng(1).standard_normal((param_len, 8)).astype(np.float32)
  ours = image_encoder.relative_position_table(jnp.asarray(rel_pos), q_size, k_size)
  theirs = meta_encoder.get_rel_pos(q_size, k_size, torch.from_numpy(rel_pos)).numpy()
  assert_close(ours, theirs)


def test_patch_embed_and_neck(converted):
  """A depth-0 encoder is patch embedding + position embedding + neck."""
  meta_model, variables, _ = converted
  spec = SMALL_SPEC.encoder
  ours_spec = spec.__class__(**{**spec.__dict__, "depth": 0, "global_attn_indexes": ()})
  params = dict(variables["params"]["image_encoder"])
  params = {k: v for k, v in params.items() if not k.startswith("blocks_")}
  x = np.random.default_rng(2).standard_normal((1, 256, 256, 3)).astype(np.float32)
  ours = ImageEncoder(ours_spec).apply({"params": params}, x)
  meta = meta_model.image_encoder
  with torch.no_grad():
    tokens = meta.patch_embed(nchw(x)) + meta.pos_embed
    theirs = meta.neck(tokens.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
  assert_close(ours, theirs)


@pytest.mark.parametrize("block_index,query_chunk", [(0, 1024), (1, 1024), (1, 64)],
                         ids=["windowed", "global", "global-chunked"])
def test_encoder_block(converted, block_index, query_chunk):
  meta_model, variables, _ = converted
  spec = SMALL_SPEC.encoder
  window = 0 if block_index in spec.global_attn_indexes else spec.window_size
  block_params = variables["params"]["image_encoder"][f"blocks_{block_index}"]
  x = np.random.default_rng(3).standard_normal((2, 16, 16, spec.embed_dim)).astype(np.float32)
  ours = EncoderBlock(spec, window, query_chunk=query_chunk).apply({"params": block_params}, x)
  with torch.no_grad():
    theirs = meta_model.image_encoder.blocks[block_index](torch.from_numpy(x)).numpy()
  assert_close(ours, theirs)


def test_image_encoder(converted):
  meta_model, variables, _ = converted
  x = np.random.default_rng(4).standard_normal((1, 256, 256, 3)).astype(np.float32)
  ours = ImageEncoder(SMALL_SPEC.encoder).apply(
      {"params": variables["params"]["image_encoder"]}, x)
  with torch.no_grad():
    theirs = meta_model.image_encoder(nchw(x)).permute(0, 2, 3, 1).numpy()
  assert_close(ours, theirs)


def test_prompt_encoder(converted):
  meta_model, variables, _ = converted
  params = {"params": variables["params"]["prompt_encoder"]}
  rng = np.random.default_rng(5)
  coords = rng.uniform(0, 256, (3, 4, 2)).astype(np.float32)
  labels = np.array([[1, 0, -1, 1], [0, 0, 1, -1], [1, 1, 1, 1]], np.int32)
  boxes = np.sort(rng.uniform(0, 256, (3, 2, 2)), axis=1).reshape(3, 4).astype(np.float32)
  masks = rng.standard_normal((3, 64, 64)).astype(np.float32)
  encoder = PromptEncoder(SMALL_SPEC)
  meta = meta_model.prompt_encoder
  for points, box, mask in [((coords, labels), None, None), ((coords, labels), boxes, None),
                            (None, boxes, masks), (None, None, masks)]:
    sparse, dense = encoder.apply(params, points, box, mask)
    with torch.no_grad():
      ref_sparse, ref_dense = meta(
          points=None if points is None else (torch.from_numpy(coords),
                                              torch.from_numpy(labels)),
          boxes=None if box is None else torch.from_numpy(box),
          masks=None if mask is None else torch.from_numpy(mask)[:, None])
    assert_close(sparse, ref_sparse.detach().numpy())
    assert_close(dense, ref_dense.detach().permute(0, 2, 3, 1).numpy())
  dense_pe = encoder.apply(params, method=PromptEncoder.get_dense_pe)
  assert_close(dense_pe, meta.get_dense_pe()[0].permute(1, 2, 0).numpy())


@pytest.mark.parametrize("multimask_output", [True, False])
def test_mask_decoder(converted, multimask_output):
  meta_model, variables, _ = converted
  rng = np.random.default_rng(6)
  embedding = rng.standard_normal((1, 16, 16, 64)).astype(np.float32)
  pe = rng.standard_normal((16, 16, 64)).astype(np.float32)
  sparse = rng.standard_normal((3, 5, 64)).astype(np.float32)
  dense = rng.standard_normal((3, 16, 16, 64)).astype(np.float32)
  logits, iou = MaskDecoder(SMALL_SPEC).apply(
      {"params": variables["params"]["mask_decoder"]}, embedding, pe, sparse[None],
      dense[None], multimask_output)
  with torch.no_grad():
    ref_logits, ref_iou = meta_model.mask_decoder(
        image_embeddings=nchw(embedding), image_pe=nchw(pe[None]),
        sparse_prompt_embeddings=torch.from_numpy(sparse),
        dense_prompt_embeddings=nchw(dense), multimask_output=multimask_output)
  assert_close(logits[0], ref_logits.numpy())
  assert_close(iou[0], ref_iou.numpy())


PROMPTS = {
    "box": dict(box=np.array([40, 30, 170, 260])),
    "points": dict(point_coords=np.array([[60, 70], [120, 220], [20, 20]]),
                   point_labels=np.array([1, 0, 1])),
    "box+points": dict(box=np.array([40, 30, 170, 260]),
                       point_coords=np.array([[90, 100]]), point_labels=np.array([0])),
}


def assert_predictions_match(ours, theirs):
  masks, scores, low_res = ours
  ref_masks, ref_scores, ref_low_res = theirs
  assert masks.shape == ref_masks.shape and masks.dtype == ref_masks.dtype
  assert_close(low_res, ref_low_res, rtol=LOGIT_RTOL)
  assert_close(scores, ref_scores, rtol=LOGIT_RTOL)
  assert (masks == ref_masks).mean() >= MASK_AGREEMENT


@pytest.fixture(scope="module")
def predictors(converted):
  meta_model, _, directory = converted
  ours, theirs = SamPredictor.from_pretrained(directory), MetaSamPredictor(meta_model)
  image = make_test_image(300, 190, seed=7)  # portrait, not a multiple of anything
  ours.set_image(image)
  theirs.set_image(image)
  return ours, theirs


def test_predictor_image_embedding(predictors):
  ours, theirs = predictors
  assert ours.original_size == theirs.original_size
  assert ours.input_size == theirs.input_size
  assert_close(ours.get_image_embedding(), theirs.get_image_embedding().numpy())


@pytest.mark.parametrize("multimask_output", [True, False])
@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_predictor_end_to_end(predictors, prompt, multimask_output):
  ours, theirs = predictors
  kwargs = dict(PROMPTS[prompt], multimask_output=multimask_output)
  assert_predictions_match(ours.predict(**kwargs), theirs.predict(**kwargs))
  logits = ours.predict(return_logits=True, **kwargs)[0]
  ref_logits = theirs.predict(return_logits=True, **kwargs)[0]
  assert_close(logits, ref_logits, rtol=LOGIT_RTOL)


@pytest.mark.parametrize("prompt", sorted(PROMPTS))
def test_predictor_mask_input(predictors, prompt):
  ours, theirs = predictors
  previous = theirs.predict(multimask_output=False, **PROMPTS[prompt])[2]
  kwargs = dict(PROMPTS[prompt], mask_input=previous, multimask_output=False)
  assert_predictions_match(ours.predict(**kwargs), theirs.predict(**kwargs))


def test_predictor_batch_of_boxes(predictors):
  ours, theirs = predictors
  boxes = np.array([[10, 10, 100, 150], [50, 80, 180, 290], [0, 0, 189, 299]])
  masks, scores, low_res = ours.predict_batch(boxes=boxes, multimask_output=False)
  theirs_boxes = theirs.transform.apply_boxes_torch(torch.from_numpy(boxes).float(),
                                                    theirs.original_size)
  ref = theirs.predict_torch(None, None, boxes=theirs_boxes, multimask_output=False)
  assert_predictions_match((masks, scores, low_res), tuple(t.numpy() for t in ref))


@pytest.mark.slow
def test_vit_b_end_to_end(tmp_path):
  """Full-size ViT-B: Meta's builder, random weights, converted, one image, box + points."""
  from segment_anything import sam_model_registry  # pylint: disable=g-import-not-at-top
  meta_model = randomize_(sam_model_registry["vit_b"]().eval(), seed=3)
  checkpoint = save_state_dict(meta_model, str(tmp_path / "sam_vit_b.pth"))
  assert convert_sam.main(["--checkpoint", checkpoint, "--output", str(tmp_path / "out"),
                           "--model-type", "vit_b"]) == 0
  ours, theirs = SamPredictor.from_pretrained(str(tmp_path / "out")), MetaSamPredictor(meta_model)
  image = make_test_image(480, 640, seed=8)
  ours.set_image(image)
  theirs.set_image(image)
  assert_close(ours.get_image_embedding(), theirs.get_image_embedding().numpy())
  for kwargs in [dict(box=np.array([100, 60, 420, 400])),
                 dict(point_coords=np.array([[300, 200], [500, 100]]),
                      point_labels=np.array([1, 0]))]:
    for multimask_output in (True, False):
      assert_predictions_match(ours.predict(multimask_output=multimask_output, **kwargs),
                               theirs.predict(multimask_output=multimask_output, **kwargs))
