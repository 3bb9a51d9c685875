"""Verified loading onto a device.

- ``loader``: ``load``: resolve a reference in the store (fetching it when absent), map its
  shards and hand out tensors only once their bytes match the signed blake3;
- ``lazy``: ``open``: the same guarantee, one file at a time, on first use;
- ``fit``: ``load_into``: check names and shapes against a module, then fill it in place;
- ``staging``: the pinned-memory pipeline that copies mapped shards to a CUDA device.
"""
