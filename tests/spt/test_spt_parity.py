"""SPT forward parity with an independent PyTorch SPT, and the authors' key layout both ways.

Weights: Meta's modules at a small size with LoRA and gamma set to non-zero random values,
saved in the authors' layout, converted by our CLI. Tolerances: draft and final low-res
logits within 1e-3 x max |logit|; masks >= 99.9% equal; embeddings 1e-4 relative.
"""

import numpy as np
import pytest
import jax

from meta_reference import make_test_image, torch
from small_models import SMALL_SPEC
from spt_jax.predictor import SptPredictor
from spt_jax.pretrained import load_pretrained
from spt_reference import TorchSide, authors_state_dict, random_torch_spt
from weights_conversion import convert_sam, export_spt

pytestmark = pytest.mark.reference

LOGIT_RTOL = 1e-3
MASK_AGREEMENT = 0.999


def assert_close(ours, theirs, rtol):
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert ours.shape == theirs.shape
  assert np.abs(ours - theirs).max() <= rtol * np.abs(theirs).max()


def convert(tmp_path, model, name, *extra):
  checkpoint = str(tmp_path / f"{name}.pth")
  torch.save(model.state_dict(), checkpoint)
  output = str(tmp_path / name)
  assert convert_sam.main(["--checkpoint", checkpoint, "--output", output, *extra]) == 0
  return checkpoint, output


PROMPTS = {
    "box": dict(box=np.array([40, 30, 170, 260])),
    "points": dict(point_coords=np.array([[60, 70], [120, 220], [30, 250]]),
                   point_labels=np.array([1, 0, 1])),
}


@pytest.mark.parametrize("variant", [dict(), dict(vra_block=2), dict(vra_alpha=0.5)],
                         ids=["all-blocks", "vra-block-2", "alpha"])
def test_spt_forward_matches_torch(tmp_path, variant):
  model = random_torch_spt(SMALL_SPEC, seed=4, **variant)
  extra = [f"--vra-block={variant.get('vra_block', -1)}",
           f"--vra-alpha={variant.get('vra_alpha', 0.0)}"]
  _, output = convert(tmp_path, model, "spt", *extra)
  ours = SptPredictor.from_pretrained(output, relation_impl="xla")
  image = make_test_image(300, 190, seed=9)
  ours.set_image(image)
  theirs = TorchSide(model, image, SMALL_SPEC.image_size)
  for prompt in PROMPTS.values():
    masks, scores, final, draft = ours.predict(return_draft=True, **prompt)
    ref_masks, ref_scores, ref_final, ref_draft = theirs.predict(**prompt)
    assert_close(draft, ref_draft, LOGIT_RTOL)
    assert_close(final, ref_final, LOGIT_RTOL)
    assert_close(scores, ref_scores, LOGIT_RTOL)
    assert (masks == ref_masks).mean() >= MASK_AGREEMENT
    assert np.abs(final - draft).max() > 1e-2 * np.abs(draft).max()  # refine does something


def test_authors_layout_round_trip_is_exact(tmp_path):
  model = random_torch_spt(SMALL_SPEC, seed=5)
  checkpoint, output = convert(tmp_path, model, "spt")
  exported = str(tmp_path / "exported.pth")
  assert export_spt.main(["--checkpoint", output, "--output", exported,
                          "--allow-nonstandard"]) == 0
  original = torch.load(checkpoint, weights_only=True)
  again = torch.load(exported, weights_only=True)
  assert sorted(again) == sorted(original)
  for key, tensor in original.items():
    assert torch.equal(again[key], tensor), key


def test_adapters_only_checkpoint_with_base(tmp_path):
  model = random_torch_spt(SMALL_SPEC, seed=6)
  state = authors_state_dict(model)
  base = {k: torch.from_numpy(v) for k, v in state.items()
          if "lora_" not in k and not k.startswith("draft_decoder.")}
  adapters = {k: torch.from_numpy(v) for k, v in state.items() if "lora_" in k}
  torch.save(base, tmp_path / "sam.pth")
  torch.save(adapters, tmp_path / "adapters.pth")
  code = convert_sam.main(["--checkpoint", str(tmp_path / "adapters.pth"),
                           "--base", str(tmp_path / "sam.pth"), "--output", str(tmp_path / "a")])
  assert code == 0
  full = dict(base, **adapters)
  full.update({"draft_decoder" + k[len("mask_decoder"):]: v for k, v in base.items()
               if k.startswith("mask_decoder.")})
  torch.save(full, tmp_path / "full.pth")
  assert convert_sam.main(["--checkpoint", str(tmp_path / "full.pth"),
                           "--output", str(tmp_path / "b")]) == 0
  a = load_pretrained(str(tmp_path / "a")).variables
  b = load_pretrained(str(tmp_path / "b")).variables
  jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_adapters_only_without_base_is_refused(tmp_path, capsys):
  state = authors_state_dict(random_torch_spt(SMALL_SPEC, seed=7))
  torch.save({k: torch.from_numpy(v) for k, v in state.items() if "lora_" in k},
             tmp_path / "adapters.pth")
  code = convert_sam.main(["--checkpoint", str(tmp_path / "adapters.pth"),
                           "--output", str(tmp_path / "out")])
  assert code == 2 and "pass the SAM checkpoint it was trained from with --base" in (
      capsys.readouterr().err)


def test_missing_adapter_key_is_named(tmp_path, capsys):
  state = authors_state_dict(random_torch_spt(SMALL_SPEC, seed=8))
  dropped = "draft_decoder.transformer.layers.1.cross_attn_token_to_image.v_proj.lora_B"
  state.pop("image_encoder.blocks.2.attn.qkv.lora_B")
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "spt.pth")
  code = convert_sam.main(["--checkpoint", str(tmp_path / "spt.pth"),
                           "--output", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert code == 2 and "missing key(s): image_encoder.blocks.2.attn.qkv.lora_B" in err
  assert dropped not in err
