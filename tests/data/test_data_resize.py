"""Resizing protocols (SAM, paper), torch-rule bilinear, flip and large-scale jitter."""

import numpy as np
import pytest

from spt_jax.data import augment
from spt_jax import transforms
from spt_jax.data import resize


def example(h=30, w=50, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  mask = np.zeros((h, w), bool)
  mask[10:20, 5:25] = True
  return image, mask


@pytest.mark.parametrize("hw,expected", [((30, 50), (38, 64)), ((50, 30), (64, 38)),
                                         ((64, 64), (64, 64)), ((700, 1024), (44, 64))])
def test_sam_input_size_is_metas_longest_side_rule(hw, expected):
  assert transforms.preprocess_shape(*hw, 64) == expected


def test_sam_protocol_keeps_aspect_and_zero_pads():
  image, mask = example()
  out_image, out_mask, input_size = resize.resize_for_model(image, mask, 64, "sam")
  assert out_image.shape == (64, 64, 3) and out_image.dtype == np.uint8
  assert out_mask.shape == (64, 64) and out_mask.dtype == np.float32
  assert input_size.tolist() == [38, 64] and input_size.dtype == np.int32
  assert not out_image[38:].any() and not out_mask[38:].any()
  assert set(np.unique(out_mask)) == {0.0, 1.0}
  pil = np.asarray(resize.Image.fromarray(image).resize((64, 38), resize.Image.BILINEAR))
  np.testing.assert_array_equal(out_image[:38], pil)


def test_paper_protocol_is_exact_square_and_truncates():
  image, mask = example()
  out_image, out_mask, input_size = resize.resize_for_model(image, mask, 64, "paper")
  assert input_size.tolist() == [64, 64]
  np.testing.assert_array_equal(out_image, np.floor(resize.resize_bilinear(image, (64, 64))))
  ys, xs = np.nonzero(out_mask)
  assert (ys.min(), ys.max(), xs.min(), xs.max()) == (21, 42, 6, 31)


def test_bilinear_window_is_a_crop_of_the_whole():
  image, _ = example(17, 23)
  whole = resize.resize_bilinear(image, (40, 9))
  np.testing.assert_array_equal(resize.resize_bilinear(image, (40, 9), (5, 2, 30, 6)),
                                whole[5:35, 2:8])
  np.testing.assert_allclose(resize.resize_bilinear(image, (17, 23)), image, atol=1e-4)


@pytest.mark.reference
def test_bilinear_matches_torch_interpolate():
  torch = pytest.importorskip("torch")
  image, mask = example(37, 53)
  for hw in [(64, 64), (20, 31), (128, 90)]:
    ours = resize.resize_bilinear(image, hw)
    theirs = torch.nn.functional.interpolate(
        torch.tensor(image, dtype=torch.float32).permute(2, 0, 1)[None], hw,
        mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


def test_hflip_flips_image_and_mask_together():
  image, mask = example()
  flips = 0
  for seed in range(20):
    out_image, out_mask = augment.random_hflip(image, mask, np.random.default_rng(seed))
    flipped = np.array_equal(out_mask, mask[:, ::-1])
    assert np.array_equal(out_image, image[:, ::-1] if flipped else image)
    flips += flipped
  assert 3 < flips < 17


def test_large_scale_jitter_geometry():
  image, mask = example(30, 50)
  sizes = []
  for seed in range(40):
    out_image, out_mask, input_size = augment.large_scale_jitter(
        image, mask, 64, np.random.default_rng(seed))
    h, w = input_size
    sizes.append(max(h, w))
    assert out_image.shape == (64, 64, 3) and out_mask.shape == (64, 64)
    assert 1 <= h <= 64 and 1 <= w <= 64
    assert not out_image[h:].any() and not out_image[:, w:].any()
    assert not out_mask[h:].any() and not out_mask[:, w:].any()
    assert set(np.unique(out_mask)) <= {0.0, 1.0}
  assert min(sizes) < 20 and max(sizes) == 64  # Scales from 0.1 to 2.0 of 64.


def test_large_scale_jitter_crops_to_the_defect():
  image = np.zeros((64, 64, 3), np.uint8)
  mask = np.zeros((64, 64), bool)
  mask[2:6, 55:60] = True  # Small, near a corner: a random crop at 2x often misses it.
  kept = [augment.large_scale_jitter(image, mask, 64, np.random.default_rng(s), 1.5, 2.0,
                                     crop_to_defect=True)[1].any() for s in range(30)]
  missed = [not augment.large_scale_jitter(image, mask, 64, np.random.default_rng(s), 1.5,
                                           2.0, crop_to_defect=False)[1].any()
            for s in range(30)]
  assert all(kept) and any(missed)
