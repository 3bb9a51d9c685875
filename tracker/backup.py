"""Online backup and restore of the tracker's SQLite database.

``backup_database`` copies the registry (models, versions, manifests, torrents, tokens) while
a tracker keeps serving and publishing: it uses SQLite's backup API in one step, i.e. inside
one read transaction, so the copy is the database as of one commit (never half a publish),
and in WAL mode that read blocks no writer. The copy is written to a temporary file next to
the destination, switched from WAL to a rollback journal (one self-contained file), checked
with ``PRAGMA integrity_check``, flushed to disk and only then renamed into place: a
destination that exists is always a whole, checked backup.

``restore_database`` is the reverse, for a stopped tracker (it refuses while any process has
the database open): it checks the backup, keeps the current database (and its ``-wal``) as
``<name>.before-restore-<time>``, and copies the backup into the database through SQLite,
so that a ``-wal`` file left by a killed tracker is dealt with by SQLite rather than
replayed onto the restored file at the next open (which a plain ``cp`` over the file risks).

Only the SQLite registry is covered: peers are soft state (they re-announce within an
interval), and a PostgreSQL registry is backed up with PostgreSQL's own tools.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from p2pdist.errors import ConflictError, NotFoundError, StoreError
from p2pdist.tracker.db import DB_FILENAME
from p2pdist.tracker.registry_sql import SCHEMA_VERSION

_COUNTED = ("models", "versions", "tokens")


@dataclass(frozen=True)
class BackupResult:
    """What a backup or restore wrote: the file, its size, its row counts, the time taken."""

    path: Path
    size: int
    models: int
    versions: int
    tokens: int
    seconds: float
    previous: Path | None = None
    """For a restore: where the database it replaced was kept (None: there was none)."""

    def describe(self) -> str:
        return (
            f"{self.path}: {self.size} bytes, {self.models} models, {self.versions} versions, "
            f"{self.tokens} tokens ({self.seconds:.2f} s)"
        )


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _open_existing(path: Path, what: str) -> sqlite3.Connection:
    """Open a database that must exist (``mode=rw``: a typo must not create an empty one)."""
    if not path.is_file():
        raise NotFoundError(f"{path}: no {what} there (for a tracker: --data DIR)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=30.0)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn
    except sqlite3.Error as e:
        raise StoreError(f"{path}: cannot open the {what} ({e})") from None


def _check(conn: sqlite3.Connection, path: Path, what: str) -> dict[str, int]:
    """Check that ``conn`` is a whole tracker database of this schema; return row counts."""
    try:
        (result,) = conn.execute("PRAGMA integrity_check").fetchone()
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in _COUNTED}
    except sqlite3.Error as e:
        raise StoreError(f"{path}: not a p2pdist tracker {what} ({e})") from None
    if result != "ok":
        raise StoreError(f"{path}: the {what} is damaged (integrity check: {result})")
    if row is None or row[0] != str(SCHEMA_VERSION):
        raise StoreError(
            f"{path}: tracker schema {row[0] if row else 'unknown'} is not {SCHEMA_VERSION}; "
            "use the p2pdist version that wrote it"
        )
    return counts


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _target(dest: Path) -> Path:
    """A destination folder gets a time-stamped file name; anything else is the file."""
    if dest.is_dir():
        return dest / f"tracker-{_stamp()}.sqlite3"
    return dest


def _copy_into(source: sqlite3.Connection, path: Path) -> dict[str, int]:
    """Copy ``source`` into a new file ``path`` as one snapshot; check it; return counts."""
    dst = sqlite3.connect(path, isolation_level=None)
    try:
        source.backup(dst, pages=-1)  # one step: one read transaction, one consistent snapshot
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
        return _check(dst, path, "backup")
    finally:
        dst.close()


def backup_database(
    data_dir: str | Path, dest: str | Path, *, overwrite: bool = False
) -> BackupResult:
    """Copy the tracker database under ``data_dir`` to ``dest`` (a file, or a folder to put a
    time-stamped file in) while the tracker may be running; return what was written.

    Raises NotFoundError when there is no database, ConflictError when ``dest`` exists and
    ``overwrite`` is false, StoreError when the source or the copy is not a whole tracker
    database or the destination cannot be written. Nothing partial is ever left at ``dest``.
    """
    started = time.monotonic()
    source_path = Path(data_dir) / DB_FILENAME
    target = _target(Path(dest))
    if target.exists() and not overwrite:
        raise ConflictError(f"{target}: exists; choose another name, or --force to replace it")
    if not target.parent.is_dir():
        raise NotFoundError(f"{target.parent}: no such folder for the backup")
    source = _open_existing(source_path, "tracker database")
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        counts = _copy_into(source, tmp)
        _fsync(tmp)
        os.replace(tmp, target)
        _fsync(target.parent)
    except sqlite3.Error as e:
        raise StoreError(f"{source_path} -> {target}: backup failed ({e})") from None
    except OSError as e:
        raise StoreError(f"{target}: cannot write the backup ({e.strerror or e})") from None
    finally:
        source.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return BackupResult(
        target, target.stat().st_size, counts["models"], counts["versions"], counts["tokens"],
        seconds=time.monotonic() - started,
    )  # fmt: skip


def _hold_exclusively(path: Path) -> sqlite3.Connection:
    """Open ``path`` and keep it locked against every other connection until closed.

    In exclusive locking mode the lock taken by the first transaction is kept after it
    ends; while a tracker has the file open (even idle, in WAL mode), it cannot be taken.
    """
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("COMMIT")
    except sqlite3.OperationalError as e:
        conn.close()
        if "locked" in str(e) or "busy" in str(e):
            raise ConflictError(
                f"{path}: in use (a running tracker?); stop it, then restore"
            ) from None
        raise
    return conn


def _keep_aside(live_path: Path) -> Path:
    """Copy the current database file (and its -wal, so nothing committed is lost) to
    ``<name>.before-restore-<time>``; raw copies, so that a damaged database is kept too."""
    previous = live_path.with_name(f"{live_path.name}.before-restore-{_stamp()}")
    shutil.copyfile(live_path, previous)
    wal = live_path.with_name(live_path.name + "-wal")
    if wal.exists():
        shutil.copyfile(wal, previous.with_name(previous.name + "-wal"))
    return previous


def restore_database(backup: str | Path, data_dir: str | Path) -> BackupResult:
    """Make ``backup`` the tracker database under ``data_dir``; return what was written,
    with where the database it replaced was kept.

    The tracker must be stopped: ConflictError while any process has the database open. The
    backup is checked before anything changes; a damaged or foreign file is refused with
    StoreError and the current database is left as it was.
    """
    started = time.monotonic()
    backup_path = Path(backup)
    data = Path(data_dir)
    live_path = data / DB_FILENAME
    source = _open_existing(backup_path, "backup")
    try:
        _check(source, backup_path, "backup")
        data.mkdir(parents=True, exist_ok=True)
        existed = live_path.exists()
        live = _hold_exclusively(live_path)
        try:
            previous = _keep_aside(live_path) if existed else None
            source.backup(live, pages=-1)
            live.execute("PRAGMA journal_mode=WAL")  # what the tracker runs with
            counts = _check(live, live_path, "restored database")
        finally:
            live.close()
    except sqlite3.Error as e:
        raise StoreError(f"{backup_path} -> {live_path}: restore failed ({e})") from None
    except OSError as e:
        raise StoreError(f"{data}: cannot restore into it ({e.strerror or e})") from None
    finally:
        source.close()
    return BackupResult(
        live_path,
        live_path.stat().st_size,
        seconds=time.monotonic() - started,
        previous=previous,
        **counts,
    )


__all__ = ["BackupResult", "backup_database", "restore_database"]
