"""How the kernel tests compare an implementation with its reference: per tensor,
max |x - ref| <= tol x max |ref|, and every value finite."""

import numpy as np

# Per compute dtype: float32 products at full precision; bfloat16 operands and outputs.
TOLERANCE = {"float32": 2e-5, "bfloat16": 3e-2}


def assert_close(name, got, want, tol):
  """Fails, naming `name`, where got is not finite or max |got - want| > tol max |want|."""
  got, want = (np.asarray(x, np.float32) for x in (got, want))
  assert np.all(np.isfinite(got)), f"{name}: not finite"
  err, scale = np.max(np.abs(got - want)), np.max(np.abs(want))
  assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol} x max|ref| {scale:.3g}"
