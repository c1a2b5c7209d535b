"""The patch projection (patches x kernel, dense on TPU) is Meta's strided convolution."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spt_jax.errors import SptUserError
from spt_jax.models.image_encoder import PatchEmbed


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_patch_embed_equals_the_strided_convolution(dtype):
  images = jax.random.normal(jax.random.key(0), (2, 64, 48, 3))
  variables = PatchEmbed(32, 16, dtype).init(jax.random.key(1), images)
  params = variables["params"]["proj"]
  assert params["kernel"].shape == (16, 16, 3, 32) and params["bias"].shape == (32,)
  params = dict(params, bias=jax.random.normal(jax.random.key(2), (32,)))
  conv = nn.Conv(32, (16, 16), strides=(16, 16), padding="VALID", dtype=dtype)
  expected = conv.apply({"params": params}, images)
  got = PatchEmbed(32, 16, dtype).apply({"params": {"proj": params}}, images)
  assert got.shape == (2, 4, 3, 32) and got.dtype == dtype
  tolerance = 1e-5 if dtype == jnp.float32 else 3e-2
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(expected, np.float32),
                             rtol=tolerance, atol=tolerance)


def test_patch_embed_rejects_an_image_that_is_not_whole_patches():
  with pytest.raises(SptUserError, match="not a multiple of the patch size 16"):
    PatchEmbed(32, 16).init(jax.random.key(0), jnp.zeros((1, 40, 48, 3)))

