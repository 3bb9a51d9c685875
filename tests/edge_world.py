"""The tracker's network edge in tests: certificates, a served tracker, raw connections.

This module holds no tests. ``make_ca`` writes a self-signed CA; ``issue`` writes a server
certificate and key for 127.0.0.1, ::1 and localhost signed by that CA (real X.509 from
cryptography, valid for a day, in the test's tmp_path). ``serving`` runs the tracker the way
``p2pdist tracker serve`` does (``make_runner`` + ``FrontSite``, TLS optional) in a thread on
a free loopback port and stops it on the way out. ``connect_from`` opens a connection from a
chosen 127.0.0.x address (all of 127/8 is loopback), so tests can tell peers apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from p2pdist.tracker import STATE, TrackerSettings, TrackerState
from p2pdist.tracker.cli import make_runner
from p2pdist.tracker.front import Front, FrontSite
from tests.integration.harness import Tracker


@dataclass(frozen=True)
class CA:
    """A certificate authority: its certificate file (the bundle a client trusts) and key."""

    cert_path: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class ServerCert:
    """A server's certificate chain and key files, as ``tracker serve --tls-cert/--tls-key``."""

    cert_path: Path
    key_path: Path


def _validity() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)


def make_ca(folder: Path, name: str = "p2pdist test CA") -> CA:
    """A self-signed CA certificate written to ``folder/<name>.pem``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start, end = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{name.replace(' ', '-')}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CA(path, cert, key)


def issue(ca: CA, folder: Path, name: str = "tracker") -> ServerCert:
    """A server certificate for 127.0.0.1, ::1 and localhost, signed by ``ca``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    cert_path = folder / f"{name}.crt"
    key_path = folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return ServerCert(cert_path, key_path)


@dataclass
class Served:
    """A tracker running in a thread: its URL, state and front (read them between requests)."""

    url: str
    port: int
    state: TrackerState
    front: Front


@contextlib.contextmanager
def serving(
    settings: TrackerSettings,
    tls: ssl.SSLContext | None = None,
    *,
    max_open: int | None = None,
    verbose: bool = False,
) -> Iterator[Served]:
    """Run the tracker on 127.0.0.1 (front + aiohttp, https with ``tls``) until the block ends."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        runner = make_runner(settings, verbose=verbose)
        await runner.setup()
        try:
            site = FrontSite(runner, "127.0.0.1", 0, ssl_context=tls, max_open=max_open)
            await site.start()
            assert site.front is not None
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            box["stop"] = lambda: loop.call_soon_threadsafe(stop.set)
            box["served"] = Served(site.name, site.port, runner.app[STATE], site.front)
            ready.set()
            await stop.wait()
        finally:
            await runner.cleanup()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as e:  # pragma: no cover - reported by the test
            box["error"] = e
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30), "tracker thread did not start"
    if "error" in box:
        raise box["error"]
    try:
        yield box["served"]
    finally:
        box["stop"]()
        thread.join(30)
        assert not thread.is_alive(), "tracker did not stop"
        assert "error" not in box, box.get("error")


def connect_from(source: str, port: int, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port`` from the loopback address ``source``."""
    return socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(source, 0)
    )


def http_get(sock: socket.socket | ssl.SSLSocket, path: str, *headers: str) -> bytes:
    """Send one HTTP/1.1 GET on ``sock`` and return the whole answer (head and body)."""
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-answer"
        body += chunk
    return head + b"\r\n\r\n" + body


class ServiceTracker(Tracker):
    """``tracker serve`` with extra flags (TLS, trusted proxies); the URL follows the scheme."""

    def __init__(self, data_dir: Path, *flags: str, tls: bool = False) -> None:
        super().__init__(data_dir)
        self.flags = flags
        if tls:
            self.url = f"https://127.0.0.1:{self.port}"

    def start(self, preexec_fn: Callable[[], None] | None = None) -> list[str]:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "p2pdist.tracker", "serve", "--port", str(self.port),
             "--data", str(self.data_dir), "--interval", str(self.interval), *self.flags],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=preexec_fn,
        )  # fmt: skip
        assert self.proc.stdout is not None
        lines = [self.proc.stdout.readline().strip(), self.proc.stdout.readline().strip()]
        assert lines[0] == f"p2pdist tracker listening on {self.url}", lines
        return lines
