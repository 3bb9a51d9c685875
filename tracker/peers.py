"""Who is in which swarm: soft state with a time to live, behind a small interface.

``PeerStore`` is the interface (as chihaya's storage and Kraken's peerstore): ``record``
one announce and hand out peers (one call, so a networked store makes one round trip per
announce), ``scrape`` counts, ``expire`` and ``total_peers``. ``record``, ``scrape`` and
``close`` answer either at once (the in-process ``MemoryPeerStore``: no task, no await on
the announce hot path) or with an awaitable (``peers_redis.RedisPeerStore``, shared by
tracker replicas); callers handle both (``resolved``). ``open_peer_store`` picks one from ``--peers``.

As in Kraken's tracker, peers are soft state: a peer that stops announcing disappears after
its TTL (two announce intervals), and a restarted tracker starts empty and refills within one
interval as peers re-announce. Nothing here is durable and nothing here touches the network;
the announce handler turns requests into ``Peer`` values and responses from ``PeerSample``.

Hand-out policy: a leecher gets a uniform random sample of the swarm's other peers, seeders
and leechers alike; a seeder gets only leechers (a seeder has nothing to fetch from a seeder).
Sampling is O(numwant), not O(swarm), so announces stay cheap in large swarms. A swarm no
larger than numwant (the common case: a version's swarm is a few dozen hosts) answers with
all of its other peers from compact strings built once per change of membership, so a
re-announce into an unchanged swarm costs one slice, not a loop over peers.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import random
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, TypeVar, Union

T = TypeVar("T")
Maybe = Union[T, Awaitable[T]]  # noqa: UP007 (a TypeVar alias needs Union on 3.10)

MAX_PEERS_PER_SWARM = 50_000
"""A swarm refuses new peers beyond this many (memory bound against a flood of peer ids)."""
MAX_PEERS_PER_IP = 256
"""A swarm refuses an address's peers (ports) beyond this many, so that one host cannot fill
it and lock real peers out; enough for a fleet behind one NAT address, or a loopback test."""


@dataclass(frozen=True, slots=True)
class Peer:
    """One announcing peer: its id, its address in compact form (BEP 23 / BEP 7), seeding or not."""

    peer_id: bytes
    compact: bytes
    """4-byte IPv4 or 16-byte IPv6 address followed by the 2-byte big-endian port."""
    seeder: bool

    @property
    def key(self) -> bytes:
        """Peers are keyed by address, not id: a client that re-adds a torrent announces a
        new peer id from the same ip:port, and must replace its old entry, not double it."""
        return self.compact

    @property
    def is_ipv6(self) -> bool:
        return len(self.compact) == 18

    @classmethod
    def from_address(cls, peer_id: bytes, host: str, port: int, seeder: bool) -> Peer:
        """Build a peer from a textual address; IPv4-mapped IPv6 addresses become IPv4."""
        return cls(peer_id, _packed(host) + port.to_bytes(2, "big"), seeder)


@functools.lru_cache(maxsize=65536)
def _packed(host: str) -> bytes:
    """The 4 or 16 address bytes of ``host`` (ValueError if it is not an IP address)."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.packed


@dataclass(frozen=True)
class SwarmCounts:
    """Scrape figures of one swarm (BEP 48): seeders, leechers, completed downloads."""

    complete: int = 0
    incomplete: int = 0
    downloaded: int = 0


@dataclass(frozen=True)
class PeerSample:
    """Peers handed out in one announce response, already in compact form."""

    peers: bytes
    peers6: bytes


_EMPTY = PeerSample(b"", b"")


class Recorded(NamedTuple):
    """The outcome of one announce: accepted or not, the swarm's counts, peers to try."""

    accepted: bool
    counts: SwarmCounts
    sample: PeerSample


class PeerStore(Protocol):
    """What the tracker needs from a peer store (see the module docstring)."""

    location: str
    """Where the peers are, for messages ("memory", or a URL without its password)."""

    def record(
        self, info_hash: bytes, peer: Peer, event: str, numwant: int, now: float
    ) -> Maybe[Recorded]:
        """Put ``peer`` in its swarm (remove it on ``stopped``) and pick up to ``numwant``
        others for it; not accepted when the swarm is full, or holds as many peers of
        ``peer``'s address as one address may have. ``now`` is ``time.monotonic()``."""
        ...

    def scrape(self, info_hashes: Sequence[bytes]) -> Maybe[list[SwarmCounts]]:
        """Counts of each swarm, in order."""
        ...

    def expire(self, now: float) -> int:
        """Forget peers whose TTL has passed; return how many were removed. Called every
        quarter interval; a networked store may start its housekeeping here and return."""
        ...

    def total_peers(self) -> int:
        """The number of (swarm, peer) entries held (a networked store: as last counted)."""
        ...

    def close(self) -> Maybe[None]: ...


async def resolved(value: Maybe[T]) -> T:
    """The value of a peer store's answer, awaited if the store answered with an awaitable."""
    if inspect.isawaitable(value):
        return await value
    return value


def open_peer_store(where: str | None, ttl: float) -> PeerStore:
    """The peer store named by ``--peers``: None or "memory" for in-process, or a
    ``redis://`` / ``rediss://`` / ``unix://`` URL for Redis."""
    if where is None or where == "memory":
        return MemoryPeerStore(ttl=ttl)
    if where.startswith(("redis://", "rediss://", "unix://")):
        from p2pdist.tracker.peers_redis import RedisPeerStore

        return RedisPeerStore(where, ttl=ttl)
    from p2pdist.errors import ConfigError

    raise ConfigError(f"--peers {where[:64]!r}: use 'memory' or a redis:// URL")


class _Bag:
    """A set of peers with O(1) add, remove and indexed access (for O(k) random samples).

    ``compact()`` is the concatenated compact addresses of the bag (IPv4, IPv6), built on
    first use after a change of membership and kept until the next one.
    """

    __slots__ = ("_compact", "index", "items")

    def __init__(self) -> None:
        self.items: list[Peer] = []
        self.index: dict[bytes, int] = {}
        self._compact: tuple[bytes, bytes] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def put(self, peer: Peer) -> None:
        key = peer.compact
        at = self.index.get(key)
        if at is None:
            self.index[key] = len(self.items)
            self.items.append(peer)
            self._compact = None
        else:
            self.items[at] = peer  # same address, so the compact strings still hold

    def get(self, key: bytes) -> Peer | None:
        at = self.index.get(key)
        return None if at is None else self.items[at]

    def remove(self, key: bytes) -> bool:
        at = self.index.pop(key, None)
        if at is None:
            return False
        last = self.items.pop()
        if at < len(self.items):
            self.items[at] = last
            self.index[last.compact] = at
        self._compact = None
        return True

    def compact(self) -> tuple[bytes, bytes]:
        """(IPv4 peers, IPv6 peers) of the whole bag, in compact form."""
        if self._compact is None:
            items = self.items
            v4 = b"".join([p.compact for p in items if len(p.compact) == 6])
            v6 = (
                b""
                if len(v4) == 6 * len(items)
                else b"".join([p.compact for p in items if len(p.compact) == 18])
            )
            self._compact = (v4, v6)
        return self._compact


def _without(blob: bytes, compact: bytes) -> bytes:
    """``blob`` (a run of fixed-width compact addresses) less the entry equal to ``compact``."""
    width = len(compact)
    at = blob.find(compact)
    while at != -1 and at % width:
        at = blob.find(compact, at + 1)
    return blob if at == -1 else blob[:at] + blob[at + width :]


@dataclass
class _Swarm:
    seeders: _Bag = field(default_factory=_Bag)
    leechers: _Bag = field(default_factory=_Bag)
    expires: dict[bytes, float] = field(default_factory=dict)
    per_address: dict[bytes, int] = field(default_factory=dict)
    downloaded: int = 0


class MemoryPeerStore:
    """The in-memory peer store: one dict of swarms, owned by the tracker's event loop."""

    location = "memory"

    def __init__(
        self,
        ttl: float,
        max_peers_per_swarm: int = MAX_PEERS_PER_SWARM,
        seed: int | None = None,
        max_peers_per_ip: int = MAX_PEERS_PER_IP,
    ) -> None:
        self.ttl = ttl
        self.max_peers_per_swarm = max_peers_per_swarm
        self.max_peers_per_ip = max_peers_per_ip
        self._swarms: dict[bytes, _Swarm] = {}
        self._random = random.Random(seed)

    def record(
        self, info_hash: bytes, peer: Peer, event: str, numwant: int, now: float
    ) -> Recorded:
        if not self.announce(info_hash, peer, event, now):
            return Recorded(False, SwarmCounts(), _EMPTY)
        counts = self.counts(info_hash)
        sample = _EMPTY if event == "stopped" else self.sample(info_hash, peer, numwant)
        return Recorded(True, counts, sample)

    def scrape(self, info_hashes: Sequence[bytes]) -> list[SwarmCounts]:
        return [self.counts(h) for h in info_hashes]

    def close(self) -> None:
        self._swarms.clear()

    def announce(self, info_hash: bytes, peer: Peer, event: str, now: float) -> bool:
        """Record ``peer`` (or remove it on ``stopped``); False when the swarm is full, or
        holds as many peers of ``peer``'s address as one address may have."""
        swarm = self._swarms.get(info_hash)
        key = peer.compact
        if event == "stopped":
            if swarm is not None:
                held = swarm.seeders.get(key) or swarm.leechers.get(key)
                # A late "stopped" of a torrent the client already re-added under a new
                # peer id must not drop the live entry.
                if held is not None and held.peer_id == peer.peer_id:
                    self._drop(info_hash, swarm, key)
            return True
        if swarm is None:
            swarm = self._swarms[info_hash] = _Swarm()
        expires = swarm.expires
        if key not in expires:
            if len(expires) >= self.max_peers_per_swarm:
                return False
            address = key[:-2]  # the compact form ends in the port
            from_address = swarm.per_address.get(address, 0)
            if from_address >= self.max_peers_per_ip:
                return False
            swarm.per_address[address] = from_address + 1
        if peer.seeder:
            seeders = swarm.seeders
            if key in seeders.index:
                seeders.put(peer)
            else:
                swarm.leechers.remove(key)
                seeders.put(peer)
                if event == "completed":
                    swarm.downloaded += 1
        else:
            leechers = swarm.leechers
            if key in leechers.index:
                leechers.put(peer)
            else:
                swarm.seeders.remove(key)
                leechers.put(peer)
        expires[key] = now + self.ttl
        return True

    def sample(self, info_hash: bytes, peer: Peer, numwant: int) -> PeerSample:
        swarm = self._swarms.get(info_hash)
        if swarm is None or numwant <= 0:
            return _EMPTY
        key = peer.compact
        pools = (swarm.leechers,) if peer.seeder else (swarm.seeders, swarm.leechers)
        size = sum(len(p) for p in pools)
        if size <= numwant or (size == numwant + 1 and any(key in p.index for p in pools)):
            return self._everyone(pools, key)
        picks = self._random.sample(range(size), min(size, numwant + 1))
        v4: list[bytes] = []
        v6: list[bytes] = []
        first = pools[0].items
        rest = pools[-1].items
        n_first = len(first)
        for i in picks:
            other = (first[i] if i < n_first else rest[i - n_first]).compact
            if other == key:
                continue
            (v4 if len(other) == 6 else v6).append(other)
            if len(v4) + len(v6) == numwant:
                break
        return PeerSample(b"".join(v4), b"".join(v6))

    @staticmethod
    def _everyone(pools: tuple[_Bag, ...], key: bytes) -> PeerSample:
        """Every peer of ``pools`` but the one at ``key``, from the bags' compact strings."""
        if len(pools) == 1:
            v4, v6 = pools[0].compact()
        else:
            (a4, a6), (b4, b6) = pools[0].compact(), pools[1].compact()
            v4, v6 = a4 + b4, a6 + b6
        if len(key) == 6:
            v4 = _without(v4, key)
        else:
            v6 = _without(v6, key)
        return PeerSample(v4, v6)

    def counts(self, info_hash: bytes) -> SwarmCounts:
        swarm = self._swarms.get(info_hash)
        if swarm is None:
            return SwarmCounts()
        return SwarmCounts(len(swarm.seeders), len(swarm.leechers), swarm.downloaded)

    def expire(self, now: float) -> int:
        removed = 0
        for info_hash, swarm in list(self._swarms.items()):
            stale = [key for key, t in swarm.expires.items() if t <= now]
            for key in stale:
                self._drop(info_hash, swarm, key)
            removed += len(stale)
        return removed

    def total_peers(self) -> int:
        return sum(len(s.expires) for s in self._swarms.values())

    def _drop(self, info_hash: bytes, swarm: _Swarm, key: bytes) -> None:
        if swarm.expires.pop(key, None) is not None:
            address = key[:-2]
            left = swarm.per_address[address] - 1
            if left:
                swarm.per_address[address] = left
            else:
                del swarm.per_address[address]
        if not swarm.seeders.remove(key):
            swarm.leechers.remove(key)
        if not swarm.expires and not swarm.downloaded:
            del self._swarms[info_hash]


__all__ = [
    "MAX_PEERS_PER_IP",
    "MAX_PEERS_PER_SWARM",
    "Maybe",
    "MemoryPeerStore",
    "Peer",
    "PeerSample",
    "PeerStore",
    "Recorded",
    "SwarmCounts",
    "open_peer_store",
    "resolved",
]
