"""The registry's durable data behind one small interface, whichever engine holds it.

The registry (models, versions with their manifests and torrents, swarm ids, tokens, key
pins) is what must never be lost; the swarm (``peers.py``) is soft state that refills in one
announce interval. As in Kraken's tracker the two live apart, each behind its own interface.

``RegistryStore`` is that interface: synchronous methods, called from one thread at a time
(the tracker gives the store a one-thread executor). Two engines implement it with the same
SQL rules (``registry_sql.SqlRegistry``): SQLite, the embedded default (``db.py``, one file,
no server, no extra dependency) and PostgreSQL (``registry_postgres.py``), which several
tracker processes can share. ``open_registry`` picks one from ``--db``: a ``postgresql://``
URL or a SQLite file path.

Every method raises p2pdist errors only: refusals (ConflictError, NotFoundError,
SignatureError) and ``StoreError`` naming what failed (disk full, read-only, the database
server unreachable), never a driver's exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from p2pdist.formats.statement import Statement
from p2pdist.ref import ModelRef


@dataclass(frozen=True)
class Grant:
    """What one token allows: read (and publish unless read-only) on a namespace, or on all."""

    namespace: str | None
    publish: bool

    def can_read(self, namespace: str) -> bool:
        return self.namespace is None or self.namespace == namespace

    def can_publish(self, namespace: str) -> bool:
        return self.publish and self.can_read(namespace)


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: its public id (a prefix of its hash), scope and creation time."""

    token_id: str
    namespace: str | None
    publish: bool
    created: str


@dataclass(frozen=True)
class ModelInfo:
    """One model as listed: its pinned key, privacy, latest version and version count."""

    name: str
    private: bool
    public_key: str
    latest: str | None
    versions: int

    @property
    def namespace(self) -> str:
        return ModelRef(self.name).namespace


@dataclass(frozen=True)
class VersionInfo:
    """One published version as listed (no blobs)."""

    model: str
    version: str
    seq: int
    parent: str | None
    created: str
    published: str
    size: int
    delta_size: int


@dataclass(frozen=True)
class TrackedHash:
    """A 20-byte swarm id the tracker accepts announces for (v1, or v2 truncated per BEP 52)."""

    info_hash: bytes
    model: str
    version: str
    kind: Literal["full", "delta"]
    private: bool


@dataclass(frozen=True)
class Published:
    """A version as the change feed reports it: its sequence number and swarm ids."""

    seq: int
    model: str
    version: str
    hashes: tuple[TrackedHash, ...]


@dataclass(frozen=True)
class NewVersion:
    """A validated publish, ready to store: blobs, facts from the manifest, its swarm ids."""

    model: str
    version: str
    parent: str | None
    created: str
    size: int
    delta_size: int
    public_key: str
    private: bool
    manifest: bytes
    torrent: bytes
    delta_torrent: bytes | None
    info_hashes: tuple[tuple[bytes, Literal["full", "delta"]], ...]


class RegistryStore(Protocol):
    """What the tracker needs from the registry's storage engine (see the module docstring)."""

    location: str
    """Where the data is, for messages (a file path, or a URL without its password)."""

    shared: bool
    """True when other tracker processes may write the same registry (they must then poll
    ``changes`` to learn of their publishes)."""

    def close(self) -> None: ...

    # tokens
    def create_token(self, namespace: str | None, *, publish: bool = True) -> str: ...
    def grant_for_token(self, token: str) -> Grant | None: ...
    def grant_for_passkey(self, passkey: str) -> Grant | None: ...
    def tokens(self) -> list[TokenInfo]: ...
    def revoke_token(self, token_id: str) -> TokenInfo: ...

    # reads
    def models(self) -> list[ModelInfo]: ...
    def model(self, name: str) -> ModelInfo | None: ...
    def versions(self, model: str) -> list[VersionInfo]: ...
    def version(self, model: str, version: str) -> VersionInfo | None: ...
    def blob(
        self, model: str, version: str, what: Literal["manifest", "torrent", "delta"]
    ) -> bytes: ...
    def tracked_hashes(self) -> list[TrackedHash]: ...
    def changes(self, after_seq: int) -> list[Published]: ...
    def last_seq(self) -> int: ...

    # the writes of the registry face
    def publish(self, new: NewVersion) -> Literal["created", "same"]: ...
    def apply_statement(self, statement: Statement) -> str: ...

    # lifecycle
    def yanked(self, model: str) -> dict[str, str | None]: ...
    def tags(self, model: str) -> dict[str, str]: ...
    def audit(self, model: str | None = None) -> list[tuple[str, str, str, str]]: ...
    def reset_pin(self, model: str, reason: str) -> str: ...


def is_database_url(text: str) -> bool:
    """True for a server database URL (``postgresql://``/``postgres://``), False for a path."""
    return text.startswith(("postgresql://", "postgres://"))


def open_registry(where: str | Path, *, fresh: bool = False, create: bool = True) -> RegistryStore:
    """Open the registry at ``where``: a PostgreSQL URL, or the path of a SQLite file.

    ``fresh`` (SQLite only) moves an unreadable or empty database file aside and starts a new
    one instead of refusing to start.
    """
    if isinstance(where, str) and is_database_url(where):
        from p2pdist.tracker.registry_postgres import PostgresRegistry

        return PostgresRegistry(where)
    from p2pdist.tracker.db import Database

    return Database(Path(where), fresh=fresh, create=create)


__all__ = [
    "Grant",
    "ModelInfo",
    "NewVersion",
    "Published",
    "RegistryStore",
    "TokenInfo",
    "TrackedHash",
    "VersionInfo",
    "is_database_url",
    "open_registry",
]
