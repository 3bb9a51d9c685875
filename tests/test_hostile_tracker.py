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

from p2pdist.formats.bencode import bdecode
from p2pdist.tracker import TrackerSettings
from tests.edge_world import ServiceTracker, connect_from, http_get, serving
from tests.tracker_world import announce_query, make_token, peer_id, publish_directly


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
