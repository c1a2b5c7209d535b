"""Overlays: panel layout, contour and mask colours where expected, prompts, titles."""

import numpy as np
import pytest
from PIL import Image

from spt_jax.errors import SptUserError
from spt_jax.evaluate import overlays

H, W = 120, 160  # contours and boxes 1 pixel wide, title strip 16 pixels
GREY = 100


def square(rows, cols):
  mask = np.zeros((H, W), bool)
  mask[rows[0]:rows[1], cols[0]:cols[1]] = True
  return mask


def panel(overlay, index):
  """The image part of panel `index` (below its title strip)."""
  strip = overlays.title_height(H, W)
  return overlay[strip:, index * W:(index + 1) * W]


@pytest.fixture(name="overlay")
def fixture_overlay():
  image = np.full((H, W, 3), GREY, np.uint8)
  gt = square((40, 80), (50, 100))
  draft = square((45, 85), (50, 100))
  final = square((40, 80), (52, 100))
  return overlays.render_overlay(image, {"draft": draft, "final": final}, gt,
                                 box=[48, 38, 101, 81],
                                 points=[[75, 60], [20, 100], [0, 0]],
                                 point_labels=[1, 0, -1])


def test_layout(overlay):
  assert overlay.shape == (overlays.title_height(H, W) + H, 4 * W, 3)
  assert overlay.dtype == np.uint8
  strip = overlay[:overlays.title_height(H, W)]
  for i in range(4):  # white title text on black in every panel's strip
    assert (strip[:, i * W:(i + 1) * W] > 200).all(axis=-1).any()


def test_ground_truth_contour(overlay):
  gt_panel = panel(overlay, 1)
  # The contour is the 1-pixel ring of the square (rows 40..79, cols 50..99); the box
  # (x 48..101, y 38..81) lies outside it. Inside and outside stay the plain image.
  for y, x in [(40, 70), (79, 70), (60, 50), (60, 99), (40, 50)]:
    assert tuple(gt_panel[y, x]) == overlays.GT_COLOUR
  for y, x in [(41, 70), (60, 51), (30, 30)]:
    assert tuple(gt_panel[y, x]) == (GREY,) * 3
  assert not np.all(panel(overlay, 0) == overlays.GT_COLOUR, axis=-1).any()


def test_masks_are_translucent_with_contours(overlay):
  for index, colour, inside, edge in [(2, overlays.STEP_COLOURS["draft"], (65, 75), (84, 75)),
                                      (3, overlays.STEP_COLOURS["final"], (65, 75), (60, 52))]:
    image = panel(overlay, index)
    blended = np.round(GREY * (1 - overlays.MASK_ALPHA)
                       + np.asarray(colour) * overlays.MASK_ALPHA)
    np.testing.assert_array_equal(image[inside], blended)
    assert tuple(image[edge]) == colour
    assert tuple(image[20, 20]) == (GREY,) * 3


def test_prompts_on_every_panel(overlay):
  for index in range(4):
    image = panel(overlay, index)
    assert tuple(image[60, 75]) == overlays.POSITIVE_COLOUR
    assert tuple(image[100, 20]) == overlays.NEGATIVE_COLOUR
    assert tuple(image[38, 70]) == overlays.BOX_COLOUR   # top edge of the box
    assert tuple(image[60, 101]) == overlays.BOX_COLOUR  # right edge
    assert tuple(image[1, 1]) == (GREY,) * 3             # the padding point is not drawn


def test_one_step_without_gt_and_saved_png(tmp_path):
  image = np.full((H, W, 3), GREY, np.uint8)
  mask = square((40, 80), (50, 100))
  path = str(tmp_path / "overlay.png")
  overlays.save_overlay(path, image, {"final": mask})
  saved = np.asarray(Image.open(path))
  assert saved.shape == (overlays.title_height(H, W) + H, 2 * W, 3)
  np.testing.assert_array_equal(saved, overlays.render_overlay(image, {"final": mask}))
  assert tuple(panel(saved, 1)[40, 70]) == overlays.STEP_COLOURS["final"]
  assert not np.all(saved == overlays.GT_COLOUR, axis=-1).any()


def test_bad_inputs_name_the_argument():
  image = np.zeros((H, W, 3), np.uint8)
  mask = np.zeros((H, W), bool)
  with pytest.raises(SptUserError, match=r"predictions\['final'\]"):
    overlays.render_overlay(image, {"draft": mask, "final": mask[:, :10]}, mask)
  with pytest.raises(SptUserError, match="gt"):
    overlays.render_overlay(image, {"final": mask}, mask[:10])
  with pytest.raises(SptUserError, match="image"):
    overlays.render_overlay(image.astype(np.float32), {"final": mask}, mask)
  with pytest.raises(SptUserError, match="point_labels"):
    overlays.render_overlay(image, {"final": mask}, mask, points=[[1, 2]])


def test_one_prompt_per_panel():
  image = np.full((H, W, 3), GREY, np.uint8)
  masks = {"prompt 0": square((10, 30), (10, 30)), "prompt 1": square((70, 100), (90, 130))}
  boxes = np.array([[8, 8, 31, 31], [88, 68, 131, 101]], np.float32)
  overlay = overlays.render_overlay(image, masks, box=boxes, prompt_per_panel=True)
  first, second = panel(overlay, 1), panel(overlay, 2)
  assert tuple(first[8, 20]) == overlays.BOX_COLOUR       # its own box's top edge
  assert tuple(first[68, 110]) == (GREY,) * 3             # not the other prompt's
  assert tuple(second[68, 110]) == overlays.BOX_COLOUR
  assert tuple(second[8, 20]) == (GREY,) * 3
  for y, x in [(8, 20), (68, 110)]:                       # the image panel shows both
    assert tuple(panel(overlay, 0)[y, x]) == overlays.BOX_COLOUR
  with pytest.raises(SptUserError, match="box: expected one prompt per prediction"):
    overlays.render_overlay(image, masks, box=boxes[:1], prompt_per_panel=True)
