"""MPDD (Jezek et al., 2021): metal parts, in the MVTec AD layout (same reading logic)."""

from spt_jax.data.builders import mvtec


class Mpdd(mvtec.MvtecAd):
  """MPDD: 6 categories of painted metal parts under varied light, MVTec AD layout."""
