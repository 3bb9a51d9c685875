"""The tracker's durable state: models, versions, infohashes and tokens in one SQLite file.

Only what must survive a restart lives here (peers are soft state, see peers.py). The file
is in WAL mode with ``synchronous=FULL``, so a tracker killed with SIGKILL right after a
publish answered keeps that version. Every statement takes parameters, never formatted
strings, so a hostile name is data and nothing else.

Tokens are stored as SHA-256 hashes, and so are the announce passkeys derived from them
(``p2pdist.client.passkey_for``): the file alone grants nothing. The ``tracker token``
command writes to the same file while a server runs; the server reads tokens from the file
on every miss of its small cache, so a new token works at once.

A ``Database`` is used from one thread at a time (the app gives it a one-thread executor).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from p2pdist.client import passkey_for
from p2pdist.errors import ConflictError, NotFoundError, SignatureError, StoreError
from p2pdist.ref import ModelRef

DB_FILENAME = "tracker.sqlite3"
SCHEMA_VERSION = 1
TOKEN_PREFIX = "p2pt_"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    private INTEGER NOT NULL,
    public_key TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    model TEXT NOT NULL REFERENCES models(name),
    version TEXT NOT NULL,
    parent TEXT,
    created TEXT NOT NULL,
    published TEXT NOT NULL,
    size INTEGER NOT NULL,
    delta_size INTEGER NOT NULL,
    manifest BLOB NOT NULL,
    torrent BLOB NOT NULL,
    delta_torrent BLOB,
    UNIQUE (model, version)
);
CREATE TABLE IF NOT EXISTS infohashes (
    info_hash BLOB PRIMARY KEY,
    seq INTEGER NOT NULL REFERENCES versions(seq),
    kind TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    passkey_hash TEXT NOT NULL UNIQUE,
    namespace TEXT,
    publish INTEGER NOT NULL,
    created TEXT NOT NULL
);
"""


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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


class Database:
    """The SQLite registry store. Methods are synchronous; call them from one thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=10.0
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(_SCHEMA)
            self._conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
                (str(SCHEMA_VERSION),),
            )
            (schema,) = self._conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.Error as e:
            raise StoreError(f"{self.path}: cannot open the tracker database ({e})") from None
        except OSError as e:  # its folder cannot be made: read-only, a file in the way, ...
            raise StoreError(
                f"{self.path}: cannot open the tracker database ({e.strerror or e})"
            ) from None
        if schema != str(SCHEMA_VERSION):
            raise StoreError(
                f"{self.path}: database schema {schema} is not {SCHEMA_VERSION}; "
                "upgrade p2pdist or point --data at another folder"
            )

    def close(self) -> None:
        self._conn.close()

    # -- tokens -----------------------------------------------------------------------------
    def create_token(self, namespace: str | None, *, publish: bool = True) -> str:
        """Make a token, store only its hashes, and return it (shown once, never stored)."""
        if namespace is not None:
            ModelRef(namespace)  # namespaces follow the name rules, checked by the caller
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(
                "INSERT INTO tokens (token_hash, passkey_hash, namespace, publish, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (_sha256(token), _sha256(passkey_for(token)), namespace, int(publish), _now()),
            )
        return token

    def grant_for_token(self, token: str) -> Grant | None:
        return self._grant("token_hash", _sha256(token))

    def grant_for_passkey(self, passkey: str) -> Grant | None:
        return self._grant("passkey_hash", _sha256(passkey))

    def _grant(self, column: Literal["token_hash", "passkey_hash"], digest: str) -> Grant | None:
        row = self._conn.execute(
            f"SELECT namespace, publish FROM tokens WHERE {column} = ?", (digest,)
        ).fetchone()
        return None if row is None else Grant(row[0], bool(row[1]))

    # -- reads ------------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        rows = self._conn.execute(
            "SELECT m.name, m.private, m.public_key, "
            "(SELECT version FROM versions v WHERE v.model = m.name ORDER BY seq DESC LIMIT 1), "
            "(SELECT COUNT(*) FROM versions v WHERE v.model = m.name) "
            "FROM models m ORDER BY m.name"
        ).fetchall()
        return [ModelInfo(r[0], bool(r[1]), r[2], r[3], r[4]) for r in rows]

    def model(self, name: str) -> ModelInfo | None:
        for info in self._models_where(name):
            return info
        return None

    def _models_where(self, name: str) -> list[ModelInfo]:
        rows = self._conn.execute(
            "SELECT m.name, m.private, m.public_key, "
            "(SELECT version FROM versions v WHERE v.model = m.name ORDER BY seq DESC LIMIT 1), "
            "(SELECT COUNT(*) FROM versions v WHERE v.model = m.name) "
            "FROM models m WHERE m.name = ?",
            (name,),
        ).fetchall()
        return [ModelInfo(r[0], bool(r[1]), r[2], r[3], r[4]) for r in rows]

    def versions(self, model: str) -> list[VersionInfo]:
        rows = self._conn.execute(
            "SELECT model, version, seq, parent, created, published, size, delta_size "
            "FROM versions WHERE model = ? ORDER BY seq",
            (model,),
        ).fetchall()
        return [VersionInfo(*r) for r in rows]

    def version(self, model: str, version: str) -> VersionInfo | None:
        row = self._conn.execute(
            "SELECT model, version, seq, parent, created, published, size, delta_size "
            "FROM versions WHERE model = ? AND version = ?",
            (model, version),
        ).fetchone()
        return None if row is None else VersionInfo(*row)

    def blob(
        self, model: str, version: str, what: Literal["manifest", "torrent", "delta"]
    ) -> bytes:
        """The manifest, full torrent or delta torrent of a version, exactly as published."""
        column = {"manifest": "manifest", "torrent": "torrent", "delta": "delta_torrent"}[what]
        row = self._conn.execute(
            f"SELECT {column} FROM versions WHERE model = ? AND version = ?", (model, version)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"{model}@{version}: no such version")
        if row[0] is None:
            raise NotFoundError(f"{model}@{version}: has no delta torrent (it has no parent)")
        return bytes(row[0])

    def tracked_hashes(self) -> list[TrackedHash]:
        rows = self._conn.execute(
            "SELECT i.info_hash, v.model, v.version, i.kind, m.private FROM infohashes i "
            "JOIN versions v ON v.seq = i.seq JOIN models m ON m.name = v.model"
        ).fetchall()
        return [TrackedHash(bytes(r[0]), r[1], r[2], r[3], bool(r[4])) for r in rows]

    # -- publish ----------------------------------------------------------------------------
    def publish(self, new: NewVersion) -> Literal["created", "same"]:
        """Store a version atomically, pinning the model's key on its first publish.

        Returns "same" when the identical bytes are already stored (idempotent). Raises
        ConflictError for the same version with other bytes or another ``private`` than the
        model's, SignatureError when the model's pinned key differs, NotFoundError when the
        declared parent is not published.
        """
        conn = self._conn
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            model = conn.execute(
                "SELECT public_key, private FROM models WHERE name = ?", (new.model,)
            ).fetchone()
            if model is not None and model[0] != new.public_key:
                raise SignatureError(
                    f"{new.model}@{new.version}: signed by key {new.public_key[:16]}…, but "
                    f"{new.model} is pinned to key {model[0][:16]}… (its first publisher)",
                    expected=model[0],
                    actual=new.public_key,
                )
            if model is not None and bool(model[1]) != new.private:
                # Not silently: a public model's "private" version would be readable by all,
                # and a private model's public torrent announces without a passkey (refused).
                kind, flag = ("private", "with") if model[1] else ("public", "without")
                raise ConflictError(
                    f"{new.model}@{new.version}: {new.model} is a {kind} model; publish its "
                    f"versions {flag} --private (a model cannot change between the two)"
                )
            old = conn.execute(
                "SELECT manifest, torrent, delta_torrent FROM versions "
                "WHERE model = ? AND version = ?",
                (new.model, new.version),
            ).fetchone()
            if old is not None:
                same = (bytes(old[0]), bytes(old[1]), None if old[2] is None else bytes(old[2]))
                if same == (new.manifest, new.torrent, new.delta_torrent):
                    return "same"
                raise ConflictError(
                    f"{new.model}@{new.version} is already published with other bytes; "
                    "versions are immutable: publish a new version"
                )
            if (
                new.parent is not None
                and conn.execute(
                    "SELECT 1 FROM versions WHERE model = ? AND version = ?",
                    (new.model, new.parent),
                ).fetchone()
                is None
            ):
                raise NotFoundError(
                    f"{new.model}@{new.version}: parent version {new.parent} is not published; "
                    "publish it first"
                )
            for info_hash, _ in new.info_hashes:
                if conn.execute(
                    "SELECT 1 FROM infohashes WHERE info_hash = ?", (info_hash,)
                ).fetchone():
                    raise ConflictError(
                        f"{new.model}@{new.version}: infohash {info_hash.hex()} already belongs "
                        "to another published version"
                    )
            now = _now()
            if model is None:
                conn.execute(
                    "INSERT INTO models (name, private, public_key, created) VALUES (?, ?, ?, ?)",
                    (new.model, int(new.private), new.public_key, now),
                )
            cursor = conn.execute(
                "INSERT INTO versions (model, version, parent, created, published, size, "
                "delta_size, manifest, torrent, delta_torrent) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    new.model, new.version, new.parent, new.created, now, new.size,
                    new.delta_size, new.manifest, new.torrent, new.delta_torrent,
                ),
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO infohashes (info_hash, seq, kind) VALUES (?, ?, ?)",
                [(h, cursor.lastrowid, kind) for h, kind in new.info_hashes],
            )
        return "created"


__all__ = [
    "DB_FILENAME",
    "Database",
    "Grant",
    "ModelInfo",
    "NewVersion",
    "TrackedHash",
    "VersionInfo",
]
