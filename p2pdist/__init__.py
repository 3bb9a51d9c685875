"""p2pdist: peer-to-peer model weight distribution.

The public surface::

    p2pdist.fetch("org/gpt@v3") -> Path              # verified, into the local store
    p2pdist.load("org/gpt@latest", device="cuda")    # dict of tensors, verified
    p2pdist.load_into(module, "org/gpt@v3")          # strict by default
    p2pdist.open("org/gpt@v3")                       # lazy per-tensor access
    p2pdist.follow("org/gpt@latest", on_update)      # every new version, by delta
    p2pdist.trainer.CheckpointPublisher("org/gpt").publish(model)

Heavy modules (torch, libtorrent) load on first use, so ``import p2pdist`` and the CLI stay fast.
torch is an extra (``pip install p2pdist[torch]``): only loading (``load``, ``load_into``,
``open``, ``Update.load``), the trainer and the demo need it; the rest runs without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from p2pdist.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    FormatError,
    IntegrityError,
    MissingDependencyError,
    NoSeedersError,
    NotFoundError,
    P2PDistError,
    RefError,
    SignatureError,
    StoreError,
    SwarmError,
    TrackerError,
    UnsafePathError,
)
from p2pdist.formats.manifest import FileEntry, Manifest
from p2pdist.ref import ModelRef, parse_ref

if TYPE_CHECKING:
    from p2pdist.fetcher import fetch
    from p2pdist.follower import Update, follow
    from p2pdist.loading.fit import load_into
    from p2pdist.loading.lazy import open
    from p2pdist.loading.loader import load
    from p2pdist.publishing import publish

__version__ = "0.1.0"

_LAZY = {
    "fetch": "p2pdist.fetcher",
    "follow": "p2pdist.follower",
    "Update": "p2pdist.follower",
    "load": "p2pdist.loading.loader",
    "load_into": "p2pdist.loading.fit",
    "open": "p2pdist.loading.lazy",
    "publish": "p2pdist.publishing",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'p2pdist' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AuthError",
    "ConfigError",
    "ConflictError",
    "FileEntry",
    "FormatError",
    "IntegrityError",
    "Manifest",
    "MissingDependencyError",
    "ModelRef",
    "NoSeedersError",
    "NotFoundError",
    "P2PDistError",
    "RefError",
    "SignatureError",
    "StoreError",
    "SwarmError",
    "TrackerError",
    "UnsafePathError",
    "Update",
    "fetch",
    "follow",
    "load",
    "load_into",
    "open",
    "parse_ref",
    "publish",
]
