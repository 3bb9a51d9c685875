"""The registry in PostgreSQL (``tracker serve --db postgresql://…``), shared by replicas.

Same rules as the SQLite file (``registry_sql.SqlRegistry``), on a server several tracker
processes can use at once. Needs the ``postgres`` extra (psycopg 3):
``pip install 'p2pdist[postgres]'``.

Writers are serialised by a transaction-scoped advisory lock, so versions commit in the
order of their sequence numbers and a replica polling ``changes(after_seq)`` never skips
one. A lost connection is not fatal: the failing call raises a ``StoreError`` saying the
database is unreachable (the client sees that, not a driver's traceback), and the next call
connects again, so the tracker recovers without a restart when the server is back. A
publish is one transaction: it either committed before the answer, or it did not happen.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from p2pdist.errors import ConfigError, StoreError
from p2pdist.tracker.registry_sql import SCHEMA_VERSION, Row, Run, SqlRegistry, rows_of

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    private INTEGER NOT NULL,
    public_key TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    seq BIGSERIAL PRIMARY KEY,
    model TEXT NOT NULL REFERENCES models(name),
    version TEXT NOT NULL,
    parent TEXT,
    created TEXT NOT NULL,
    published TEXT NOT NULL,
    size BIGINT NOT NULL,
    delta_size BIGINT NOT NULL,
    manifest BYTEA NOT NULL,
    torrent BYTEA NOT NULL,
    delta_torrent BYTEA,
    UNIQUE (model, version)
);
CREATE TABLE IF NOT EXISTS infohashes (
    info_hash BYTEA PRIMARY KEY,
    seq BIGINT NOT NULL REFERENCES versions(seq),
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
    statement BYTEA NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS tags (
    model TEXT NOT NULL,
    tag TEXT NOT NULL,
    version TEXT NOT NULL,
    signed_at TEXT NOT NULL,
    statement BYTEA NOT NULL,
    PRIMARY KEY (model, tag)
);
CREATE TABLE IF NOT EXISTS audit (
    at TEXT NOT NULL,
    model TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""

_WRITE_LOCK = 0x70327064  # "p2pd": the advisory lock every registry write takes
CONNECT_TIMEOUT = 5


def redacted(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


class PostgresRegistry(SqlRegistry):
    """The PostgreSQL registry store. Methods are synchronous; call them from one thread."""

    shared = True

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise ConfigError(
                "--db postgresql://… needs psycopg 3: pip install 'p2pdist[postgres]'"
            ) from None
        self._psycopg = psycopg
        self.url = url
        self.location = redacted(url)
        self._conn: Any = None
        with self._transaction() as run:  # under the write lock: two replicas starting at once
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    run(statement)
            run(
                "INSERT INTO meta (key, value) VALUES ('schema', ?) ON CONFLICT DO NOTHING",
                str(SCHEMA_VERSION),
            )
            ((schema,),) = run("SELECT value FROM meta WHERE key = 'schema'")
        if schema != str(SCHEMA_VERSION):
            raise StoreError(
                f"registry database {self.location}: schema {schema} is not {SCHEMA_VERSION}; "
                "upgrade p2pdist"
            )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            self._conn = self._psycopg.connect(
                self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT
            )
        return self._conn

    def _failure(self, error: Exception) -> StoreError:
        """One line naming what failed; a dropped connection is reopened by the next call."""
        psycopg = self._psycopg
        if isinstance(error, psycopg.OperationalError):
            self.close()
            first = (str(error).strip().splitlines() or ["connection lost"])[-1]
            return StoreError(
                f"registry database {self.location} is unreachable ({first}); retry when it is back"
            )
        state = getattr(error, "sqlstate", None) or ""
        if state == "53100":
            return StoreError(f"registry database {self.location}: the disk is full")
        if state == "25006":
            return StoreError(f"registry database {self.location}: the database is read-only")
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return StoreError(f"registry database {self.location}: {first}")

    def _read(self, sql: str, *args: Any) -> list[Row]:
        try:
            with self._connection().cursor() as cursor:
                cursor.execute(sql.replace("?", "%s"), args)
                return rows_of(cursor)
        except self._psycopg.Error as e:
            raise self._failure(e) from None

    @contextmanager
    def _transaction(self) -> Iterator[Run]:
        psycopg = self._psycopg
        try:
            conn = self._connection()
            transaction = conn.transaction()
            transaction.__enter__()
        except psycopg.Error as e:
            raise self._failure(e) from None

        def run(sql: str, *args: Any) -> list[Row]:
            with conn.cursor() as cursor:
                cursor.execute(sql.replace("?", "%s"), args)
                return rows_of(cursor)

        try:
            run("SELECT pg_advisory_xact_lock(?)", _WRITE_LOCK)
            yield run
        except psycopg.Error as e:
            _quietly_exit(transaction, e)
            raise self._failure(e) from None
        except BaseException as e:
            _quietly_exit(transaction, e)
            raise
        try:
            transaction.__exit__(None, None, None)
        except psycopg.Error as e:
            raise self._failure(e) from None


def _quietly_exit(transaction: Any, error: BaseException) -> None:
    try:
        transaction.__exit__(type(error), error, error.__traceback__)
    except Exception:
        pass  # the connection is gone: nothing to roll back


__all__ = ["PostgresRegistry", "redacted"]
