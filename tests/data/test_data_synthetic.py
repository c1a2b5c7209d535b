"""The generated anomaly set: determinism, exact masks, the MVTec layout, the default set."""

import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from spt_jax.data import pipeline
from spt_jax.data import synthetic
from spt_jax.errors import SptUserError

tfds.disable_progress_bar()

SIZE = 48


def files(root):
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
  options = dict(image_size=SIZE, num_train=1, num_test_good=1, num_test_per_defect=1)
  synthetic.write_tree(tmp_path / "a", ("wood", "plate"), seed=3, **options)
  synthetic.write_tree(tmp_path / "b", ("wood", "plate"), seed=3, **options)
  synthetic.write_tree(tmp_path / "c", ("wood", "plate"), seed=4, **options)
  synthetic.write_tree(tmp_path / "d", ("plate",), seed=3, **options)
  a, b, c, d = (files(tmp_path / x) for x in "abcd")
  assert a == b
  assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)
  assert d == {k: v for k, v in a.items() if k.startswith("plate/")}


def test_mvtec_layout_and_grayscale_category(tmp_path):
  synthetic.write_tree(tmp_path, ("wire_mesh",), image_size=SIZE, num_train=2,
                       num_test_good=1, num_test_per_defect=1)
  defects = synthetic.CATEGORIES["wire_mesh"].defects
  names = set(files(tmp_path))
  assert names == ({"wire_mesh/train/good/000.png", "wire_mesh/train/good/001.png",
                    "wire_mesh/test/good/000.png"}
                   | {f"wire_mesh/test/{d}/000.png" for d in defects}
                   | {f"wire_mesh/ground_truth/{d}/000_mask.png" for d in defects})
  assert Image.open(tmp_path / "wire_mesh/test/good/000.png").mode == "L"


@pytest.mark.parametrize("category", synthetic.CATEGORY_NAMES)
def test_every_defect_changes_exactly_its_mask(category):
  spec = synthetic.CATEGORIES[category]
  assert spec.defects and set(spec.defects) <= set(synthetic.DEFECTS)
  for d, defect in enumerate(spec.defects):
    rng = np.random.default_rng([7, d])
    scene = spec.render(rng, 96)
    image, mask = synthetic._DEFECT_FUNCTIONS[defect](scene, spec, rng)  # pylint: disable=protected-access
    assert mask.sum() >= 6, defect
    changed = np.abs(image - scene.image).max(axis=2)
    assert (changed[~mask] == 0).all(), defect
    assert (changed[mask] > 0).mean() > 0.95, defect
    assert mask[~scene.part].sum() == 0, defect


def test_categories_are_visually_distinct():
  means = []
  for c, category in enumerate(synthetic.CATEGORY_NAMES):
    image, _ = synthetic.render(category, None, 64, np.random.default_rng(c))
    rgb = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    means.append(np.concatenate([rgb.mean(axis=(0, 1)), rgb.std(axis=(0, 1))]))
  distance = np.linalg.norm(np.array(means)[:, None] - np.array(means)[None], axis=-1)
  assert distance[~np.eye(len(means), dtype=bool)].min() > 5


def test_default_set_builds_in_seconds_and_is_reused(tmp_path):
  start = time.perf_counter()
  generated = synthetic.ensure_synthetic_dataset(tmp_path, ("woven", "capsule"),
                                                 image_size=64)
  first = time.perf_counter() - start
  start = time.perf_counter()
  again = synthetic.ensure_synthetic_dataset(tmp_path, ("woven", "capsule"), image_size=64)
  assert again == generated and time.perf_counter() - start < 1.0
  assert first < 30  # Seconds in practice; generous for a loaded machine.
  loaded = pipeline.make_pipeline(dict(data_dir=str(tmp_path), image_size=64,
                                       dataset_options=dict(categories=("woven", "capsule"),
                                                            image_size=64)))
  defects = sum(len(synthetic.CATEGORIES[c].defects) for c in ("woven", "capsule"))
  assert loaded.num_examples == 2 * defects and loaded.num_normal_left_out == 2 * 2
  assert loaded.categories == ("capsule", "woven")
  for batch in loaded:
    assert batch["prompt_valid"].all() and batch["mask"].any()


def test_unknown_category(tmp_path):
  with pytest.raises(SptUserError, match=r"synthetic categories \['leather'\]"):
    synthetic.ensure_synthetic_dataset(tmp_path, ("leather",))
