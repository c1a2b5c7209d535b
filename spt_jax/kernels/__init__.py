"""Fused kernels. Relation attention: `relation_attention` and friends."""

from spt_jax.kernels.relation_attention import IMPLS
from spt_jax.kernels.relation_attention import relation_attention
from spt_jax.kernels.relation_attention import relation_attention_shared
from spt_jax.kernels.relation_reference import relation_attention_reference
