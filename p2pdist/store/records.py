"""Verify-once records and the checks shared by everything that proves a file against its
manifest entry (torch-free, so that ``p2pdist fetch`` can use them without importing torch).

After a file hashed to its manifest's blake3, its identity (device, inode, size, mtime,
ctime) is recorded under ``<store>/verified/<blake3>``; a later check of a file with the same
identity skips the hash. See p2pdist/store/verified.py and docs/LOADING.md for what that catches.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import blake3

from p2pdist.errors import IntegrityError
from p2pdist.formats.digest import hash_file, is_digest
from p2pdist.formats.manifest import FileEntry

RECORDS_DIR = "verified"
RACY_WINDOW_NS = 50_000_000
COARSE_RACY_WINDOW_NS = 2_000_000_000
_MULTITHREAD_BYTES = 1 << 20


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


def check_file_once(path: Path, entry: FileEntry, records: VerifiedRecords) -> None:
    """IntegrityError unless the file at ``path`` is ``entry``'s bytes: trusted when a record
    vouches for its identity, else hashed (and then recorded, if it did not change meanwhile)."""
    try:
        before = FileIdentity.from_stat(os.stat(path))
    except FileNotFoundError:
        raise IntegrityError(f"{entry.path}: missing", path=entry.path) from None
    check_size(entry, before.size)
    if records.matches(entry.blake3, before):
        return
    check_digest(entry, hash_file(path))
    if FileIdentity.from_stat(os.stat(path)) == before:
        records.record(entry.blake3, before)


__all__ = [
    "RECORDS_DIR",
    "FileIdentity",
    "VerifiedRecords",
    "check_digest",
    "check_file_once",
    "check_size",
    "hash_buffer",
]
