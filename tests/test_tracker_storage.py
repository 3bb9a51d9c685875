"""One contract for every storage backend: the registry on SQLite and on PostgreSQL, the
peers in process and in Redis (real servers, see tests/backends.py).

Each test runs once per backend through a parametrised fixture, so a backend cannot drift
from what the tracker relies on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.errors import ConflictError, NotFoundError, SignatureError
from p2pdist.tracker.db import DB_FILENAME
from p2pdist.tracker.peers import Peer, PeerStore, SwarmCounts, open_peer_store, resolved
from p2pdist.tracker.registry import check_publish
from p2pdist.tracker.registry_store import NewVersion, RegistryStore, open_registry
from tests.tracker_world import make_version

H1 = bytes(range(20))
H2 = bytes(range(1, 21))


@pytest.fixture(params=["sqlite", "postgres"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryStore]:
    where = (
        str(tmp_path / DB_FILENAME)
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    store = open_registry(where)
    try:
        yield store
    finally:
        store.close()


def new_version(
    key: Ed25519PrivateKey, name: str, version: str, parent: str | None = None, **kw: object
) -> NewVersion:
    v = make_version(key, name, version, parent=parent, **kw)  # type: ignore[arg-type]
    return check_publish(name, version, json.dumps(v.body()).encode())


def test_publish_is_idempotent_immutable_and_pins_the_key(registry: RegistryStore) -> None:
    key = Ed25519PrivateKey.generate()
    v1 = new_version(key, "acme/llm", "v1")
    assert registry.publish(v1) == "created"
    assert registry.publish(v1) == "same"
    other = new_version(key, "acme/llm", "v1", content=b"other bytes")
    with pytest.raises(ConflictError, match="immutable"):
        registry.publish(other)
    with pytest.raises(SignatureError, match="pinned"):
        registry.publish(new_version(Ed25519PrivateKey.generate(), "acme/llm", "v2"))
    with pytest.raises(NotFoundError, match="parent version v9"):
        registry.publish(new_version(key, "acme/llm", "v3", parent="v9"))
    # nothing of the refused publishes was kept
    assert [v.version for v in registry.versions("acme/llm")] == ["v1"]


def test_reads_return_what_was_published(registry: RegistryStore) -> None:
    key = Ed25519PrivateKey.generate()
    v1 = new_version(key, "acme/llm", "v1")
    v2 = new_version(key, "acme/llm", "v2", parent="v1")
    registry.publish(v1)
    registry.publish(v2)
    registry.publish(new_version(Ed25519PrivateKey.generate(), "solo", "a"))
    models = {m.name: m for m in registry.models()}
    assert set(models) == {"acme/llm", "solo"}
    assert (models["acme/llm"].latest, models["acme/llm"].versions) == ("v2", 2)
    assert registry.model("acme/llm") == models["acme/llm"]
    assert registry.model("nobody") is None
    assert [v.parent for v in registry.versions("acme/llm")] == [None, "v1"]
    info = registry.version("acme/llm", "v2")
    assert info is not None and info.size == v2.size
    assert registry.blob("acme/llm", "v2", "manifest") == v2.manifest
    assert registry.blob("acme/llm", "v2", "torrent") == v2.torrent
    assert registry.blob("acme/llm", "v2", "delta") == v2.delta_torrent
    with pytest.raises(NotFoundError, match="no delta torrent"):
        registry.blob("acme/llm", "v1", "delta")
    with pytest.raises(NotFoundError, match="no such version"):
        registry.blob("acme/llm", "v7", "manifest")
    hashes = {t.info_hash: t for t in registry.tracked_hashes()}
    assert {h for h, _ in v1.info_hashes + v2.info_hashes} <= set(hashes)
    assert {t.kind for t in hashes.values() if t.version == "v2"} == {"full", "delta"}


def test_change_feed_reports_each_publish_once_in_order(registry: RegistryStore) -> None:
    key = Ed25519PrivateKey.generate()
    assert registry.changes(0) == [] and registry.last_seq() == 0
    registry.publish(new_version(key, "acme/llm", "v1"))
    mark = registry.last_seq()
    registry.publish(new_version(key, "acme/llm", "v2", parent="v1"))
    registry.publish(new_version(key, "acme/llm", "v3", parent="v2"))
    after = registry.changes(mark)
    assert [p.version for p in after] == ["v2", "v3"]
    assert all(len(p.hashes) == 2 for p in after)  # full and delta swarm ids
    assert registry.changes(registry.last_seq()) == []


def test_tokens_grant_list_and_revoke(registry: RegistryStore) -> None:
    from p2pdist.client import passkey_for

    everything = registry.create_token(None)
    reader = registry.create_token("acme", publish=False)
    grant = registry.grant_for_token(reader)
    assert grant is not None and grant.can_read("acme") and not grant.can_publish("acme")
    assert registry.grant_for_passkey(passkey_for(everything)) is not None
    assert registry.grant_for_token("p2pt_unknown") is None
    listed = registry.tokens()
    assert {(t.namespace, t.publish) for t in listed} == {(None, True), ("acme", False)}
    for t in listed:  # never the secret, nor anything that announces
        assert t.token_id not in (everything, reader) and len(t.token_id) == 12
    gone = next(t for t in listed if t.namespace == "acme")
    assert registry.revoke_token(gone.token_id) == gone
    assert registry.grant_for_token(reader) is None
    assert registry.grant_for_passkey(passkey_for(reader)) is None
    assert registry.grant_for_token(everything) is not None
    with pytest.raises(NotFoundError):
        registry.revoke_token(gone.token_id)


# -- peers ----------------------------------------------------------------------------------
@pytest.fixture(params=["memory", "redis"])
async def peer_store(request: pytest.FixtureRequest) -> AsyncIterator[PeerStore]:
    where = "memory" if request.param == "memory" else request.getfixturevalue("redis_url")
    store = open_peer_store(where, ttl=60)
    try:
        yield store
    finally:
        await resolved(store.close())


def peer(n: int, seeder: bool, peer_id: bytes | None = None) -> Peer:
    return Peer.from_address(peer_id or b"-PD0001-%012d" % n, "127.0.0.1", 7000 + n, seeder)


async def record(store: PeerStore, p: Peer, event: str = "started", numwant: int = 50) -> object:
    return await resolved(store.record(H1, p, event, numwant, time.monotonic()))


def addresses(blob: bytes) -> set[bytes]:
    return {blob[i : i + 6] for i in range(0, len(blob), 6)}


async def test_hand_out_policy(peer_store: PeerStore) -> None:
    seed, a, b = peer(1, True), peer(2, False), peer(3, False)
    first = await record(peer_store, seed)
    assert first.sample.peers == b"" and first.counts == SwarmCounts(1, 0, 0)  # type: ignore[attr-defined]
    await record(peer_store, a)
    got = await record(peer_store, b)
    assert got.counts == SwarmCounts(1, 2, 0)  # type: ignore[attr-defined]
    assert addresses(got.sample.peers) == {seed.compact, a.compact}  # type: ignore[attr-defined]
    to_seed = await record(peer_store, seed, event="")
    assert addresses(to_seed.sample.peers) == {a.compact, b.compact}  # type: ignore[attr-defined]
    few = await record(peer_store, b, event="", numwant=1)
    assert len(few.sample.peers) == 6 and b.compact not in addresses(few.sample.peers)  # type: ignore[attr-defined]
    assert await resolved(peer_store.scrape([H1, H2])) == [SwarmCounts(1, 2, 0), SwarmCounts()]


async def test_completed_stopped_and_a_late_stop(peer_store: PeerStore) -> None:
    a = peer(2, False)
    await record(peer_store, a)
    done = await record(peer_store, peer(2, True), event="completed")
    assert done.counts == SwarmCounts(1, 0, 1)  # type: ignore[attr-defined]
    # the same address re-added under a new peer id; the old id's late "stopped" is ignored
    readded = peer(2, True, peer_id=b"-PD0001-readded00000")
    await record(peer_store, readded)
    await record(peer_store, a, event="stopped")
    assert await resolved(peer_store.scrape([H1])) == [SwarmCounts(1, 0, 1)]
    await record(peer_store, readded, event="stopped")
    assert await resolved(peer_store.scrape([H1])) == [SwarmCounts(0, 0, 1)]


async def test_a_full_swarm_refuses_new_peers(peer_store: PeerStore) -> None:
    peer_store.max_peers_per_swarm = 2  # type: ignore[attr-defined]
    assert (await record(peer_store, peer(1, True))).accepted  # type: ignore[attr-defined]
    assert (await record(peer_store, peer(2, False))).accepted  # type: ignore[attr-defined]
    assert not (await record(peer_store, peer(3, False))).accepted  # type: ignore[attr-defined]
    assert (await record(peer_store, peer(2, True))).accepted  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_entries_expire_after_their_ttl(request: pytest.FixtureRequest, backend: str) -> None:
    where = "memory" if backend == "memory" else request.getfixturevalue("redis_url")
    store = open_peer_store(where, ttl=0.3)
    try:
        await resolved(store.record(H1, peer(1, True), "started", 50, time.monotonic()))
        assert await resolved(store.scrape([H1])) == [SwarmCounts(1, 0, 0)]
        deadline = time.monotonic() + 10
        while await resolved(store.scrape([H1])) != [SwarmCounts()]:
            assert time.monotonic() < deadline, "the entry never expired"
            store.expire(time.monotonic())
            await asyncio.sleep(0.05)
    finally:
        await resolved(store.close())
