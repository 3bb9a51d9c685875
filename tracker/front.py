"""A raw HTTP/1.1 front for the announce path, on the tracker's one port, in front of aiohttp.

Why: under load an announce spends most of its time in aiohttp's request machinery (parser,
request and response objects, router, middleware, task per connection), not in the tracker:
aiohttp's empty ``/healthz`` reaches about half of opentracker's announce rate on a 2-core
machine. This front is an ``asyncio.Protocol`` that reads the few requests BitTorrent
clients send to a tracker and answers them itself, with the same code as the aiohttp
handlers (``announce.answer_announce`` / ``answer_scrape``: one implementation of parsing,
checks, metrics and answers), and hands every other connection to aiohttp untouched.

What the front answers: ``GET /announce``, ``/announce/<passkey>``, ``/scrape`` and
``/scrape/<passkey>`` (a passkey of 32 lowercase hex digits) in HTTP/1.1, whose request line
and headers fit in ``MAX_HEAD`` bytes and ``MAX_HEADERS`` lines and whose query holds only
URL characters, with no body (no ``Content-Length``, no ``Transfer-Encoding``) and no
``Upgrade`` or ``Expect``. Keep-alive (``Connection: close`` honoured) and pipelining are
supported; answers go out in request order, also when one of them waits for a passkey lookup
in the database (later requests wait behind it, and reading pauses once ``MAX_BUFFER`` bytes
are queued).

Anything else (another path, another method, HTTP/1.0, a malformed or oversized request)
hands the connection over: the bytes read so far go to a fresh ``aiohttp.web_protocol.
RequestHandler`` of the application's ``web.Server``, which becomes the transport's protocol
for the rest of the connection. aiohttp then answers exactly as it would have alone: its own
routes, its own limits and its own 400 answers (an oversized request line gets aiohttp's
"Got more than 8190 bytes" 400 and a closed connection). Answers written by the front before
a hand-over are written first, so a pipelined connection still gets its answers in order.

``FrontSite`` is the ``web.BaseSite`` that listens with this front; ``p2pdist tracker serve``
uses it instead of ``web.TCPSite``. Stopping the site closes the listening socket and every
connection the front still holds; connections handed to aiohttp are closed by the runner.
Given an ``ssl.SSLContext`` it listens with TLS: the front and aiohttp then read the
decrypted stream of the same transport, so everything above works alike on https.

Every connection passes the front's door first (``Front.admit``), also those it hands to
aiohttp, so one set of limits holds on both paths:

- one client address holds at most ``max_connections_per_address`` connections (trusted
  proxies are exempt); the next one is closed as soon as it is accepted;
- all connections together stay below the process's file descriptor limit minus
  ``FD_RESERVE`` (``max_open``): when full, the oldest connection of the address holding the
  most is dropped for the newcomer, so a flood from a few addresses cannot lock everyone
  else out (the reserve keeps the database and the log writable);
- idle time is bounded: the front's sweep closes connections that completed no request in
  ``idle_timeout`` seconds (at most twice that), and aiohttp gets the same keep-alive time
  (``tracker serve`` passes it to the runner), which also ends a head trickled in forever.

Behind a proxy the address a peer is recorded with comes from ``forwarded.address_from_head``
(forwarded headers believed only from trusted proxies; the same function as aiohttp's path).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import resource
import socket
import ssl
import time
from collections.abc import Coroutine
from email.utils import formatdate
from typing import Any, cast

from aiohttp import web

from p2pdist.tracker.access import ACCESS_LOG, log_answer
from p2pdist.tracker.announce import Answer, answer_announce, answer_scrape
from p2pdist.tracker.forwarded import address_from_head, is_trusted
from p2pdist.tracker.state import STATE, TrackerState

logger = logging.getLogger(__name__)

MAX_HEAD = 8190
"""Longest request line plus headers (terminating blank line included) the front answers;
equal to aiohttp's own line limit, so everything longer goes to aiohttp and gets its refusal."""

MAX_HEADERS = 128
"""Most header lines the front answers (aiohttp's own limit); more go to aiohttp."""

MAX_BUFFER = 64 * 1024
"""Bytes of pipelined requests queued behind a waiting answer before reading pauses."""

FD_RESERVE = 64
"""File descriptors kept free of client connections (database, logs, threads, the listener)."""

TLS_HANDSHAKE_TIMEOUT = 10.0
"""Seconds a TLS client has to finish its handshake."""


def default_max_open() -> int:
    """Connections the process may hold: its file descriptor limit less ``FD_RESERVE``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, soft - FD_RESERVE)


# The request head the front answers, in one regex: method, path (kind and passkey), query,
# version, then header lines (a token, a colon, a value without CR or LF) up to the blank line.
_REQUEST = re.compile(
    rb"GET /(announce|scrape)(?:/([0-9a-f]{32}))?(?:\?([A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*))?"
    rb" HTTP/1\.1(\r\n(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*)\r\n"
)
# Headers that change how a request is framed or answered; any of them takes the slow look.
_SPECIAL = re.compile(
    rb"\r\n(content-length|transfer-encoding|upgrade|expect|connection):([^\r]*)",
    re.IGNORECASE,
)


def _framing(headers: bytes) -> bool | None:
    """For a header block with a special header: whether to close after answering, or None
    to hand the request to aiohttp (a body, an upgrade or an expectation: its business)."""
    close = False
    for match in _SPECIAL.finditer(headers):
        if match.group(1).lower() != b"connection":
            return None
        for token in match.group(2).lower().split(b","):
            token = token.strip()
            if token == b"close":
                close = True
            elif token == b"upgrade":
                return None
    return close


class Front:
    """What the front's connections share: the tracker state, aiohttp's server (for hand-overs),
    the open connections (closed on stop) and the answer's header bytes (with a Date that a
    timer renews each second), and the idle sweep."""

    def __init__(
        self, state: TrackerState, server: web.Server, max_open: int | None = None
    ) -> None:
        self.state = state
        self.server = server
        settings = state.settings
        self.proxies = settings.proxy_networks
        self.per_address = settings.max_connections_per_address
        self.max_open = max_open if max_open is not None else default_max_open()
        self.idle_ticks = max(1, round(settings.idle_timeout))
        self.log_requests = ACCESS_LOG.isEnabledFor(logging.INFO)
        self.connections: set[FrontConnection] = set()
        self.held: dict[str, dict[asyncio.BaseTransport, None]] = {}
        """Every open connection by client address, oldest first (handed-over ones too)."""
        self.open = 0
        self.refused = 0
        self.evicted = 0
        self.keep_open = b""
        self.then_close = b""
        self._timer: asyncio.TimerHandle | None = None
        self._ticks = 0
        self._pruned_at = 0.0
        self._renew_date()

    def __call__(self) -> FrontConnection:
        """The protocol factory for ``loop.create_server``."""
        return FrontConnection(self)

    def start(self) -> None:
        """Start the once-a-second timer (Date header, idle sweep)."""
        self._timer = asyncio.get_running_loop().call_later(1.0, self._tick)

    def _renew_date(self) -> None:
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nDate: "
            + formatdate(usegmt=True).encode()
            + b"\r\nContent-Length: %d\r\n"
        )
        self.keep_open = head + b"\r\n%s"
        self.then_close = head + b"Connection: close\r\n\r\n%s"

    def _tick(self) -> None:
        self._renew_date()
        self._ticks += 1
        if self._ticks >= self.idle_ticks:
            self._ticks = 0
            for connection in list(self.connections):
                connection.sweep()
            self._prune()
        self._timer = asyncio.get_running_loop().call_later(1.0, self._tick)

    # -- the door: connection limits ----------------------------------------------------------
    def admit(self, host: str | None, transport: asyncio.BaseTransport) -> bool:
        """Count a new connection from ``host``; False when it must be closed at once (its
        address already holds its share). Makes room by dropping the oldest connection of
        the biggest holder when the process is full."""
        key = host or ""
        held = self.held.get(key)
        if held is None:
            held = self.held[key] = {}
        elif len(held) >= self.per_address and not is_trusted(host, self.proxies):
            self._prune_address(key, held)
            if len(held) >= self.per_address:
                self.refused += 1
                return False
        if self.open >= self.max_open:
            self._prune()
            if self.open >= self.max_open:
                self._evict()
        held[transport] = None
        self.open += 1
        return True

    def release(self, host: str | None, transport: asyncio.BaseTransport) -> None:
        """Forget a connection that ended (the front's own; handed-over ones are pruned)."""
        held = self.held.get(host or "")
        if held is not None and held.pop(transport, 0) is None:
            self.open -= 1
            if not held:
                del self.held[host or ""]

    def _prune_address(self, key: str, held: dict[asyncio.BaseTransport, None]) -> None:
        for transport in [t for t in held if t.is_closing()]:
            del held[transport]
            self.open -= 1

    def _prune(self) -> None:
        """Forget closed connections (those aiohttp closed are noticed here), at most once
        per second, since it walks them all."""
        now = time.monotonic()
        if now - self._pruned_at < 1.0:
            return
        self._pruned_at = now
        for key, held in list(self.held.items()):
            self._prune_address(key, held)
            if not held:
                del self.held[key]

    def _evict(self) -> None:
        key = max(self.held, key=lambda k: len(self.held[k]))
        held = self.held[key]
        transport = next(iter(held))
        del held[transport]
        self.open -= 1
        self.evicted += 1
        if isinstance(transport, asyncio.WriteTransport):
            transport.abort()
        else:
            transport.close()

    def close(self) -> None:
        """Stop the timer and close every connection the front holds (answers written so far
        are still sent; answers still waiting for a lookup are dropped)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for connection in list(self.connections):
            connection.close()


class FrontConnection(asyncio.Protocol):
    """One client connection while the front serves it (see the module docstring)."""

    __slots__ = (
        "_buffer",
        "_eof",
        "_front",
        "_host",
        "_proxied",
        "_reading_paused",
        "_transport",
        "_waiting",
        "_writing_paused",
        "active",
    )

    def __init__(self, front: Front) -> None:
        self._front = front
        self._transport: asyncio.Transport | None = None
        self._host: str | None = None
        self._proxied = False
        self._buffer = b""
        self._waiting: asyncio.Task[bytes] | None = None
        self._writing_paused = False
        self._reading_paused = False
        self._eof = False
        self.active = True

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - a socket closed under us
                pass
        peer = transport.get_extra_info("peername")
        self._host = peer[0] if isinstance(peer, tuple) and peer else None
        front = self._front
        if not front.admit(self._host, transport):
            self._transport = None
            transport.abort()
            return
        self._proxied = is_trusted(self._host, front.proxies)
        front.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        if self._waiting is not None or self._writing_paused:
            self._queue(data)
        else:
            self._serve(data)

    def eof_received(self) -> bool | None:
        if self._waiting is not None or (self._writing_paused and self._buffer):
            self._eof = True
            return True  # answer what was asked, then close
        return None

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._waiting is None and self._transport is not None:
            data, self._buffer = self._buffer, b""
            self._serve(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self._front.connections:
            self._front.connections.discard(self)
            assert self._transport is not None
            self._front.release(self._host, self._transport)
        self._transport = None
        self._buffer = b""
        if self._waiting is not None:
            self._waiting.cancel()
            self._waiting = None

    # -- called by the Front ---------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (after what was written) and drop what is still waiting."""
        if self._waiting is not None:
            self._waiting.cancel()
            self._waiting = None
        if self._transport is not None:
            self._transport.close()

    def sweep(self) -> None:
        """Close the connection if it answered no request since the last sweep (idle, or a
        head trickling in); abort it if its answers wait for a client that reads nothing."""
        if not self.active and self._waiting is None:
            if self._writing_paused and self._transport is not None:
                self._transport.abort()  # close() would wait for the client to read
            else:
                self.close()
        self.active = False

    # -- serving ---------------------------------------------------------------------------
    def _queue(self, data: bytes) -> None:
        """Keep ``data`` until the answer in front of it is written; bound what is held."""
        self._buffer = data
        if len(data) > MAX_BUFFER and not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _serve(self, data: bytes) -> None:
        """Answer every whole request in ``data``, in order; keep the rest for later."""
        transport = self._transport
        if transport is None:
            return
        front = self._front
        state = front.state
        host = self._host
        out: list[bytes] = []
        pos = 0
        size = len(data)
        while pos < size:
            end = data.find(b"\r\n\r\n", pos, pos + MAX_HEAD)
            if end < 0:
                if size - pos >= MAX_HEAD:
                    self._hand_over(out, data, pos)  # aiohttp refuses it with its own 400
                    return
                break
            end += 4
            match = _REQUEST.fullmatch(data, pos, end)
            if match is None:
                self._hand_over(out, data, pos)
                return
            kind, passkey, query, headers = match.groups()
            close: bool | None = False
            if _SPECIAL.search(headers) is not None:
                close = _framing(headers)
            if close is None or headers.count(b"\r\n") > MAX_HEADERS + 1:
                self._hand_over(out, data, pos)
                return
            pos = end
            self.active = True
            raw = "" if query is None else query.decode("ascii")
            key = None if passkey is None else passkey.decode("ascii")
            client = address_from_head(host, headers, front.proxies) if self._proxied else host
            try:
                if kind == b"announce":
                    answer: Answer = answer_announce(state, raw, key, client)
                else:
                    answer = answer_scrape(state, raw, key)
            except Exception:
                out.append(self._failed())
                close = True
                answer = b""
            if front.log_requests:
                log_answer(client, kind.decode(), key, answer)
            if isinstance(answer, bytes):
                if close:
                    if answer:
                        out.append(front.then_close % (len(answer), answer))
                    transport.write(b"".join(out))
                    transport.close()
                    self._transport = None
                    return
                out.append(front.keep_open % (len(answer), answer))
            else:
                if out:
                    transport.write(b"".join(out))
                self._wait_for(answer, close, data[pos:])
                return
            if self._writing_paused:
                break
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if pos < size:
            self._queue(data[pos:])
        else:
            self._buffer = b""
        if self._reading_paused and len(self._buffer) <= MAX_BUFFER:
            self._reading_paused = False
            transport.resume_reading()
        if self._eof and self._waiting is None:
            transport.close()

    def _wait_for(self, answer: Coroutine[Any, Any, bytes], close: bool, rest: bytes) -> None:
        """Run an answer that needs a lookup; hold the requests behind it until it is written."""
        self._queue(rest)
        task = asyncio.get_running_loop().create_task(answer)
        self._waiting = task
        task.add_done_callback(functools.partial(self._answered, close))

    def _answered(self, close: bool, task: asyncio.Task[bytes]) -> None:
        if self._waiting is not task:
            return  # closed (and cancelled) meanwhile
        self._waiting = None
        self.active = True
        transport = self._transport
        if transport is None:
            return
        try:
            body = task.result()
        except Exception:
            transport.write(self._failed())
            close = True
        else:
            front = self._front
            transport.write((front.then_close if close else front.keep_open) % (len(body), body))
        if close:
            transport.close()
            self._transport = None
            return
        if not self._writing_paused:
            data, self._buffer = self._buffer, b""
            self._serve(data)

    def _failed(self) -> bytes:
        """The 500 answer to an answer that raised (a bug): logged and counted, as aiohttp's
        path does in the registry's error middleware."""
        logger.exception("unexpected failure answering an announce or scrape")
        self._front.state.metrics.errors += 1
        body = b'{"error": "internal error; see the tracker\'s log"}'
        return (
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json; "
            b"charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        ) % (len(body), body)

    def _hand_over(self, out: list[bytes], data: bytes, pos: int) -> None:
        """Write the answers so far, then give the connection and ``data[pos:]`` to aiohttp."""
        transport = self._transport
        assert transport is not None
        if out:
            transport.write(b"".join(out))
        self._transport = None
        self._buffer = b""
        self._front.connections.discard(self)  # still counted by the door until it closes
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        handler = self._front.server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._writing_paused:  # the transport will not tell the handler again
            handler.pause_writing()
        if pos < len(data):
            handler.data_received(data[pos:])
        if self._eof and not handler.eof_received():  # type: ignore[func-returns-value]
            transport.close()  # what the transport would have done at the end of stream


class FrontSite(web.BaseSite):
    """A TCP site of an ``AppRunner`` whose connections meet the front first.

    Like ``web.TCPSite`` (same host, port, backlog and reuse options); ``port`` is the port
    bound once started (useful with port 0).
    """

    def __init__(
        self,
        runner: web.AppRunner,
        host: str | None = None,
        port: int = 0,
        *,
        backlog: int = 1024,
        reuse_address: bool | None = None,
        reuse_port: bool | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_open: int | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._reuse_address = reuse_address
        self._reuse_port = reuse_port
        self._max_open = max_open
        self.front: Front | None = None

    @property
    def name(self) -> str:
        host = self._host or "0.0.0.0"
        scheme = "https" if self._ssl_context is not None else "http"
        where = f"[{host}]" if ":" in host else host
        return f"{scheme}://{where}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port once started, else the one asked for."""
        sockets = getattr(self._server, "sockets", None)
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    async def start(self) -> None:
        await super().start()
        runner = self._runner
        assert isinstance(runner, web.AppRunner) and runner.server is not None
        front = self.front = Front(runner.app[STATE], runner.server, self._max_open)
        tls: dict[str, Any] = {}
        if self._ssl_context is not None:
            tls = {"ssl": self._ssl_context, "ssl_handshake_timeout": TLS_HANDSHAKE_TIMEOUT}
        self._server = await asyncio.get_running_loop().create_server(
            front,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
            **tls,
        )
        front.start()

    async def stop(self) -> None:
        await super().stop()
        if self.front is not None:
            self.front.close()


__all__ = [
    "FD_RESERVE",
    "MAX_BUFFER",
    "MAX_HEAD",
    "MAX_HEADERS",
    "Front",
    "FrontConnection",
    "FrontSite",
    "default_max_open",
]
