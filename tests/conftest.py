"""Shared test set-up.

Reference tests import `meta_reference` (this directory is on sys.path through this
conftest), which puts the test-only torchvision shim in place for Meta's code.
"""
