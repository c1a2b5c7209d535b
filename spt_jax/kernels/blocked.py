"""Loops over row blocks for the blocked XLA paths (CPU): O(rows x block) live memory.

Results are written in place into carried buffers of the full size, so no blocked
copy of an input or an output is made.
"""

import jax
import jax.numpy as jnp


def block_loop(n, block, body, init):
  """Runs body(start, fresh, carry) over row blocks [start, start + block) of n rows.

  The last block is shifted back to end at row n instead of being padded; fresh
  (block, 1) marks its rows that the previous block did not cover (a body that
  accumulates must ignore the others).
  """
  def step(i, carry):
    start = jnp.minimum(i * block, n - block)
    fresh = (start + jnp.arange(block) >= i * block)[:, None]
    return body(start, fresh, carry)
  return jax.lax.fori_loop(0, -(-n // block), step, init)


def rows(x, start, block, axis=0):
  """Rows [start, start + block) of x along `axis`."""
  return jax.lax.dynamic_slice_in_dim(x, start, block, axis)


def put_rows(x, start, new_rows, axis=0):
  """x with rows [start, ...) along `axis` replaced by new_rows (cast to x's dtype)."""
  return jax.lax.dynamic_update_slice_in_dim(x, new_rows.astype(x.dtype), start, axis)
