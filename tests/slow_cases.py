"""Parametrised cases of which only some run in the default suite."""

import pytest


def slow_except(cases, default):
  """`cases` for `pytest.mark.parametrize`, those not in `default` slow-marked (a
  tuple case is one value per argument name)."""
  return [case if case in default else pytest.param(
              *(case if isinstance(case, tuple) else (case,)), marks=pytest.mark.slow)
          for case in cases]
