"""What a traced program holds, sub-jaxprs (kernels, loops) included: its largest
value, the precisions of its matrix products, the products of each Pallas kernel."""

import numpy as np


def _equations(jaxpr):
  """Every equation of a jaxpr and of its sub-jaxprs."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from _equations(sub)


def largest_intermediate(jaxpr) -> int:
  """Largest element count of any value in a jaxpr and its sub-jaxprs."""
  return max((int(np.prod(getattr(var.aval, "shape", ())))
              for eqn in _equations(jaxpr) for var in eqn.outvars), default=0)


def dot_precisions(jaxpr) -> set:
  """The `precision` of every dot_general in a jaxpr and its sub-jaxprs."""
  return {eqn.params["precision"] for eqn in _equations(jaxpr)
          if eqn.primitive.name == "dot_general"}


def kernel_products(jaxpr) -> list[int]:
  """The number of dot_generals in each Pallas kernel of a jaxpr, in program order."""
  return [sum(e.primitive.name == "dot_general" for e in _equations(eqn.params["jaxpr"]))
          for eqn in _equations(jaxpr) if eqn.primitive.name == "pallas_call"]
