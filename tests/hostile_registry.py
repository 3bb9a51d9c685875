"""A small hostile registry for tests, and a loopback HTTP server that records who calls it.

``HostileRegistry`` stands between consumers and a real tracker: it forwards every request
(registry JSON, .torrent files, announces) to the tracker and hands back the answers, except
those a test tells it to alter. It plays a compromised or impersonated registry, which
can say anything outside what publishers sign: which version is latest, the bytes of a
manifest or torrent, the web seeds and announce URLs of a torrent. This module holds no
tests (tests/test_hostile_registry.py and tests/integration/test_safety_*.py use it);
``World`` is the setting they share (a tracker in-process, a publisher, a consumer).

Both servers listen on 127.0.0.1 only, on ports the kernel picks, and are stopped by their
context managers, also when a test fails.
"""

from __future__ import annotations

import asyncio
import gc
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from p2pdist.fetcher import Fetcher
from p2pdist.formats.bencode import bdecode, bencode
from p2pdist.formats.manifest import Manifest
from p2pdist.swarm.session import Swarm

NAME = "org/model"

Rewrite = Callable[[int, bytes], tuple[int, bytes]]
"""Takes the real answer's status and body, returns the status and body to send instead."""


class LoopbackApp:
    """An aiohttp application served on 127.0.0.1 (a port the kernel picks) in a thread of its
    own; a context manager that stops it, and closes the connections clients left open."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def _start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        if self._runner is not None:
            server = self._runner.server
            await self._runner.cleanup()
            for handler in list(getattr(server, "connections", None) or ()):
                transport = getattr(handler, "transport", None)
                if transport is not None:
                    transport.close()
        await asyncio.sleep(0.05)

    def __enter__(self) -> LoopbackApp:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop.close()
            with warnings.catch_warnings():  # transports of clients cut off at shutdown
                warnings.simplefilter("ignore", ResourceWarning)
                gc.collect()


class HostileRegistry(LoopbackApp):
    """A registry on loopback that forwards to ``upstream`` and rewrites chosen answers.

    ``alter(pattern, rewrite)``: answers to requests whose path matches the regular expression
    ``pattern`` (searched in the path without the query) go through ``rewrite``; the latest
    matching rule wins. ``requests`` lists every path asked for, in order.
    """

    def __init__(self, upstream: str) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        super().__init__(app)
        self.upstream = upstream.rstrip("/")
        self.requests: list[str] = []
        self._rules: list[tuple[re.Pattern[str], Rewrite, bool]] = []
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileRegistry:
        super().__enter__()
        return self

    def alter(self, pattern: str, rewrite: Rewrite) -> None:
        self._rules.append((re.compile(pattern), rewrite, True))

    def answer(self, pattern: str, status: int, body: bytes) -> None:
        """Answer requests matching ``pattern`` with ``status`` and ``body`` without asking
        the tracker (a long-poll is answered at once)."""
        self._rules.append((re.compile(pattern), lambda _s, _b: (status, body), False))

    def _rule(self, path: str) -> tuple[Rewrite, bool] | None:
        for pattern, rewrite, forward in reversed(self._rules):
            if pattern.search(path):
                return rewrite, forward
        return None

    async def _forward(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        rule = self._rule(request.path)
        if rule is not None and not rule[1]:
            status, body = rule[0](0, b"")
            return web.Response(status=status, body=body, content_type="application/json")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True), auto_decompress=False
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() in _FORWARDED}
        url = URL(self.upstream + request.raw_path, encoded=True)  # announces: binary, %-encoded
        async with self._session.request(
            request.method,
            url,
            data=await request.read() if request.can_read_body else None,
            headers=headers,
            allow_redirects=False,
        ) as upstream:
            status, body = upstream.status, await upstream.read()
            kind = upstream.headers.get("Content-Type", "application/octet-stream")
        if rule is not None:
            status, body = rule[0](status, body)
        return web.Response(status=status, body=body, headers={"Content-Type": kind})

    async def _stop(self) -> None:
        await super()._stop()
        if self._session is not None:
            await self._session.close()


_FORWARDED = {"authorization", "content-type", "accept", "user-agent"}

TORRENT_PATH = r"/torrent$"
MANIFEST_PATH = r"/manifest$"
LATEST_PATH = r"/latest$"


def with_web_seeds(*urls: str) -> Rewrite:
    """A rewrite of .torrent answers that sets their ``url-list`` (BEP 19) to ``urls``,
    outside the info dict: the infohash, which the signed manifest names, is unchanged."""

    def rewrite(status: int, body: bytes) -> tuple[int, bytes]:
        if status != 200:
            return status, body
        top: dict[bytes, Any] = bdecode(body)
        if urls:
            top[b"url-list"] = [u.encode() for u in urls]
        else:
            top.pop(b"url-list", None)
        return status, bencode(top)

    return rewrite


def with_announce(url: str) -> Rewrite:
    """A rewrite of .torrent answers that makes ``url`` their only tracker (``announce`` and
    ``announce-list``), outside the info dict."""

    def rewrite(status: int, body: bytes) -> tuple[int, bytes]:
        if status != 200:
            return status, body
        top: dict[bytes, Any] = bdecode(body)
        top[b"announce"] = url.encode()
        top[b"announce-list"] = [[url.encode()]]
        return status, bencode(top)

    return rewrite


class CallRecorder:
    """An HTTP server on 127.0.0.1 that answers 404 to everything and records each request
    (``calls``: method and path): the "internal service" a hostile registry points at."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                recorder.calls.append(f"{self.command} {self.path}")
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = do_POST = _record

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def __enter__(self) -> CallRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(30)


@dataclass(frozen=True)
class World:
    """A tracker running in-process with a publish token for ``org``, a model folder, and the
    stores of a publisher and a consumer (the ``swarm_world`` fixture in tests/conftest.py)."""

    tracker: str
    token: str
    data_dir: Path
    folder: Path
    publisher_home: Path
    consumer_home: Path

    def publish(self, version: str = "v1", folder: Path | None = None, **kwargs: Any) -> Manifest:
        """Publish ``folder`` (default: the world's) as org/model@version, without seeding."""
        from p2pdist.publishing import publish

        published = publish(
            folder or self.folder, name=NAME, version=version, home=self.publisher_home,
            tracker=self.tracker, token=self.token, seed=False, **kwargs,
        )  # fmt: skip
        return published.manifest

    def consumer(self, registry: str | None = None, swarm: Any = None, **kwargs: Any) -> Fetcher:
        """A Fetcher of the consumer's store, asking ``registry`` (default: the tracker)."""
        return Fetcher(
            home=self.consumer_home, tracker=registry or self.tracker, swarm=swarm, **kwargs
        )


def loopback_swarm() -> Swarm:
    """A libtorrent session on 127.0.0.1 that re-announces every couple of seconds."""
    return Swarm(listen_interface="127.0.0.1", announce_interval_hint=2)
