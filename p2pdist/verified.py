"""Proving a mapped file against its manifest entry, and the verify-once records.

The loader hands out a file's tensors only after the file's bytes hashed to the blake3 the
signed manifest lists. Two policies:

- ``always`` (default): every load re-hashes every file it reads. Costs one pass of blake3
  over the bytes (overlapped with the copy to the device); catches any change, however made.
- ``once``: after a file verified, its identity (device, inode, size, mtime, ctime) is
  recorded under ``<store>/verified/<blake3>``; a later load of a file with the same
  identity skips the hash. Catches every change made through the filesystem (a write bumps
  mtime and ctime, a replacement changes the inode; ctime cannot be set back by a user),
  but not bit rot on the disk, writes to the raw block device, or someone with root who
  sets the clock back. A record is not written while the file's ctime is younger than the
  timestamp granularity window, so that a write landing in the same clock tick as the hash
  cannot hide behind an equal timestamp (git's "racy clean" problem).

See docs/LOADING.md for the trade-off in numbers.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import blake3

from p2pdist.digest import is_digest
from p2pdist.errors import ConfigError, IntegrityError
from p2pdist.manifest import FileEntry

VerifyPolicy = Literal["always", "once"]
POLICIES: tuple[str, ...] = ("always", "once")
RECORDS_DIR = "verified"
RACY_WINDOW_NS = 50_000_000
COARSE_RACY_WINDOW_NS = 2_000_000_000
_MULTITHREAD_BYTES = 1 << 20


def check_policy(verify: object) -> VerifyPolicy:
    """Return ``verify`` if it names a policy, else raise ConfigError naming the choices."""
    if verify not in POLICIES:
        raise ConfigError(f"verify={verify!r}: expected one of {', '.join(map(repr, POLICIES))}")
    return verify  # type: ignore[return-value]


@dataclass(frozen=True)
class FileIdentity:
    """What identifies one state of a file on this host without reading its bytes."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def is_racy(self, now_ns: int | None = None) -> bool:
        """True when a write in the same timestamp tick could leave this identity unchanged."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        coarse = self.ctime_ns % 1_000_000_000 == 0 and self.mtime_ns % 1_000_000_000 == 0
        window = COARSE_RACY_WINDOW_NS if coarse else RACY_WINDOW_NS
        return now_ns - max(self.ctime_ns, self.mtime_ns) < window


def hash_buffer(data: memoryview | bytes | bytearray) -> str:
    """blake3 of bytes in memory (or a mapping), on all cores for anything over 1 MiB."""
    threads = blake3.blake3.AUTO if len(data) >= _MULTITHREAD_BYTES else 1
    hasher = blake3.blake3(max_threads=threads)
    hasher.update(data)
    return hasher.hexdigest()


def check_digest(entry: FileEntry, actual: str) -> None:
    """Raise IntegrityError naming the file unless ``actual`` is the entry's blake3."""
    if actual != entry.blake3:
        raise IntegrityError(
            f"{entry.path}: blake3 {actual} differs from the signed manifest's {entry.blake3}; "
            "the file changed after it was stored, and nothing was loaded; remove the version "
            "from the store and fetch it again",
            path=entry.path,
            expected=entry.blake3,
            actual=actual,
        )


def check_size(entry: FileEntry, size: int) -> None:
    """Raise IntegrityError naming the file unless it has the size the manifest declares."""
    if size != entry.size:
        raise IntegrityError(
            f"{entry.path}: {size} bytes on disk, the signed manifest says {entry.size} "
            "(truncated or replaced after it was stored); nothing was loaded",
            path=entry.path,
            expected=entry.blake3,
        )


class VerifiedRecords:
    """The verify-once records of one store: ``<root>/<blake3>`` holds the identity it had.

    Keyed by content digest, so one record serves every version that shares the blob.
    Records are small JSON files written atomically; a missing, unreadable or stale record
    only means "hash it again".
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, digest: str) -> Path:
        if not is_digest(digest):
            raise ValueError(f"not a blake3 digest: {digest!r}")
        return self.root / digest

    def matches(self, digest: str, identity: FileIdentity) -> bool:
        """True when a record says a file with exactly this identity hashed to ``digest``."""
        try:
            data = json.loads(self._path(digest).read_text())
            return FileIdentity(**data) == identity
        except (OSError, ValueError, TypeError):
            return False

    def record(self, digest: str, identity: FileIdentity) -> bool:
        """Remember that ``identity`` hashed to ``digest``; False when skipped (racy, unwritable)."""
        if identity.is_racy():
            return False
        path = self._path(digest)
        tmp = self.root / f".{digest}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(asdict(identity), sort_keys=True))
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            return False
        return True

    def forget(self, digest: str) -> None:
        self._path(digest).unlink(missing_ok=True)


__all__ = [
    "POLICIES",
    "FileIdentity",
    "VerifiedRecords",
    "VerifyPolicy",
    "check_digest",
    "check_policy",
    "check_size",
    "hash_buffer",
]
