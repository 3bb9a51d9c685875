"""The tracker as a service: https end to end, and behind a real nginx terminating TLS.

- ``tracker serve --tls-cert/--tls-key``: a publisher and a consumer (CLI processes, real
  libtorrent sessions) that trust the test's CA publish and fetch over https; libtorrent's
  announces go to the https tracker too (no other way to find the seed).
- nginx (Debian's, started here with its own config, pid, temp and log paths under
  tmp_path, on a free loopback port; skipped with the reason when it is missing) terminates
  TLS and proxies to a tracker started with ``--trusted-proxy 127.0.0.1/32``: peers that
  announce through it from 127.0.0.2, .3 (one of them forging X-Forwarded-For) are
  recorded with their own addresses, not nginx's 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p2pdist.formats.bencode import bdecode
from tests.conftest import free_port, make_version_folder, small_state_dict
from tests.edge_world import (
    CA,
    ServerCert,
    ServiceTracker,
    connect_from,
    http_get,
    issue,
    make_ca,
)
from tests.integration.harness import Node, Tracker
from tests.tracker_world import announce_query, peer_id

pytestmark = pytest.mark.integration

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return make_ca(tmp_path / "ca")


@pytest.fixture
def cert(ca: CA, tmp_path: Path) -> ServerCert:
    return issue(ca, tmp_path / "server")


@contextlib.contextmanager
def running(tracker: Tracker) -> Iterator[Tracker]:
    try:
        tracker.start()
        yield tracker
    finally:
        tracker.close()


def test_publish_and_fetch_over_https(tmp_path: Path, ca: CA, cert: ServerCert) -> None:
    tracker = ServiceTracker(
        tmp_path / "tracker", "--tls-cert", str(cert.cert_path), "--tls-key", str(cert.key_path),
        tls=True,
    )  # fmt: skip
    made: list[Node] = []

    def node(name: str, token: str | None, bundle: Path) -> Node:
        made.append(Node(tmp_path / name, tracker, token, P2PDIST_CA_BUNDLE=str(bundle)))
        return made[-1]

    with running(tracker):
        try:
            src = make_version_folder(tmp_path / "src", small_state_dict())
            publisher = node("publisher", tracker.token("org"), ca.cert_path)
            publisher.start_seeding("publish", str(src), "--name", "org/m", "--version", "v1")
            out = tmp_path / "out"
            fetched = node("consumer", None, ca.cert_path).fetch_json(
                "org/m@latest", "--out", str(out), "--no-origin"
            )
            assert fetched["ref"] == "org/m@v1"
            for f in src.iterdir():
                assert (out / f.name).read_bytes() == f.read_bytes(), f.name
            # a host trusting another CA is refused, in one line naming the fix
            stranger = node("stranger", None, make_ca(tmp_path / "other", "other CA").cert_path)
            refused = stranger.run("fetch", "org/m@latest", "--out", str(tmp_path / "o2"))
            assert refused.returncode == 1
            lines = refused.stderr.strip().splitlines()
            assert len(lines) == 1 and "P2PDIST_CA_BUNDLE" in lines[0], refused.stderr
        finally:
            for n in made:
                n.close()


def _nginx_conf(root: Path, listen: int, upstream: int, cert: ServerCert) -> Path:
    for sub in ("logs", "client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach tmp_path
    conf = root / "nginx.conf"
    conf.write_text(
        f"""{user}daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {root}/logs/access.log;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{listen} ssl;
        ssl_certificate {cert.cert_path};
        ssl_certificate_key {cert.key_path};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""
    )
    return conf


@pytest.fixture
def nginx(tmp_path: Path, cert: ServerCert) -> Iterator[Callable[[int], int]]:
    """``nginx(upstream_port)`` starts nginx with TLS in front of the port; returns its port."""
    if NGINX is None:
        pytest.skip(
            "nginx is not installed (Debian: apt-get install nginx-light; `make system-deps`)"
        )
    procs: list[subprocess.Popen[bytes]] = []  # stderr: the error log (-e)

    def start(upstream: int) -> int:
        root = tmp_path / "nginx"
        port = free_port()
        conf = _nginx_conf(root, port, upstream, cert)
        proc = subprocess.Popen(
            [NGINX, "-p", str(root), "-c", str(conf), "-e", str(root / "logs/error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        procs.append(proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log = (root / "logs/error.log").read_text(errors="replace")
                pytest.fail(f"nginx exited {proc.returncode}: {log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return port
            time.sleep(0.05)
        pytest.fail("nginx did not start listening")

    try:
        yield start
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)


def _announce_via(port: int, ca: CA, source: str, info_hash: bytes, n: int, *headers: str) -> set:
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    with context.wrap_socket(connect_from(source, port), server_hostname="127.0.0.1") as tls:
        query = announce_query(info_hash, peer_id(n), port=7000 + n)
        answer = http_get(tls, f"/announce?{query}", *headers)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    blob = bdecode(body)[b"peers"]
    return {
        (socket.inet_ntoa(blob[i : i + 4]), int.from_bytes(blob[i + 4 : i + 6], "big"))
        for i in range(0, len(blob), 6)
    }


def test_peers_behind_nginx_are_recorded_with_their_own_addresses(
    tmp_path: Path, ca: CA, nginx: Callable[[int], int]
) -> None:
    from tests.tracker_world import publish_directly

    data = tmp_path / "tracker"
    info_hash = publish_directly(data, "acme/public")
    tracker = ServiceTracker(data, "--trusted-proxy", "127.0.0.1/32")
    with running(tracker):
        port = nginx(tracker.port)
        _announce_via(port, ca, "127.0.0.2", info_hash, 2)
        _announce_via(port, ca, "127.0.0.3", info_hash, 3, "X-Forwarded-For: 127.0.0.99")
        seen = _announce_via(port, ca, "127.0.0.4", info_hash, 4)
    assert seen == {("127.0.0.2", 7002), ("127.0.0.3", 7003)}
