"""Real processes for integration tests: a tracker subprocess and p2pdist nodes (CLI hosts).

Each Node is one host: its own store, config dir (signing key, pinned keys) and the tracker's
URL and token in its environment, listening on 127.0.0.1 only. Everything started here is
stopped by ``close()``, which the fixtures call.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import free_port


class Tracker:
    """``python -m p2pdist.tracker serve`` in a subprocess."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        interval: int = 2,
        db: str | None = None,
        peers: str | None = None,
    ) -> None:
        self.data_dir, self.port, self.interval = data_dir, port or free_port(), interval
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.backends = (*(("--db", db) if db else ()), *(("--peers", peers) if peers else ()))

    def cli(self, *args: str) -> str:
        db = self.backends[:2] if self.backends[:1] == ("--db",) else ()
        out = subprocess.run(
            [sys.executable, "-m", "p2pdist.tracker", *args, "--data", str(self.data_dir), *db],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return out.stdout.strip()

    def token(self, namespace: str | None = None, *, read_only: bool = False) -> str:
        args = ("--namespace", namespace) if namespace else ()
        return self.cli("token", *args, *(("--read-only",) if read_only else ()))

    def start(self, timeout: float = 60) -> list[str]:
        """Start the tracker; its first two lines once it listens. A tracker that does not
        come up (another first line, an exit, nothing within ``timeout`` s) is killed before
        the error is raised: a failed start leaves no process behind."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "p2pdist.tracker", "serve", "--port", str(self.port),
             "--data", str(self.data_dir), "--interval", str(self.interval), *self.backends],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            lines = _read_lines(self.proc, 2, timeout)
            assert lines[0] == f"p2pdist tracker listening on {self.url}", lines
        except BaseException:
            self.close()
            raise
        return lines

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        assert self.proc is not None
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=30)
        rest = getattr(self.proc, "_stdout_pending", b"").decode(errors="replace")
        code, self.proc = self.proc.returncode, None
        return code, rest + out

    def close(self) -> None:
        if self.proc is not None:
            self.stop(signal.SIGKILL)


class Node:
    """One p2pdist host driven through its CLI."""

    def __init__(self, root: Path, tracker: Tracker, token: str | None, **env: str) -> None:
        self.root = root
        self.home = root / "home"
        self.env = {
            **os.environ,
            "P2PDIST_HOME": str(self.home),
            "P2PDIST_CONFIG_DIR": str(root / "config"),
            "P2PDIST_TRACKER": tracker.url,
            "P2PDIST_LISTEN": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("P2PDIST_TOKEN", None)
        if token:
            self.env["P2PDIST_TOKEN"] = token
        self.env.update(env)
        self.procs: list[subprocess.Popen[str]] = []

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "p2pdist.cli", *args],
            capture_output=True, text=True, env=self.env, timeout=timeout,
        )  # fmt: skip

    def fetch_json(self, *args: str, timeout: float = 120) -> dict[str, Any]:
        result = self.run("fetch", *args, "--json", timeout=timeout)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def start(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "p2pdist.cli", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def start_seeding(self, *args: str, timeout: float = 120) -> subprocess.Popen[str]:
        """Start a command that ends up seeding (publish, fetch --seed, seed); wait until it is."""
        proc = self.start(*args)
        wait_for_line(proc, "Seeding", timeout)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=30)
        self.procs.clear()


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> str:
    """Read the process's stderr until a line contains ``needle``; fail with what it said.

    Reads the raw descriptor (os.read after select), never the text wrapper: a buffered
    readline can swallow the next lines into its buffer, where select no longer sees them.
    """
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    pending = getattr(proc, "_stderr_pending", b"")
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while True:
        while b"\n" in pending:
            raw, pending = pending.split(b"\n", 1)
            line = raw.decode(errors="replace")
            seen.append(line)
            if needle in line:
                proc._stderr_pending = pending  # type: ignore[attr-defined]
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no {needle!r} within {timeout} s: {chr(10).join(seen)}")
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            if chunk:
                pending += chunk
                continue
        if proc.poll() is not None and not ready:
            rest = pending.decode(errors="replace")
            raise AssertionError(f"process exited {proc.returncode}: {chr(10).join(seen)}{rest}")
        if ready and not chunk:  # end of file: the process closed stderr
            proc.wait(timeout=30)
            rest = pending.decode(errors="replace")
            raise AssertionError(f"process exited {proc.returncode}: {chr(10).join(seen)}{rest}")


def _read_lines(proc: subprocess.Popen[str], count: int, timeout: float) -> list[str]:
    """The first ``count`` lines of the process's stdout, read from the raw descriptor with a
    deadline (a text readline would block forever on a process that hangs silently); bytes
    read past them are kept for ``Tracker.stop``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pending = b""
    deadline = time.monotonic() + timeout
    while pending.count(b"\n") < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {count} lines within {timeout} s: {pending!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"exited {proc.wait(30)} before it listened: {pending!r}")
            pending += chunk
    *lines, rest = pending.split(b"\n", count)
    proc._stdout_pending = rest  # type: ignore[attr-defined]
    return [line.decode(errors="replace").strip() for line in lines]


def run_aria2(torrent_file: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    """Download a .torrent with aria2c (a standard client): trackers only, no DHT/LSD/PEX."""
    return subprocess.run(
        ["aria2c", "--dir", str(dest), "--seed-time=0", "--enable-dht=false",
         "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
         f"--listen-port={free_port()}", "--bt-stop-timeout=60", "--summary-interval=0",
         "--console-log-level=warn", str(torrent_file)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
