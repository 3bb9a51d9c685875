"""The BitTorrent face: ``GET /announce`` (BEP 3, 7, 23) and ``GET /scrape`` (BEP 48).

Both answer bencoded dictionaries with HTTP 200, a refusal included (``failure reason``),
because clients (libtorrent among them) show the reason only from a 200 answer.

The query string is parsed from ``request.rel_url.raw_query_string`` with
``unquote_to_bytes``: ``info_hash`` and ``peer_id`` are 20 raw bytes that are rarely valid
UTF-8, and aiohttp's ``request.query`` would decode and corrupt them. Every other parameter
must be ASCII. A peer's address is the one its connection comes from (or, from a trusted
proxy only, the one it forwards: ``forwarded.py``); the ``ip`` and ``ipv6`` parameters are
ignored so that nobody can point a swarm at a third party.

Private models' torrents announce to ``/announce/<passkey>`` (``p2pdist.client.passkey_for``
of a token with read right on the model's namespace). libtorrent's ``ssrf_mitigation`` (on by
default) refuses a loopback tracker whose path is not exactly ``/announce``: on loopback,
passkey URLs need it off; on a routable address they work as they are.

``answer_announce`` and ``answer_scrape`` hold the whole of it (parsing, checks, metrics,
answer bytes) and know nothing of aiohttp: the aiohttp handlers here and the raw front that
answers announces below aiohttp (``front.py``, used by ``p2pdist tracker serve``) both call
them, so the two paths cannot drift apart.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, NamedTuple
from urllib.parse import unquote_to_bytes

from aiohttp import web

from p2pdist.errors import StoreError
from p2pdist.formats.bencode import bencode
from p2pdist.ref import ModelRef
from p2pdist.tracker.db import Grant, TrackedHash
from p2pdist.tracker.forwarded import request_address
from p2pdist.tracker.locality import prefer_site
from p2pdist.tracker.peers import Peer, Recorded, SwarmCounts
from p2pdist.tracker.state import STATE, TrackerSettings, TrackerState

EVENTS = ("", "started", "completed", "stopped", "paused")
MAX_SCRAPE_HASHES = 100
_PASSKEY_RE = re.compile(r"^[0-9a-f]{32}$")
_MAX_INT = 2**63 - 1
_MAX_NUMWANT_ACCEPTED = 2**31 - 1
"""numwant up to this is capped to the tracker's maximum; beyond it is refused as nonsense."""


class Refusal(Exception):
    """An announce or scrape that gets a bencoded ``failure reason``."""


class Announce(NamedTuple):
    """One announce request, checked."""

    info_hash: bytes
    peer_id: bytes
    port: int
    uploaded: int
    downloaded: int
    left: int
    event: str
    numwant: int
    ip: str | None = None
    """The address the peer asks to be dialled at (BEP 3 ``ip``), honoured only when private."""


def parse_query(raw: str, max_len: int) -> dict[str, list[bytes]]:
    """Split a raw query string into byte values per ASCII key; refuse oversized or odd ones."""
    if len(raw) > max_len:
        raise Refusal(f"query string longer than {max_len} bytes")
    params: dict[str, list[bytes]] = {}
    for part in raw.split("&"):
        if not part:
            continue
        key_raw, _, value = part.partition("=")
        try:
            key = unquote_to_bytes(key_raw).decode("ascii")
        except UnicodeDecodeError:
            raise Refusal("query parameter names must be ASCII") from None
        params.setdefault(key, []).append(unquote_to_bytes(value))
    return params


def _one(params: dict[str, list[bytes]], key: str, *, required: bool = True) -> bytes | None:
    values = params.get(key)
    if not values:
        if required:
            raise Refusal(f"missing parameter {key}")
        return None
    if len(values) > 1:
        raise Refusal(f"parameter {key} given {len(values)} times")
    return values[0]


def _text(params: dict[str, list[bytes]], key: str, *, required: bool = True) -> str | None:
    value = _one(params, key, required=required)
    if value is None:
        return None
    try:
        return value.decode("ascii")
    except UnicodeDecodeError:
        raise Refusal(f"parameter {key} is not ASCII text") from None


def _integer(
    params: dict[str, list[bytes]], key: str, *, default: int | None = None, limit: int = _MAX_INT
) -> int:
    text = _text(params, key, required=default is None)
    if text is None:
        assert default is not None
        return default
    if not text.isdigit() or len(text) > 19 or int(text) > limit:
        raise Refusal(f"parameter {key}={text[:24]!r} is not an integer in 0..{limit}")
    return int(text)


def _hash20(params: dict[str, list[bytes]], key: str) -> bytes:
    value = _one(params, key)
    assert value is not None
    if len(value) != 20:
        raise Refusal(f"{key} must be 20 bytes, got {len(value)}")
    return value


def parse_announce(
    params: dict[str, list[bytes]], max_numwant: int, default_numwant: int
) -> Announce:
    """Check an announce's parameters (BEP 3); raise Refusal with the first problem found."""
    info_hash = _hash20(params, "info_hash")
    peer_id = _hash20(params, "peer_id")
    port = _integer(params, "port", limit=65535)
    if port == 0:
        raise Refusal("port must be in 1..65535, got 0")
    event = _text(params, "event", required=False) or ""
    if event not in EVENTS:
        raise Refusal(f"unknown event {event[:24]!r}: expected started, completed or stopped")
    numwant_text = _text(params, "numwant", required=False)
    if numwant_text is not None and numwant_text.startswith("-"):
        raise Refusal(f"numwant must not be negative, got {numwant_text[:24]}")
    numwant = _integer(params, "numwant", default=default_numwant, limit=_MAX_NUMWANT_ACCEPTED)
    return Announce(
        info_hash=info_hash,
        peer_id=peer_id,
        port=port,
        uploaded=_integer(params, "uploaded"),
        downloaded=_integer(params, "downloaded"),
        left=_integer(params, "left"),
        event=event,
        numwant=min(numwant, max_numwant),
        ip=_text(params, "ip", required=False),
    )


def _fast_hash20(value: str | None) -> bytes | None:
    """The 20 bytes of a well-formed ``info_hash``/``peer_id`` value, or None to take the slow path."""
    if value is None:
        return None
    if "%" not in value:
        raw = value.encode()
    elif len(value) == 60 and value[::3] == "%" * 20:
        try:
            raw = bytes.fromhex(value.replace("%", ""))  # exactly 40 hex digits or it's short
        except ValueError:
            return None
    else:
        raw = unquote_to_bytes(value)
    return raw if len(raw) == 20 else None


def _fast_int(value: str | None, limit: int) -> int | None:
    if value is None or len(value) > 19 or not (value.isascii() and value.isdigit()):
        return None
    number = int(value)
    return number if number <= limit else None


def parse_announce_query(
    raw: str, max_len: int, max_numwant: int, default_numwant: int
) -> Announce:
    """``parse_announce(parse_query(raw, ...), ...)``, with a fast path for well-formed queries.

    The fast path accepts only what the checked path accepts and builds the same value; any
    doubt (a duplicate or non-ASCII key, an escaped integer, a missing parameter) sends the
    query down the checked path, which gives the refusal its exact reason.
    """
    fast = _fast_announce(raw, max_len, max_numwant, default_numwant)
    if fast is not None:
        return fast
    return parse_announce(parse_query(raw, max_len), max_numwant, default_numwant)


def _fast_announce(
    raw: str, max_len: int, max_numwant: int, default_numwant: int
) -> Announce | None:
    if len(raw) > max_len:
        return None
    values: dict[str, str] = {}
    for part in raw.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        if key in values or "%" in key or not key.isascii():
            return None
        values[key] = value
    get = values.get
    info_hash = _fast_hash20(get("info_hash"))
    peer_id = _fast_hash20(get("peer_id"))
    port = _fast_int(get("port"), 65535)
    uploaded = _fast_int(get("uploaded"), _MAX_INT)
    downloaded = _fast_int(get("downloaded"), _MAX_INT)
    left = _fast_int(get("left"), _MAX_INT)
    event = get("event", "")
    numwant_text = get("numwant")
    numwant = (
        default_numwant if numwant_text is None else _fast_int(numwant_text, _MAX_NUMWANT_ACCEPTED)
    )
    if (
        info_hash is None
        or peer_id is None
        or not port
        or uploaded is None
        or downloaded is None
        or left is None
        or numwant is None
        or event not in EVENTS
    ):
        return None
    ip = get("ip")
    if ip is not None and "%" in ip:
        ip = unquote_to_bytes(ip).decode("ascii", "replace")
    return Announce(
        info_hash, peer_id, port, uploaded, downloaded, left, event, min(numwant, max_numwant), ip
    )


Answer = bytes | Coroutine[Any, Any, bytes]
"""A bencoded answer, or (only when a passkey's grant is not cached yet) a coroutine of one.

``answer_announce`` and ``answer_scrape`` are the one implementation of the BitTorrent face:
the aiohttp handlers below and the raw front (``front.py``) both call them, so every check,
refusal and metric is the same whichever path a request takes."""


UNKNOWN_REFRESH_SECONDS = 0.2
"""On a shared registry, announces for unknown swarm ids look at it at most this often."""


def _refused(state: TrackerState, error: Refusal) -> bytes:
    """A bencoded ``failure reason`` answer, counted in the failures metric."""
    state.metrics.announce_failures += 1
    return bencode({"failure reason": str(error)})


def _check_passkey(passkey: str | None) -> str | None:
    if passkey is not None and not _PASSKEY_RE.match(passkey):
        raise Refusal("malformed passkey in the announce URL")
    return passkey


def _unknown(info_hash: bytes) -> Refusal:
    """The refusal of a swarm this request may not know of: an unknown info_hash and a private
    one without read access get the same words, so an announce cannot confirm that a
    private model exists (nor name it)."""
    return Refusal(
        f"unknown info_hash {info_hash.hex()}: this tracker only tracks torrents published to "
        "its registry (a private model's torrent announces to /announce/<passkey> with the "
        "passkey of a token that can read it)"
    )


def _check_grant(grant: Grant | None, tracked: TrackedHash | None) -> None:
    """Refuse an unknown passkey, or one that cannot read the private model it announces for
    (in the words of an unknown info_hash)."""
    if grant is None:
        raise Refusal("unknown passkey: get a token with `p2pdist tracker token`")
    if tracked is not None and tracked.private:
        if not grant.can_read(ModelRef(tracked.model).namespace):
            raise _unknown(tracked.info_hash)


def _may_track_public(
    state: TrackerState, info_hash: bytes, without_passkey: bool
) -> TrackedHash | None:
    """The checks that need no passkey: a known info_hash (unless open), public if no passkey."""
    tracked = state.tracked.get(info_hash)
    if tracked is None:
        if not state.settings.track_unknown:
            raise _unknown(info_hash)
    elif without_passkey and tracked.private:
        raise _unknown(info_hash)
    return tracked


def _answer(
    head: bytes, complete: int, incomplete: int, downloaded: int, peers: bytes, peers6: bytes | None
) -> bytes:
    """The bencoded announce answer (keys in bencode's sorted order), written out directly.

    ``head`` is ``interval`` and ``min interval`` already encoded; ``peers6`` None leaves
    the key out.
    """
    tail = b"e" if peers6 is None else b"6:peers6%d:%se" % (len(peers6), peers6)
    return b"d8:completei%de10:downloadedi%de10:incompletei%de%s5:peers%d:%s%s" % (
        complete, downloaded, incomplete, head, len(peers), peers, tail,
    )  # fmt: skip


def _intervals(settings: TrackerSettings) -> bytes:
    return b"8:intervali%de12:min intervali%de" % (
        settings.interval,
        settings.effective_min_interval,
    )


def _timed(route: str) -> Callable[[Callable[..., Answer]], Callable[..., Answer]]:
    """Observe the time of an answer in the ``route`` latency histogram (/metrics); for an
    answer that needs a passkey lookup, the time until the lookup is handed to the loop."""

    def wrap(fn: Callable[..., Answer]) -> Callable[..., Answer]:
        @functools.wraps(fn)
        def timed(state: TrackerState, *args: Any, **kwargs: Any) -> Answer:
            started = time.perf_counter()
            try:
                return fn(state, *args, **kwargs)
            finally:
                state.metrics.latency[route].observe(time.perf_counter() - started)

        return timed

    return wrap


@_timed("announce")
def answer_announce(
    state: TrackerState,
    raw_query: str,
    passkey: str | None,
    host: str | None,
    refreshed: bool = False,
) -> Answer:
    """The answer to ``GET /announce[/<passkey>]?<raw_query>`` from a peer at ``host``.

    Bytes when it can be decided at once (always, without a passkey, or with one whose grant
    is cached); otherwise a coroutine that looks the passkey up first. A refusal is an answer
    too (``failure reason``), counted in the metrics like an accepted announce.
    """
    settings = state.settings
    try:
        query = parse_announce_query(
            raw_query, settings.max_query, settings.max_numwant, settings.default_numwant
        )
        passkey = _check_passkey(passkey)
        if not refreshed and query.info_hash not in state.tracked and state.registry.shared:
            return _announce_after_refresh(state, raw_query, passkey, host)
        tracked = _may_track_public(state, query.info_hash, passkey is None)
        if passkey is not None:
            grant = state.cached_passkey_grant(passkey)
            if grant is None:
                return _announce_after_lookup(state, query, passkey, tracked, host)
            _check_grant(grant, tracked)
        return _record(state, query, host)
    except Refusal as e:
        return _refused(state, e)


async def _announce_after_refresh(
    state: TrackerState, raw_query: str, passkey: str | None, host: str | None
) -> bytes:
    """An announce for a swarm id this replica does not know (yet): another replica may have
    just published it, so look at the shared registry once before answering."""
    try:
        await state.refresh(min_age=UNKNOWN_REFRESH_SECONDS)
    except StoreError as e:
        return _refused(state, Refusal(str(e)))
    answer = answer_announce(state, raw_query, passkey, host, refreshed=True)
    return answer if isinstance(answer, bytes) else await answer


async def _announce_after_lookup(
    state: TrackerState,
    query: Announce,
    passkey: str,
    tracked: TrackedHash | None,
    host: str | None,
) -> bytes:
    try:
        _check_grant(await state.grant_for_passkey(passkey), tracked)
        answer = _record(state, query, host)
        return answer if isinstance(answer, bytes) else await answer
    except Refusal as e:
        return _refused(state, e)


def _announced_address(state: TrackerState, ip: str | None, host: str) -> str | None:
    """A peer's own ``ip=`` (a host behind NAT or a proxy that knows its reachable address),
    honoured only from clients in ``--accept-ip-from`` and only for a private-range address:
    from anyone, or to a public address, it could aim a swarm at a stranger."""
    networks = state.settings.ip_networks
    if not ip or not networks:
        return None
    try:
        source = ipaddress.ip_address(host)
        address = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:
        return None
    if not any(source in network for network in networks):
        return None
    return str(address) if address.is_private and not address.is_unspecified else None


def _record(state: TrackerState, query: Announce, host: str | None) -> Answer:
    """Put the announcing peer in its swarm (or take it out) and answer with peers to try
    (bytes from an in-process peer store, a coroutine from a networked one)."""
    if not host:
        raise Refusal("cannot tell the address this announce comes from")
    host = _announced_address(state, query.ip, host) or host
    try:
        peer = Peer.from_address(query.peer_id, host, query.port, seeder=query.left == 0)
    except ValueError:
        raise Refusal(f"cannot use the address {host[:64]!r}") from None
    recorded = state.peers.record(
        query.info_hash, peer, query.event, query.numwant, time.monotonic()
    )
    if isinstance(recorded, Recorded):
        return _recorded(state, query.event, peer, recorded)
    return _recorded_later(state, query.event, peer, recorded)


async def _recorded_later(
    state: TrackerState, event: str, peer: Peer, pending: Awaitable[Recorded]
) -> bytes:
    try:
        return _recorded(state, event, peer, await pending)
    except StoreError as e:
        return _refused(state, Refusal(str(e)))
    except Refusal as e:
        return _refused(state, e)


def _recorded(state: TrackerState, event: str, peer: Peer, recorded: Recorded) -> bytes:
    if not recorded.accepted:
        raise Refusal(
            "this swarm is full, or holds as many peers of your address as one may; try again later"
        )
    state.metrics.announces[event or "none"] += 1
    counts = recorded.counts
    compact, compact6 = recorded.sample.peers, recorded.sample.peers6
    if event != "stopped":  # across sites, only gateways cross (tracker/locality.py)
        if peer.is_ipv6:
            compact6 = prefer_site(peer.compact, compact6, 18)
        else:
            compact = prefer_site(peer.compact, compact, 6)
    return _answer(
        _intervals(state.settings),
        counts.complete,
        counts.incomplete,
        counts.downloaded,
        compact,
        None if event == "stopped" else compact6,
    )


@_timed("scrape")
def answer_scrape(state: TrackerState, raw_query: str, passkey: str | None) -> Answer:
    """The answer to ``GET /scrape[/<passkey>]?<raw_query>`` (BEP 48).

    Unknown hashes, and private ones the passkey (if any) cannot read, are left out; an
    unknown passkey refuses the whole scrape. Bytes, or a coroutine when a passkey's grant
    must be looked up first.
    """
    try:
        params = parse_query(raw_query, state.settings.max_query)
        hashes = params.get("info_hash") or []
        if not hashes:
            raise Refusal("scrape needs at least one info_hash (a full scrape is not offered)")
        if len(hashes) > MAX_SCRAPE_HASHES:
            raise Refusal(f"at most {MAX_SCRAPE_HASHES} info_hash values per scrape")
        if any(len(h) != 20 for h in hashes):
            raise Refusal("info_hash must be 20 bytes")
        passkey = _check_passkey(passkey)
        if passkey is None:
            return _scrape_files(state, hashes, None)
        grant = state.cached_passkey_grant(passkey)
        if grant is None:
            return _scrape_after_lookup(state, hashes, passkey)
        return _scrape_files(state, hashes, grant)
    except Refusal as e:
        return _refused(state, e)


async def _scrape_after_lookup(state: TrackerState, hashes: list[bytes], passkey: str) -> bytes:
    grant = await state.grant_for_passkey(passkey)
    if grant is None:
        return _refused(state, Refusal("unknown passkey: get a token with `p2pdist tracker token`"))
    answer = _scrape_files(state, hashes, grant)
    return answer if isinstance(answer, bytes) else await answer


def _scrape_files(state: TrackerState, hashes: list[bytes], grant: Grant | None) -> Answer:
    """The ``files`` answer for the hashes this request may see (``grant``: its passkey's)."""
    allowed: list[bytes] = []
    for info_hash in hashes:
        try:
            tracked = _may_track_public(state, info_hash, grant is None)
            if grant is not None:
                _check_grant(grant, tracked)
        except Refusal:
            continue
        allowed.append(info_hash)
    scraped = state.peers.scrape(allowed)
    if isinstance(scraped, list):
        return _files(state, allowed, scraped)
    return _files_later(state, allowed, scraped)


async def _files_later(
    state: TrackerState, allowed: list[bytes], pending: Awaitable[list[SwarmCounts]]
) -> bytes:
    try:
        return _files(state, allowed, await pending)
    except StoreError as e:
        return _refused(state, Refusal(str(e)))


def _files(state: TrackerState, allowed: list[bytes], scraped: list[SwarmCounts]) -> bytes:
    files = {
        info_hash: {
            "complete": counts.complete,
            "incomplete": counts.incomplete,
            "downloaded": counts.downloaded,
        }
        for info_hash, counts in zip(allowed, scraped, strict=True)
    }
    state.metrics.scrapes += 1
    return bencode({"files": files})


async def _respond(answer: Answer) -> web.Response:
    body = answer if isinstance(answer, bytes) else await answer
    return web.Response(body=body, content_type="text/plain")


async def announce(request: web.Request) -> web.Response:
    """``GET /announce`` and ``GET /announce/{passkey}`` (aiohttp's path; see ``front.py``)."""
    return await _respond(
        answer_announce(
            request.app[STATE],
            request.rel_url.raw_query_string,
            request.match_info.get("passkey"),
            request_address(request, request.app[STATE].settings.proxy_networks),
        )
    )


async def scrape(request: web.Request) -> web.Response:
    """``GET /scrape?info_hash=...`` (BEP 48); unknown or unreadable hashes are left out."""
    return await _respond(
        answer_scrape(
            request.app[STATE], request.rel_url.raw_query_string, request.match_info.get("passkey")
        )
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/announce", announce, name="announce")
    app.router.add_get("/announce/{passkey}", announce, name="announce_passkey")
    app.router.add_get("/scrape", scrape, name="scrape")
    app.router.add_get("/scrape/{passkey}", scrape, name="scrape_passkey")


__all__ = [
    "Announce",
    "Answer",
    "Refusal",
    "add_routes",
    "announce",
    "answer_announce",
    "answer_scrape",
    "parse_announce",
    "parse_announce_query",
    "parse_query",
    "scrape",
]
