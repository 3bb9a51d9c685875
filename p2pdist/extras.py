"""Optional dependencies: which extra brings what, and the one-line error when it is missing.

The core install (``pip install p2pdist``) runs the tracker, publish, fetch, seed, follow
and the store commands: none of them turns bytes into tensors, so none needs torch. torch
comes with the extra ``p2pdist[torch]`` (``make install`` pins it in the Makefile's
``TORCH_SPEC``) and is needed only by loading (``load``, ``load_into``, ``open``,
``Update.load``), by the trainer and by the demo. Those places call ``require_torch`` before
their first ``import torch``, so that a tracker-only or cache-only host gets a sentence
naming the fix instead of a ``ModuleNotFoundError`` from deep inside the package.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from p2pdist.errors import MissingDependencyError

TORCH_EXTRA = "torch"


def require_torch(feature: str) -> ModuleType:
    """Return the ``torch`` module, or raise MissingDependencyError naming ``feature`` and
    the install command when this install has no torch."""
    try:
        return importlib.import_module("torch")
    except ModuleNotFoundError as e:
        if e.name != "torch":  # torch is there but something it needs is not
            raise MissingDependencyError(f"{feature}: torch cannot be imported: {e}") from e
        raise MissingDependencyError(
            f"{feature}: torch is needed: pip install 'p2pdist[{TORCH_EXTRA}]' "
            "(or the torch build for your accelerator first, then p2pdist)"
        ) from e
    except ImportError as e:  # e.g. a CUDA build on a host without its libraries
        raise MissingDependencyError(f"{feature}: torch cannot be imported: {e}") from e


__all__ = ["TORCH_EXTRA", "require_torch"]
