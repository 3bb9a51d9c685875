"""tracker/backup.py: online backups of the registry database, and restores.

Real SQLite files, real concurrent writers (a second connection in another thread, as a
running tracker is), real tokens and signed versions.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.errors import ConflictError, NotFoundError, StoreError
from p2pdist.tracker.backup import backup_database, restore_database
from p2pdist.tracker.db import DB_FILENAME, Database
from p2pdist.tracker.registry import check_publish
from tests.tracker_world import make_token, make_version


def publish(db: Database, key: Ed25519PrivateKey, version: str, parent: str | None) -> None:
    v = make_version(key, "acme/m", version, parent=parent)
    db.publish(check_publish("acme/m", version, json.dumps(v.body()).encode()))


def registry(path: Path) -> dict[str, object]:
    """Everything durable in a tracker database, as plain values (to compare two files)."""
    db = Database(path)
    try:
        versions = db.versions("acme/m")
        return {
            "models": db.models(),
            "versions": versions,
            "blobs": [db.blob("acme/m", v.version, "manifest") for v in versions],
            "hashes": sorted(h.info_hash for h in db.tracked_hashes()),
        }
    finally:
        db.close()


def check_snapshot(path: Path) -> list[str]:
    """A backup is one commit's state: versions v1..vk with no gap, each with its swarm ids."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        names = [r[0] for r in conn.execute("SELECT version FROM versions ORDER BY seq")]
        orphans = conn.execute(
            "SELECT COUNT(*) FROM versions v WHERE NOT EXISTS "
            "(SELECT 1 FROM infohashes i WHERE i.seq = v.seq)"
        ).fetchone()[0]
    finally:
        conn.close()
    assert names == [f"v{i}" for i in range(1, len(names) + 1)]
    assert orphans == 0
    return names


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "tracker"


def test_backup_while_a_writer_publishes_then_restore(data_dir: Path, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    first_token = make_token(data_dir, "acme")
    writer = Database(data_dir / DB_FILENAME)
    tokens: list[str] = []
    total = 40
    done = threading.Event()
    failure: list[BaseException] = []

    def write() -> None:
        try:
            for i in range(1, total + 1):
                publish(writer, key, f"v{i}", f"v{i - 1}" if i > 1 else None)
                tokens.append(writer.create_token("acme", publish=i % 2 == 0))
        except BaseException as e:
            failure.append(e)
        finally:
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    seen: list[int] = []
    n = 0
    while not done.is_set() or n == 0:
        n += 1
        result = backup_database(data_dir, tmp_path / f"b{n}.sqlite3")
        seen.append(len(check_snapshot(result.path)))
        assert result.versions == seen[-1]
    thread.join()
    writer.close()
    assert not failure, failure
    assert seen == sorted(seen)  # each backup a later (or the same) commit

    final = backup_database(data_dir, tmp_path)  # a folder: a time-stamped file in it
    assert final.path.parent == tmp_path and final.path.name.startswith("tracker-")
    assert (final.versions, final.tokens, final.models) == (total, total + 1, 1)

    restored = tmp_path / "restored"
    result = restore_database(final.path, restored)
    assert result.previous is None and result.versions == total
    assert registry(restored / DB_FILENAME) == registry(data_dir / DB_FILENAME)
    db = Database(restored / DB_FILENAME)
    try:
        grant = db.grant_for_token(first_token)
        assert grant is not None and grant.can_publish("acme")
        for i, token in enumerate(tokens, start=1):
            grant = db.grant_for_token(token)
            assert grant is not None and grant.publish == (i % 2 == 0)
        assert db.grant_for_token("p2pt_not-a-token") is None
        publish(db, key, f"v{total + 1}", f"v{total}")  # the restored registry takes publishes
    finally:
        db.close()


def test_backup_does_not_wait_for_or_include_an_open_transaction(
    data_dir: Path, tmp_path: Path
) -> None:
    make_token(data_dir, "acme")
    writer = sqlite3.connect(data_dir / DB_FILENAME, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO tokens VALUES ('h', 'p', 'acme', 1, '2026-01-01T00:00:00Z')")
        during = backup_database(data_dir, tmp_path / "during.sqlite3")
        writer.execute("COMMIT")
    finally:
        writer.close()
    after = backup_database(data_dir, tmp_path / "after.sqlite3")
    assert (during.tokens, after.tokens) == (1, 2)


def test_backup_refusals(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no tracker database"):
        backup_database(data_dir, tmp_path / "b.sqlite3")
    assert not (data_dir / DB_FILENAME).exists()  # a typo in --data creates nothing
    make_token(data_dir, None)
    dest = tmp_path / "b.sqlite3"
    backup_database(data_dir, dest)
    with pytest.raises(ConflictError, match="--force"):
        backup_database(data_dir, dest)
    make_token(data_dir, None)
    assert backup_database(data_dir, dest, overwrite=True).tokens == 2
    with pytest.raises(NotFoundError, match="no such folder"):
        backup_database(data_dir, tmp_path / "missing" / "b.sqlite3")
    (data_dir / DB_FILENAME).write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    with pytest.raises(StoreError):
        backup_database(data_dir, tmp_path / "c.sqlite3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.sqlite3", "tracker"]


def test_restore_refuses_while_the_database_is_open(data_dir: Path, tmp_path: Path) -> None:
    make_token(data_dir, "acme")
    backup = backup_database(data_dir, tmp_path / "b.sqlite3").path
    tracker = Database(data_dir / DB_FILENAME)  # what a running, idle tracker holds
    try:
        with pytest.raises(ConflictError, match="in use"):
            restore_database(backup, data_dir)
    finally:
        tracker.close()
    assert restore_database(backup, data_dir).tokens == 1


def test_restore_refuses_a_damaged_backup_and_changes_nothing(
    data_dir: Path, tmp_path: Path
) -> None:
    make_token(data_dir, "acme")
    good = backup_database(data_dir, tmp_path / "good.sqlite3").path
    before = (data_dir / DB_FILENAME).read_bytes()
    cut = tmp_path / "cut.sqlite3"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "foreign.sqlite3"
    sqlite3.connect(foreign).execute("CREATE TABLE other (x)").connection.close()
    for bad in (cut, foreign):
        with pytest.raises(StoreError, match=str(bad.name)):
            restore_database(bad, data_dir)
    with pytest.raises(NotFoundError):
        restore_database(tmp_path / "absent.sqlite3", data_dir)
    assert (data_dir / DB_FILENAME).read_bytes() == before
    assert sorted(p.name for p in data_dir.iterdir()) == [DB_FILENAME]


def test_restore_over_a_killed_trackers_wal(data_dir: Path, tmp_path: Path) -> None:
    """A tracker killed with commits still in its -wal: the restored file must not pick them
    up (a plain cp over the file would), and the replaced state is kept, WAL included."""
    key = Ed25519PrivateKey.generate()
    make_token(data_dir, "acme")
    backup = backup_database(data_dir, tmp_path / "b.sqlite3").path

    live = tmp_path / "live"
    live.mkdir()
    db = Database(data_dir / DB_FILENAME)
    db._conn.execute("PRAGMA wal_autocheckpoint=0")
    publish(db, key, "v1", None)
    for suffix in ("", "-wal"):  # the files as a SIGKILL leaves them
        shutil.copyfile(data_dir / (DB_FILENAME + suffix), live / (DB_FILENAME + suffix))
    db.close()
    assert (live / (DB_FILENAME + "-wal")).stat().st_size > 0

    result = restore_database(backup, live)
    assert (result.versions, result.tokens) == (0, 1)
    assert registry(live / DB_FILENAME)["versions"] == []
    assert result.previous is not None
    kept = registry(result.previous)
    assert [v.version for v in kept["versions"]] == ["v1"]  # type: ignore[attr-defined]
