"""SamPredictor behaviour that needs no reference: compilation reuse, input checking."""

import jax
import numpy as np
import pytest

from small_models import TINY_SPEC
from spt_jax.errors import SptUserError
from spt_jax.models.sam import Sam, init_variables
from spt_jax.predictor import SamPredictor
from spt_jax.pretrained import load_pretrained, save_pretrained


@pytest.fixture(scope="module")
def predictor():
  model = Sam(TINY_SPEC)
  return SamPredictor(model, init_variables(model, jax.random.PRNGKey(0)))


def image(height, width, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_new_images_and_prompts_reuse_the_compiled_programs(predictor):
  for seed, (height, width) in enumerate([(50, 30), (64, 64), (20, 90)]):
    predictor.set_image(image(height, width, seed))
    for box in ([1, 2, 10, 12], [5, 5, 19, 25]):
      masks, scores, low_res = predictor.predict(box=np.array(box), multimask_output=False)
      assert masks.shape == (1, height, width) and masks.dtype == bool
      assert scores.shape == (1,) and low_res.shape == (1, 32, 32)
  assert predictor._embed._cache_size() == 1
  assert predictor._decode._cache_size() == 1


def test_multimask_and_batched_shapes(predictor):
  predictor.set_image(image(40, 60))
  masks, scores, low_res = predictor.predict(
      point_coords=np.array([[3, 4], [20, 30]]), point_labels=np.array([1, 0]))
  assert masks.shape == (3, 40, 60) and scores.shape == (3,) and low_res.shape == (3, 32, 32)
  masks, scores, _ = predictor.predict_batch(boxes=np.array([[0, 0, 9, 9], [5, 5, 30, 30]]),
                                             multimask_output=False, return_logits=True)
  assert masks.shape == (2, 1, 40, 60) and masks.dtype == np.float32
  assert scores.shape == (2, 1)


def test_predict_before_set_image(predictor):
  predictor.reset_image()
  with pytest.raises(SptUserError, match="image must be set"):
    predictor.predict(box=np.array([0, 0, 4, 4]))


@pytest.mark.parametrize("kwargs,message", [
    (dict(point_coords=np.zeros((2, 2))), "point_labels must be given"),
    (dict(point_coords=np.zeros((2, 3)), point_labels=np.ones(2)), "point_coords: expected"),
    (dict(point_coords=np.zeros((2, 2)), point_labels=np.ones(3)), "does not match"),
    (dict(mask_input=np.zeros((1, 16, 16))), "mask_input: expected"),
    (dict(), "give at least one prompt"),
])
def test_bad_prompts_are_named(predictor, kwargs, message):
  predictor.set_image(image(30, 30))
  with pytest.raises(SptUserError, match=message):
    predictor.predict(**kwargs)


@pytest.mark.parametrize("bad,message", [
    (np.zeros((10, 10), np.uint8), "expected an HxWx3 array"),
    (np.zeros((10, 10, 3), np.float32), "expected dtype uint8"),
])
def test_bad_images_are_named(predictor, bad, message):
  with pytest.raises(SptUserError, match=message):
    predictor.set_image(bad)


def test_bgr_input_equals_rgb_input(predictor):
  rgb = image(33, 47, seed=3)
  predictor.set_image(rgb)
  from_rgb = predictor.get_image_embedding()
  predictor.set_image(rgb[..., ::-1], image_format="BGR")
  np.testing.assert_array_equal(predictor.get_image_embedding(), from_rgb)


def test_from_pretrained_needs_no_flags(tmp_path):
  model = Sam(TINY_SPEC)
  variables = init_variables(model, jax.random.PRNGKey(2))
  save_pretrained(str(tmp_path / "m"), TINY_SPEC, variables)
  loaded = load_pretrained(str(tmp_path / "m"))
  assert loaded.spec == TINY_SPEC
  predictor = SamPredictor.from_pretrained(str(tmp_path / "m"))
  reference = SamPredictor(model, variables)
  for p in (predictor, reference):
    p.set_image(image(25, 31))
  np.testing.assert_array_equal(predictor.predict(box=np.array([2, 2, 20, 20]))[2],
                                reference.predict(box=np.array([2, 2, 20, 20]))[2])


def test_load_pretrained_errors(tmp_path):
  with pytest.raises(SptUserError, match="not a model directory"):
    load_pretrained(str(tmp_path))
  (tmp_path / "model_spec.json").write_text("{broken")
  with pytest.raises(SptUserError, match="not valid JSON"):
    load_pretrained(str(tmp_path))
