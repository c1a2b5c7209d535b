"""Shim package: see `torchvision/__init__.py`."""
