"""The hostile-input review of the tracker, kept as a suite that only grows (issue 15).

Each test is one probe of the review, scaled to run in seconds: connection floods (idle
keep-alive connections, one address hoarding connections, a flood that would use up the
process's file descriptors), malformed JSON bodies, announces that try to learn of private
models. Clients come from distinct 127.0.0.x addresses (all of 127/8 is loopback) so that a
flooding address and an innocent one can be told apart. Add a probe here for every new
finding; never delete one.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.client import RegistryClient, passkey_for
from p2pdist.formats.bencode import bdecode, bencode, info_bytes
from p2pdist.tracker import TrackerSettings
from tests.edge_world import ServiceTracker, connect_from, http_get, serving
from tests.tracker_world import (
    announce_query,
    make_token,
    make_version,
    peer_id,
    publish_directly,
)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "tracker"


@pytest.fixture
def public_hash(data_dir: Path) -> bytes:
    return publish_directly(data_dir, "acme/public")


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed (or reset) ``sock``; waits at most the socket's timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@contextlib.contextmanager
def _flood(
    sources: list[str], port: int, each: int, request: bool
) -> Iterator[list[socket.socket]]:
    """``each`` connections from every address in ``sources`` (after one /healthz each when
    ``request``: idle keep-alive connections held by aiohttp); all closed on the way out."""
    socks: list[socket.socket] = []
    try:
        for source in sources:
            for _ in range(each):
                try:
                    sock = connect_from(source, port, timeout=10)
                except OSError:
                    continue
                socks.append(sock)
                if request:
                    with contextlib.suppress(OSError, AssertionError):
                        http_get(sock, "/healthz")
        yield socks
    finally:
        for sock in socks:
            sock.close()


# -- floods (finding 1) ------------------------------------------------------------------------
def test_idle_keep_alive_connections_after_a_request_are_closed(
    data_dir: Path, public_hash: bytes
) -> None:
    """Connections handed to aiohttp (a /healthz each) and then left idle are closed after the
    idle timeout (aiohttp's own default keeps them an hour)."""
    settings = TrackerSettings(data_dir=data_dir, idle_timeout=1.0)
    with serving(settings) as served, _flood(["127.0.0.2"], served.port, 20, True) as socks:
        deadline = time.monotonic() + 30
        open_ = list(socks)
        while open_ and time.monotonic() < deadline:
            for sock in list(open_):
                sock.settimeout(0.2)
                if _closed_by_server(sock):
                    open_.remove(sock)
        assert not open_, f"{len(open_)} idle connections still open"


def test_one_address_cannot_hold_more_than_its_share(data_dir: Path, public_hash: bytes) -> None:
    settings = TrackerSettings(data_dir=data_dir, max_connections_per_address=5)
    with serving(settings) as served, _flood(["127.0.0.2"], served.port, 5, True):
        with connect_from("127.0.0.2", served.port) as sixth:
            assert _closed_by_server(sixth), "a sixth connection of one address was kept"
        with connect_from("127.0.0.3", served.port) as other:
            assert http_get(other, "/healthz").startswith(b"HTTP/1.1 200")
        assert served.front.refused >= 1


def test_trusted_proxies_are_exempt_from_the_per_address_cap(
    data_dir: Path, public_hash: bytes
) -> None:
    settings = TrackerSettings(
        data_dir=data_dir, max_connections_per_address=2, trusted_proxies=("127.0.0.1/32",)
    )
    with serving(settings) as served, _flood(["127.0.0.1"], served.port, 4, True):
        with connect_from("127.0.0.1", served.port) as fifth:
            assert http_get(fifth, "/healthz").startswith(b"HTTP/1.1 200")


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160))


def test_a_flood_that_would_use_up_file_descriptors_leaves_room_for_others(
    data_dir: Path, public_hash: bytes
) -> None:
    """A tracker allowed 160 file descriptors, flooded by four addresses with 50 idle
    connections each (a /healthz each, then idle; each address under its cap): it keeps descriptors in reserve by
    dropping the biggest holder's oldest connections, so /healthz and an announce from
    another address are still answered. Before, every descriptor went to the flood and the
    probe was accepted and closed unanswered (uvloop's EMFILE handling), as in the review
    where 20,000 such connections took the tracker offline."""
    tracker = ServiceTracker(data_dir, "--max-connections-per-address", "60")
    try:
        tracker.start(preexec_fn=_low_fd_limit)
        sources = [f"127.0.0.{i}" for i in range(2, 6)]
        with _flood(sources, tracker.port, 50, True) as socks:
            assert len(socks) == 200
            with connect_from("127.0.0.9", tracker.port, timeout=15) as probe:
                assert http_get(probe, "/healthz").startswith(b"HTTP/1.1 200")
            with connect_from("127.0.0.10", tracker.port, timeout=15) as peer:
                query = announce_query(public_hash, peer_id(10), port=7010)
                head, _, body = http_get(peer, f"/announce?{query}").partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200") and b"peers" in bdecode(body)
    finally:
        tracker.close()


# -- hostile JSON bodies (finding 2) ------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"manifest": {"size": ' + b"9" * 5000 + b'}, "torrent": ""}', "5000 characters"),
        (b'{"manifest": {}, "torrent": "", "torrent": ""}', "appears twice"),
        (b'{"manifest": NaN, "torrent": ""}', "NaN is not JSON"),
    ],
    ids=["deep", "digits", "repeated-key", "nan"],
)
def test_a_hostile_publish_body_is_one_400(data_dir: Path, body: bytes, reason: str) -> None:
    """Before: HTTP 500 "internal error (RecursionError)", and a ValueError past the checks."""
    token = make_token(data_dir, "acme")
    with serving(TrackerSettings(data_dir=data_dir)) as served:
        request = urllib.request.Request(
            f"{served.url}/v1/models/acme/m/versions/v1", data=body, method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        answer = json.loads(refused.value.read())
        refused.value.close()
        assert refused.value.code == 400, answer
        assert answer["type"] == "FormatError" and reason in answer["error"], answer
        assert served.state.metrics.errors == 0


# -- private models (findings 6 and 7) -----------------------------------------------------------
def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()


def test_a_private_model_cannot_be_told_from_a_missing_one(data_dir: Path) -> None:
    """Without read access, every registry read and an announce answer for a private model
    exactly as for one that does not exist (before: 401 "is private" vs 404, and an announce
    without passkey named the model)."""
    private = publish_directly(data_dir, "acme/secret", private=True)
    stranger = make_token(data_dir, "other", publish=False)
    with serving(TrackerSettings(data_dir=data_dir)) as served:
        for token in (None, stranger):
            for tail in ("", "/versions", "/latest", "/versions/v1/manifest",
                         "/versions/v1/torrent"):  # fmt: skip
                secret = _get(f"{served.url}/v1/models/acme/secret{tail}", token)
                missing = _get(f"{served.url}/v1/models/acme/nothing{tail}", token)
                assert secret[0] == missing[0] and secret[0] in (404, 405), (tail, secret)
                assert secret[1].replace(b"secret", b"nothing") == missing[1], (tail, secret)
        unknown = bytes(range(20))
        reasons = []
        for info_hash in (private, unknown):
            with connect_from("127.0.0.2", served.port) as c:
                query = announce_query(info_hash, peer_id(2), port=7002)
                body = http_get(c, f"/announce?{query}").partition(b"\r\n\r\n")[2]
                reasons.append(
                    bdecode(body)[b"failure reason"].replace(info_hash.hex().encode(), b"H")
                )
        assert reasons[0] == reasons[1] and b"acme" not in reasons[0]


def test_a_private_torrent_carries_the_readers_own_passkey(data_dir: Path) -> None:
    """Before: every reader got the publisher's torrent, announce URL and passkey included, and
    a read-only reader of one namespace could announce with an all-namespace passkey."""
    publisher = make_token(data_dir, None)  # every namespace
    reader = make_token(data_dir, "acme", publish=False)
    with serving(TrackerSettings(data_dir=data_dir)) as served:
        announce = RegistryClient(served.url, publisher).announce_url(private=True)
        version = make_version(Ed25519PrivateKey.generate(), "acme/secret", "v1")
        meta = bdecode(version.torrent)
        meta[b"announce"] = announce.encode()  # outside the info dict: same infohash
        torrent = bencode(meta)
        RegistryClient(served.url, publisher).publish(
            version.manifest_bytes, torrent, None, private=True
        )
        served_torrent = RegistryClient(served.url, reader).torrent("acme/secret", "v1")
    assert passkey_for(publisher).encode() in torrent
    assert bdecode(served_torrent)[b"announce"] == (
        f"{served.url}/announce/{passkey_for(reader)}".encode()
    )
    assert passkey_for(publisher).encode() not in served_torrent
    assert info_bytes(served_torrent) == info_bytes(torrent)  # the infohash the manifest signs


# -- hostile announces ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"info_hash": "%00" * 19}, b"info_hash must be 20 bytes"),
        ({"port": "0"}, b"port must be in 1..65535"),
        ({"port": "65536"}, b"port="),
        ({"numwant": "-1"}, b"numwant must not be negative"),
        ({"numwant": "9" * 30}, b"numwant="),
        ({"event": "exploded"}, b"unknown event"),
        ({"left": "1" * 25}, b"left="),
    ],
    ids=["short-hash", "port-0", "port-big", "numwant-negative", "numwant-huge", "event", "left"],
)
def test_malformed_announces_are_refused_with_a_reason(
    data_dir: Path, public_hash: bytes, extra: dict[str, str], reason: bytes
) -> None:
    with serving(TrackerSettings(data_dir=data_dir)) as served:
        query = announce_query(public_hash, peer_id(2), port=7002)
        params = dict(part.split("=", 1) for part in query.split("&"))
        params.update(extra)
        raw = "&".join(f"{k}={v}" for k, v in params.items())
        for version in ("1.1", "1.0"):  # the front, then aiohttp's path
            with connect_from("127.0.0.2", served.port) as c:
                c.sendall(f"GET /announce?{raw} HTTP/{version}\r\nHost: x\r\n\r\n".encode())
                data = b""
                while b"\r\n\r\n" not in data or not data.endswith(b"e"):
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            answer = bdecode(data.partition(b"\r\n\r\n")[2])
            assert reason in answer[b"failure reason"], answer
        assert served.state.peers.total_peers() == 0


def test_the_ip_parameter_cannot_point_a_swarm_at_someone_else(
    data_dir: Path, public_hash: bytes
) -> None:
    with serving(TrackerSettings(data_dir=data_dir)) as served:
        for n, source in ((2, "127.0.0.2"), (3, "127.0.0.3")):
            query = announce_query(public_hash, peer_id(n), port=7000 + n, ip="127.0.0.99")
            with connect_from(source, served.port) as c:
                answer = http_get(c, f"/announce?{query}&ipv6=%3A%3A1")
        blob = bdecode(answer.partition(b"\r\n\r\n")[2])[b"peers"]
        assert blob == socket.inet_aton("127.0.0.2") + (7002).to_bytes(2, "big")


def test_a_publish_body_that_stops_arriving_is_ended_by_the_idle_timeout(
    data_dir: Path,
) -> None:
    """A publisher's token is no licence to hold a connection open by trickling its body."""
    token = make_token(data_dir, "acme")
    with serving(TrackerSettings(data_dir=data_dir, idle_timeout=1.0)) as served:
        with connect_from("127.0.0.2", served.port) as c:
            c.sendall(
                b"POST /v1/models/acme/m/versions/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer " + token.encode() + b"\r\n"
                b'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"ma'
            )
            answer = b""  # before the fix, no answer came: recv timed out (10 s)
            while b"stopped arriving" not in answer:
                chunk = c.recv(65536)
                if not chunk:
                    break
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"the request body stopped arriving for 1 s" in answer, answer[:300]
