"""The raw announce front (tracker/front.py) on a real server, driven by raw sockets.

Each test starts the tracker the way ``p2pdist tracker serve`` does (``AppRunner`` +
``FrontSite``) in a thread with its own event loop (asyncio's, and uvloop's when installed),
on 127.0.0.1 or ::1, and stops it. Answers the front writes itself carry no ``Server``
header; aiohttp's do, which is how a test tells that a connection was handed over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from p2pdist.client import passkey_for
from p2pdist.formats.bencode import bdecode
from p2pdist.tracker import STATE, TrackerSettings, TrackerState, create_app
from p2pdist.tracker.front import MAX_BUFFER, MAX_HEAD, FrontConnection, FrontSite
from tests.conftest import has_ipv6_loopback, wait_until
from tests.tracker_world import announce_query, make_token, peer_id, publish_directly

LOOPS = ["asyncio", "uvloop"]


@dataclass
class Served:
    """A running tracker: where it listens and its state (read it only between requests)."""

    host: str
    port: int
    state: TrackerState
    stop: Any

    def connect(self) -> Client:
        return Client(socket.create_connection((self.host, self.port), timeout=10))


@contextlib.contextmanager
def serve(settings: TrackerSettings, loop_kind: str, host: str = "127.0.0.1") -> Iterator[Served]:
    """Run the tracker with its front on ``host`` in a thread; stop it on the way out."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        app = create_app(settings)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = FrontSite(runner, host, 0)
            await site.start()
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            box["served"] = Served(
                host, site.port, app[STATE], lambda: loop.call_soon_threadsafe(stop.set)
            )
            ready.set()
            await stop.wait()
        finally:
            await runner.cleanup()

    def run() -> None:
        try:
            if loop_kind == "uvloop":
                import uvloop

                uvloop.run(main())
            else:
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
        box["served"].stop()
        thread.join(30)
        assert not thread.is_alive(), "tracker did not stop"
        assert "error" not in box, box.get("error")


class Client:
    """One raw HTTP/1.1 connection: send bytes, read answers (status, headers, body)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        status_line = self.file.readline()
        assert status_line, "connection closed before an answer"
        version, status, *_ = status_line.decode("latin-1").split(" ", 2)
        assert version in ("HTTP/1.1", "HTTP/1.0"), status_line
        headers: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length")
        body = self.file.read(int(length)) if length is not None else self.file.read()
        return int(status), headers, body

    def bencoded(self) -> tuple[dict[bytes, Any], dict[str, str]]:
        status, headers, body = self.answer()
        assert status == 200, (status, body)
        return bdecode(body), headers

    def is_closed(self) -> bool:
        """True when the server closed the connection (nothing more to read)."""
        return self.file.read(1) == b""


def get(path: str, *headers: str, version: str = "1.1") -> bytes:
    lines = [f"GET {path} HTTP/{version}", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def announce(info_hash: bytes, n: int, *headers: str, **kwargs: Any) -> bytes:
    return get(
        f"/announce?{announce_query(info_hash, peer_id(n), port=7000 + n, **kwargs)}", *headers
    )


def by_front(headers: dict[str, str]) -> bool:
    """Whether the front wrote this answer (aiohttp's carry ``Server: ... aiohttp/...``)."""
    return "aiohttp" not in headers.get("server", "")


def _peers(answer: dict[bytes, Any]) -> set[int]:
    blob = answer[b"peers"]
    return {int.from_bytes(blob[i + 4 : i + 6], "big") for i in range(0, len(blob), 6)}


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    if request.param == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop not installed")
    return str(request.param)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "tracker"


@pytest.fixture
def public_hash(data_dir: Path) -> bytes:
    return publish_directly(data_dir, "acme/public")


@pytest.fixture
def tracker(data_dir: Path, public_hash: bytes, loop_kind: str) -> Iterator[Served]:
    with serve(TrackerSettings(data_dir=data_dir, interval=60), loop_kind) as served:
        yield served


@pytest.fixture
def quick_idle(data_dir: Path, public_hash: bytes, loop_kind: str) -> Iterator[Served]:
    """A tracker that closes connections idle for a second (at most two)."""
    settings = TrackerSettings(data_dir=data_dir, interval=60, idle_timeout=1.0)
    with serve(settings, loop_kind) as served:
        yield served


def test_keep_alive_serves_many_announces_on_one_connection(
    tracker: Served, public_hash: bytes
) -> None:
    with tracker.connect() as c:
        for n in range(1, 6):
            c.send(announce(public_hash, n))
            answer, headers = c.bencoded()
            assert by_front(headers) and headers["content-type"].startswith("text/plain")
            assert "date" in headers and "connection" not in headers
            assert answer[b"incomplete"] == n and answer[b"interval"] == 60
            assert _peers(answer) == {7000 + i for i in range(1, n)}
    assert tracker.state.metrics.announces["started"] == 5


def test_pipelined_requests_in_one_write_are_answered_in_order(
    tracker: Served, public_hash: bytes
) -> None:
    with tracker.connect() as c:
        c.send(b"".join(announce(public_hash, n) for n in range(1, 8)))
        counts = [c.bencoded()[0][b"incomplete"] for _ in range(7)]
        assert counts == list(range(1, 8))


def test_a_client_that_does_not_read_is_held_back_not_dropped(
    tracker: Served, public_hash: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many pipelined announces (4.6 MB) sent while the client reads nothing: the server stops
    writing, then reading (holding at most a read's worth past ``MAX_BUFFER``); once the client
    reads, every answer comes, in order."""
    writing_paused: list[bool] = []
    held: list[int] = []
    pause_writing, queue = FrontConnection.pause_writing, FrontConnection._queue

    def counted_pause(self: FrontConnection) -> None:
        writing_paused.append(True)
        pause_writing(self)

    def measured_queue(self: FrontConnection, data: bytes) -> None:
        held.append(len(data))
        queue(self, data)

    monkeypatch.setattr(FrontConnection, "pause_writing", counted_pause)
    monkeypatch.setattr(FrontConnection, "_queue", measured_queue)
    requests = [announce(public_hash, n, event=None) for n in range(1, 51)] * 400
    with tracker.connect() as c:
        sender = threading.Thread(target=c.send, args=(b"".join(requests),))
        sender.start()
        # both sides' buffers fill: the server pauses writing (a fixed sleep was too short
        # on a loaded machine, and the merge of the test sweep had brought it back)
        wait_until(lambda: writing_paused, "the server to stop writing: send more")
        counts = [c.bencoded()[0][b"incomplete"] for _ in range(len(requests))]
        sender.join(10)
    assert MAX_BUFFER < max(held) <= MAX_BUFFER + 512 * 1024, max(held)
    assert counts[:50] == list(range(1, 51)) and set(counts[50:]) == {50}
    assert sum(tracker.state.metrics.announces.values()) == len(requests)


def test_a_request_split_byte_by_byte(tracker: Served, public_hash: bytes) -> None:
    with tracker.connect() as c:
        c.send(announce(public_hash, 1))
        c.bencoded()
        request = announce(public_hash, 2)
        for i in range(len(request)):
            c.send(request[i : i + 1])
            time.sleep(0.0005)
        answer, headers = c.bencoded()
        assert by_front(headers) and _peers(answer) == {7001}


def test_other_requests_are_handed_to_aiohttp_on_the_same_connection(
    tracker: Served, public_hash: bytes
) -> None:
    with tracker.connect() as c:
        c.send(announce(public_hash, 1))
        assert by_front(c.bencoded()[1])
        # an announce and /healthz in one write: the front answers the first, aiohttp the rest
        c.send(announce(public_hash, 2) + get("/healthz"))
        answer, headers = c.bencoded()
        assert by_front(headers) and answer[b"incomplete"] == 2
        status, headers, body = c.answer()
        assert status == 200 and not by_front(headers)
        assert json.loads(body)["status"] == "ok"
        c.send(get("/v1/models"))
        status, headers, body = c.answer()
        assert status == 200 and not by_front(headers)
        assert [m["name"] for m in json.loads(body)["models"]] == ["acme/public"]
        c.send(announce(public_hash, 3))  # now aiohttp's: the same answer, from the same code
        answer, headers = c.bencoded()
        assert not by_front(headers) and _peers(answer) == {7001, 7002}
        c.send(get("/metrics"))
        status, _, body = c.answer()
        assert status == 200 and b'p2pdist_tracker_announces_total{event="started"} 3' in body


def test_oversized_request_line_is_refused_and_closed(tracker: Served, public_hash: bytes) -> None:
    with tracker.connect() as c:
        c.send(announce(public_hash, 1))
        c.bencoded()
        c.send(get("/announce?" + "x" * (MAX_HEAD + 100)))
        status, _, body = c.answer()
        assert status == 400 and b"8190" in body, body
        assert c.is_closed()


def test_oversized_headers_are_refused_and_closed(tracker: Served, public_hash: bytes) -> None:
    with tracker.connect() as c:
        c.send(announce(public_hash, 1, "X-Filler: " + "y" * (MAX_HEAD + 10)))
        status, _, body = c.answer()
        assert status == 400 and b"8190" in body, body
        assert c.is_closed()
    with tracker.connect() as c:
        c.send(announce(public_hash, 1, *[f"X-H{i}: v" for i in range(200)]))
        status, _, body = c.answer()
        assert status == 400, body
        assert c.is_closed()


def test_query_over_the_cap_gets_a_failure_reason(tracker: Served, public_hash: bytes) -> None:
    with tracker.connect() as c:
        c.send(get("/announce?" + announce_query(public_hash, peer_id(1)) + "&pad=" + "z" * 5000))
        answer, headers = c.bencoded()
        assert by_front(headers)
        assert answer[b"failure reason"] == b"query string longer than 4096 bytes"
        c.send(announce(public_hash, 1))  # the connection lives on
        assert c.bencoded()[0][b"incomplete"] == 1
    assert tracker.state.metrics.announce_failures == 1


def test_refusals_come_from_the_front(tracker: Served, public_hash: bytes) -> None:
    with tracker.connect() as c:
        c.send(announce(b"z" * 20, 1))
        answer, headers = c.bencoded()
        assert by_front(headers) and answer[b"failure reason"].startswith(b"unknown info_hash")
        c.send(get(f"/announce?{announce_query(public_hash, peer_id(1), port=0)}"))
        assert b"port must be in 1..65535" in c.bencoded()[0][b"failure reason"]
        c.send(get(f"/announce?{announce_query(public_hash[:19], peer_id(1))}"))
        assert c.bencoded()[0][b"failure reason"] == b"info_hash must be 20 bytes, got 19"
        c.send(announce(public_hash, 1, numwant="999999"))
        assert b"failure reason" not in c.bencoded()[0]


@pytest.mark.parametrize(
    ("framing", "body"),
    [("Content-Length: 5", b"hello"), ("Transfer-Encoding: chunked", b"5\r\nhello\r\n0\r\n\r\n")],
)
def test_a_request_with_a_body_goes_to_aiohttp(
    tracker: Served, public_hash: bytes, framing: str, body: bytes
) -> None:
    with tracker.connect() as c:
        # were the body ignored, its bytes would be read as the start of the next request
        c.send(announce(public_hash, 1, framing) + body + announce(public_hash, 2))
        first, headers = c.bencoded()
        assert not by_front(headers) and first[b"incomplete"] == 1
        second, headers = c.bencoded()
        assert not by_front(headers) and second[b"incomplete"] == 2


def test_http_1_0_goes_to_aiohttp_and_gets_the_same_answer(
    tracker: Served, public_hash: bytes
) -> None:
    with tracker.connect() as c:
        c.send(announce(public_hash, 1))
        c.send(announce(public_hash, 2))
        front_answer = [c.bencoded()[0], c.bencoded()[0]][1]
    with tracker.connect() as c:
        c.send(announce(public_hash, 2).replace(b"HTTP/1.1", b"HTTP/1.0"))
        status, headers, body = c.answer()
        assert status == 200 and not by_front(headers)
        assert bdecode(body) == front_answer  # one implementation behind both paths
        assert c.is_closed()


def test_connection_close_is_honoured(tracker: Served, public_hash: bytes) -> None:
    with tracker.connect() as c:
        c.send(announce(public_hash, 1, "Connection: close") + announce(public_hash, 2))
        answer, headers = c.bencoded()
        assert by_front(headers) and headers["connection"] == "close"
        assert answer[b"incomplete"] == 1
        assert c.is_closed()  # the pipelined second request is not answered


def test_stopping_the_server_closes_idle_front_connections(
    data_dir: Path, public_hash: bytes, loop_kind: str
) -> None:
    with serve(TrackerSettings(data_dir=data_dir), loop_kind) as served:
        c = served.connect()
        c.send(announce(public_hash, 1))
        c.bencoded()
    try:
        assert c.is_closed()
    finally:
        c.close()


def test_passkey_announces_keep_their_order_behind_a_lookup(
    data_dir: Path, public_hash: bytes, loop_kind: str
) -> None:
    private = publish_directly(data_dir, "acme/secret", private=True)
    reader = passkey_for(make_token(data_dir, "acme", publish=False))
    outsider = passkey_for(make_token(data_dir, "other", publish=False))
    with serve(TrackerSettings(data_dir=data_dir), loop_kind) as served, served.connect() as c:
        c.send(announce(public_hash, 5) + announce(public_hash, 6))
        assert [c.bencoded()[0][b"incomplete"] for _ in range(2)] == [1, 2]
        query = announce_query(private, peer_id(1), port=7001)
        # the first passkey announce waits for the database; the public one must wait behind it
        c.send(get(f"/announce/{reader}?{query}") + announce(public_hash, 2))
        first, headers = c.bencoded()
        assert by_front(headers) and first[b"incomplete"] == 1, first
        second, _ = c.bencoded()
        assert second[b"incomplete"] == 3 and _peers(second) == {7005, 7006}
        c.send(get(f"/announce/{reader}?{announce_query(private, peer_id(3), port=7003)}"))
        assert _peers(c.bencoded()[0]) == {7001}  # the grant, cached now
        c.send(get(f"/announce/{outsider}?{query}"))
        assert c.bencoded()[0][b"failure reason"].startswith(b"unknown info_hash")
        c.send(get(f"/announce/{'0' * 32}?{query}") + get(f"/announce?{query}"))
        assert c.bencoded()[0][b"failure reason"].startswith(b"unknown passkey")
        assert c.bencoded()[0][b"failure reason"].startswith(b"unknown info_hash")
        c.send(get(f"/scrape/{reader}?info_hash=" + "".join(f"%{b:02x}" for b in private)))
        scrape, headers = c.bencoded()
        assert by_front(headers) and scrape[b"files"][private][b"incomplete"] == 2


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
def test_ipv6_peers_get_their_address_from_the_socket(
    data_dir: Path, public_hash: bytes, loop_kind: str
) -> None:
    with serve(TrackerSettings(data_dir=data_dir), loop_kind, host="::1") as served:
        with served.connect() as c:
            c.send(announce(public_hash, 1, ip="127.0.0.9"))  # the ip parameter is ignored
            c.bencoded()
            c.send(announce(public_hash, 2))
            answer, headers = c.bencoded()
    assert by_front(headers)
    assert answer[b"peers"] == b""
    assert answer[b"peers6"] == b"\x00" * 15 + b"\x01" + (7001).to_bytes(2, "big")


def test_malformed_requests_get_aiohttp_s_400(tracker: Served, public_hash: bytes) -> None:
    with tracker.connect() as c:
        c.send(announce(public_hash, 1))
        c.bencoded()
        c.send(b"GET /announce?x=1 HTTP/1.1\r\nBad Header\r\n\r\n")
        status, headers, _ = c.answer()
        assert status == 400 and not by_front(headers)
        assert c.is_closed()


def test_idle_keep_alive_connections_are_closed(quick_idle: Served, public_hash: bytes) -> None:
    tracker = quick_idle
    with tracker.connect() as idle, tracker.connect() as busy:
        idle.send(announce(public_hash, 1))
        idle.bencoded()
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            busy.send(announce(public_hash, 2, event=None))
            busy.bencoded()
            time.sleep(0.1)
        busy.send(announce(public_hash, 2, event=None))
        assert busy.bencoded()[0][b"incomplete"] == 2
        assert idle.is_closed()


@pytest.mark.integration
def test_the_cli_server_stops_cleanly_with_open_connections(
    tmp_path: Path, data_dir: Path, public_hash: bytes
) -> None:
    """``p2pdist tracker serve`` under SIGINT/SIGTERM with a connection the front holds and
    one handed to aiohttp: exits 0 and closes both."""
    from tests.integration.harness import Tracker

    for sig in (signal.SIGINT, signal.SIGTERM):
        process = Tracker(data_dir)
        process.start()
        try:
            port = int(process.url.rsplit(":", 1)[1])
            with (
                Client(socket.create_connection(("127.0.0.1", port), timeout=10)) as front,
                Client(socket.create_connection(("127.0.0.1", port), timeout=10)) as handed,
            ):
                front.send(announce(public_hash, 1))
                assert by_front(front.bencoded()[1])
                handed.send(get("/healthz"))
                assert not by_front(handed.answer()[1])
                code, out = process.stop(sig)
                assert code == 0 and "Traceback" not in out, out
                assert front.is_closed() and handed.is_closed()
        finally:
            process.close()


@pytest.mark.parametrize(
    "extra",
    ["&x=%zz", "&y=a?b/c:@", "&numwant=-5", "&event=bogus", "&key=~!$'()*,;", "&&", "&x=%E2%82%AC"],
)
def test_front_and_aiohttp_give_the_same_answer_to_odd_queries(
    tracker: Served, public_hash: bytes, extra: str
) -> None:
    request = get(f"/announce?{announce_query(public_hash, peer_id(1), port=7001)}{extra}")
    answers = []
    for version in (b"HTTP/1.1", b"HTTP/1.0"):  # the front's, then aiohttp's
        with tracker.connect() as c:
            c.send(request.replace(b"HTTP/1.1", version))
            status, headers, body = c.answer()
            assert status == 200 and by_front(headers) == (version == b"HTTP/1.1")
            answers.append(bdecode(body))
    assert answers[0] == answers[1]


def test_a_hand_over_while_writes_are_held_keeps_aiohttp_s_flow_control(
    tracker: Served,
    public_hash: bytes,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Answers the front writes at a hand-over can fill the transport past its high-water mark
    (the front is paused); aiohttp's handler must start out paused too, or it writes without
    flow control and its ``resume_writing`` fails an assertion when the client drains."""
    made = FrontConnection.connection_made

    def small_send_buffer(self: FrontConnection, transport: asyncio.BaseTransport) -> None:
        made(self, transport)
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)

    paused: list[bool] = []
    queued: list[bytes] = []
    pause_writing, queue = FrontConnection.pause_writing, FrontConnection._queue

    def counted_pause(self: FrontConnection) -> None:
        paused.append(True)
        pause_writing(self)

    def seen_queue(self: FrontConnection, data: bytes) -> None:
        queued.append(data[-64:])
        queue(self, data)

    monkeypatch.setattr(FrontConnection, "connection_made", small_send_buffer)
    monkeypatch.setattr(FrontConnection, "pause_writing", counted_pause)
    monkeypatch.setattr(FrontConnection, "_queue", seen_queue)
    swarm = [announce(public_hash, n, event=None) for n in range(1, 51)]
    held, behind = swarm * 6, [*(swarm * 4), get("/healthz")]
    with tracker.connect() as c:
        c.send(b"".join(held))  # the front answers these until its writes are paused
        wait_until(lambda: paused, "the front pausing its writes")
        c.send(b"".join(behind))  # queued behind them, the hand-over last
        hand_over = get("/healthz")
        wait_until(lambda: any(q.endswith(hand_over) for q in queued), "the hand-over queued")
        for _ in range(len(held) + len(behind) - 1):
            assert by_front(c.bencoded()[1])
        status, headers, _ = c.answer()
        assert status == 200 and not by_front(headers)
        c.send(get("/healthz"))
        assert c.answer()[0] == 200
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors


def test_a_head_trickled_byte_by_byte_does_not_keep_the_connection_open(
    quick_idle: Served, public_hash: bytes
) -> None:
    """A slow-loris head (a byte now and then, never a whole request) is closed like an idle
    connection, as aiohttp closes one that completes no request within its keep-alive time."""
    tracker = quick_idle
    request = announce(public_hash, 1)
    closed = False
    with tracker.connect() as c:
        deadline = time.monotonic() + 6
        for i in range(len(request) - 1):  # never the whole request
            if select.select([c.sock], [], [], 0.1)[0]:
                closed = True
                break
            assert time.monotonic() < deadline, "the trickling connection is still open"
            with contextlib.suppress(OSError):
                c.send(request[i : i + 1])
        assert closed
        with contextlib.suppress(ConnectionResetError):
            assert c.is_closed()


def test_a_client_that_never_reads_is_dropped_once_idle(
    quick_idle: Served, public_hash: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that pipelines requests and reads no answer holds the server's buffers; the
    idle sweep must drop it (a plain close would wait for it to read, that is forever)."""
    tracker = quick_idle
    lost = threading.Event()
    connection_lost = FrontConnection.connection_lost

    def noted(self: FrontConnection, exc: Exception | None) -> None:
        lost.set()
        connection_lost(self, exc)

    monkeypatch.setattr(FrontConnection, "connection_lost", noted)
    requests = b"".join([announce(public_hash, n, event=None) for n in range(1, 51)] * 400)

    def send(c: Client) -> None:
        with contextlib.suppress(OSError):
            c.send(requests)

    with tracker.connect() as c:
        sender = threading.Thread(target=send, args=(c,), daemon=True)
        sender.start()
        assert lost.wait(10), "the server still holds a client that has read nothing"
        sender.join(15)


def test_a_half_closed_connection_is_closed_after_a_hand_over(
    data_dir: Path, public_hash: bytes, loop_kind: str
) -> None:
    """The client's end of stream arrives while the front waits for a passkey lookup (the front
    keeps the connection to answer); the request behind it goes to aiohttp, which must learn
    of the end of stream too, or it keeps the half-closed connection for its keep-alive time
    (the client's read of everything that comes then times out)."""
    private = publish_directly(data_dir, "acme/secret", private=True)
    reader = passkey_for(make_token(data_dir, "acme", publish=False))
    with serve(TrackerSettings(data_dir=data_dir), loop_kind) as served, served.connect() as c:
        c.sock.settimeout(5)
        query = announce_query(private, peer_id(1), port=7001)
        c.send(get(f"/announce/{reader}?{query}") + get("/healthz"))
        c.sock.shutdown(socket.SHUT_WR)
        answer, headers = c.bencoded()
        assert by_front(headers) and answer[b"incomplete"] == 1
        # aiohttp then does what it does alone at an end of stream: it closes (whether its
        # answer to /healthz made it out first is a race, as without the front)
        c.file.read()
