"""SamPredictor behaviour that needs no reference: compilation reuse, prompt buckets,
input checking."""

import jax
import numpy as np
import pytest

from small_models import TINY_SPEC
from spt_jax.errors import SptUserError
from spt_jax.models.sam import Sam, init_variables
from spt_jax.buckets import chunks
from spt_jax.predictor import PROMPT_BUCKETS, SamPredictor
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


@pytest.mark.parametrize("count,expected", [
    (1, [(0, 1, 1)]), (2, [(0, 2, 8)]), (8, [(0, 8, 8)]),
    (9, [(0, 8, 8), (8, 9, 8)]), (20, [(0, 8, 8), (8, 16, 8), (16, 20, 8)])])
def test_prompt_counts_map_to_the_buckets(count, expected):
  assert chunks(count, PROMPT_BUCKETS) == expected


def test_any_prompt_count_compiles_once_per_bucket_and_keeps_each_prompts_mask():
  model = Sam(TINY_SPEC)
  predictor = SamPredictor(model, init_variables(model, jax.random.PRNGKey(0)),
                           prompt_buckets=(1, 4))
  predictor.set_image(image(40, 50))
  rng = np.random.default_rng(0)
  corners = rng.uniform(0, 20, (11, 2))
  boxes = np.concatenate([corners, corners + rng.uniform(5, 20, (11, 2))], axis=1)
  alone = [predictor.predict(box=box, return_logits=True) for box in boxes]
  for count in (2, 3, 4, 5, 11):
    masks, scores, low_res = predictor.predict_batch(boxes=boxes[:count],
                                                     return_logits=True)
    assert masks.shape == (count, 3, 40, 50) and scores.shape == (count, 3)
    for p in range(count):
      np.testing.assert_allclose(low_res[p], alone[p][2], atol=1e-5)
      np.testing.assert_allclose(scores[p], alone[p][1], atol=1e-5)
  assert predictor._decode._cache_size() == 2  # buckets 1 and 4


def test_bad_prompt_buckets_are_named():
  model = Sam(TINY_SPEC)
  with pytest.raises(SptUserError, match="prompt_buckets"):
    SamPredictor(model, {}, prompt_buckets=(0, 4))
