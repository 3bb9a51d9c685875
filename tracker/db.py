"""The registry in one SQLite file: the embedded default (no server, no extra dependency).

The rules live in ``registry_sql.SqlRegistry``; this module is the SQLite engine under
them. The file is in WAL mode with ``synchronous=FULL``, so a tracker killed with SIGKILL
right after a publish answered keeps that version. The ``tracker token`` command writes to
the same file while a server runs; the server reads tokens from the file on every miss of
its small cache, so a new token works at once.

A database that cannot be trusted is refused with one line, never taken as empty: a
zero-byte file (every token would silently be gone) or one whose pages fail SQLite's
``quick_check``. ``fresh=True`` (``tracker serve --fresh-db``) moves such a file aside and
starts a new one. Failures while running are named (disk full, read-only, locked) in a
``StoreError`` that reaches the client as such.

A ``Database`` is used from one thread at a time (the app gives it a one-thread executor).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from p2pdist.errors import StoreError
from p2pdist.tracker.registry_sql import SCHEMA_VERSION, Row, Run, SqlRegistry
from p2pdist.tracker.registry_store import (
    Grant,
    ModelInfo,
    NewVersion,
    Published,
    TokenInfo,
    TrackedHash,
    VersionInfo,
)

DB_FILENAME = "tracker.sqlite3"

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
CREATE TABLE IF NOT EXISTS yanks (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    reason TEXT,
    signed_at TEXT NOT NULL,
    statement BLOB NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS tags (
    model TEXT NOT NULL,
    tag TEXT NOT NULL,
    version TEXT NOT NULL,
    signed_at TEXT NOT NULL,
    statement BLOB NOT NULL,
    PRIMARY KEY (model, tag)
);
CREATE TABLE IF NOT EXISTS audit (
    at TEXT NOT NULL,
    model TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""


def storage_failure(location: str, error: sqlite3.Error | OSError) -> StoreError:
    """A one-line StoreError that names what failed (disk full, read-only, locked, damaged)."""
    return StoreError(f"tracker database {location}: {what_failed(error)}")


def what_failed(error: sqlite3.Error | OSError) -> str:
    """Disk full, read-only, locked, damaged, or the error's own words."""
    text = str(error).lower() if isinstance(error, sqlite3.Error) else ""
    errno = getattr(error, "errno", None)
    if "disk is full" in text or errno == 28:
        what = "the disk is full"
    elif "readonly" in text or "read-only" in text or errno == 30:
        what = "the database is read-only"
    elif "locked" in text or "busy" in text:
        what = "the database is locked by another process"
    elif "malformed" in text or "not a database" in text or "corrupt" in text:
        what = "the database file is damaged"
    elif isinstance(error, OSError):
        what = error.strerror or str(error)
    else:
        what = str(error)
    return what


class Database(SqlRegistry):
    """The SQLite registry store. Methods are synchronous; call them from one thread."""

    shared = False

    def __init__(self, path: str | Path, *, fresh: bool = False, create: bool = True) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        problem = _untrustworthy(self.path)
        if problem is not None:
            if not fresh:
                raise StoreError(
                    f"tracker database {self.path}: {problem}; refusing to start. Restore it "
                    "from a backup, or start afresh with --fresh-db (moves it aside)"
                )
            _move_aside(self.path)
        if not create and not self.path.exists():
            raise StoreError(f"tracker database {self.path}: no such file")
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
                "INSERT INTO meta (key, value) VALUES ('schema', ?) ON CONFLICT DO NOTHING",
                (str(SCHEMA_VERSION),),
            )
            (schema,) = self._conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except (sqlite3.Error, OSError) as e:  # its folder cannot be made, read-only, ...
            raise StoreError(
                f"{self.path}: cannot open the tracker database ({what_failed(e)})"
            ) from None
        if schema != str(SCHEMA_VERSION):
            raise StoreError(
                f"{self.path}: database schema {schema} is not {SCHEMA_VERSION}; "
                "upgrade p2pdist or point --data at another folder"
            )

    def close(self) -> None:
        self._conn.close()

    def _read(self, sql: str, *args: Any) -> list[Row]:
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise storage_failure(self.location, e) from None

    @contextmanager
    def _transaction(self) -> Iterator[Run]:
        conn = self._conn

        def run(sql: str, *args: Any) -> list[Row]:
            return conn.execute(sql, args).fetchall()

        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise storage_failure(self.location, e) from None
        try:
            yield run
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            _rollback(conn)
            raise storage_failure(self.location, e) from None
        except BaseException:
            _rollback(conn)
            raise


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # the failed statement may have rolled the transaction back already


def _untrustworthy(path: Path) -> str | None:
    """Why the existing file at ``path`` must not be used as a registry; None if it may."""
    try:
        size = path.stat().st_size
    except OSError:
        return None  # missing, or its folder cannot be reached: the open says which
    if size == 0:
        return "the file is empty (0 bytes), not a database: its models and tokens are gone"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as e:
        text = str(e)
        if "not a database" in text or "malformed" in text:
            return f"the file is damaged ({text})"
        return None  # locked or busy: not a verdict on the data; the open reports it
    if rows != [("ok",)]:
        return f"the file is damaged (SQLite's quick_check: {rows[0][0]})"
    return None


def _move_aside(path: Path) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.rename(part.with_name(f"{part.name}.broken-{stamp}"))


__all__ = [
    "DB_FILENAME",
    "Database",
    "Grant",
    "ModelInfo",
    "NewVersion",
    "Published",
    "TokenInfo",
    "TrackedHash",
    "VersionInfo",
    "storage_failure",
]
