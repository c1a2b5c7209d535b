"""PatchCore's memory bank: coreset of normal patch features, nearest-patch anomaly scores.

From the patch embeddings of normal (good) images, `greedy_coreset` picks a subset that
covers them (greedy k-center, after a Johnson-Lindenstrauss projection); the selected rows
are the memory bank. A test patch scores its Euclidean distance to the nearest bank row
(`nearest_distances`, `anomaly_maps`), and `calibrated_threshold` turns the scores of
held-out normal images into a threshold for a chosen false-positive rate.

Memory: the coreset loop holds (N,) distances, never N x count; the nearest-distance
search loops over query and bank blocks (spt_jax.kernels.blocked, the last block shifted
back instead of padded: a row seen twice does not change a minimum), so its largest
temporary is one block x block matrix of squared distances, never Q x M.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from spt_jax.errors import SptUserError
from spt_jax.kernels import blocked

HIGHEST = jax.lax.Precision.HIGHEST


def random_projection(features: jax.Array, projection_dim: int, rng: jax.Array) -> jax.Array:
  """(N, D) -> (N, projection_dim) float32: times a fixed (D, projection_dim) Gaussian matrix
  scaled by 1 / sqrt(projection_dim), which keeps squared distances in expectation."""
  matrix = jax.random.normal(rng, (features.shape[1], projection_dim), jnp.float32)
  # Scaling the small matrix, not the product, leaves one (N, projection_dim) buffer.
  return jnp.matmul(features.astype(jnp.float32), matrix / np.sqrt(projection_dim),
                    precision=HIGHEST)


@functools.partial(jax.jit, static_argnames=("count", "projection_dim"))
def greedy_coreset(features: jax.Array, count: int, *, projection_dim: int = 128,
                   rng: jax.Array | None = None) -> jax.Array:
  """PatchCore's greedy k-center coreset of the rows of features.

  Starts from row 0; each step selects the row farthest (squared Euclidean) from its
  nearest selected row, the lowest index on ties. Selected rows are excluded from later
  steps, so the indices are unique even among duplicate rows. A greedy k-center cover is
  within 2x the smallest possible covering radius.

  Args:
    features: (N, D) patch features of normal images.
    count: rows to select, >= 1; count >= N selects all, jnp.arange(N).
    projection_dim: when D > projection_dim, distances are taken after
      `random_projection` to this many dimensions; otherwise on the features as they are.
    rng: key of the projection matrix; default jax.random.PRNGKey(0).

  Returns:
    (count,) int32 indices into features, in selection order.
  """
  if count < 1:
    raise SptUserError(f"count: expected at least 1 row to select, got {count}")
  if features.ndim != 2:
    raise SptUserError(f"features: expected (N, D) patch features, got shape {features.shape}")
  n, dim = features.shape
  if count >= n:
    return jnp.arange(n, dtype=jnp.int32)
  if dim > projection_dim:
    features = random_projection(
        features, projection_dim, jax.random.PRNGKey(0) if rng is None else rng)
  features = features.astype(jnp.float32)

  def select(min_distance, index):
    """(N,) min_distance after selecting row index, which is set to -inf."""
    distance = jnp.sum(jnp.square(features - features[index]), axis=1)
    return jnp.minimum(min_distance, distance).at[index].set(-jnp.inf)

  def step(i, carry):
    selected, min_distance = carry
    index = jnp.argmax(min_distance).astype(jnp.int32)
    return selected.at[i].set(index), select(min_distance, index)

  init = (jnp.zeros((count,), jnp.int32), select(jnp.full((n,), jnp.inf), 0))
  selected, _ = jax.lax.fori_loop(1, count, step, init)
  return selected


@functools.partial(jax.jit, static_argnames=("block",))
def nearest_distances(queries: jax.Array, bank: jax.Array, *, block: int = 4096) -> jax.Array:
  """Euclidean distance from each query to its nearest bank row.

  Squared distances are |q|^2 - 2 q.b + |b|^2 (float32, HIGHEST-precision matmul),
  clamped at 0 before the square root. Memory: the largest temporary is one
  (block, block) float32 matrix of them (min(block, Q) x min(block, M)), plus the (M,)
  bank norms and one block of rows of each input; no padded copy of either input.

  Args:
    queries: (Q, D) features.
    bank: (M, D) memory bank, M >= 1.
    block: rows per query block and per bank block.

  Returns:
    (Q,) float32 distances.
  """
  if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
    raise SptUserError(f"queries, bank: expected (Q, D) and (M, D) features, got shapes "
                       f"{queries.shape} and {bank.shape}")
  if bank.shape[0] < 1:
    raise SptUserError("bank: expected at least one row, got an empty memory bank")
  if block < 1:
    raise SptUserError(f"block: expected at least 1 row per block, got {block}")
  queries, bank = queries.astype(jnp.float32), bank.astype(jnp.float32)
  (num_queries, _), (num_bank, _) = queries.shape, bank.shape
  block_q, block_m = min(block, num_queries), min(block, num_bank)
  bank_norms = jnp.sum(jnp.square(bank), axis=1)

  def query_block(start, _, nearest):
    q = blocked.rows(queries, start, block_q)
    q_norms = jnp.sum(jnp.square(q), axis=1, keepdims=True)

    def bank_block(start_m, _, running):
      b = blocked.rows(bank, start_m, block_m)
      squared = (q_norms - 2 * jnp.matmul(q, b.T, precision=HIGHEST)
                 + blocked.rows(bank_norms, start_m, block_m)[None, :])
      return jnp.minimum(running, jnp.min(squared, axis=1))

    running = blocked.block_loop(num_bank, block_m, bank_block,
                                 jnp.full((block_q,), jnp.inf, jnp.float32))
    return blocked.put_rows(nearest, start, jnp.sqrt(jnp.maximum(running, 0.0)))

  return blocked.block_loop(num_queries, block_q, query_block,
                            jnp.zeros((num_queries,), jnp.float32))


@functools.partial(jax.jit, static_argnames=("block",))
def anomaly_maps(embeddings: jax.Array, bank: jax.Array, *, block: int = 4096) -> jax.Array:
  """PatchCore patch scores: (B, h, w, D) embeddings, (M, D) bank -> (B, h, w) float32
  distance of each position to its nearest bank row (`nearest_distances`)."""
  if embeddings.ndim != 4:
    raise SptUserError(
        f"embeddings: expected (B, h, w, D) patch embeddings, got shape {embeddings.shape}")
  flat = embeddings.reshape(-1, embeddings.shape[-1])
  return nearest_distances(flat, bank, block=block).reshape(embeddings.shape[:3])


def calibrated_threshold(scores: np.ndarray, false_positive_rate: float) -> float:
  """Threshold on the scores of normal images for a false-positive rate (host side).

  With n scores, t is the k-th smallest for k = n - floor(fpr * n), the
  ceil((1 - fpr) * n)-th order statistic: at most floor(fpr * n) scores lie strictly
  above t (fewer only where scores tie at t), the closest count to fpr * n that does
  not exceed it.

  Args:
    scores: scores of normal (good) images, any shape, at least one.
    false_positive_rate: in (0, 1).

  Returns:
    The threshold t; call a score anomalous when it is > t.
  """
  if not 0 < false_positive_rate < 1:
    raise SptUserError(
        f"false_positive_rate: expected a rate in (0, 1), got {false_positive_rate}")
  scores = np.ravel(scores)
  if scores.size == 0:
    raise SptUserError("scores: expected the scores of at least one normal image, got none")
  k = scores.size - int(np.floor(false_positive_rate * scores.size))
  return float(np.partition(scores, k - 1)[k - 1])
