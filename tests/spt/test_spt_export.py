"""An exported SPT checkpoint computes the model's function in the authors' code.

The model here runs its LoRA with alpha = rank (scale 1, as the embedded default trains),
not the authors' alpha = 1, and has 4 decoder heads (SAM's are 8; the count shows in no
tensor shape). Export -> the authors'-layout PyTorch SPT (LoRA alpha 1) must give the
model's draft and final logits; export -> convert_sam -> SptPredictor the same model.
"""

import dataclasses
import os

import numpy as np
import pytest
import jax

from meta_reference import make_test_image, torch
from small_models import SMALL_SPEC
from spt_jax.models.config import AdapterSpec, sam_preset
from spt_jax.predictor import SptPredictor
from spt_jax.pretrained import load_pretrained
from spt_reference import TorchSide, authors_state_dict, load_exported, random_torch_spt
from weights_conversion import convert_sam, export_spt
from weights_conversion.export_spec import ExportSpec, spec_path, write_export_spec

pytestmark = pytest.mark.reference

LOGIT_RTOL = 1e-3  # as the SPT parity tests
RANK = 4
SPEC = dataclasses.replace(SMALL_SPEC, decoder_num_heads=4)
BOX = np.array([40, 30, 170, 260])


def assert_close(ours, theirs, rtol=LOGIT_RTOL):
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert ours.shape == theirs.shape
  assert np.abs(ours - theirs).max() <= rtol * np.abs(theirs).max()


def predict(directory, image):
  predictor = SptPredictor.from_pretrained(directory, relation_impl="xla")
  predictor.set_image(image)
  _, _, final, draft = predictor.predict(box=BOX, return_draft=True)
  return np.asarray(draft), np.asarray(final)


@pytest.fixture(scope="module")
def alpha_rank_model(tmp_path_factory):
  """A converted SPT model whose adapters run at alpha = rank, and its export."""
  folder = tmp_path_factory.mktemp("export")
  source = str(folder / "source.pth")
  torch.save({k: torch.from_numpy(v) for k, v in authors_state_dict(
      random_torch_spt(SPEC, seed=11, rank=RANK)).items()}, source)
  # What the shapes don't say, as a spec file: 4 decoder heads, adapters at alpha = rank.
  write_export_spec(source, ExportSpec(
      SPEC, AdapterSpec(lora_rank=RANK, lora_alpha=RANK, vra=True), sdt_steps=2))
  model = str(folder / "model")
  assert convert_sam.main(["--checkpoint", source, "--output", model]) == 0
  converted = load_pretrained(model)
  assert converted.spec == SPEC and converted.adapters.lora_alpha == RANK
  exported = str(folder / "exported.pth")
  assert export_spt.main(["--checkpoint", model, "--output", exported,
                          "--allow-nonstandard"]) == 0
  return model, exported


def test_export_runs_in_the_authors_code_as_here(alpha_rank_model):
  model, exported = alpha_rank_model
  image = make_test_image(300, 190, seed=12)
  draft, final = predict(model, image)
  theirs = load_exported(exported)  # built from the spec file: 4 decoder heads, alpha 1
  assert theirs.mask_decoder.transformer.layers[0].self_attn.num_heads == 4
  _, _, ref_final, ref_draft = TorchSide(theirs, image, SPEC.image_size).predict(box=BOX)
  assert_close(draft, ref_draft)
  assert_close(final, ref_final)


def test_lora_b_carries_the_scale(alpha_rank_model):
  model, exported = alpha_rank_model
  variables = load_pretrained(model).variables
  again = torch.load(exported, weights_only=True)
  b = np.asarray(variables["adapters"]["decoders"]["mask_decoder"]["transformer"]["layers_0"]
                 ["self_attn"]["q_proj"]["lora_b"])[0]  # draft step, (1, r, out)
  np.testing.assert_allclose(
      again["mask_decoder.transformer.layers.0.self_attn.q_proj.lora_B"].numpy(),
      RANK * b.reshape(-1, b.shape[-1]).T, rtol=1e-6)


def test_export_then_convert_is_the_same_model(alpha_rank_model, tmp_path, capsys):
  model, exported = alpha_rank_model
  back = str(tmp_path / "back")
  assert convert_sam.main(["--checkpoint", exported, "--output", back]) == 0
  assert "with the spec in" in capsys.readouterr().out
  reread = load_pretrained(back)
  assert reread.spec == SPEC and reread.adapters.lora_alpha == 1.0
  image = make_test_image(200, 240, seed=13)
  for ours, again in zip(predict(model, image), predict(back, image)):
    assert_close(again, ours, rtol=1e-5)


def test_contradicting_flag_is_refused(alpha_rank_model, tmp_path, capsys):
  _, exported = alpha_rank_model
  code = convert_sam.main(["--checkpoint", exported, "--output", str(tmp_path / "x"),
                           "--vra-block=2"])
  err = capsys.readouterr().err
  assert code == 2 and "--vra-block=2" in err and spec_path(exported) in err


def test_nonstandard_model_is_refused_without_the_flag(alpha_rank_model, tmp_path, capsys):
  model, _ = alpha_rank_model
  output = str(tmp_path / "out.pth")
  assert export_spt.main(["--checkpoint", model, "--output", output]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "cannot build this model" in err
  assert "none of vit_b, vit_l, vit_h" in err and "--allow-nonstandard" in err
  assert not os.path.exists(output) and not os.path.exists(spec_path(output))


@pytest.mark.slow
def test_vit_b_export_round_trip(tmp_path):
  """A published size exports without the flag; export -> convert gives the same masks."""
  source = str(tmp_path / "vit_b.pth")
  torch.save({k: torch.from_numpy(v) for k, v in authors_state_dict(
      random_torch_spt(sam_preset("vit_b"), seed=14, rank=8)).items()}, source)
  model = str(tmp_path / "model")
  assert convert_sam.main(["--checkpoint", source, "--output", model,
                           "--lora-alpha=8"]) == 0
  exported = str(tmp_path / "exported.pth")
  assert export_spt.main(["--checkpoint", model, "--output", exported]) == 0
  back = str(tmp_path / "back")
  assert convert_sam.main(["--checkpoint", exported, "--output", back]) == 0
  image = make_test_image(600, 800, seed=15)
  for ours, again in zip(predict(model, image), predict(back, image)):
    assert_close(again, ours, rtol=1e-5)
  jax.clear_caches()
