"""The generated shapes: deterministic by seed, exact masks, prompts on and around them."""

import dataclasses

import numpy as np
import pytest

from spt_jax.data.prompts import mask_box
from spt_jax.errors import SptUserError
from spt_jax.pretrain import shapes

CONFIG = shapes.ShapesConfig()


def test_same_seed_same_example_whatever_the_batch():
  first = shapes.make_example(3, "train", 5, 3, 2)
  again = shapes.make_batch(3, "train", 4, 2, 3, 2)
  for name, value in first.items():
    np.testing.assert_array_equal(value, again[name][1])


@pytest.mark.parametrize("other", [(4, "train", 5), (3, "train", 6), (3, "held_out", 5)])
def test_other_seed_index_or_split_differs(other):
  first = shapes.make_example(3, "train", 5, 1, 1)["image"]
  assert not np.array_equal(first, shapes.make_example(*other, 1, 1)["image"])


def test_shapes_and_dtypes():
  batch = shapes.make_batch(0, "train", 0, 2, 3, 2)
  size = CONFIG.image_size
  assert batch["image"].shape == (2, size, size, 3) and batch["image"].dtype == np.uint8
  assert batch["masks"].shape == (2, 3, size, size) and batch["masks"].dtype == bool
  assert batch["boxes"].shape == (2, 3, 4) and batch["boxes"].dtype == np.float32
  assert batch["points"].shape == (2, 3, 2, 2) and batch["points"].dtype == np.float32
  assert batch["point_labels"].shape == (2, 3, 2) and batch["point_labels"].dtype == np.int32


@pytest.mark.parametrize("index", range(12))
def test_mask_is_exactly_where_the_target_shows(index):
  example = shapes.make_example(1, "train", index, 3, 3)
  scene = shapes.draw_scene(shapes.example_rng(1, "train", index), CONFIG)
  composed, visible = scene.compose(), scene.visible()
  for target, mask in zip(example["targets"], example["masks"]):
    np.testing.assert_array_equal(mask, visible[target])
    assert mask.sum() >= CONFIG.min_area
    changed = (composed != scene.compose(skip=(target,))).any(axis=-1)
    assert not (changed & ~mask).any()  # nothing outside the mask depends on the target
    paint = np.broadcast_to(scene.layers[target].paint, composed.shape)
    np.testing.assert_array_equal(composed[mask], paint[mask])  # its paint on all of it


@pytest.mark.parametrize("index", range(12))
def test_prompts_lie_on_and_around_the_target(index):
  exact = shapes.make_example(2, "held_out", index, 2, 1, shapes.HELD_OUT)
  for mask, box, points, labels in zip(exact["masks"], exact["boxes"], exact["points"],
                                       exact["point_labels"]):
    np.testing.assert_array_equal(box, mask_box(mask))
    np.testing.assert_array_equal(labels, [1])
    x, y = points[0].astype(int)
    assert mask[y, x]
  jittered = dataclasses.replace(CONFIG, box_jitter_prob=1.0, negative_prob=1.0)
  example = shapes.make_example(2, "train", index, 2, 3, jittered)
  size = CONFIG.image_size
  for mask, box, points, labels in zip(example["masks"], example["boxes"],
                                       example["points"], example["point_labels"]):
    np.testing.assert_array_equal(labels, [1, 1, 0])
    on_mask = mask[points[:, 1].astype(int), points[:, 0].astype(int)]
    np.testing.assert_array_equal(on_mask, [True, True, False])
    assert 0 <= box[0] <= box[2] <= size - 1 and 0 <= box[1] <= box[3] <= size - 1
    assert np.abs(box - mask_box(mask)).max() <= 5 * CONFIG.box_jitter_max


@pytest.mark.parametrize("field,value", [("min_objects", 0), ("image_size", 16),
                                         ("negative_prob", 1.5), ("min_area", 0)])
def test_bad_config_names_the_field(field, value):
  with pytest.raises(SptUserError, match=field):
    dataclasses.replace(CONFIG, **{field: value}).check()


def test_bad_split_is_a_user_error():
  with pytest.raises(SptUserError, match="split"):
    shapes.make_example(0, "test", 0, 1, 1)
