"""A registry database that cannot be trusted, and storage that fails under a running tracker.

Issue 15, items 3 and 4: an empty (zero-byte) or damaged SQLite file is refused with one line
(`tracker serve` and `tracker token` alike), never taken as an empty registry; ``--fresh-db``
starts afresh deliberately. A disk that fills up or a database that turns read-only while the
tracker runs reaches the publisher as what it is, not ``internal error (OperationalError)``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.errors import StoreError
from p2pdist.tracker import STATE, TrackerSettings, create_app
from p2pdist.tracker.db import DB_FILENAME, Database
from tests.conftest import free_port
from tests.tracker_world import make_token, make_version, publish_directly


def serve(data_dir: Path, *extra: str, timeout: float = 60) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "p2pdist.tracker", "serve", "--port", str(free_port()),
         "--data", str(data_dir), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def refused(data_dir: Path) -> str:
    """Run `tracker serve` on ``data_dir``; assert it exits 1 with one line; return that line."""
    proc = serve(data_dir)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def damaged(data_dir: Path) -> Path:
    """A registry with a few versions whose pages past the first were overwritten."""
    for i in range(6):
        publish_directly(data_dir, f"acme/m{i}", "v1")
    path = data_dir / DB_FILENAME
    raw = bytearray(path.read_bytes())
    assert len(raw) > 3 * 4096, len(raw)
    for at in range(2 * 4096, len(raw), 4096):  # every page but the first (the schema)
        raw[at : at + 64] = b"\xa5" * 64
    path.write_bytes(bytes(raw))
    return path


def test_a_zero_byte_database_is_refused_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "tracker"
    data.mkdir()
    (data / DB_FILENAME).write_bytes(b"")
    line = refused(data)
    assert "empty (0 bytes)" in line and "--fresh-db" in line
    assert (data / DB_FILENAME).stat().st_size == 0  # left for the operator to look at
    token = subprocess.run(
        [sys.executable, "-m", "p2pdist.tracker", "token", "--data", str(data)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert token.returncode == 1 and "empty (0 bytes)" in token.stderr
    assert len(token.stderr.strip().splitlines()) == 1


def test_a_database_with_damaged_pages_is_refused_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "tracker"
    damaged(data)
    line = refused(data)
    assert "damaged" in line and "Traceback" not in line
    with pytest.raises(StoreError, match="damaged"):
        Database(data / DB_FILENAME)


def test_fresh_db_moves_the_bad_file_aside_and_starts(tmp_path: Path) -> None:
    data = tmp_path / "tracker"
    path = damaged(data)
    before = path.read_bytes()
    proc = serve(data, "--fresh-db")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("p2pdist tracker listening on")
    finally:
        proc.kill()
        proc.communicate()
    aside = [p for p in data.iterdir() if p.name.startswith(f"{DB_FILENAME}.broken-")]
    assert [p.read_bytes() for p in aside if not p.name.endswith(("-wal", "-shm"))] == [before]
    assert Database(path).models() == []


@pytest.fixture
async def tracker(aiohttp_client: Any, tmp_path: Path) -> Any:
    return await aiohttp_client(create_app(TrackerSettings(data_dir=tmp_path / "tracker")))


async def publish(client: Any, token: str, version: str) -> Any:
    # a manifest of 100 files spans several pages, so storing it needs new ones
    v = make_version(KEY, "acme/llm", version, paths=tuple(f"f{i:03d}.bin" for i in range(100)))
    return await client.post(
        f"/v1/models/acme/llm/versions/{version}",
        json=v.body(),
        headers={"Authorization": f"Bearer {token}"},
    )


KEY = Ed25519PrivateKey.generate()


async def test_a_full_disk_is_named_to_the_publisher(tracker: Any, tmp_path: Path) -> None:
    token = make_token(tmp_path / "tracker", "acme")
    conn = tracker.server.app[STATE].registry._conn  # the running tracker's own connection
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")  # no page more: SQLITE_FULL, for real
    r = await publish(tracker, token, "v1")
    answer = await r.json()
    assert r.status == 503, answer
    assert "the disk is full" in answer["error"] and "OperationalError" not in answer["error"]
    conn.execute("PRAGMA max_page_count = 1073741823")
    r = await publish(tracker, token, "v1")  # nothing half-written: the retry publishes
    assert r.status == 201, await r.text()


async def test_a_read_only_database_is_named_to_the_publisher(tracker: Any, tmp_path: Path) -> None:
    token = make_token(tmp_path / "tracker", "acme")
    conn = tracker.server.app[STATE].registry._conn
    conn.execute("PRAGMA query_only = 1")
    r = await publish(tracker, token, "v1")
    answer = await r.json()
    assert r.status == 503, answer
    assert "read-only" in answer["error"] and answer["type"] == "StoreError"
    conn.execute("PRAGMA query_only = 0")
    assert (await publish(tracker, token, "v1")).status == 201
