"""Mesh and rules config: user mistakes are SptUserErrors naming the field; one device works."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sharded_tiny import forward_metrics, tiny_batch, tiny_model
from spt_jax import parallel
from spt_jax.errors import SptUserError
from spt_jax.parallel import distributed


def test_default_config_block_round_trips_and_builds_a_one_device_mesh():
  spec = parallel.MeshSpec.from_config(parallel.mesh_config())
  assert spec == parallel.MeshSpec()
  mesh = parallel.make_mesh(spec)
  assert dict(mesh.shape) == {"data": jax.device_count(), "fsdp": 1, "model": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_config_block_overrides_are_read():
  config = parallel.mesh_config(shape=[2, -1], axes=["fsdp", "model"])
  config.rules.logical = [["batch", ["data", "fsdp"]], ["prompts", None], ["embed", "fsdp"],
                          ["heads", "model"], ["mlp", "model"]]
  config.distributed.local_device_ids = [0, 1]
  spec = parallel.MeshSpec.from_config(config)
  assert spec.shape == (2, -1) and spec.axes == ("fsdp", "model")
  assert spec.rules.mesh_axes("prompts") == () and spec.rules.mesh_axes("batch") == (
      "data", "fsdp")
  assert spec.resolved_shape(8) == (2, 4)
  assert spec.distributed.local_device_ids == (0, 1)


@pytest.mark.parametrize("fields, field", [
    (dict(axes=("data", "tensor", "model")), "mesh.axes"),
    (dict(axes=("data", "data", "model")), "mesh.axes"),
    (dict(shape=(-1, 1)), "mesh.shape"),
    (dict(shape=(-1, -1, 1)), "mesh.shape"),
    (dict(shape=(0, 1, 1)), "mesh.shape"),
    (dict(dcn_shape=(2, 1)), "mesh.dcn_shape"),
    (dict(rules=dict(logical=[["batch", "data"], ["prompts", "expert"]])), "mesh.rules.logical"),
    (dict(rules=dict(logical=[["batch", "data"]])), "'prompts'"),
    (dict(rules=dict(params=[["params/.*/kernel", ["embd"]]])), "'embd'"),
    (dict(rules=dict(params=[["params/(kernel", ["embed"]]])), "bad regex"),
    (dict(rules=dict(params=[["params/.*", "embed", "x"]])), "mesh.rules.params"),
    (dict(rules=dict(order=[])), "mesh.rules"),
    (dict(distributed=dict(cpu_collectives="nccl")), "mesh.distributed.cpu_collectives"),
    (dict(distributed=dict(port=1234)), "mesh.distributed"),
    (dict(mesh_shape=(8,)), "mesh config: unknown key"),
])
def test_config_mistakes_name_the_field(fields, field):
  with pytest.raises(SptUserError, match=field.replace("(", r"\(").replace(".", r"\.")):
    parallel.MeshSpec.from_config(fields)


def test_mesh_shape_that_does_not_fit_the_devices():
  spec = parallel.MeshSpec(shape=(2, 3, 1))
  with pytest.raises(SptUserError, match=r"mesh\.shape=\(2, 3, 1\).*product is 8"):
    spec.resolved_shape(8)
  with pytest.raises(SptUserError, match=r"mesh\.shape=\(-1, 3, 1\).*8 devices"):
    parallel.MeshSpec(shape=(-1, 3, 1)).resolved_shape(8)
  with pytest.raises(SptUserError, match=r"mesh\.dcn_shape=\(2, 1, 1\) does not divide"):
    parallel.MeshSpec(shape=(1, 8, 1), dcn_shape=(2, 1, 1)).resolved_shape(8)
  with pytest.raises(SptUserError, match="mesh.shape"):
    parallel.make_mesh(parallel.MeshSpec(shape=(jax.device_count() + 1, 1, 1)))


def test_a_rule_that_matches_nothing_and_a_rule_with_too_many_names():
  _, variables, _, _ = tiny_model()
  mesh = parallel.make_mesh(parallel.MeshSpec())
  typo = parallel.ShardingRules(params=(("params/image_encoder/block_\\d+/.*", ("embed",)),))
  with pytest.raises(SptUserError, match=r"match no variable; paths look like 'adapters/"):
    parallel.shard_tree(variables, mesh, typo)
  too_many = parallel.ShardingRules(params=(("params/image_encoder/pos_embed",
                                             ("embed",) * 5),))
  with pytest.raises(SptUserError, match=r"names 5 dims .* shape \(1, 8, 8, 32\)"):
    parallel.shard_tree(variables, mesh, too_many)


def test_default_rules_fit_plain_sam_without_adapters():
  from small_models import TINY_SPEC  # pylint: disable=g-import-not-at-top
  from spt_jax.models.sam import Sam, init_variables  # pylint: disable=g-import-not-at-top
  variables = jax.eval_shape(lambda: init_variables(Sam(TINY_SPEC), jax.random.PRNGKey(0)))
  shardings = parallel.shard_tree(variables, parallel.make_mesh(parallel.MeshSpec()))
  assert jax.tree_util.tree_structure(shardings) == jax.tree_util.tree_structure(variables)


def test_distributed_start_is_off_unless_asked(monkeypatch):
  monkeypatch.delenv(distributed.ENV_ENABLED, raising=False)
  assert not parallel.maybe_initialize_distributed()
  monkeypatch.setenv(distributed.ENV_ENABLED, "0")
  assert not parallel.maybe_initialize_distributed()
  monkeypatch.setenv(distributed.ENV_ENABLED, "maybe")
  with pytest.raises(SptUserError, match=r"\$SPT_DISTRIBUTED='maybe'"):
    parallel.maybe_initialize_distributed()
  assert parallel.is_main_process()


def test_one_device_run_of_the_sharded_functions():
  model, variables, _, _ = tiny_model()
  spec = parallel.MeshSpec()
  mesh = parallel.make_mesh(spec)
  shardings = parallel.shard_tree(variables, mesh, spec.rules)
  batch_sh = parallel.batch_sharding(mesh, spec.rules)
  batch = parallel.global_batch(tiny_batch(), batch_sh)
  placed = parallel.place(variables, shardings)
  forward = parallel.sharded_jit(functools.partial(forward_metrics, model), mesh,
                                 (shardings, batch_sh), batch_sh, spec.rules)
  outputs = jax.jit(functools.partial(forward_metrics, model))(variables, batch)
  for name, value in forward(placed, batch).items():
    np.testing.assert_array_equal(parallel.local_rows(value), np.asarray(outputs[name]))
  abstract = parallel.abstract_tree(variables, shardings)
  assert all(isinstance(x, jax.ShapeDtypeStruct) and x.sharding is not None
             for x in jax.tree_util.tree_leaves(abstract))
  assert parallel.bytes_per_device(variables, shardings) == sum(
      x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(variables))


def test_activation_constraints_hit_every_two_way_block():
  model, variables, _, _ = tiny_model()
  mesh = parallel.make_mesh(parallel.MeshSpec())
  batch = {k: jnp.asarray(v) for k, v in tiny_batch().items() if k != "category"}

  def forward(variables, batch):
    with parallel.activation_constraints(mesh):
      return forward_metrics(model, variables, batch)

  jaxpr = str(jax.make_jaxpr(forward)(variables, batch))
  # one scan body (both SDT steps) x 2 two-way blocks x (2 inputs + 2 outputs)
  assert jaxpr.count("sharding_constraint") == 2 * 4
