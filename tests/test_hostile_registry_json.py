"""A hostile registry (a small HTTP server in the test) against the client and the CLI.

Finding 9 of the review: ``latest`` or a manifest nested 100,000 deep, or with a 5,000-digit
size, ended ``p2pdist fetch`` in a Python traceback (RecursionError, ValueError). Each must
be one line naming the tracker, exit status 1. Kept with the hostile suite; add probes here.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pdist.client import RegistryClient
from p2pdist.errors import FormatError, TrackerError

DEEP = b"[" * 100_000 + b"]" * 100_000
DIGITS = b'{"version": ' + b"9" * 5000 + b"}"
ANSWERS = {
    "/v1/models/org/deep/latest": DEEP,
    "/v1/models/org/digits/latest": DIGITS,
    "/v1/models/org/nan/latest": b'{"version": NaN}',
    "/v1/models/org/manifest/latest": b'{"version": "v1"}',
    "/v1/models/org/manifest/versions/v1/manifest": (
        b'{"format": "p2pdist.manifest", "files": [{"size": ' + b"9" * 5000 + b"}]}"
    ),
    "/v1/models/org/deepmanifest/latest": b'{"version": "v1"}',
    "/v1/models/org/deepmanifest/versions/v1/manifest": DEEP,
}


class _Hostile(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = ANSWERS.get(self.path.partition("?")[0], b'{"error": "no"}')
        self.send_response(200 if self.path.partition("?")[0] in ANSWERS else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hostile() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.parametrize("model", ["deep", "digits", "nan"])
def test_hostile_answers_are_one_tracker_error(hostile: str, model: str) -> None:
    with pytest.raises(TrackerError) as refused:
        RegistryClient(hostile).latest(f"org/{model}")
    assert "not the p2pdist registry protocol" in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("model", ["deep", "digits", "manifest", "deepmanifest"])
def test_fetch_from_a_hostile_registry_is_one_line(
    hostile: str, model: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "P2PDIST_HOME": str(tmp_path / "home"),
        "P2PDIST_CONFIG_DIR": str(tmp_path / "config"),
        "P2PDIST_TRACKER": hostile,
        "P2PDIST_LISTEN": "127.0.0.1",
    }
    env.pop("P2PDIST_TOKEN", None)
    result = subprocess.run(
        [sys.executable, "-m", "p2pdist.cli", "fetch", f"org/{model}@latest",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "JSON" in lines[0], lines[0]


def test_a_manifest_with_a_hostile_number_is_a_format_error() -> None:
    from p2pdist.formats.manifest import Manifest

    with pytest.raises(FormatError, match="5000 characters"):
        Manifest.from_bytes(ANSWERS["/v1/models/org/manifest/versions/v1/manifest"])
