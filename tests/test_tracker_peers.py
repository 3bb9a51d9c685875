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


def test_one_address_cannot_fill_a_swarm() -> None:
    """Ports of one host beyond the per-address cap are refused; other hosts still get in,
    and a departed or expired peer frees its address's place."""
    store = MemoryPeerStore(ttl=10, seed=0, max_peers_per_ip=3)

    def peer(host: str, port: int) -> Peer:
        return Peer.from_address(b"%05d" % port * 4, host, port, seeder=False)

    assert all(store.announce(IH, peer("10.0.0.1", 7000 + n), "started", 0) for n in range(3))
    assert not store.announce(IH, peer("10.0.0.1", 7003), "started", 0)
    assert store.announce(IH, peer("10.0.0.1", 7001), "", 1)  # a known peer re-announces
    assert store.announce(IH, peer("10.0.0.2", 7000), "started", 1)
    assert store.announce(IH, peer("::1", 7000), "started", 1)
    store.announce(IH, peer("10.0.0.1", 7000), "stopped", 2)
    assert store.announce(IH, peer("10.0.0.1", 7003), "started", 2)
    assert not store.announce(IH, peer("10.0.0.1", 7004), "started", 2)
    assert store.expire(now=10.5) == 1  # 7002, last seen at time 0
    assert store.counts(IH).incomplete == 4
    assert store.announce(IH, peer("10.0.0.1", 7010), "started", 11)
    assert not store.announce(IH, peer("10.0.0.1", 7020), "started", 11)
