"""Pretraining a tiny SAM from random init on generated shapes (`python -m spt_jax.pretrain`)."""
