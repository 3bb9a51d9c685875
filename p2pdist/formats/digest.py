"""blake3 digests of files: memory-mapped, multi-threaded, never read whole into Python memory.

blake3 is the identity of every file p2pdist moves: the manifest lists it, the store names
blobs by it, and a fetch or load proves its bytes against it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3

from p2pdist.errors import NotFoundError

HEX_LEN = 64
_SMALL_FILE = 1 << 20


def hash_file(path: str | Path) -> str:
    """The blake3 hex digest of a file's bytes (memory-mapped; multi-threaded for large files)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file") from None
    if size < _SMALL_FILE:
        return blake3.blake3(path.read_bytes()).hexdigest()
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(os.fspath(path))
    return hasher.hexdigest()


def hash_bytes(data: bytes | memoryview) -> str:
    """The blake3 hex digest of bytes in memory."""
    return blake3.blake3(data).hexdigest()


def hash_files(paths: Iterable[str | Path], *, threads: int | None = None) -> list[str]:
    """Digests of many files, in order; small files hashed concurrently, large ones in parallel."""
    paths = list(paths)
    if len(paths) <= 1:
        return [hash_file(p) for p in paths]
    workers = threads or min(len(paths), os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(hash_file, paths))


def is_digest(value: object) -> bool:
    """True for a lowercase 64-character hex string."""
    return (
        isinstance(value, str)
        and len(value) == HEX_LEN
        and all(c in "0123456789abcdef" for c in value)
    )
