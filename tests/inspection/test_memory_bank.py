"""Memory bank: coreset and nearest distances against numpy brute force, memory, threshold."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import distance

from spt_jax.errors import SptUserError
from spt_jax.inspection import memory_bank


def greedy_numpy(features, count):
  """The greedy k-center rule, plainly in float64: (N, D) -> [count] indices."""
  features = np.asarray(features, np.float64)
  selected, min_distance = [], np.full(len(features), np.inf)
  index = 0
  for _ in range(count):
    selected.append(index)
    min_distance = np.minimum(min_distance, np.sum((features - features[index]) ** 2, axis=1))
    min_distance[selected] = -np.inf
    index = int(np.argmax(min_distance))
  return selected


def covering_radius(features, selected):
  """Max over rows of the distance to the nearest selected row."""
  return distance.cdist(features, features[selected]).min(axis=1).max()


@pytest.mark.parametrize("dim, projection_dim", [(16, 128), (200, 32)])
def test_greedy_coreset_matches_numpy(dim, projection_dim):
  features = np.random.default_rng(0).standard_normal((300, dim)).astype(np.float32)
  got = np.asarray(memory_bank.greedy_coreset(features, 40, projection_dim=projection_dim))
  projected = features if dim <= projection_dim else memory_bank.random_projection(
      features, projection_dim, jax.random.PRNGKey(0))
  assert got.dtype == np.int32
  assert got.tolist() == greedy_numpy(projected, 40)
  assert got[0] == 0 and len(set(got.tolist())) == 40
  np.testing.assert_array_equal(memory_bank.greedy_coreset(features, 300), np.arange(300))
  np.testing.assert_array_equal(memory_bank.greedy_coreset(features, 500), np.arange(300))


def test_greedy_coreset_unique_among_duplicates():
  features = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # 3 distinct rows, 12 in all.
  got = np.asarray(memory_bank.greedy_coreset(features, 6))
  assert len(set(got.tolist())) == 6
  assert set(features[got[:3]].argmax(axis=1).tolist()) == {0, 1, 2}


def test_greedy_coreset_within_twice_random_subsets():
  rng = np.random.default_rng(1)
  features = rng.standard_normal((500, 8)).astype(np.float32)
  greedy = covering_radius(features, np.asarray(memory_bank.greedy_coreset(features, 25)))
  best_random = min(covering_radius(features, rng.choice(500, 25, replace=False))
                    for _ in range(20))
  assert greedy <= 2 * best_random


def test_greedy_coreset_rejects_bad_count():
  with pytest.raises(SptUserError, match="count"):
    memory_bank.greedy_coreset(np.zeros((4, 2), np.float32), 0)


@pytest.mark.parametrize("block", [32, 256])
def test_nearest_distances_match_brute_force(block):
  rng = np.random.default_rng(2)
  queries = rng.standard_normal((70, 24)).astype(np.float32)
  bank = rng.standard_normal((130, 24)).astype(np.float32)
  got = memory_bank.nearest_distances(queries, bank, block=block)
  assert got.shape == (70,) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, distance.cdist(queries, bank).min(axis=1), rtol=1e-4)


def test_nearest_distances_rejects_bad_shapes():
  with pytest.raises(SptUserError, match="queries, bank"):
    memory_bank.nearest_distances(np.zeros((3, 4)), np.zeros((5, 6)))
  with pytest.raises(SptUserError, match="bank"):
    memory_bank.nearest_distances(np.zeros((3, 4)), np.zeros((0, 4)))


def test_anomaly_maps_are_flattened_nearest_distances():
  rng = np.random.default_rng(3)
  embeddings = rng.standard_normal((2, 5, 7, 16)).astype(np.float32)
  bank = rng.standard_normal((40, 16)).astype(np.float32)
  maps = memory_bank.anomaly_maps(embeddings, bank, block=16)
  assert maps.shape == (2, 5, 7)
  flat = memory_bank.nearest_distances(embeddings.reshape(-1, 16), bank, block=16)
  np.testing.assert_array_equal(maps, np.asarray(flat).reshape(2, 5, 7))


def test_nearest_distances_compiled_memory():
  """4096 queries against a 100,000-row bank, blocks of 1024: compiled temp memory.

  The temporaries are the (100000,) bank norms (0.4 MB), one 1024 x 256 block of rows
  of each input (1 MiB each) and (1024,) vectors: 2.4 MiB measured on CPU, where XLA
  fuses the 1024 x 1024 block of squared distances into its row minimum. A backend
  that materialises that block adds 4 MiB, hence the bound of 8 MiB. The full
  4096 x 100000 distance matrix would be 1.6 GB, 200x more.
  """
  queries = jax.ShapeDtypeStruct((4096, 256), jnp.float32)
  bank = jax.ShapeDtypeStruct((100_000, 256), jnp.float32)
  temp = jax.jit(memory_bank.nearest_distances, static_argnames="block").lower(
      queries, bank, block=1024).compile().memory_analysis().temp_size_in_bytes
  full_matrix = 4096 * 100_000 * 4
  assert temp < 8 * 2**20
  assert temp * 10 <= full_matrix


def test_greedy_coreset_compiled_memory():
  """200,000 features of 1536 dims, projected to 128, 1000 selected: compiled temp memory.

  The temporaries are the projected features (200000 x 128 float32, 97.7 MiB), the
  (200000,) distances and the (1536, 128) projection matrix: 98.4 MiB measured, bounded
  here by 100 MiB. A 200000 x 1000 distance matrix would be 763 MiB.
  """
  features = jax.ShapeDtypeStruct((200_000, 1536), jnp.float32)
  temp = jax.jit(memory_bank.greedy_coreset, static_argnames="count").lower(
      features, 1000).compile().memory_analysis().temp_size_in_bytes
  assert temp < 100 * 2**20


def test_calibrated_threshold_keeps_rate_on_held_out_scores():
  rng = np.random.default_rng(4)
  scores = rng.standard_normal(10_000)
  threshold = memory_bank.calibrated_threshold(scores, 0.05)
  assert 0.049 <= np.mean(scores > threshold) <= 0.05
  assert abs(np.mean(rng.standard_normal(10_000) > threshold) - 0.05) <= 0.01


@pytest.mark.parametrize("scores, rate, argument", [
    (np.ones(10), 0.0, "false_positive_rate"),
    (np.ones(10), 1.0, "false_positive_rate"),
    (np.ones(0), 0.05, "scores"),
])
def test_calibrated_threshold_rejects_bad_input(scores, rate, argument):
  with pytest.raises(SptUserError, match=argument):
    memory_bank.calibrated_threshold(scores, rate)
