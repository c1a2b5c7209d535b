"""Which evaluation images get an overlay: spread over the set, never more than asked."""

import pytest

from spt_jax.evaluate.evaluator import overlay_indices


@pytest.mark.parametrize("count,total", [(8, 72), (2, 5), (3, 1000), (1, 10)])
def test_spread_over_the_set(count, total):
  chosen = sorted(overlay_indices(count, total))
  assert len(chosen) == count
  assert chosen[0] == 0 and all(0 <= i < total for i in chosen)
  if count > 1:
    assert chosen[-1] == total - 1
    gaps = [b - a for a, b in zip(chosen, chosen[1:])]
    assert max(gaps) - min(gaps) <= 1  # even spacing up to rounding


@pytest.mark.parametrize("count,total,expected", [(0, 10, set()), (5, 3, {0, 1, 2}),
                                                  (4, 4, {0, 1, 2, 3})])
def test_none_or_all(count, total, expected):
  assert overlay_indices(count, total) == expected
