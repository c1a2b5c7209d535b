"""Sharded training and evaluation on 8 simulated CPU devices equal one device's.

Needs 8 devices, which XLA_FLAGS must ask for before JAX starts: the suite's own
process has one, so `test_multi_device.py` runs this module in a subprocess with
`--xla_force_host_platform_device_count=8` (the fast tests by default, the model
runs with -m slow). Run alone:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 pytest -m "" tests/parallel/test_eight_devices.py
"""

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from sharded_tiny import NUM_IMAGES, run_on_mesh, tiny_batch
from spt_jax import parallel
from spt_jax.errors import SptUserError
from spt_jax.kernels import relation_attention_shared
from spt_jax.kernels.global_attention import global_attention
from spt_jax.models.config import sam_preset
from spt_jax.models.sam import init_variables
from spt_jax.spt.model import Spt
from spt_jax.train.trainable import SPT_TRAINABLE, partition

pytestmark = pytest.mark.skipif(
    jax.device_count() != 8, reason="needs 8 devices; run by test_multi_device.py")

MESHES = {
    "data8": parallel.MeshSpec(shape=(8, 1), axes=("data", "model")),
    "fsdp4_model2": parallel.MeshSpec(shape=(4, 2), axes=("fsdp", "model")),
    "data2_fsdp4": parallel.MeshSpec(shape=(2, 4), axes=("data", "fsdp")),
}
ENCODER_BLOCK = ("params", "image_encoder", "blocks_0")


def flat(tree):
  return traverse_util.flatten_dict(tree)


def spec_of(array):
  return tuple(array.sharding.spec) + (None,) * (array.ndim - len(array.sharding.spec))


# ---------------------------------------------------------------- fast: no model compile

def test_vit_h_frozen_weights_take_about_an_eighth_per_device_under_fsdp():
  model = Spt(sam_preset("vit_h"))
  variables = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0)))
  _, frozen = partition(variables, SPT_TRAINABLE)
  replicated = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(frozen))
  spec = parallel.MeshSpec(shape=(1, 8, 1))
  mesh = parallel.make_mesh(spec)
  _, frozen_sh = partition(parallel.shard_tree(variables, mesh, spec.rules), SPT_TRAINABLE)
  per_device = parallel.bytes_per_device(frozen, frozen_sh)
  assert replicated / 8 <= per_device < 1.05 * replicated / 8, (per_device, replicated)
  qkv = flat(frozen_sh)[ENCODER_BLOCK + ("attn", "qkv", "kernel")]
  assert qkv.spec == jax.sharding.PartitionSpec("fsdp", None)


def test_model_axis_splits_heads_and_mlp_megatron_style():
  model = Spt(sam_preset("vit_l"))
  variables = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0)))
  spec = parallel.MeshSpec(shape=(2, 4), axes=("fsdp", "model"))
  shardings = flat(parallel.shard_tree(variables, parallel.make_mesh(spec), spec.rules))
  block = lambda *path: shardings[ENCODER_BLOCK + path].spec
  assert block("attn", "qkv", "kernel") == jax.sharding.PartitionSpec("fsdp", "model")
  assert block("attn", "proj", "kernel") == jax.sharding.PartitionSpec("model", "fsdp")
  assert block("mlp", "lin1", "kernel") == jax.sharding.PartitionSpec("fsdp", "model")
  assert block("mlp", "lin2", "kernel") == jax.sharding.PartitionSpec("model", "fsdp")
  lora_a = shardings[("adapters", "image_encoder", "blocks_0", "attn", "qkv", "lora_a")]
  assert lora_a.spec == jax.sharding.PartitionSpec(None, "fsdp", None)


def test_indivisible_dims_fall_back_to_fewer_axes_and_say_so(caplog):
  spec = parallel.MeshSpec(shape=(8,), axes=("fsdp",))
  mesh = parallel.make_mesh(spec)
  tree = {"params": {"image_encoder": {"pos_embed": jax.ShapeDtypeStruct((1, 4, 4, 12),
                                                                         jnp.float32)}}}
  with caplog.at_level("INFO"):
    sharding = parallel.shard_tree(tree, mesh, spec.rules)
  assert sharding["params"]["image_encoder"]["pos_embed"].spec == jax.sharding.PartitionSpec(
      None, None, None, None)
  assert "'embed' of size 12 is not divisible by fsdp=8: replicated" in caplog.text


def test_global_batch_rejects_a_batch_the_batch_axes_do_not_divide():
  mesh = parallel.make_mesh(parallel.MeshSpec(shape=(8, 1, 1)))
  with pytest.raises(SptUserError, match="not divisible by the 8 devices"):
    parallel.global_batch(tiny_batch(slice(0, 6)), parallel.batch_sharding(mesh))


def test_global_batch_round_trip_and_text_stays_on_host():
  mesh = parallel.make_mesh(parallel.MeshSpec(shape=(2, 2, 2)))
  sharding = parallel.batch_sharding(mesh)
  local = tiny_batch()
  batch = parallel.global_batch(local, sharding)
  assert "category" not in batch
  assert batch["image"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))
  assert batch["image"].addressable_shards[0].data.shape[0] == NUM_IMAGES // 4
  for key, value in batch.items():
    np.testing.assert_array_equal(parallel.local_rows(value), local[key])


@pytest.mark.parametrize("impl, options", [
    ("xla", {}), ("pallas_tpu", {"interpret": True}), ("pallas_gpu", {"interpret": True})])
@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 1, 8), (8, 1, 1)])
def test_relation_kernels_per_shard_match_unsharded(impl, options, mesh_shape):
  """Under a mesh the fused relation runs per shard (images over data/fsdp, the
  stacked prompts' features over model, dE summed across them): forward and
  gradients equal the unsharded reference and the unsharded kernel."""
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  e = jax.random.normal(keys[0], (8, 200, 64))
  v = jax.random.normal(keys[1], (8, 8, 200, 32))
  d_out = jax.random.normal(keys[2], v.shape)
  spec = parallel.MeshSpec(shape=mesh_shape)
  mesh = parallel.make_mesh(spec)

  def value_and_grads(alpha, impl, options, sharded):
    def fn(e, v, d_out):
      call = functools.partial(relation_attention_shared, alpha=alpha, impl=impl, **options)
      if not sharded:
        return (call(e, v), *jax.vjp(call, e, v)[1](d_out))
      with parallel.activation_constraints(mesh, spec.rules):
        out, vjp = jax.vjp(call, e, v)
        return (out, *vjp(d_out))
    return jax.jit(fn), fn

  for alpha in (0.0, 0.5):
    sharded, sharded_fn = value_and_grads(alpha, impl, options, True)
    jaxpr = str(jax.make_jaxpr(sharded_fn)(e, v, d_out))
    assert jaxpr.count("shard_map") >= 2  # the forward and the backward
    assert ("psum" in jaxpr) == (mesh_shape[2] > 1)  # dE over the feature shards
    got = sharded(e, v, d_out)
    alone = value_and_grads(alpha, impl, options, False)[0](e, v, d_out)
    for name, g, a in zip(("out", "de", "dv"), got, alone):
      np.testing.assert_allclose(g, a, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(a))),
                                 err_msg=f"{impl} {mesh_shape} alpha={alpha} {name}")
    if not alpha:
      want = value_and_grads(alpha, "reference", {}, False)[0](e, v, d_out)
      for name, g, w in zip(("out", "de", "dv"), got, want):
        scale = float(jnp.max(jnp.abs(w)))
        assert float(jnp.max(jnp.abs(g - w))) <= 2e-5 * scale, (impl, mesh_shape, name)


@pytest.mark.parametrize("impl, options", [
    ("xla", {"block_q": 48}), ("pallas_tpu", {"interpret": True}),
    ("pallas_gpu", {"interpret": True})])
@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (1, 1, 8)])
def test_global_attention_per_shard_matches_unsharded(impl, options, mesh_shape):
  """Images over data/fsdp, heads over model: forward and every gradient equal the
  unsharded kernel's and the reference's."""
  keys = jax.random.split(jax.random.PRNGKey(4), 4)
  q, k, v, d_out = (jax.random.normal(key, (4, 8, 96, 16)) for key in keys)
  rel_h = jax.random.normal(keys[0], (4, 8, 96, 8))
  rel_w = jax.random.normal(keys[1], (4, 8, 96, 12))
  spec = parallel.MeshSpec(shape=mesh_shape)
  mesh = parallel.make_mesh(spec)

  def value_and_grads(impl, options, sharded):
    def fn(*args):
      call = functools.partial(global_attention, impl=impl, **options)
      with parallel.activation_constraints(mesh, spec.rules) if sharded else (
          contextlib.nullcontext()):
        out, vjp = jax.vjp(call, *args)
        return (out, *vjp(d_out))
    return fn

  sharded = value_and_grads(impl, options, True)
  assert str(jax.make_jaxpr(sharded)(q, k, v, rel_h, rel_w)).count("shard_map") >= 2
  got = jax.jit(sharded)(q, k, v, rel_h, rel_w)
  alone = jax.jit(value_and_grads(impl, options, False))(q, k, v, rel_h, rel_w)
  want = jax.jit(value_and_grads("reference", {}, False))(q, k, v, rel_h, rel_w)
  for name, g, a, w in zip(("out", "dq", "dk", "dv", "d_rel_h", "d_rel_w"), got, alone,
                           want):
    np.testing.assert_allclose(g, a, rtol=1e-5, atol=1e-6, err_msg=f"{impl} {name}")
    assert float(jnp.max(jnp.abs(g - w))) <= 2e-5 * float(jnp.max(jnp.abs(w))), name


# ---------------------------------------------------------------- slow: the tiny SPT

@pytest.fixture(scope="module")
def single_device():
  return run_on_mesh(parallel.MeshSpec(shape=(1,), axes=("data",)), jax.devices()[:1])


@pytest.fixture(scope="module", params=sorted(MESHES))
def sharded(request):
  return request.param, run_on_mesh(MESHES[request.param])


@pytest.mark.slow
def test_train_step_matches_one_device(single_device, sharded):
  _, run = sharded
  np.testing.assert_allclose(run.losses, single_device.losses, rtol=1e-5)
  # Adam's first moment is linear in the gradients: per-leaf gradients agree tightly.
  expected_mu = flat(single_device.state.opt_state[0].mu)
  for key, value in flat(run.state.opt_state[0].mu).items():
    np.testing.assert_allclose(np.asarray(value), np.asarray(expected_mu[key]), rtol=1e-3,
                               atol=1e-7, err_msg="/".join(key))
    assert value.sharding == flat(run.state_shardings.trainable)[key], key
  # Adam's update is about lr * sign(gradient): a gradient that is ~0 up to float noise
  # may move its leaf differently; allow 1 % of a step (lr 5e-2).
  expected = flat(single_device.state.trainable)
  for key, value in flat(run.state.trainable).items():
    np.testing.assert_allclose(np.asarray(value), np.asarray(expected[key]), rtol=1e-4,
                               atol=5e-4, err_msg="/".join(key))


@pytest.mark.slow
def test_eval_outputs_match_one_device(single_device, sharded):
  _, run = sharded
  for name in ("draft", "final"):
    np.testing.assert_allclose(run.forward[name], single_device.forward[name], rtol=1e-4,
                               atol=1e-4, err_msg=name)
  np.testing.assert_array_equal(run.forward["iou"], single_device.forward["iou"])


@pytest.mark.slow
def test_parameters_are_really_sharded(sharded):
  name, run = sharded
  mesh_shape = dict(run.mesh.shape)
  frozen, adapters = flat(run.frozen), flat(run.state.trainable)
  qkv = frozen[ENCODER_BLOCK + ("attn", "qkv", "kernel")]
  lin2 = frozen[ENCODER_BLOCK + ("mlp", "lin2", "kernel")]
  lora_a = adapters[("adapters",) + ENCODER_BLOCK[1:] + ("attn", "qkv", "lora_a")]
  fsdp, model = mesh_shape.get("fsdp", 1), mesh_shape.get("model", 1)
  if name == "data8":
    assert all(x.sharding.is_fully_replicated for x in frozen.values())
  else:
    assert spec_of(qkv) == ("fsdp", "model" if model > 1 else None)
    assert spec_of(lin2) == ("model" if model > 1 else None, "fsdp")
    assert spec_of(lora_a) == (None, "fsdp", None)
  for array, split in ((qkv, fsdp * model), (lin2, fsdp * model), (lora_a, fsdp)):
    shard = array.addressable_shards[0].data
    assert math.prod(shard.shape) * split == array.size
  state_after = jax.tree_util.tree_leaves(run.state)
  assert [x.sharding for x in state_after] == jax.tree_util.tree_leaves(run.state_shardings)
