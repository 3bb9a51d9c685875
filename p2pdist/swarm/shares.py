"""Consumers of one swarm split its pieces into shares, and each asks first for its own.

With rarest-first alone, every consumer of a fresh swarm picks among the same seed-only
pieces at random. Two often ask the seed for the same piece at once, before either holds it
and can announce it, so the seed sends it twice: 1.20-1.23 copies of the version for 8
consumers on the bed (BENCHMARKS.md, "Cluster", 2f).

Here each consumer ranks its own address among the addresses of the peers it is connected to
that are still downloading, and raises the priority of the pieces whose index is its rank
modulo their number. Consumers connected to the same peers compute the same split without
talking to each other, so the seed is asked for distinct pieces first; the shares are then
traded rarest-first as usual. Consumers that share an address (one host, one NAT) share a
share, and a view that differs (a peer not connected yet) only makes shares overlap, which is
what rarest-first does anyway.

Only piece priorities change, so nothing is ever left out: a piece outside the share is still
wanted at libtorrent's default priority, and a piece of an unwanted file stays at 0.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

OWN_PRIORITY = 7
"""libtorrent's highest piece priority, for the pieces of this consumer's share. The picker
orders pieces by availability times (8 - priority), so a piece of the share is asked for
before any other piece held by a quarter as many peers."""

OTHER_PRIORITY = 4
"""libtorrent's default piece priority, for every other wanted piece."""


@dataclass(frozen=True)
class Share:
    """The pieces whose index is `rank` modulo `of`."""

    rank: int
    of: int


def share_of(own_address: str, downloading_peers: Iterable[str]) -> Share:
    """This consumer's share, from its own address and those of its peers still downloading
    (seeds left out: they take no share)."""
    everyone = sorted(set(downloading_peers) | {own_address}, key=_address_order)
    return Share(everyone.index(own_address), len(everyone))


def share_priorities(share: Share, current: Sequence[int]) -> list[int]:
    """Piece priorities that put `share` first, from the `current` ones: a piece at 0 (its
    file is not wanted) stays at 0."""
    return [
        0 if now == 0 else OWN_PRIORITY if index % share.of == share.rank else OTHER_PRIORITY
        for index, now in enumerate(current)
    ]


def _address_order(address: str) -> tuple[int, bytes]:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return (0, address.encode())
    return (parsed.version, parsed.packed)


__all__ = ["OTHER_PRIORITY", "OWN_PRIORITY", "Share", "share_of", "share_priorities"]
