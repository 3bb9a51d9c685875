"""Locality: which of a swarm's peers an announcing peer is handed, when the swarm spans sites.

Two sites joined by a thin link (a WAN, a link between data centres) should carry each piece
across about once, not once per consumer. Handing peers of the announcer's own site first is
not enough with BitTorrent clients such as libtorrent, which dial every peer they are given
(they rank peers by their own rule, not the tracker's order): every consumer at site B that
is given the seed at site A pulls pieces over the thin link. So the tracker decides who
crosses: each site has GATEWAYS *gateways* (the peers of the site whose ranks, a hash of
their address and port, are lowest), and

- a gateway is handed the peers of its own site and the gateways of the other sites;
- any other peer is handed the peers of its own site only.

A piece then enters a site through its gateways and spreads inside it. A site is an address
prefix (/24 for IPv4, /64 for IPv6). The policy sees one announce's sample of peers; for a
swarm smaller than the sample (numwant, 50 by default) that is the whole swarm, so every
peer of a site agrees on who its gateways are; in larger swarms it is an approximation.
A swarm on one site is handed out unchanged. Peer exchange must be off in clients (p2pdist
turns it off) or gateways would pass the other site's addresses on.

Pure functions of bytes: ``prefer_site`` is called from the announce path, one line.
"""

from __future__ import annotations

import hashlib

ENABLED = True
"""Off (``p2pdist-tracker serve --no-locality``): every peer is handed any peer."""

GATEWAYS = 1
"""Peers per site that exchange pieces with other sites. bench/cluster.py part 3 (seed at
site A, 8 consumers at B, 20 Mbit/s between): 1 gateway 1.28 model sizes over the thin link
(1.58 with locality off, same run), 2 gateways 1.62 (1.73 off): early arrivals that were
gateways keep their connections, and fewer gateways leave fewer of them."""

PREFIX_BYTES = {4: 3, 16: 8}
"""Address bytes that name a site: /24 for IPv4, /64 for IPv6."""


def site_of(compact: bytes) -> bytes:
    """The site (address prefix) of a compact peer entry (address bytes + 2 port bytes)."""
    address = compact[:-2]
    return address[: PREFIX_BYTES.get(len(address), len(address))]


def _one_site(me: bytes, compact: bytes, size: int) -> bool:
    """Whether every entry shares ``me``'s prefix (one strided slice per prefix byte)."""
    count = len(compact) // size
    return all(compact[i::size] == bytes((me[i],)) * count for i in range(PREFIX_BYTES[size - 2]))


def _rank(compact: bytes) -> bytes:
    return hashlib.blake2b(compact, digest_size=8).digest()


def prefer_site(me: bytes, compact: bytes, size: int) -> bytes:
    """The entries of ``compact`` (``size`` bytes each) that the peer ``me`` (its compact
    entry) should be handed: same-site peers first, other sites only through gateways."""
    if not ENABLED or len(me) != size or not compact or _one_site(me, compact, size):
        return compact  # the common case, decided at C speed: announces must stay cheap
    entries = [compact[i : i + size] for i in range(0, len(compact) - size + 1, size)]
    mine = site_of(me)
    by_site: dict[bytes, list[bytes]] = {}
    for entry in entries:
        by_site.setdefault(site_of(entry), []).append(entry)
    if set(by_site) == {mine}:
        return compact
    by_site.setdefault(mine, []).append(me)
    gateways = {
        site: set(sorted(members, key=_rank)[:GATEWAYS]) for site, members in by_site.items()
    }
    local = [e for e in entries if site_of(e) == mine]
    if me not in gateways[mine]:
        return b"".join(local)
    remote = [e for e in entries if site_of(e) != mine and e in gateways[site_of(e)]]
    return b"".join(local + remote)
