"""Who is in which swarm: soft state with a time to live, behind a small interface.

As in Kraken's tracker, peers are soft state: a peer that stops announcing disappears after
its TTL (two announce intervals), and a restarted tracker starts empty and refills within one
interval as peers re-announce. Nothing here is durable and nothing here touches the network;
the announce handler turns requests into ``Peer`` values and responses from ``PeerSample``.

Hand-out policy: a leecher gets a uniform random sample of the swarm's other peers, seeders
and leechers alike; a seeder gets only leechers (a seeder has nothing to fetch from a seeder).
Sampling is O(numwant), not O(swarm), so announces stay cheap in large swarms.
"""

from __future__ import annotations

import functools
import ipaddress
import random
from dataclasses import dataclass, field
from typing import Protocol

MAX_PEERS_PER_SWARM = 50_000
"""A swarm refuses new peers beyond this many (memory bound against a flood of peer ids)."""


@dataclass(frozen=True)
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


class PeerStore(Protocol):
    """What the announce handler needs from a peer store."""

    def announce(self, info_hash: bytes, peer: Peer, event: str, now: float) -> bool:
        """Record ``peer`` (or remove it on ``stopped``); False when the swarm is full."""

    def sample(self, info_hash: bytes, peer: Peer, numwant: int) -> PeerSample:
        """Up to ``numwant`` peers of the swarm for ``peer``, following the hand-out policy."""

    def counts(self, info_hash: bytes) -> SwarmCounts:
        """Current seeders and leechers and the completed count of one swarm."""

    def expire(self, now: float) -> int:
        """Forget peers whose TTL has passed; return how many were removed."""

    def total_peers(self) -> int:
        """The number of (swarm, peer) entries held."""


class _Bag:
    """A set of peers with O(1) add, remove and indexed access (for O(k) random samples)."""

    __slots__ = ("index", "items")

    def __init__(self) -> None:
        self.items: list[Peer] = []
        self.index: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def put(self, peer: Peer) -> None:
        at = self.index.get(peer.key)
        if at is None:
            self.index[peer.key] = len(self.items)
            self.items.append(peer)
        else:
            self.items[at] = peer

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
            self.index[last.key] = at
        return True


@dataclass
class _Swarm:
    seeders: _Bag = field(default_factory=_Bag)
    leechers: _Bag = field(default_factory=_Bag)
    expires: dict[bytes, float] = field(default_factory=dict)
    downloaded: int = 0


class MemoryPeerStore:
    """The in-memory peer store: one dict of swarms, owned by the tracker's event loop."""

    def __init__(
        self, ttl: float, max_peers_per_swarm: int = MAX_PEERS_PER_SWARM, seed: int | None = None
    ) -> None:
        self.ttl = ttl
        self.max_peers_per_swarm = max_peers_per_swarm
        self._swarms: dict[bytes, _Swarm] = {}
        self._random = random.Random(seed)

    def announce(self, info_hash: bytes, peer: Peer, event: str, now: float) -> bool:
        swarm = self._swarms.get(info_hash)
        if event == "stopped":
            if swarm is not None:
                held = swarm.seeders.get(peer.key) or swarm.leechers.get(peer.key)
                # A late "stopped" of a torrent the client already re-added under a new
                # peer id must not drop the live entry.
                if held is not None and held.peer_id == peer.peer_id:
                    self._drop(info_hash, swarm, peer.key)
            return True
        if swarm is None:
            swarm = self._swarms[info_hash] = _Swarm()
        if peer.key not in swarm.expires and len(swarm.expires) >= self.max_peers_per_swarm:
            return False
        if peer.seeder:
            was_seeding = peer.key in swarm.seeders.index
            swarm.leechers.remove(peer.key)
            swarm.seeders.put(peer)
            if event == "completed" and not was_seeding:
                swarm.downloaded += 1
        else:
            swarm.seeders.remove(peer.key)
            swarm.leechers.put(peer)
        swarm.expires[peer.key] = now + self.ttl
        return True

    def sample(self, info_hash: bytes, peer: Peer, numwant: int) -> PeerSample:
        swarm = self._swarms.get(info_hash)
        if swarm is None or numwant <= 0:
            return PeerSample(b"", b"")
        pools = [swarm.leechers] if peer.seeder else [swarm.seeders, swarm.leechers]
        size = sum(len(p) for p in pools)
        picks = self._random.sample(range(size), min(size, numwant + 1))
        v4: list[bytes] = []
        v6: list[bytes] = []
        first = len(pools[0])
        for i in picks:
            other = pools[0].items[i] if i < first else pools[-1].items[i - first]
            if other.key == peer.key:
                continue
            (v6 if other.is_ipv6 else v4).append(other.compact)
            if len(v4) + len(v6) == numwant:
                break
        return PeerSample(b"".join(v4), b"".join(v6))

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
        swarm.expires.pop(key, None)
        if not swarm.seeders.remove(key):
            swarm.leechers.remove(key)
        if not swarm.expires and not swarm.downloaded:
            del self._swarms[info_hash]


__all__ = [
    "MAX_PEERS_PER_SWARM",
    "MemoryPeerStore",
    "Peer",
    "PeerSample",
    "PeerStore",
    "SwarmCounts",
]
