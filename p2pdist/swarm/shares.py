"""Consumers of one swarm split its pieces into shares, and each asks first for its own.

With rarest-first alone, every consumer of a fresh swarm picks among the same seed-only
pieces at random. Two often ask the seed for the same piece at once, before either holds it
and can announce it, so the seed sends it twice: 1.20-1.22 copies of the version for 8
consumers on the bed (BENCHMARKS.md, "Cluster", 2f).

Here each consumer ranks its own address among the addresses of every peer it has seen
downloading since it started (seeds take no share), and raises the priority of the pieces
whose index is its rank modulo their number. Consumers that see the same peers compute the
same split without talking to each other, so the seed is asked for distinct pieces first; the
shares are then traded rarest-first as usual. The set only grows: a peer that finishes or
drops its connection keeps its rank. Consumers on one address (one host) share a share.
Where views differ, shares overlap, which is where rarest-first starts anyway: a peer not
seen yet, or consumers behind one NAT, which rank themselves by their private addresses while
the rest of the swarm sees the NAT's.

Only piece priorities change, so nothing is ever left out: a piece outside the share is still
wanted at libtorrent's default priority, and a piece of an unwanted file stays at 0.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

OWN_PRIORITY = 7
"""libtorrent's highest piece priority, for the pieces of this consumer's share. The picker
orders pieces by about (holders + 1) x (8 - priority), seeds not counted, so a piece of the
share is asked for first unless it has about four times as many holders as the other."""

OTHER_PRIORITY = 4
"""libtorrent's default piece priority, for every other wanted piece."""


@dataclass(frozen=True)
class Share:
    """The pieces whose index is `rank` modulo `of`."""

    rank: int
    of: int


def share_of(own_address: str, downloading_peers: Iterable[str]) -> Share:
    """This consumer's share, from its own address and those of the peers it has seen
    downloading (seeds left out: they take no share)."""
    own = _canonical(own_address)
    everyone = sorted({_canonical(a) for a in downloading_peers} | {own}, key=_address_order)
    return Share(everyone.index(own), len(everyone))


def share_priorities(share: Share, current: Sequence[int]) -> list[int]:
    """Piece priorities that put `share` first, from the `current` ones: a piece at 0 (its
    file is not wanted) stays at 0; any other becomes OWN_PRIORITY or OTHER_PRIORITY."""
    return [
        0 if now == 0 else OWN_PRIORITY if index % share.of == share.rank else OTHER_PRIORITY
        for index, now in enumerate(current)
    ]


def _canonical(address: str) -> str:
    """One spelling per host: an IPv4-mapped IPv6 address (::ffff:10.0.0.1) as IPv4."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = getattr(parsed, "ipv4_mapped", None)
    return str(mapped or parsed)


def _address_order(address: str) -> tuple[int, bytes]:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return (0, address.encode())
    return (parsed.version, parsed.packed)


__all__ = ["OTHER_PRIORITY", "OWN_PRIORITY", "Share", "share_of", "share_priorities"]
