"""The tracker as a process: serve, SIGKILL, restart, SIGTERM; real BitTorrent clients on it.

libtorrent sessions (two on 127.0.0.1, DHT/LSD/UPnP/NAT-PMP and uTP off) must find each other
through the tracker alone and move a version's bytes; aria2 (a standard client, when
installed) must too. The private-torrent case announces to ``/announce/<passkey>``, which
libtorrent's ``ssrf_mitigation`` refuses on loopback, so that one session turns it off.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import libtorrent as lt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.client import RegistryClient
from p2pdist.formats.bencode import bdecode, infohashes
from p2pdist.formats.manifest import Manifest, TorrentRef, describe_files, list_files
from tests.integration.harness import Tracker, run_aria2
from tests.tracker_world import announce_query, make_version, peer_id

pytestmark = pytest.mark.integration

LT_SETTINGS = {
    "enable_dht": False,
    "enable_lsd": False,
    "enable_upnp": False,
    "enable_natpmp": False,
    "allow_multiple_connections_per_ip": True,
    "enable_outgoing_utp": False,
    "enable_incoming_utp": False,
    "listen_interfaces": "127.0.0.1:0",
}


def _announce(url: str, info_hash: bytes, n: int) -> dict[bytes, Any]:
    with urllib.request.urlopen(
        f"{url}/announce?{announce_query(info_hash, peer_id(n), 7000 + n)}"
    ) as r:
        return bdecode(r.read())


def test_sigkill_keeps_versions_and_the_swarm_recovers(tracker: Tracker) -> None:
    token = tracker.cli("token", "--namespace", "acme")
    client = RegistryClient(tracker.url, token=token)
    key = Ed25519PrivateKey.generate()
    versions = [make_version(key, "acme/llm", "v1"), make_version(key, "acme/llm", "v2", "v1")]
    for v in versions:
        client.publish(v.manifest_bytes, v.torrent, v.delta_torrent)
    _announce(tracker.url, versions[1].v1, 1)

    code, _ = tracker.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL
    lines = tracker.start()
    assert lines[1] == f"database: {tracker.data_dir / 'tracker.sqlite3'}"
    assert [v["version"] for v in client.list_versions("acme/llm")] == ["v1", "v2"]
    for v in versions:
        assert client.manifest_bytes("acme/llm", v.manifest.version) == v.manifest_bytes
    # soft state is gone; peers re-announce within one interval and find each other again
    assert _announce(tracker.url, versions[1].v1, 1)[b"peers"] == b""
    assert _announce(tracker.url, versions[1].v1, 2)[b"peers"] == b"\x7f\x00\x00\x01" + (
        7001
    ).to_bytes(2, "big")
    # the old token still publishes
    client.publish(*(lambda v: (v.manifest_bytes, v.torrent, v.delta_torrent))(
        make_version(key, "acme/llm", "v3", "v2")))  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_clean_shutdown_on_signal(tracker: Tracker, sig: int) -> None:
    assert RegistryClient(tracker.url).health()
    code, out = tracker.stop(sig)
    assert code == 0, out
    assert "stopping" in out and "Traceback" not in out


def test_token_cli_refuses_a_bad_namespace(tracker: Tracker) -> None:
    for bad in ("Not A Name", "Org!", "org/model"):
        with pytest.raises(subprocess.CalledProcessError) as info:
            tracker.cli("token", "--namespace", bad)
        assert info.value.returncode == 2 and "Traceback" not in info.value.stderr
        assert f"{bad!r} is not a namespace: one name segment" in info.value.stderr


def test_tracker_cli_names_the_database_it_cannot_open_or_has_just_made(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    serve = subprocess.run(
        [sys.executable, "-m", "p2pdist.tracker", "serve", "--port", "0",
         "--data", str(blocker / "data")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert serve.returncode == 1 and "Traceback" not in serve.stderr
    assert (
        serve.stderr.startswith(f"Error: {blocker / 'data'}")
        and "cannot listen" not in serve.stderr
    )
    assert "cannot open the tracker database" in serve.stderr
    fresh = Tracker(tmp_path / "typo")  # `token --data` of a folder no tracker used
    made = subprocess.run(
        [sys.executable, "-m", "p2pdist.tracker", "token", "--data", str(fresh.data_dir)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "new tracker database at" in made.stderr and len(made.stdout.strip()) > 20
    again = subprocess.run(
        [sys.executable, "-m", "p2pdist.tracker", "token", "--data", str(fresh.data_dir)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "new tracker database" not in again.stderr


# -- real clients ----------------------------------------------------------------------------
def _publish_real(tracker: Tracker, root: Path, private: bool = False) -> bytes:
    """Make a 2 MB version folder, a v1 torrent announcing to the tracker, publish; return it."""
    folder = root / "v1"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(os.urandom(2 * 1024 * 1024))
    (folder / "config.json").write_text('{"model_type": "test"}')
    token = tracker.cli("token", "--namespace", "acme")
    client = RegistryClient(tracker.url, token=token)
    ct = lt.create_torrent(lt.list_files(str(folder)), 64 * 1024, lt.create_torrent.v1_only)
    ct.add_tracker(client.announce_url(private=private))
    if private:
        ct.set_priv(True)
    lt.set_piece_hashes(ct, str(root))
    torrent = lt.bencode(ct.generate())
    manifest = Manifest(
        name="acme/llm", version="v1", files=describe_files(folder, list_files(folder)),
        torrent=TorrentRef(v1=infohashes(torrent)[0]),
    ).signed(Ed25519PrivateKey.generate())  # fmt: skip
    client.publish(manifest.to_bytes(), torrent, None, private=private)
    return torrent


def _add(session: Any, torrent: bytes, save_path: Path) -> Any:
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = str(save_path)
    atp.flags &= ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
    return session.add_torrent(atp)


def _wait(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _seeders(tracker: Tracker, token: str | None = None) -> int:
    versions = RegistryClient(tracker.url, token=token).list_versions("acme/llm")
    return int(versions[0]["seeders"])


@pytest.mark.parametrize("private", [False, True], ids=["public", "private-passkey"])
def test_libtorrent_sessions_find_each_other(
    tracker: Tracker, tmp_path: Path, private: bool
) -> None:
    torrent = _publish_real(tracker, tmp_path / "seed", private=private)
    settings = dict(LT_SETTINGS, ssrf_mitigation=not private)
    seeder, leecher = lt.session(settings), lt.session(settings)
    admin = tracker.cli("token")
    try:
        seed = _add(seeder, torrent, tmp_path / "seed")
        _wait(lambda: seed.status().is_seeding, "the seeder to check its files")
        _wait(lambda: _seeders(tracker, admin) == 1, "the seeder's announce")
        leech = _add(leecher, torrent, tmp_path / "leech")
        _wait(lambda: leech.status().is_seeding, "the leecher to download through the tracker")
        for name in ("model.safetensors", "config.json"):
            got = (tmp_path / "leech" / "v1" / name).read_bytes()
            assert got == (tmp_path / "seed" / "v1" / name).read_bytes()
    finally:
        del seeder, leecher


@pytest.mark.skipif(
    shutil.which("aria2c") is None, reason="aria2c not installed (apt-get install aria2)"
)
def test_aria2_downloads_through_the_tracker(tracker: Tracker, tmp_path: Path) -> None:
    torrent = _publish_real(tracker, tmp_path / "seed")
    (tmp_path / "v1.torrent").write_bytes(torrent)
    seeder = lt.session(LT_SETTINGS)
    try:
        seed = _add(seeder, torrent, tmp_path / "seed")
        _wait(lambda: seed.status().is_seeding, "the seeder to check its files")
        _wait(lambda: _seeders(tracker) == 1, "the seeder's announce")
        out = run_aria2(tmp_path / "v1.torrent", tmp_path / "aria2")
        assert out.returncode == 0, out.stdout + out.stderr
        got = (tmp_path / "aria2" / "v1" / "model.safetensors").read_bytes()
        assert got == (tmp_path / "seed" / "v1" / "model.safetensors").read_bytes()
    finally:
        del seeder
