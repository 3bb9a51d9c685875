"""The BitTorrent face (/announce, /scrape) on a real aiohttp server, and the peer store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdist.client import passkey_for
from p2pdist.formats.bencode import bdecode, bencode
from p2pdist.tracker import STATE, TrackerSettings, create_app
from p2pdist.tracker.announce import (
    Refusal,
    _answer,
    _intervals,
    parse_announce,
    parse_announce_query,
    parse_query,
)
from p2pdist.tracker.peers import MemoryPeerStore, Peer
from tests.conftest import has_ipv6_loopback
from tests.tracker_world import announce_query, make_token, peer_id, publish_directly

LOCAL = b"\x7f\x00\x00\x01"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "tracker"


@pytest.fixture
def public_hash(data_dir: Path) -> bytes:
    return publish_directly(data_dir, "acme/public", "v1")


@pytest.fixture
def private_hash(data_dir: Path) -> bytes:
    return publish_directly(data_dir, "acme/secret", "v1", private=True)


@pytest.fixture
async def client(
    aiohttp_client: Any, data_dir: Path, public_hash: bytes, private_hash: bytes
) -> Any:
    settings = TrackerSettings(data_dir=data_dir, interval=60, max_numwant=3)
    return await aiohttp_client(create_app(settings))


async def get(client: Any, query: str, path: str = "/announce") -> dict[bytes, Any]:
    r = await client.get(f"{path}?{query}")
    assert r.status == 200
    return bdecode(await r.read())


async def test_peers_find_each_other(client: Any, public_hash: bytes) -> None:
    first = await get(client, announce_query(public_hash, peer_id(1), port=7001))
    assert first[b"peers"] == b"" and first[b"incomplete"] == 1
    assert first[b"interval"] == 60 and 0 < first[b"min interval"] <= 60
    second = await get(client, announce_query(public_hash, peer_id(2), port=7002, left=0))
    assert second[b"peers"] == LOCAL + (7001).to_bytes(2, "big")
    assert (second[b"complete"], second[b"incomplete"]) == (1, 1)
    assert second[b"peers6"] == b""
    # a seeder is not handed to a seeder
    third = await get(client, announce_query(public_hash, peer_id(3), port=7003, left=0))
    assert third[b"peers"] == LOCAL + (7001).to_bytes(2, "big")


async def test_stopped_and_completed(client: Any, public_hash: bytes) -> None:
    await get(client, announce_query(public_hash, peer_id(1), port=7001))
    await get(client, announce_query(public_hash, peer_id(2), port=7002))
    done = await get(client, announce_query(public_hash, peer_id(1), port=7001, left=0,
                                            event="completed"))  # fmt: skip
    assert (done[b"complete"], done[b"incomplete"], done[b"downloaded"]) == (1, 1, 1)
    gone = await get(client, announce_query(public_hash, peer_id(2), port=7002, event="stopped"))
    assert gone[b"peers"] == b"" and gone[b"incomplete"] == 0
    scrape = await get(client, f"info_hash={quote_from_bytes(public_hash, safe='')}", "/scrape")
    assert scrape[b"files"] == {public_hash: {b"complete": 1, b"incomplete": 0, b"downloaded": 1}}


async def test_numwant_is_capped(client: Any, public_hash: bytes) -> None:
    for n in range(6):
        await get(client, announce_query(public_hash, peer_id(n), port=7000 + n))
    answer = await get(client, announce_query(public_hash, peer_id(99), numwant="1000000"))
    assert len(answer[b"peers"]) == 3 * 6
    answer = await get(client, announce_query(public_hash, peer_id(99), numwant="0"))
    assert answer[b"peers"] == b""


async def test_unknown_info_hash_is_refused(client: Any) -> None:
    answer = await get(client, announce_query(b"\x01" * 20, peer_id(1)))
    assert b"unknown info_hash" in answer[b"failure reason"]


def _q(h: bytes) -> str:
    return quote_from_bytes(h, safe="")


BAD_ANNOUNCES = {
    "short info_hash": lambda h: announce_query(h[:19], peer_id(1)),
    "long peer_id": lambda h: announce_query(h, peer_id(1) + b"x"),
    "port 0": lambda h: announce_query(h, peer_id(1), port=0),
    "port 65536": lambda h: announce_query(h, peer_id(1), port=65536),
    "negative port": lambda h: announce_query(h, peer_id(1), port=-1),
    "negative numwant": lambda h: announce_query(h, peer_id(1), numwant="-5"),
    "huge numwant": lambda h: announce_query(h, peer_id(1), numwant="9" * 30),
    "numwant not a number": lambda h: announce_query(h, peer_id(1), numwant="lots"),
    "missing info_hash": lambda h: (
        f"peer_id={_q(peer_id(1))}&port=1&uploaded=0&downloaded=0&left=0"
    ),
    "missing peer_id": lambda h: f"info_hash={_q(h)}&port=1&uploaded=0&downloaded=0&left=0",
    "missing port": lambda h: (
        f"info_hash={_q(h)}&peer_id={_q(peer_id(1))}&uploaded=0&downloaded=0&left=0"
    ),
    "missing left": lambda h: (
        f"info_hash={_q(h)}&peer_id={_q(peer_id(1))}&port=1&uploaded=0&downloaded=0"
    ),
    "no query": lambda h: "",
    "non-ASCII port": lambda h: announce_query(h, peer_id(1)).replace("port=6881", "port=%FF%FE"),
    "non-ASCII key": lambda h: announce_query(h, peer_id(1)) + "&%C3%28=1",
    "negative left": lambda h: announce_query(h, peer_id(1), left=-1),
    "unknown event": lambda h: announce_query(h, peer_id(1), event="exploded"),
    "repeated info_hash": lambda h: announce_query(h, peer_id(1)) + f"&info_hash={_q(h)}",
    "oversized query": lambda h: announce_query(h, peer_id(1), pad="x" * 5000),
}


@pytest.mark.parametrize("case", sorted(BAD_ANNOUNCES))
async def test_bad_announce_gets_a_failure_reason(
    client: Any, public_hash: bytes, case: str
) -> None:
    await get(client, announce_query(public_hash, peer_id(50), port=7050))
    answer = await get(client, BAD_ANNOUNCES[case](public_hash))
    assert set(answer) == {b"failure reason"}
    assert answer[b"failure reason"].decode("utf-8")
    state = client.app[STATE]
    assert state.peers.counts(public_hash).incomplete == 1
    assert state.peers.total_peers() == 1
    ok = await get(client, announce_query(public_hash, peer_id(51), port=7051))
    assert ok[b"peers"] == LOCAL + (7050).to_bytes(2, "big")


async def test_private_swarm_needs_a_passkey(
    client: Any, data_dir: Path, private_hash: bytes
) -> None:
    query = announce_query(private_hash, peer_id(1))
    assert b"unknown info_hash" in (await get(client, query))[b"failure reason"]
    reader = passkey_for(make_token(data_dir, "acme", publish=False))
    stranger = passkey_for(make_token(data_dir, "other"))
    assert b"failure reason" not in await get(client, query, f"/announce/{reader}")
    refused = await get(client, query, f"/announce/{stranger}")
    assert b"unknown info_hash" in refused[b"failure reason"]
    assert (
        b"unknown passkey" in (await get(client, query, f"/announce/{'0' * 32}"))[b"failure reason"]
    )
    assert b"malformed" in (await get(client, query, "/announce/NOT-HEX"))[b"failure reason"]
    # a scrape without the passkey does not reveal the private swarm
    scrape = await get(client, f"info_hash={_q(private_hash)}", "/scrape")
    assert scrape[b"files"] == {}
    scrape = await get(client, f"info_hash={_q(private_hash)}", f"/scrape/{reader}")
    assert scrape[b"files"][private_hash][b"incomplete"] == 1


async def test_scrape_refusals(client: Any, public_hash: bytes) -> None:
    assert b"failure reason" in await get(client, "", "/scrape")
    assert b"failure reason" in await get(client, f"info_hash={_q(public_hash[:5])}", "/scrape")
    many = "&".join(f"info_hash={_q(public_hash)}" for _ in range(101))
    assert b"failure reason" in await get(client, many, "/scrape")
    unknown = await get(client, f"info_hash={_q(b'z' * 20)}", "/scrape")
    assert unknown == {b"files": {}}


async def test_silent_peers_expire_after_two_intervals(client: Any, public_hash: bytes) -> None:
    state = client.app[STATE]
    await get(client, announce_query(public_hash, peer_id(1), port=7001))
    await get(client, announce_query(public_hash, peer_id(2), port=7002))
    now = time.monotonic()
    assert state.peers.expire(now + 60) == 0  # one missed interval: kept
    assert state.peers.expire(now + 2 * 60 + 60) == 2
    answer = await get(client, announce_query(public_hash, peer_id(3), port=7003))
    assert answer[b"peers"] == b""


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_ipv6_peers_come_back_in_peers6(
    aiohttp_client: Any, data_dir: Path, public_hash: bytes
) -> None:
    from aiohttp.test_utils import TestServer

    server = TestServer(create_app(TrackerSettings(data_dir=data_dir)), host="::1")
    client = await aiohttp_client(server)
    await get(client, announce_query(public_hash, peer_id(1), port=7001))
    answer = await get(client, announce_query(public_hash, peer_id(2), port=7002))
    assert answer[b"peers"] == b""
    assert answer[b"peers6"] == b"\x00" * 15 + b"\x01" + (7001).to_bytes(2, "big")


# -- the peer store on its own ---------------------------------------------------------------
def _peer(n: int, seeder: bool = False, host: str = "10.0.0.1") -> Peer:
    return Peer.from_address(peer_id(n), host, 1000 + n, seeder)


def test_peer_addresses_are_compact() -> None:
    assert _peer(1).compact == bytes([10, 0, 0, 1]) + (1001).to_bytes(2, "big")
    assert (
        Peer.from_address(b"x" * 20, "::ffff:1.2.3.4", 80, False).compact
        == b"\x01\x02\x03\x04\x00P"
    )
    v6 = Peer.from_address(b"x" * 20, "2001:db8::1", 80, False)
    assert v6.is_ipv6 and len(v6.compact) == 18


def test_store_samples_without_self_and_expires() -> None:
    store = MemoryPeerStore(ttl=10, seed=1)
    h = b"h" * 20
    for n in range(50):
        assert store.announce(h, _peer(n, seeder=n % 2 == 0), "started", now=0)
    me = _peer(7)
    sample = store.sample(h, me, 49)
    got = {sample.peers[i : i + 6] for i in range(0, len(sample.peers), 6)}
    assert len(got) == 49 and me.compact not in got
    seeder_view = store.sample(h, _peer(0, seeder=True), 50)
    assert len(seeder_view.peers) == 25 * 6  # leechers only
    store.announce(h, _peer(3), "", now=8)  # re-announce keeps peer 3 alive
    assert store.expire(now=10) == 49
    assert store.counts(h).incomplete == 1
    store.announce(h, _peer(3), "stopped", now=9)
    assert store.total_peers() == 0


def test_store_bounds_a_swarm() -> None:
    store = MemoryPeerStore(ttl=10, max_peers_per_swarm=3)
    h = b"h" * 20
    assert all(store.announce(h, _peer(n), "started", 0) for n in range(3))
    assert not store.announce(h, _peer(9), "started", 0)
    assert store.announce(h, _peer(1, seeder=True), "completed", 0)  # known peers still update
    assert store.counts(h) == type(store.counts(h))(1, 2, 1)


_PARTS = st.sampled_from(
    [
        "info_hash=" + "%aa" * 20,
        "info_hash=" + "%AA" * 19 + "%a",
        "info_hash=" + "%aa" * 19 + "%zz",
        "info_hash=" + "a" * 20,
        "info_hash=" + "%61" * 10 + "b" * 10,
        "info_hash=" + "%aa" * 10 + " " + "%aa" * 9,
        "info_hash=%ff",
        "peer_id=" + "-PD0001-000000000001",
        "peer_id=" + "%2d" * 20,
        "peer_id=x",
        "port=6881",
        "port=0",
        "port=65536",
        "port=%36",
        "port=٣",
        "uploaded=0",
        "uploaded=99999999999999999999",
        "uploaded=-1",
        "downloaded=12",
        "left=0",
        "left=100",
        "left=9223372036854775808",
        "event=started",
        "event=stopped",
        "event=",
        "event=bogus",
        "event=%73topped",
        "numwant=50",
        "numwant=5000",
        "numwant=-3",
        "numwant=99999999999",
        "compact=1",
        "no_peer_id=1",
        "k%C3%A9y=1",
        "clé=1",
        "",
    ]
)


@given(st.lists(_PARTS, min_size=0, max_size=12))
@settings(max_examples=400, deadline=None)
def test_fast_announce_parse_agrees_with_the_checked_path(parts: list[str]) -> None:
    raw = "&".join(parts)

    def checked() -> object:
        try:
            return parse_announce(parse_query(raw, 4096), 200, 50)
        except Refusal as e:
            return str(e)

    def fast() -> object:
        try:
            return parse_announce_query(raw, 4096, 200, 50)
        except Refusal as e:
            return str(e)

    assert fast() == checked()


@given(
    st.integers(0, 2**40), st.integers(0, 2**40), st.integers(0, 2**40),
    st.binary(max_size=300), st.one_of(st.none(), st.binary(max_size=72)),
)  # fmt: skip
def test_announce_answer_is_bencode(
    complete: int, incomplete: int, downloaded: int, peers: bytes, peers6: bytes | None
) -> None:
    s = TrackerSettings(data_dir=Path("unused"))
    value: dict[str, object] = {
        "interval": s.interval, "min interval": s.effective_min_interval, "complete": complete,
        "incomplete": incomplete, "downloaded": downloaded, "peers": peers,
    }  # fmt: skip
    if peers6 is not None:
        value["peers6"] = peers6
    assert _answer(_intervals(s), complete, incomplete, downloaded, peers, peers6) == bencode(value)


def test_small_swarm_answers_follow_membership() -> None:
    """The compact strings a small swarm answers with are rebuilt when peers come and go."""
    store = MemoryPeerStore(ttl=10, seed=3)
    h = b"s" * 20

    def others(me: Peer) -> set[bytes]:
        sample = store.sample(h, me, 50)
        v4 = {sample.peers[i : i + 6] for i in range(0, len(sample.peers), 6)}
        return v4 | {sample.peers6[i : i + 18] for i in range(0, len(sample.peers6), 18)}

    peers = [_peer(n, seeder=n == 0) for n in range(5)]
    v6 = Peer.from_address(b"y" * 20, "2001:db8::7", 6881, False)
    for p in [*peers, v6]:
        store.announce(h, p, "started", now=0)
    assert others(peers[1]) == {p.compact for p in peers if p is not peers[1]} | {v6.compact}
    assert others(peers[0]) == {p.compact for p in peers[1:]} | {v6.compact}  # leechers only
    store.announce(h, peers[2], "stopped", now=1)
    store.announce(h, peers[3], "completed", now=1)  # leecher -> seeder
    store.announce(h, _peer(3, seeder=True), "completed", now=1)
    assert others(peers[1]) == {peers[0].compact, peers[3].compact, peers[4].compact, v6.compact}
    assert others(peers[0]) == {peers[1].compact, peers[4].compact, v6.compact}
    assert others(v6) == {p.compact for p in peers if p is not peers[2]}
    assert store.counts(h).downloaded == 1
