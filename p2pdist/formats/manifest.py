"""The signed manifest (``p2pdist.json``): what a version is, byte for byte.

A manifest lists every file of a version with its size and blake3, names the parent version
and the delta files that rebuild this version from it, carries the infohashes of the full and
delta torrents, and is signed with the publisher's ed25519 key over its canonical bytes
(sorted keys, no spaces, UTF-8, without the ``signature`` field). Whoever holds a manifest
whose signature verifies against a trusted key can prove any file it is handed.

The schema is documented in docs/FORMAT.md (``format: 1``).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from p2pdist.errors import FormatError, IntegrityError, SignatureError, UnsafePathError
from p2pdist.formats import jsonio
from p2pdist.formats.digest import hash_files, is_digest
from p2pdist.ref import validate_name, validate_version

FORMAT_VERSION = 1
MANIFEST_FILENAME = "p2pdist.json"
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_FILES = 100_000
WEB_SEEDS_KEY = "p2pdist.web_seeds"
"""The ``metadata`` key under which a publisher signs its web seeds (BEP 19 URLs, one per
line). A torrent's ``url-list`` lies outside its info dict, so the registry could change it;
consumers dial only the web seeds signed here (or in their own configuration)."""


def safe_relpath(path: str) -> str:
    """Return ``path`` if it is a normalised relative POSIX path that stays inside its folder."""
    if not isinstance(path, str) or not path:
        raise UnsafePathError(f"empty or non-string path {path!r}")
    if (
        path.startswith("/")
        or "\\" in path
        or "\x00" in path
        or (len(path) > 1 and path[1] == ":")
        or posixpath.normpath(path) != path
        or any(part in ("", ".", "..") for part in path.split("/"))
    ):
        raise UnsafePathError(f"unsafe path {path!r}: only normalised relative paths are allowed")
    return path


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: relative path, size in bytes, blake3 hex digest."""

    path: str
    size: int
    blake3: str

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "blake3": self.blake3}

    @classmethod
    def from_json(cls, obj: Any, *, where: str) -> FileEntry:
        if not isinstance(obj, dict) or set(obj) != {"path", "size", "blake3"}:
            raise FormatError(f"{where}: file entry must have exactly path, size and blake3")
        path, size, digest = obj["path"], obj["size"], obj["blake3"]
        safe_relpath(path)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise FormatError(f"{where}: file {path!r} has invalid size {size!r}")
        if not is_digest(digest):
            raise FormatError(f"{where}: file {path!r} has invalid blake3 {digest!r}")
        return cls(path, size, digest)


@dataclass(frozen=True)
class TorrentRef:
    """The infohashes of one torrent (v1 SHA-1 hex, v2 SHA-256 hex; either may be absent)."""

    v1: str | None = None
    v2: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"v1": self.v1, "v2": self.v2}

    @classmethod
    def from_json(cls, obj: Any, *, where: str) -> TorrentRef:
        if not isinstance(obj, dict) or set(obj) - {"v1", "v2"}:
            raise FormatError(f"{where}: torrent entry must have only v1 and v2")
        v1, v2 = obj.get("v1"), obj.get("v2")
        for value, length in ((v1, 40), (v2, 64)):
            if value is not None and not (
                isinstance(value, str)
                and len(value) == length
                and all(c in "0123456789abcdef" for c in value)
            ):
                raise FormatError(f"{where}: invalid infohash {value!r}")
        if v1 is None and v2 is None:
            raise FormatError(f"{where}: torrent entry has neither v1 nor v2 infohash")
        return cls(v1, v2)


def _entries(objs: Any, *, where: str) -> tuple[FileEntry, ...]:
    if not isinstance(objs, list) or len(objs) > MAX_FILES:
        raise FormatError(f"{where}: files must be a list of at most {MAX_FILES} entries")
    entries = tuple(FileEntry.from_json(o, where=where) for o in objs)
    paths = [e.path for e in entries]
    if len(set(paths)) != len(paths):
        raise FormatError(f"{where}: duplicate file paths")
    return entries


def canonical_json(obj: Any) -> bytes:
    """The canonical bytes of a JSON value: sorted keys, no spaces, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Manifest:
    """A version of a model, as signed by its publisher. See docs/FORMAT.md."""

    name: str
    version: str
    files: tuple[FileEntry, ...]
    parent: str | None = None
    created: str = field(default_factory=utc_now)
    delta_files: tuple[FileEntry, ...] = ()
    torrent: TorrentRef | None = None
    delta_torrent: TorrentRef | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    public_key: str | None = None
    signature: str | None = None

    # -- values -----------------------------------------------------------------------------
    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def delta_size(self) -> int:
        return sum(f.size for f in self.delta_files)

    @property
    def web_seeds(self) -> tuple[str, ...]:
        """The web seeds the publisher signed (``metadata[WEB_SEEDS_KEY]``), in order."""
        return tuple(self.metadata.get(WEB_SEEDS_KEY, "").split())

    @property
    def is_signed(self) -> bool:
        return self.signature is not None

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(path)

    def to_json(self, *, with_signature: bool = True) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "parent": self.parent,
            "created": self.created,
            "files": [f.to_json() for f in sorted(self.files, key=lambda f: f.path)],
            "delta": None
            if self.parent is None
            else {"files": [f.to_json() for f in sorted(self.delta_files, key=lambda f: f.path)]},
            "torrents": {
                "full": self.torrent.to_json() if self.torrent else None,
                "delta": self.delta_torrent.to_json() if self.delta_torrent else None,
            },
            "metadata": dict(sorted(self.metadata.items())),
            "public_key": self.public_key,
        }
        if with_signature:
            obj["signature"] = self.signature
        return obj

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers: canonical JSON without the signature field."""
        return canonical_json(self.to_json(with_signature=False))

    def to_bytes(self) -> bytes:
        """The canonical serialisation, signature included: what ``p2pdist.json`` holds."""
        return canonical_json(self.to_json())

    # -- parsing ----------------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "manifest") -> Manifest:
        """Parse and validate a manifest (structure, paths, digests); does not check the signature."""
        if len(data) > MAX_MANIFEST_BYTES:
            raise FormatError(f"{source}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
        obj = jsonio.loads(data, what=f"{source}: manifest")
        return cls.from_json(obj, source=source)

    @classmethod
    def from_json(cls, obj: Any, *, source: str = "manifest") -> Manifest:
        if not isinstance(obj, dict):
            raise FormatError(f"{source}: manifest must be a JSON object")
        fmt = obj.get("format")
        if fmt != FORMAT_VERSION:
            raise FormatError(
                f"{source}: unknown manifest format {fmt!r} (this p2pdist reads format "
                f"{FORMAT_VERSION}); upgrade p2pdist"
            )
        expected = {
            "format", "name", "version", "parent", "created", "files", "delta", "torrents",
            "metadata", "public_key", "signature",
        }  # fmt: skip
        if set(obj) != expected:
            missing, extra = expected - set(obj), set(obj) - expected
            raise FormatError(
                f"{source}: manifest fields differ from format 1 "
                f"(missing {sorted(missing)}, unexpected {sorted(extra)})"
            )
        try:
            name = validate_name(obj["name"])
            version = validate_version(obj["version"])
            parent = None if obj["parent"] is None else validate_version(obj["parent"])
        except ValueError as e:
            raise FormatError(f"{source}: {e}") from None
        if not isinstance(obj["created"], str):
            raise FormatError(f"{source}: created must be a string")
        files = _entries(obj["files"], where=source)
        delta = obj["delta"]
        if parent is None and delta is not None:
            raise FormatError(f"{source}: a delta without a parent version")
        if parent is not None and (not isinstance(delta, dict) or set(delta) != {"files"}):
            raise FormatError(f"{source}: a version with a parent needs delta.files")
        delta_files = _entries(delta["files"], where=f"{source} delta") if delta else ()
        torrents = obj["torrents"]
        if not isinstance(torrents, dict) or set(torrents) != {"full", "delta"}:
            raise FormatError(f"{source}: torrents must have full and delta")
        full = (
            None
            if torrents["full"] is None
            else TorrentRef.from_json(torrents["full"], where=source)
        )
        dt = torrents["delta"]
        delta_torrent = None if dt is None else TorrentRef.from_json(dt, where=source)
        metadata = obj["metadata"]
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise FormatError(f"{source}: metadata must map strings to strings")
        key, sig = obj["public_key"], obj["signature"]
        for label, value, length in (("public_key", key, 64), ("signature", sig, 128)):
            if value is not None and not (
                isinstance(value, str) and len(value) == length and _is_hex(value)
            ):
                raise FormatError(f"{source}: invalid {label}")
        return cls(
            name=name,
            version=version,
            files=files,
            parent=parent,
            created=obj["created"],
            delta_files=delta_files,
            torrent=full,
            delta_torrent=delta_torrent,
            metadata=dict(metadata),
            public_key=key,
            signature=sig,
        )

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        path = Path(path)
        return cls.from_bytes(path.read_bytes(), source=str(path))

    def write(self, path: str | Path) -> None:
        Path(path).write_bytes(self.to_bytes())

    # -- signing ----------------------------------------------------------------------------
    def signed(self, key: Ed25519PrivateKey) -> Manifest:
        """A copy carrying ``key``'s public half and a signature over the canonical bytes."""
        public = public_key_hex(key.public_key())
        unsigned = replace(self, public_key=public, signature=None)
        signature = key.sign(unsigned.signed_bytes()).hex()
        return replace(unsigned, signature=signature)

    def verify_signature(self, trusted_key: str | None = None) -> None:
        """Raise SignatureError unless the signature verifies (and, if given, the key is trusted)."""
        where = f"{self.name}@{self.version}"
        if self.signature is None or self.public_key is None:
            raise SignatureError(f"{where}: manifest is not signed")
        if trusted_key is not None and trusted_key != self.public_key:
            raise SignatureError(
                f"{where}: signed by key {self.public_key[:16]}…, but the trusted key for "
                f"{self.name} is {trusted_key[:16]}…",
                expected=trusted_key,
                actual=self.public_key,
            )
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.public_key)).verify(
                bytes.fromhex(self.signature), self.signed_bytes()
            )
        except (InvalidSignature, ValueError):
            raise SignatureError(
                f"{where}: manifest signature does not verify; it was altered after signing"
            ) from None

    # -- content ----------------------------------------------------------------------------
    def verify_files(self, folder: str | Path, *, delta: bool = False) -> None:
        """Re-hash every file under ``folder`` against this manifest; raise on the first mismatch."""
        verify_entries(self.delta_files if delta else self.files, folder)


def _is_hex(value: str) -> bool:
    return all(c in "0123456789abcdef" for c in value)


def public_key_hex(key: Ed25519PublicKey) -> str:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def describe_files(folder: str | Path, paths: Iterable[str]) -> tuple[FileEntry, ...]:
    """FileEntries (size, blake3) for the given relative paths under ``folder``."""
    folder = Path(folder)
    paths = sorted(safe_relpath(p) for p in paths)
    digests = hash_files([folder / p for p in paths])
    return tuple(
        FileEntry(p, (folder / p).stat().st_size, d) for p, d in zip(paths, digests, strict=True)
    )


def list_files(folder: str | Path) -> list[str]:
    """Every regular file under ``folder`` as sorted relative POSIX paths (hidden files skipped)."""
    folder = Path(folder)
    out = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file():
            out.append(rel.as_posix())
    return sorted(out)


def verify_entries(entries: Sequence[FileEntry], folder: str | Path) -> None:
    """Check size and blake3 of each entry's file under ``folder``; IntegrityError names the file."""
    folder = Path(folder)
    for entry in entries:
        path = folder / entry.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise IntegrityError(f"{entry.path}: missing", path=entry.path) from None
        if size != entry.size:
            raise IntegrityError(
                f"{entry.path}: size {size} differs from the manifest's {entry.size} "
                "(truncated or replaced)",
                path=entry.path,
                expected=entry.blake3,
            )
    digests = hash_files([folder / e.path for e in entries])
    for entry, actual in zip(entries, digests, strict=True):
        if actual != entry.blake3:
            raise IntegrityError(
                f"{entry.path}: blake3 {actual} differs from the manifest's {entry.blake3}",
                path=entry.path,
                expected=entry.blake3,
                actual=actual,
            )
