"""What a traced program holds: the largest value in a jaxpr, sub-jaxprs included."""

import numpy as np


def largest_intermediate(jaxpr) -> int:
  """Largest element count of any value in a jaxpr and its sub-jaxprs."""
  largest = 0
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      largest = max(largest, int(np.prod(getattr(var.aval, "shape", ()))))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          largest = max(largest, largest_intermediate(sub))
  return largest
