r"""Sharding rules as data: logical axis names -> mesh axes, variable paths -> logical axes.

Two tables, both config data (`mesh.rules.logical`, `mesh.rules.params`):
  logical  (name, mesh axis | tuple of mesh axes | None): maxtext's logical axis rules.
           Every logical name used anywhere must be listed (None: replicated).
  params   (path regex, logical names): big_vision's regex rules on variable paths
           'collection/module/.../leaf' (full match; the first matching rule wins).
           The names are right-aligned to the leaf's dims, so the stacked SDT
           decoders (a leading step axis) and SAM's single decoder share a rule; dims
           left unnamed are replicated. A leaf matched by no rule is replicated (the
           small ones: norms, biases, rel-pos tables, prompt encoder, decoder heads).

A dim whose size its mesh axes do not divide keeps the longest prefix of them that does
(else it is replicated), said in one log line per case; mesh axes of size 1 and axes
already used by an earlier dim of the same array are skipped.

The defaults shard SAM's ViT the usual way: the width ('embed') over fsdp, attention
heads and MLP hidden units over model (Megatron: qkv and lin1 split on their outputs,
proj and lin2 on their inputs), LoRA's A beside its weight. The two-way decoders are
split over fsdp on their width only; their model-axis parallelism is over prompts
(activations, see `spt_jax.parallel.activations`).
"""

import collections
import dataclasses
import math
import re
from typing import Any, Mapping, Sequence

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from spt_jax.errors import SptUserError
from spt_jax.parallel.distributed import is_main_process

MeshAxes = str | tuple[str, ...] | None
# Per dim: a logical name, a tuple of names (a flattened dim, e.g. images x prompts,
# split over the mesh axes of each in turn) or None.
LogicalNames = tuple[str | tuple[str, ...] | None, ...]

DEFAULT_LOGICAL_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("batch", ("data", "fsdp")),  # images of the global batch
    ("prompts", "model"),  # prompts of an image in the decoders
    ("embed", "fsdp"),  # transformer width
    ("heads", "model"),  # attention heads (q/k/v outputs, the output projection's input)
    ("mlp", "model"),  # MLP hidden units
)

# Logical axes of activations, which every `logical` table must map.
ACTIVATION_AXES = ("batch", "prompts")

_ENCODER_BLOCK = r"params/image_encoder/blocks_\d+/"
_DECODER = r"params/(decoders/)?mask_decoder/"
DEFAULT_PARAM_RULES: tuple[tuple[str, LogicalNames], ...] = (
    (r"params/image_encoder/patch_embed/proj/kernel", ("embed",)),
    (r"params/image_encoder/pos_embed", ("embed",)),
    (_ENCODER_BLOCK + r"attn/qkv/kernel", ("embed", "heads")),
    (_ENCODER_BLOCK + r"attn/qkv/bias", ("heads",)),
    (_ENCODER_BLOCK + r"attn/proj/kernel", ("heads", "embed")),
    (_ENCODER_BLOCK + r"mlp/lin1/kernel", ("embed", "mlp")),
    (_ENCODER_BLOCK + r"mlp/lin1/bias", ("mlp",)),
    (_ENCODER_BLOCK + r"mlp/lin2/kernel", ("mlp", "embed")),
    (r"params/image_encoder/neck_0/kernel", ("embed", None)),
    (_DECODER + r".*/(q_proj|k_proj|v_proj|lin1)/kernel", ("embed", None)),
    (_DECODER + r".*/(out_proj|lin2)/kernel", (None, "embed")),
    (r"adapters/.*/lora_a", ("embed", None)),
)


def _axes_tuple(value: MeshAxes) -> tuple[str, ...]:
  if value is None:
    return ()
  return (value,) if isinstance(value, str) else tuple(value)


@dataclasses.dataclass(frozen=True)
class ShardingRules:
  """The `mesh.rules` config block: `logical` and `params` tables (module docstring).

  Every rule of `params` must match some variable, except the built-in ones, which
  cover model variants (SAM or SPT, with or without LoRA).
  """
  logical: tuple[tuple[str, MeshAxes], ...] = DEFAULT_LOGICAL_RULES
  params: tuple[tuple[str, LogicalNames], ...] = DEFAULT_PARAM_RULES

  @classmethod
  def from_config(cls, config: "ShardingRules | Mapping[str, Any] | Any") -> "ShardingRules":
    """From itself, a mapping or a ConfigDict with `logical` and/or `params` lists."""
    if isinstance(config, cls):
      return config
    fields = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    unknown = sorted(set(fields) - {"logical", "params"})
    if unknown:
      raise SptUserError(f"mesh.rules keys {unknown}: expected 'logical' and/or 'params'")
    rules = {}
    if "logical" in fields:
      rules["logical"] = tuple(
          (name, axes if axes is None or isinstance(axes, str) else tuple(axes))
          for name, axes in _pairs(fields["logical"], "mesh.rules.logical"))
    if "params" in fields:
      rules["params"] = tuple((pattern, tuple(names)) for pattern, names in
                              _pairs(fields["params"], "mesh.rules.params"))
    return cls(**rules)

  def mesh_axes(self, name: str) -> tuple[str, ...]:
    """The mesh axes of logical axis `name` (empty: replicated)."""
    table = dict(self.logical)
    if name not in table:
      raise SptUserError(f"logical axis {name!r} is not in mesh.rules.logical; expected "
                         f"one of {sorted(table)}")
    return _axes_tuple(table[name])

  def check(self, known_mesh_axes: Sequence[str]) -> None:
    """Raises SptUserError for an unknown mesh axis or logical name, or a bad regex."""
    for name in ACTIVATION_AXES:
      self.mesh_axes(name)
    for name, axes in self.logical:
      bad = [a for a in _axes_tuple(axes) if a not in known_mesh_axes]
      if bad:
        raise SptUserError(f"mesh.rules.logical: {name!r} -> {axes!r} names mesh axes "
                           f"{bad}; expected names from {tuple(known_mesh_axes)}")
    for pattern, names in self.params:
      try:
        re.compile(pattern)
      except re.error as error:
        raise SptUserError(f"mesh.rules.params: bad regex {pattern!r}: {error}") from None
      for name in names:
        if name is not None:
          self.mesh_axes(name)


def _pairs(items, field):
  pairs = list(items or ())
  if any(len(p) != 2 for p in pairs):
    raise SptUserError(f"{field}: expected a list of pairs, got {pairs!r}")
  return pairs


def _fallback_message(name, size, axes, kept, mesh):
  sizes = "x".join(f"{a}={mesh.shape[a]}" for a in axes)
  kept_text = f"kept {kept}" if kept else "replicated"
  return f"logical axis {name!r} of size {size} is not divisible by {sizes}: {kept_text}"


def logical_to_spec(names: LogicalNames, shape: Sequence[int], mesh: Mesh,
                    rules: ShardingRules) -> tuple[PartitionSpec, list[str]]:
  """PartitionSpec of an array of `shape` whose trailing dims are named `names`.

  Returns the spec and the fallbacks taken (one message per dim kept whole or in part).
  """
  if len(names) > len(shape):
    raise ValueError(f"{len(names)} logical names {names} for shape {tuple(shape)}")
  dims = (None,) * (len(shape) - len(names)) + tuple(names)
  used, spec, fallbacks = set(), [], []
  for size, name in zip(shape, dims):
    parts = () if name is None else (name,) if isinstance(name, str) else name
    axes = tuple(a for part in parts for a in rules.mesh_axes(part)
                 if a in mesh.shape and mesh.shape[a] > 1 and a not in used)
    kept = axes
    while kept and size % math.prod(mesh.shape[a] for a in kept):
      kept = kept[:-1]
    if kept != axes:
      fallbacks.append(_fallback_message(name, size, axes, kept, mesh))
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else kept)
  return PartitionSpec(*spec), fallbacks


def path_string(path) -> str:
  """'collection/module/.../leaf' from a jax tree path (dict keys, attributes, indices)."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return "/".join(parts)


def log_fallbacks(fallbacks: Sequence[str], what: str) -> None:
  """One log line (in process 0) per distinct fallback, with how often it happened."""
  if not is_main_process():
    return
  for message, count in collections.Counter(fallbacks).items():
    logging.info("sharding %s: %s (%d array%s)", what, message, count, "s"[:count > 1])


def shard_tree(tree, mesh: Mesh, rules: ShardingRules = ShardingRules()):
  """A NamedSharding for every leaf of a variables tree, by `rules.params`.

  Args:
    tree: nested dicts {'params': ..., 'adapters': ...} of arrays or ShapeDtypeStructs
      (pass the whole variables tree, then split the result like the variables with
      `spt_jax.train.trainable.partition`).
    mesh: the device mesh.
    rules: the sharding rules.

  Returns:
    The same structure with a NamedSharding per leaf.
  """
  compiled = [(pattern, re.compile(pattern), names) for pattern, names in rules.params]
  matched, fallbacks = set(), []

  def sharding(path, leaf):
    key = path_string(path)
    for pattern, regex, names in compiled:
      if regex.fullmatch(key):
        matched.add(pattern)
        if len(names) > len(leaf.shape):
          raise SptUserError(f"mesh.rules.params: {pattern!r} names {len(names)} dims "
                             f"{names} but {key} has shape {tuple(leaf.shape)}")
        spec, new = logical_to_spec(names, leaf.shape, mesh, rules)
        fallbacks.extend(f"{key.rsplit('/', 1)[-1]} ({pattern}): {m}" for m in new)
        return NamedSharding(mesh, spec)
    return NamedSharding(mesh, PartitionSpec())

  shardings = jax.tree_util.tree_map_with_path(sharding, tree)
  default_patterns = {pattern for pattern, _ in DEFAULT_PARAM_RULES}
  unused = [p for p, _, _ in compiled if p not in matched and p not in default_patterns]
  if unused:
    example = path_string(jax.tree_util.tree_flatten_with_path(tree)[0][0][0])
    raise SptUserError(f"mesh.rules.params: {unused} match no variable; paths look like "
                       f"{example!r}")
  log_fallbacks(fallbacks, "variables")
  return shardings


def place(tree, shardings):
  """Puts every leaf of `tree` on the devices of its sharding.

  Host values (numpy, or jax arrays of this process) must be the same in every process;
  each process stores the shards its devices hold. Global arrays are resharded.
  """

  def put(value, sharding):
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
      return jax.device_put(value, sharding)
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree_util.tree_map(put, tree, shardings)


def abstract_tree(tree, shardings):
  """ShapeDtypeStructs with shardings: Orbax restore targets, lowering without data."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def bytes_per_device(tree, shardings) -> int:
  """Bytes of the largest shard of each leaf, summed: what one device holds of `tree`."""
  sizes = jax.tree_util.tree_map(
      lambda x, s: math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize,
      tree, shardings)
  return sum(jax.tree_util.tree_leaves(sizes))
