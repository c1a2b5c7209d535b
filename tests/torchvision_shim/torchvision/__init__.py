"""Test-only stand-in for the few torchvision functions `segment_anything` imports.

PyPI's torchvision does not load beside the pinned torch 2.13.0 CPU build, and
`segment_anything` imports it at package import. This shim is put on `sys.path` by
`tests/conftest.py` only when the real torchvision cannot be imported. It implements
exactly the behaviour Meta's code relies on: PIL bilinear `resize` of a PIL image to an
(h, w) size, `to_pil_image` of an HxWx3 uint8 array, and `batched_nms`/`box_area`.
"""
