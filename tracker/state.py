"""What the tracker's handlers share: settings, the database thread, peers, caches, metrics.

One ``TrackerState`` lives in the application under ``STATE`` (a typed ``web.AppKey``). It is
owned by the event loop; the only other thread is the registry store's, reached through
``TrackerState.db_call``. The announce hot path touches no database: the infohashes the
registry knows are mirrored in memory (loaded at start-up, updated on publish), and token
grants found once are cached for ``GRANT_CACHE_SECONDS`` (so a revoked token stops working
within that time, on every replica).

Replicas: when the registry is shared (PostgreSQL), other trackers publish too. A poll of
the registry's change feed every ``REFRESH_SECONDS`` adds their versions' swarm ids to the
mirror and wakes this process's ``latest`` long-polls; an announce for an id the mirror does
not know yet triggers the same refresh before it is refused (``refresh``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from p2pdist.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    FormatError,
    IntegrityError,
    NotFoundError,
    P2PDistError,
    RefError,
    StoreError,
)
from p2pdist.metrics import Histogram
from p2pdist.tracker.db import DB_FILENAME
from p2pdist.tracker.peers import PeerStore, SwarmCounts, open_peer_store, resolved
from p2pdist.tracker.registry_store import Grant, RegistryStore, TrackedHash, open_registry

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_INTERVAL = 120
"""Seconds between a peer's announces. Swarms of model weights are short-lived and eager:
a seed learns of a new consumer at its next announce, so this is short by tracker standards."""

MAX_WAIT = 60.0
"""Longest long-poll of ``/v1/models/{name}/latest``."""

REFRESH_SECONDS = 1.0
"""How often a tracker on a shared registry polls it for other replicas' publishes."""

GRANT_CACHE_SECONDS = 10.0
"""How long a token's grant found in the registry is reused without asking again."""


@dataclass(frozen=True)
class TrackerSettings:
    """How one tracker runs. ``data_dir`` holds the SQLite file unless ``db`` names another
    registry (a file path or a ``postgresql://`` URL); ``peers`` names the peer store
    ("memory", the default, or a ``redis://`` URL)."""

    data_dir: Path
    db: str | None = None
    peers: str | None = None
    fresh_db: bool = False
    """Move an empty or damaged SQLite file aside and start a new one, instead of refusing."""
    interval: int = DEFAULT_INTERVAL
    min_interval: int | None = None
    default_numwant: int = 50
    max_numwant: int = 200
    max_body: int = 64 * 1024 * 1024
    max_query: int = 4096
    grant_cache: float = GRANT_CACHE_SECONDS
    """Seconds a token's grant is reused before the registry is asked again (revocation)."""
    track_unknown: bool = False
    """Also track infohashes the registry does not know (an open tracker). Off by default."""
    trusted_proxies: tuple[str, ...] = ()
    """CIDRs of proxies whose ``X-Forwarded-For`` / ``X-Real-IP`` name the client
    (``--trusted-proxy``); forwarded headers from any other address are ignored."""
    accept_ip_from: tuple[str, ...] = ()
    """CIDRs whose clients may name their own address (BEP 3 ``ip=``, for a host behind NAT
    or a proxy that knows where peers should dial it; ``--accept-ip-from``). The named
    address must be private-range too. From anyone else ``ip=`` is ignored: it would let a
    client aim a swarm at a stranger."""
    idle_timeout: float = 30.0
    """Seconds an idle keep-alive connection is kept, on the front and on aiohttp's path."""
    max_connections_per_address: int = 256
    """Connections one client address may hold at once; the next one is closed at accept.
    Trusted proxies are exempt (every client behind them shares their address)."""

    @cached_property
    def proxy_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        """``trusted_proxies`` parsed (checked when the settings are made)."""
        return tuple(ip_network(cidr, strict=False) for cidr in self.trusted_proxies)

    @cached_property
    def ip_networks(self) -> tuple[IPv4Network | IPv6Network, ...]:
        """``accept_ip_from`` parsed (checked when the settings are made)."""
        return tuple(ip_network(cidr, strict=False) for cidr in self.accept_ip_from)

    def __post_init__(self) -> None:
        for what, cidrs in (("trusted proxy", self.trusted_proxies),
                            ("--accept-ip-from", self.accept_ip_from)):  # fmt: skip
            for cidr in cidrs:
                try:
                    ip_network(cidr, strict=False)
                except ValueError:
                    raise ConfigError(
                        f"{what} {cidr!r} is not an address or CIDR (like 10.0.0.0/8)"
                    ) from None

    @property
    def db_path(self) -> Path:
        return Path(self.data_dir) / DB_FILENAME

    @property
    def registry_location(self) -> str | Path:
        return self.db if self.db is not None else self.db_path

    @property
    def effective_min_interval(self) -> int:
        return self.min_interval if self.min_interval is not None else max(1, self.interval // 4)

    @property
    def peer_ttl(self) -> float:
        """A peer that missed two announces (plus a quarter interval of slack) is forgotten."""
        return 2 * self.interval + self.interval / 4


class ApiError(Exception):
    """A registry refusal with its HTTP status, turned into ``{"error": ...}`` by the middleware."""

    def __init__(self, status: int, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


_STATUS_OF: tuple[tuple[type[P2PDistError], int], ...] = (
    (RefError, 400),
    (FormatError, 400),
    (IntegrityError, 400),
    (NotFoundError, 404),
    (ConflictError, 409),
    (AuthError, 403),
    (StoreError, 503),
)


def api_error(error: P2PDistError) -> ApiError:
    """The HTTP refusal for one of p2pdist's errors."""
    for cls, status in _STATUS_OF:
        if isinstance(error, cls):
            return ApiError(status, str(error), type(error).__name__)
    return ApiError(500, str(error), type(error).__name__)


class Metrics:
    """Counters for /metrics; gauges are computed when scraped. ``latency`` holds one
    histogram per route name (a fixed set: the code's routes, never a request's value)."""

    def __init__(self) -> None:
        self.latency: defaultdict[str, Histogram] = defaultdict(Histogram)
        self.announces: Counter[str] = Counter()
        self.announce_failures = 0
        self.scrapes = 0
        self.registry_requests: Counter[tuple[str, int]] = Counter()
        self.errors = 0


class TrackerState:
    """The tracker's shared state; see the module docstring."""

    def __init__(self, settings: TrackerSettings, peers: PeerStore | None = None) -> None:
        self.settings = settings
        self.peers: PeerStore = peers or open_peer_store(settings.peers, settings.peer_ttl)
        self.metrics = Metrics()
        self.tracked: dict[bytes, TrackedHash] = {}
        self.closing = False
        self._db: RegistryStore | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._seen_seq = 0
        self._refreshing: asyncio.Future[None] | None = None
        self._refreshed_at = float("-inf")  # when the last look at the registry began
        self._refresh_ok = False
        self._poller: asyncio.Task[None] | None = None
        self._token_grants: dict[str, Grant] = {}
        self._passkey_grants: dict[str, Grant] = {}
        self._published: dict[str, asyncio.Event] = {}
        self._waiting: Counter[str] = Counter()

    # -- lifecycle (driven by the app's cleanup_ctx) --------------------------------------
    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tracker-db")
        settings = self.settings
        self._db = await self.db_call(
            lambda: open_registry(settings.registry_location, fresh=settings.fresh_db)
        )
        await self.refresh()
        self._poller = asyncio.create_task(self._poll(), name="tracker-registry-poll")

    async def close(self) -> None:
        self.wake_all()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await resolved(self.peers.close())
        if self._db is not None:
            await self.db_call(lambda db: db.close())
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def registry(self) -> RegistryStore:
        assert self._db is not None
        return self._db

    async def _poll(self) -> None:
        """Follow other replicas' publishes (shared registry) and expire cached grants."""
        loop = asyncio.get_running_loop()
        grants_cleared = loop.time()
        while True:
            await asyncio.sleep(min(REFRESH_SECONDS, self.settings.grant_cache))
            if self.registry.shared:
                try:
                    await self.refresh()
                except StoreError as e:
                    log.warning("%s", e)  # the registry is down; the next poll tries again
            if loop.time() - grants_cleared >= self.settings.grant_cache:
                self._token_grants.clear()
                self._passkey_grants.clear()
                grants_cleared = loop.time()

    async def refresh(self, min_age: float = 0.0) -> None:
        """Learn of versions published since the last look (by any replica): track their
        swarms and wake their long-polls. When it returns, a look that began after the call
        has completed, so whatever was published before the call is known. Concurrent callers
        share one query; with ``min_age``, looks start at most once per ``min_age`` seconds (a
        caller waits for the next one), so a flood of announces for unknown swarm ids costs
        the registry at most a query per ``min_age``."""
        loop = asyncio.get_running_loop()
        asked = loop.time()
        while True:
            if self._refreshing is not None:
                await asyncio.shield(self._refreshing)  # (its failure is this caller's too)
                if self._refreshed_at >= asked:
                    return
                continue
            if self._refreshed_at >= asked and self._refresh_ok:
                return  # a look that began after this call has completed
            wait = self._refreshed_at + min_age - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            break
        self._refreshed_at = loop.time()
        self._refreshing = loop.create_future()
        try:
            changes = await self.db_call(lambda db: db.changes(self._seen_seq))
            for published in changes:
                self.track(list(published.hashes))
                self._seen_seq = max(self._seen_seq, published.seq)
            for model in {p.model for p in changes}:
                self.published(model)
            self._refresh_ok = True
            self._refreshing.set_result(None)
        except BaseException as e:
            self._refresh_ok = False
            if isinstance(e, Exception):
                self._refreshing.set_exception(e)
                self._refreshing.exception()  # retrieved: a lone caller gets it by the raise
            else:
                self._refreshing.cancel()
            raise
        finally:
            self._refreshing = None

    def wake_all(self) -> None:
        """Release every long-poll (shutdown must not wait for them)."""
        self.closing = True
        for event in self._published.values():
            event.set()

    # -- database ---------------------------------------------------------------------------
    async def db_call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(db, *args)`` (or ``fn(*args)`` before the registry opens) on its thread."""
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        if self._db is None:
            return await loop.run_in_executor(self._executor, fn, *args)
        return await loop.run_in_executor(self._executor, fn, self._db, *args)

    async def grant_for_token(self, token: str) -> Grant | None:
        grant = self._token_grants.get(token)
        if grant is None:
            grant = await self.db_call(lambda db: db.grant_for_token(token))
            if grant is not None:
                self._token_grants[token] = grant
        return grant

    def cached_passkey_grant(self, passkey: str) -> Grant | None:
        """The grant of ``passkey`` if a lookup already found it (no database call); else None."""
        return self._passkey_grants.get(passkey)

    async def grant_for_passkey(self, passkey: str) -> Grant | None:
        grant = self._passkey_grants.get(passkey)
        if grant is None:
            grant = await self.db_call(lambda db: db.grant_for_passkey(passkey))
            if grant is not None:
                self._passkey_grants[passkey] = grant
        return grant

    # -- swarms of versions -----------------------------------------------------------------
    def track(self, hashes: list[TrackedHash]) -> None:
        for tracked in hashes:
            self.tracked[tracked.info_hash] = tracked

    async def swarm_counts(self) -> dict[tuple[str, str, str], SwarmCounts]:
        """Counts for every tracked (model, version, kind), in one scrape of the swarms."""
        out: dict[tuple[str, str, str], SwarmCounts] = {}
        tracked_items = list(self.tracked.items())
        scraped = await resolved(self.peers.scrape([h for h, _ in tracked_items]))
        for (_, tracked), counts in zip(tracked_items, scraped, strict=True):
            key = (tracked.model, tracked.version, tracked.kind)
            old = out.get(key)
            if old is None or counts.complete + counts.incomplete > old.complete + old.incomplete:
                out[key] = counts
        return out

    # -- long-poll --------------------------------------------------------------------------
    def publish_event(self, model: str) -> asyncio.Event:
        """The event the next publish of ``model`` will set (take it before reading the db).

        Every call is paired with ``release``, so names waited on but never published are
        forgotten when their last waiter leaves.
        """
        event = self._published.get(model)
        if event is None:
            event = self._published[model] = asyncio.Event()
        if self.closing:
            event.set()
        self._waiting[model] += 1
        return event

    def release(self, model: str, event: asyncio.Event) -> None:
        self._waiting[model] -= 1
        if self._waiting[model] <= 0:
            del self._waiting[model]
            if self._published.get(model) is event:
                del self._published[model]

    def published(self, model: str) -> None:
        event = self._published.pop(model, None)
        if event is not None:
            event.set()


STATE: web.AppKey[TrackerState] = web.AppKey("state", TrackerState)

__all__ = [
    "GRANT_CACHE_SECONDS",
    "MAX_WAIT",
    "REFRESH_SECONDS",
    "STATE",
    "ApiError",
    "Metrics",
    "TrackerSettings",
    "TrackerState",
    "api_error",
]
