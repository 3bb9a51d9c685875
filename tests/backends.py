"""Real PostgreSQL and Redis servers for the storage tests, started once per session.

``postgres_server`` runs Debian's PostgreSQL (``initdb`` + ``pg_ctl`` into a temporary
folder, on a free loopback port, as the ``postgres`` user when the tests run as root, since
PostgreSQL refuses root); each test that asks for ``postgres_url`` gets a database of its
own (a schema). ``redis_server`` runs ``redis-server`` without persistence on a free loopback port;
``redis_url`` flushes it for each test. Where a server cannot be started the tests that need
it are skipped with the reason. Both are always stopped at the end of the session; tests
may stop and start them (``stop``/``start``) to play an outage.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), default=Path("/usr/lib/postgresql/15/bin"))
START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = START_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder (trust authentication on loopback)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self._names = itertools.count()
        self._user: list[str] = []
        if os.geteuid() == 0:
            pwd.getpwnam("postgres")  # KeyError: no such user
            self._user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(root, "postgres")
        self._run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "p2pdist", "-A", "trust",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        self.start()

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [*self._user, *args], capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {(done.stderr or done.stdout).strip()[-400:]}")

    @property
    def base_url(self) -> str:
        return f"postgresql://p2pdist@127.0.0.1:{self.port}"

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-w",
            "-l", str(self.root / "log"), "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def new_database(self) -> str:
        """A fresh, empty schema (instant, unlike CREATE DATABASE); the URL that uses it."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(f"{self.base_url}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return f"{self.base_url}/postgres?options=-csearch_path%3D{name}"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()


class RedisServer:
    """One redis-server without persistence, on a loopback port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if not _wait_port(self.port):
            self.stop()
            raise RuntimeError("redis-server did not open its port")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
            self._proc = None

    def flush(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            client.flushall()
        finally:
            client.close()

    def close(self) -> None:
        self.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL not installed ({PG_BIN}/initdb missing; `make system-deps`)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg not installed (pip install -e '.[test]')")
    root = Path(tempfile.mkdtemp(prefix="p2pdist-pg-"))
    server = None
    try:
        try:
            server = PostgresServer(root)
        except (RuntimeError, KeyError, OSError, subprocess.SubprocessError) as e:
            pytest.skip(f"cannot start PostgreSQL here: {e}")
        yield server
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (`make system-deps`)")
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.skip("redis-py not installed (pip install -e '.[test]')")
    root = Path(tempfile.mkdtemp(prefix="p2pdist-redis-"))
    server = None
    try:
        try:
            server = RedisServer(root)
        except (RuntimeError, OSError) as e:
            pytest.skip(f"cannot start redis-server here: {e}")
        yield server
    finally:
        if server is not None:
            server.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty PostgreSQL database for this test."""
    return postgres_server.new_database()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session's Redis, emptied for this test."""
    redis_server.flush()
    return redis_server.url
