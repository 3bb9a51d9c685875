"""Verified loading onto a device.

- ``loader``: ``load``: resolve a reference in the store (fetching it when absent), map its
  shards and hand out tensors only once their bytes match the signed blake3;
- ``lazy``: ``open``: the same guarantee, one file at a time, on first use;
- ``fit``: ``load_into``: check names and shapes against a module, then fill it in place;
- ``staging``: the pinned-memory pipeline that copies mapped shards to a CUDA device.

Every module here needs torch (the extra ``p2pdist[torch]``); importing the package without
it raises MissingDependencyError with the install command, not a bare ModuleNotFoundError.
"""

from __future__ import annotations

from p2pdist.extras import require_torch

require_torch("loading weights (p2pdist.load, load_into, open, Update.load)")
