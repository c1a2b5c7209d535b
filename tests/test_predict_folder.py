"""Predict mode's prompt checks: clear errors for prompts that mean no region, clipping
with a warning for boxes partly outside the image."""

import numpy as np
import pytest

from spt_jax.errors import SptUserError
from spt_jax.predict_folder import check_prompts

SIZE = (100, 200)  # (H, W)


def boxes(*rows):
  return {"boxes": np.array(rows, np.float32)}


def points(coords, labels):
  return {"points": np.array(coords, np.float32), "point_labels": np.array(labels, np.int32)}


@pytest.mark.parametrize("entry, message", [
    (boxes([410, 210, 170, 15]), r"a.png \(200x100\): box 0 \[410.0, 210.0, 170.0, 15.0\] "
                                 r"is inverted or empty; expected \[x0, y0, x1, y1\]"),
    (boxes([10, 10, 50, 60], [20, 30, 20, 80]), "box 1 .* is inverted or empty"),
    (boxes([250, 10, 300, 60]), r"box 0 \[250.0, 10.0, 300.0, 60.0\] lies outside the image"),
    (boxes([[1, 2, 3]]), r"boxes must be \[\[x0, y0, x1, y1\], ...\]"),
    (points([[[10, 10], [210, 5]]], [[1, 1]]), r"point 1 \[210.0, 5.0\] of point set 0 lies "
                                               "outside the image"),
    ({**boxes([1, 1, 9, 9], [2, 2, 8, 8]), **points([[[5, 5]]], [[1]])},
     "2 boxes and 1 point sets; expected as many of each"),
])
def test_prompts_that_mean_no_region_are_errors_naming_image_and_prompt(entry, message):
  with pytest.raises(SptUserError, match=message):
    check_prompts("a.png", entry, SIZE, "prompts.json")


def test_boxes_partly_outside_are_clipped_with_a_warning(capsys):
  checked = check_prompts("a.png", boxes([-5, 10, 50, 60], [150, 50, 260, 130]), SIZE,
                          "prompts.json")
  np.testing.assert_array_equal(checked["boxes"], [[0, 10, 50, 60], [150, 50, 199, 99]])
  out = capsys.readouterr().out
  assert "box 0 [-5.0, 10.0, 50.0, 60.0] reaches outside the image; clipped to [0.0" in out
  assert "box 1" in out
  inside = boxes([0, 0, 199, 99])
  assert check_prompts("a.png", inside, SIZE, "p.json")["boxes"].tolist() == [[0, 0, 199, 99]]
  assert "warning" not in capsys.readouterr().out
