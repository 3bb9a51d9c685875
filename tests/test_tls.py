"""TLS on the tracker's one port (``tracker serve --tls-cert/--tls-key``) and the clients'
CA bundle (``P2PDIST_CA_BUNDLE``): the registry client, raw announces through the front,
libtorrent's announces, and a refusal of a certificate from another CA.

Every certificate is made by the test (tests/edge_world.py); nothing leaves loopback.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from pathlib import Path

import libtorrent as lt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.client import RegistryClient
from p2pdist.errors import ConfigError, TrackerError
from p2pdist.formats.bencode import bdecode, bencode
from p2pdist.swarm.settings import session_settings
from p2pdist.tracker import TrackerSettings
from p2pdist.tracker.cli import server_tls_context
from tests.edge_world import CA, Served, ServerCert, http_get, issue, make_ca, serving
from tests.tracker_world import announce_query, make_token, make_version, peer_id


@pytest.fixture
def ca(tmp_path: Path) -> CA:
    return make_ca(tmp_path / "ca")


@pytest.fixture
def cert(ca: CA, tmp_path: Path) -> ServerCert:
    return issue(ca, tmp_path / "server")


@pytest.fixture
def https(tmp_path: Path, cert: ServerCert) -> Served:
    tls = server_tls_context(cert.cert_path, cert.key_path)
    with serving(TrackerSettings(data_dir=tmp_path / "tracker", interval=60), tls) as served:
        yield served


def test_the_registry_and_announces_answer_over_https(
    https: Served, ca: CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert https.url.startswith("https://127.0.0.1:")
    monkeypatch.setenv("P2PDIST_CA_BUNDLE", str(ca.cert_path))
    token = make_token(tmp_path / "tracker", "acme")
    client = RegistryClient(https.url, token)
    assert client.health()
    version = make_version(Ed25519PrivateKey.generate(), "acme/tls", "v1")
    assert client.publish(version.manifest_bytes, version.torrent, None)["created"] is True
    assert client.latest("acme/tls") == "v1"
    # an announce over TLS is answered by the front (no aiohttp Server header), then /healthz
    # on the same connection by aiohttp: both read the one decrypted stream
    context = ssl.create_default_context(cafile=str(ca.cert_path))
    with context.wrap_socket(
        socket.create_connection(("127.0.0.1", https.port), timeout=10), server_hostname="127.0.0.1"
    ) as tls:
        answer = http_get(tls, f"/announce?{announce_query(version.v1, peer_id(1))}")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"aiohttp" not in head
        assert bdecode(body)[b"incomplete"] == 1
        assert http_get(tls, "/healthz").startswith(b"HTTP/1.1 200")
    assert https.state.peers.counts(version.v1).incomplete == 1


def test_plain_http_to_a_tls_port_gets_nothing_it_can_use(https: Served) -> None:
    with socket.create_connection(("127.0.0.1", https.port), timeout=10) as plain:
        plain.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"HTTP/1.1 200" not in plain.recv(4096)


def test_a_certificate_from_another_ca_is_refused_in_one_line(
    https: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = make_ca(tmp_path / "other", "another CA")
    for bundle in (str(other.cert_path), None):  # a wrong private CA, then the system's CAs
        if bundle is None:
            monkeypatch.delenv("P2PDIST_CA_BUNDLE", raising=False)
        else:
            monkeypatch.setenv("P2PDIST_CA_BUNDLE", bundle)
        with pytest.raises(TrackerError) as refused:
            RegistryClient(https.url).latest("acme/tls")
        message = str(refused.value)
        assert "\n" not in message
        assert "does not trust" in message and "P2PDIST_CA_BUNDLE" in message


def test_a_missing_or_unreadable_ca_bundle_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2PDIST_CA_BUNDLE", str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match="not a file"):
        RegistryClient("https://127.0.0.1:9")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    monkeypatch.setenv("P2PDIST_CA_BUNDLE", str(junk))
    with pytest.raises(ConfigError, match="cannot be read"):
        RegistryClient("https://127.0.0.1:9")
    RegistryClient("http://127.0.0.1:9")  # plain http never reads the bundle


def test_a_bad_certificate_or_key_is_one_line(tmp_path: Path, cert: ServerCert) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        server_tls_context(tmp_path / "missing.crt", cert.key_path)
    other = issue(make_ca(tmp_path / "o", "o"), tmp_path / "o", "other")
    with pytest.raises(ConfigError, match="cannot load TLS certificate"):
        server_tls_context(cert.cert_path, other.key_path)


def _announce_once(https: Served, bundle: Path, info_hash: bytes, torrent: bytes) -> str | None:
    """A libtorrent session that trusts ``bundle`` announces once to the https tracker;
    None when the tracker replied, else libtorrent's tracker error."""
    settings = session_settings(
        listen_interface="127.0.0.1", port=0, upload_rate_limit=0, download_rate_limit=0,
        announce_interval_hint=None, utp=False, ssrf_mitigation=True, extra_settings=None,
    )  # fmt: skip
    assert os.environ["SSL_CERT_FILE"] == str(bundle)
    session = lt.session(settings)
    try:
        atp = lt.add_torrent_params()
        meta = bdecode(torrent)
        meta[b"announce"] = f"{https.url}/announce".encode()  # outside the info dict
        atp.ti = lt.torrent_info(bencode(meta))
        atp.save_path = str(bundle.parent / "download")
        atp.flags &= ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
        session.add_torrent(atp)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            session.wait_for_alert(500)
            for alert in session.pop_alerts():
                if isinstance(alert, lt.tracker_reply_alert):
                    return None
                if isinstance(alert, lt.tracker_error_alert):
                    return f"{alert.error.message()} {alert.failure_reason()}"
        raise AssertionError("libtorrent neither reached nor failed to reach the tracker")
    finally:
        del session


def test_libtorrent_announces_over_https_and_checks_the_certificate(
    https: Served, ca: CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2PDIST_CA_BUNDLE", str(ca.cert_path))
    token = make_token(tmp_path / "tracker", "acme")
    version = make_version(Ed25519PrivateKey.generate(), "acme/lt", "v1")
    RegistryClient(https.url, token).publish(version.manifest_bytes, version.torrent, None)
    # the session sets SSL_CERT_FILE for the process: put it back after the test
    monkeypatch.setenv("SSL_CERT_FILE", os.environ.get("SSL_CERT_FILE", "-"))
    if os.environ["SSL_CERT_FILE"] == "-":
        monkeypatch.delenv("SSL_CERT_FILE")

    assert _announce_once(https, ca.cert_path, version.v1, version.torrent) is None
    assert https.state.peers.counts(version.v1).incomplete == 1

    other = make_ca(tmp_path / "other", "another CA")
    monkeypatch.setenv("P2PDIST_CA_BUNDLE", str(other.cert_path))
    error = _announce_once(https, other.cert_path, version.v1, version.torrent)
    assert error is not None and "certificate" in error.lower(), error


def test_the_ca_bundle_comes_from_flag_env_or_config_file(
    tmp_path: Path, ca: CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    from p2pdist import config

    monkeypatch.setenv("P2PDIST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("P2PDIST_CONFIG", raising=False)
    monkeypatch.delenv("P2PDIST_CA_BUNDLE", raising=False)
    assert config.ca_bundle() is None
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.toml").write_text(f'ca_bundle = "{ca.cert_path}"\n')
    assert config.ca_bundle() == ca.cert_path
    other = make_ca(tmp_path / "other", "other CA")
    monkeypatch.setenv("P2PDIST_CA_BUNDLE", str(other.cert_path))
    assert config.ca_bundle() == other.cert_path
    assert config.ca_bundle(ca.cert_path) == ca.cert_path
