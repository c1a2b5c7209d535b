"""spt_jax: Self-Perception Tuning of the Segment Anything Model in JAX/Flax."""

__version__ = "0.1.0"
