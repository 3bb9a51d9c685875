"""Tracker replicas: two tracker processes on one PostgreSQL registry and one Redis swarm.

Real processes and servers throughout (PostgreSQL and redis-server from tests/backends.py,
trackers as subprocesses, libtorrent hosts as CLI processes on 127.0.0.1).
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.client import RegistryClient
from p2pdist.errors import TrackerError
from p2pdist.formats.bencode import bdecode
from tests.backends import PostgresServer, RedisServer
from tests.conftest import make_version_folder, small_state_dict
from tests.integration.harness import Node, Tracker
from tests.integration.test_publish_fetch import model_state
from tests.tracker_world import announce_query, make_version, peer_id

pytestmark = pytest.mark.integration

NAME = "org/model"


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[list[Tracker]]:
    """Two running trackers with the same --db and --peers (and data folders of their own)."""
    made = [Tracker(tmp_path / f"replica{i}", db=postgres_url, peers=redis_url) for i in range(2)]
    try:
        starts = [threading.Thread(target=t.start) for t in made]  # in parallel: imports are slow
        for s in starts:
            s.start()
        for s in starts:
            s.join(60)
        assert all(t.proc is not None for t in made)
        yield made
    finally:
        for t in made:
            t.close()


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """``host("name", tracker, token)``: a p2pdist host using that tracker; all stopped after."""
    made: list[Node] = []

    def make(name: str, tracker: Tracker, token: str | None = None, **env: str) -> Node:
        node = Node(tmp_path / name, tracker, token, **env)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


def versions(url: str) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(f"{url}/v1/models/{NAME}/versions", timeout=10) as r:
        return {v["version"]: v for v in json.load(r)["versions"]}


def poll(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_fetch_gets_its_peers_from_the_replica_it_did_not_announce_to(
    replicas: list[Tracker], host: Callable[..., Node], tmp_path: Path
) -> None:
    a, b = replicas
    token = a.token("org")
    src = make_version_folder(tmp_path / "src", small_state_dict())
    publisher = host("publisher", a, token)  # publishes and announces to A only
    publisher.start_seeding("publish", str(src), "--name", NAME, "--version", "v1")
    # B hands out the seeder that announced to A: the swarm is shared
    poll(lambda: versions(b.url).get("v1", {}).get("seeders") == 1, "B to count A's seeder")
    consumer = host("consumer", b)  # knows B only
    result = consumer.fetch_json(f"{NAME}@latest", "--out", str(tmp_path / "out"))
    assert result["ref"] == f"{NAME}@v1"
    for f in src.iterdir():
        assert (tmp_path / "out" / f.name).read_bytes() == f.read_bytes()


def test_a_publish_through_one_wakes_a_long_poll_on_the_other(replicas: list[Tracker]) -> None:
    a, b = replicas
    token = a.token("org")
    key = Ed25519PrivateKey.generate()
    through_a = RegistryClient(a.url, token)
    through_b = RegistryClient(b.url, token)
    v1, v2 = make_version(key, NAME, "v1"), make_version(key, NAME, "v2", parent="v1")
    through_a.publish(v1.manifest_bytes, v1.torrent, v1.delta_torrent)
    # at once (before B's next poll of the registry): B accepts announces for the new swarm
    with urllib.request.urlopen(f"{b.url}/announce?{announce_query(v1.v1, peer_id(1))}") as r:
        answer = bdecode(r.read())
    assert b"failure reason" not in answer and answer[b"incomplete"] == 1, answer
    assert through_b.latest(NAME) == "v1"
    woken: list[str | None] = []
    waiter = threading.Thread(
        target=lambda: woken.append(through_b.wait_for_newer(NAME, "v1", wait=30))
    )
    waiter.start()
    time.sleep(0.5)  # let the long-poll reach B (the assertion does not depend on it)
    through_a.publish(v2.manifest_bytes, v2.torrent, v2.delta_torrent)
    waiter.join(40)
    assert woken == ["v2"]
    assert through_b.manifest_bytes(NAME, "v2") == v2.manifest_bytes


def test_redis_restarted_the_swarm_refills_and_fetches_work(
    replicas: list[Tracker],
    host: Callable[..., Node],
    tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    a, b = replicas
    token = a.token("org")
    src = make_version_folder(tmp_path / "src", small_state_dict())
    publisher = host("publisher", a, token)
    publisher.start_seeding("publish", str(src), "--name", NAME, "--version", "v1")
    poll(lambda: versions(b.url).get("v1", {}).get("seeders") == 1, "the seeder in Redis")
    redis_server.stop()
    try:
        with pytest.raises(Exception):  # noqa: B017 (the answer is refused, whatever its form)
            versions(b.url)
    finally:
        redis_server.start()  # empty: no persistence
    # the trackers reconnect by themselves and the seeder re-announces within an interval
    poll(lambda: versions(b.url).get("v1", {}).get("seeders") == 1, "the swarm to refill")
    consumer = host("consumer", b)
    result = consumer.fetch_json(f"{NAME}@v1", "--out", str(tmp_path / "out"))
    assert result["ref"] == f"{NAME}@v1"


def test_postgres_briefly_unreachable(
    replicas: list[Tracker], postgres_server: PostgresServer
) -> None:
    a, b = replicas
    token = a.token("org")
    key = Ed25519PrivateKey.generate()
    client = RegistryClient(a.url, token)
    v1, v2 = make_version(key, NAME, "v1"), make_version(key, NAME, "v2", parent="v1")
    client.publish(v1.manifest_bytes, v1.torrent, v1.delta_torrent)
    postgres_server.stop()
    try:
        with pytest.raises(TrackerError, match=r"registry database .* is unreachable") as refused:
            client.publish(v2.manifest_bytes, v2.torrent, v2.delta_torrent)
        assert "\n" not in str(refused.value) and "OperationalError" not in str(refused.value)
        with pytest.raises(TrackerError, match="unreachable"):
            RegistryClient(b.url).latest(NAME)
    finally:
        postgres_server.start()
    # no restart of either tracker: the next requests reconnect
    assert client.publish(v2.manifest_bytes, v2.torrent, v2.delta_torrent)["created"] is True
    assert RegistryClient(b.url).latest(NAME) == "v2"
    assert set(versions(b.url)) == {"v1", "v2"}  # the publish answered before the outage kept


def test_a_replica_killed_mid_fetch_the_fetch_completes_through_the_other(
    replicas: list[Tracker], host: Callable[..., Node], tmp_path: Path
) -> None:
    a, b = replicas
    both = f"{a.url},{b.url}"  # every host lists both replicas
    token = a.token("org")
    src = make_version_folder(tmp_path / "src", model_state(rows=2048))
    publisher = host("publisher", a, token, P2PDIST_TRACKER=both, P2PDIST_UPLOAD_LIMIT="1000000")
    publisher.start_seeding("publish", str(src), "--name", NAME, "--version", "v1")
    poll(lambda: versions(b.url).get("v1", {}).get("seeders") == 1, "the seeder")
    first = host("first", a, P2PDIST_TRACKER=both)
    fetch = first.start("fetch", f"{NAME}@v1", "--out", str(tmp_path / "out1"), "--json")
    poll(lambda: versions(b.url)["v1"]["leechers"] == 1, "the fetch to join the swarm")
    a.stop(signal.SIGKILL)
    out, err = fetch.communicate(timeout=180)
    assert fetch.returncode == 0, err
    assert json.loads(out)["ref"] == f"{NAME}@v1"
    # with A dead from the start: the registry client and the announces go to B
    second = host("second", a, P2PDIST_TRACKER=both)
    assert second.fetch_json(f"{NAME}@v1", "--out", str(tmp_path / "out2"))["ref"] == f"{NAME}@v1"
    for f in src.iterdir():
        for out_dir in ("out1", "out2"):
            assert (tmp_path / out_dir / f.name).read_bytes() == f.read_bytes()
