"""Prompts: exact boxes (union and per region), points on the mask, jitter, determinism."""

import numpy as np
import pytest

from spt_jax.data import prompts
from spt_jax.errors import SptUserError

S = 64


def two_regions():
  """(S, S) float mask with a large and a small region, and the valid size (48, 64)."""
  mask = np.zeros((S, S), np.float32)
  mask[5:20, 30:50] = 1  # 15 x 20, the larger one.
  mask[30:33, 2:6] = 1
  mask[32, 6] = 1  # 8-connected diagonal neighbour would join; this one is 4-adjacent.
  return mask, np.array([48, 64], np.int32)


def make(mask, size, rng_seed=0, **fields):
  config = prompts.prompt_config(**fields).check(S)
  return prompts.make_prompts(mask, size, config, np.random.default_rng(rng_seed))


@pytest.mark.parametrize("seed", range(5))
def test_mask_box_is_the_exact_extent(seed):
  rng = np.random.default_rng(seed)
  mask = rng.random((37, 53)) > 0.995
  mask[rng.integers(37), rng.integers(53)] = True
  ys, xs = np.nonzero(mask)
  assert prompts.mask_box(mask).tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]


def test_union_box_is_the_papers_single_box():
  mask, size = two_regions()
  out = make(mask, size)
  assert out["boxes"].tolist() == [[2, 5, 49, 32]]
  assert out["has_box"].tolist() == [True] and out["prompt_valid"].tolist() == [True]
  assert out["points"].shape == (1, 0, 2) and out["point_labels"].shape == (1, 0)
  assert "mask_prompt" not in out and "prompt_regions" not in out


def test_one_box_per_region_largest_first_and_padding():
  mask, size = two_regions()
  out = make(mask, size, mode="box_per_region", max_prompts=3)
  assert out["boxes"].tolist() == [[30, 5, 49, 19], [2, 30, 6, 32], [0, 0, 0, 0]]
  assert out["prompt_valid"].tolist() == [True, True, False]
  assert out["has_box"].tolist() == [True, True, False]
  regions = out["prompt_regions"]
  assert ((regions > 0) == (mask > 0)).all()
  for slot in range(2):
    assert prompts.mask_box(regions == slot + 1).tolist() == out["boxes"][slot].tolist()


def test_regions_beyond_max_prompts_are_not_prompted():
  mask, size = two_regions()
  out = make(mask, size, mode="box_per_region", max_prompts=1)
  assert out["boxes"].tolist() == [[30, 5, 49, 19]]
  assert (out["prompt_regions"] == 1).sum() == 15 * 20


def test_four_connectivity_splits_diagonal_neighbours():
  mask = np.zeros((S, S), np.float32)
  mask[10, 10] = mask[11, 11] = 1
  assert make(mask, np.array([S, S]), mode="box_per_region", max_prompts=2,
              connectivity=8)["prompt_valid"].tolist() == [True, False]
  assert make(mask, np.array([S, S]), mode="box_per_region", max_prompts=2,
              connectivity=4)["prompt_valid"].tolist() == [True, True]


@pytest.mark.parametrize("per_region", [False, True])
def test_points_lie_on_the_mask_and_negatives_off_it_inside_the_image(per_region):
  mask, size = two_regions()
  out = make(mask, size, mode="points_pos_neg", num_points=5, num_negative_points=7,
             per_region=per_region, max_prompts=2 if per_region else 1)
  region_of = out.get("prompt_regions")
  for slot in range(out["points"].shape[0]):
    xy = out["points"][slot].astype(int)
    labels = out["point_labels"][slot]
    assert labels.tolist() == [1] * 5 + [0] * 7
    on_mask = mask[xy[:, 1], xy[:, 0]] > 0
    assert on_mask[:5].all() and not on_mask[5:].any()
    if per_region:
      assert (region_of[xy[:5, 1], xy[:5, 0]] == slot + 1).all()
    assert (xy[:, 0] < size[1]).all() and (xy[:, 1] < size[0]).all()
  assert not out["has_box"].any()


def test_points_without_replacement_when_the_region_is_large_enough():
  mask = np.zeros((S, S), np.float32)
  mask[0:2, 0:3] = 1  # 6 pixels.
  six = make(mask, np.array([S, S]), mode="points", num_points=6)["points"][0]
  assert len({tuple(p) for p in six.tolist()}) == 6
  nine = make(mask, np.array([S, S]), mode="points", num_points=9)["points"][0]
  assert all(mask[int(y), int(x)] for x, y in nine)


def test_jittered_boxes_stay_in_the_image_and_move():
  mask = np.zeros((S, S), np.float32)
  mask[0:30, 40:48] = 1  # Touches the top and the valid image's right edge.
  size = np.array([40, 48], np.int32)
  boxes = np.stack([make(mask, size, seed, mode="box_jitter", box_jitter=0.5)["boxes"][0]
                    for seed in range(200)])
  assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= 47).all()
  assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= 39).all()
  assert (boxes[:, :2] <= boxes[:, 2:]).all()
  assert len(np.unique(boxes, axis=0)) > 150
  capped = np.stack([make(mask, size, seed, box_jitter=10.0, box_jitter_max=1.0)["boxes"][0]
                     for seed in range(50)])
  assert np.abs(capped - [40, 0, 47, 29]).max() < 6  # 1 px std, at most ~5 sigma.


def test_mask_prompt_is_a_coarse_degraded_mask():
  mask, size = two_regions()
  out = make(mask, size, mode="mask", mask_prompt_coarsen=1, mask_prompt_morph=0)
  low = out["mask_prompt"]
  assert low.shape == (1, S // 4, S // 4) and set(np.unique(low)) == {-8.0, 8.0}
  expected = mask.reshape(S // 4, 4, S // 4, 4).max(axis=(1, 3)) > 0
  assert ((low[0] > 0) == expected).all()
  assert out["has_mask_prompt"].tolist() == [True] and not out["has_box"].any()
  degraded = [make(mask, size, seed, mode="mask", mask_prompt_logit=5.0)["mask_prompt"][0]
              for seed in range(10)]
  assert all(set(np.unique(d)) == {-5.0, 5.0} for d in degraded)
  assert any(((d > 0) != expected).any() for d in degraded)


def test_box_plus_points_and_empty_masks():
  mask, size = two_regions()
  out = make(mask, size, mode="box_points", num_points=3)
  assert out["has_box"].all() and out["point_labels"].tolist() == [[1, 1, 1]]
  empty = make(np.zeros((S, S), np.float32), size, mode="box_points", mask_prompt=True)
  assert not empty["prompt_valid"].any() and not empty["has_box"].any()
  assert not empty["has_mask_prompt"].any() and (empty["point_labels"] == -1).all()


@pytest.mark.parametrize("mode", sorted(prompts.PRESETS))
def test_prompts_are_deterministic_by_seed(mode):
  mask, size = two_regions()
  fields = dict(mode=mode, box_jitter=0.2, num_points=4)
  if mode == "box_per_region":
    fields["max_prompts"] = 2
  first, again, other = (make(mask, size, seed, **fields) for seed in (3, 3, 4))
  assert first.keys() == again.keys()
  for key in first:
    np.testing.assert_array_equal(first[key], again[key])
  assert any(not np.array_equal(first[k], other[k]) for k in first)


def test_bad_prompt_configs():
  with pytest.raises(SptUserError, match="prompt mode 'boxes'"):
    prompts.prompt_config("boxes")
  with pytest.raises(SptUserError, match=r"prompt config: unknown key\(s\) \['points'\]"):
    prompts.prompt_config("points", points=3)
  with pytest.raises(SptUserError, match="max_prompts must be 1 unless per_region"):
    prompts.prompt_config(max_prompts=2).check(S)
  with pytest.raises(SptUserError, match="no prompt at all"):
    prompts.prompt_config(box=False).check(S)
  with pytest.raises(SptUserError, match="multiple of mask_prompt_coarsen"):
    prompts.prompt_config("mask", mask_prompt_coarsen=3).check(S)
