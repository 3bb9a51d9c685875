"""The tracker's soft-state peer store, keyed by address."""

from __future__ import annotations

from p2pdist.tracker.peers import MemoryPeerStore, Peer

IH = b"\x01" * 20


def test_new_peer_id_from_same_address_replaces_the_old_entry() -> None:
    store = MemoryPeerStore(ttl=60, seed=0)
    old = Peer.from_address(b"A" * 20, "127.0.0.1", 7000, seeder=False)
    new = Peer.from_address(b"B" * 20, "127.0.0.1", 7000, seeder=True)
    store.announce(IH, old, "started", now=0)
    store.announce(IH, new, "started", now=1)
    counts = store.counts(IH)
    assert (counts.complete, counts.incomplete) == (1, 0)
    store.announce(IH, old, "stopped", now=2)  # the old torrent's late goodbye
    assert store.counts(IH).complete == 1
    store.announce(IH, new, "stopped", now=3)
    assert store.counts(IH).complete == 0


def test_peers_at_other_ports_are_distinct_and_expire() -> None:
    store = MemoryPeerStore(ttl=10, seed=0)
    for port in (7000, 7001, 7002):
        store.announce(IH, Peer.from_address(b"%d" % port * 5, "127.0.0.1", port, False), "", 0)
    me = Peer.from_address(b"me" * 10, "127.0.0.1", 7000, seeder=False)
    assert len(store.sample(IH, me, 50).peers) == 2 * 6  # the two others, not itself
    assert store.expire(now=11) == 3
    assert store.total_peers() == 0
