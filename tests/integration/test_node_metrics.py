"""``seed --metrics-port`` and ``fetch --follow --metrics-port``: real processes, a real swarm
on 127.0.0.1, their Prometheus endpoints scraped while they work."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import make_version_folder, small_state_dict
from tests.integration.harness import Node, wait_for_line

pytestmark = pytest.mark.integration


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def poll(url: str, ready: Callable[[dict[str, float]], bool], timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        values = scrape(url)
        if ready(values):
            return values
        assert time.monotonic() < deadline, values
        time.sleep(0.2)


def test_seed_and_follow_export_their_transfers(tmp_path: Path, nodes: Callable[..., Node]) -> None:
    publisher, consumer = nodes("publisher", publisher=True), nodes("consumer")
    v1 = make_version_folder(tmp_path / "v1", small_state_dict(0))
    assert publisher.run("publish", str(v1), "--name", "org/m", "--version", "v1",
                         "--no-seed").returncode == 0  # fmt: skip
    seeder = publisher.start("seed", "--metrics-port", "0")
    seed_url = wait_for_line(seeder, "Metrics at", 60).split()[-1]
    wait_for_line(seeder, "Seeding", 60)
    assert seed_url.startswith("http://127.0.0.1:")

    follower = consumer.start("fetch", "org/m@latest", "--follow", "--metrics-port", "0")
    follow_url = wait_for_line(follower, "Metrics at", 60).split()[-1]
    got = poll(follow_url, lambda v: v.get('p2pdist_node_fetches_total{plan="full"}') == 1)
    assert got["p2pdist_node_downloaded_bytes_total"] > 0
    assert got['p2pdist_node_fetched_bytes_total{source="peers"}'] > 0
    assert got["p2pdist_node_fetch_seconds_count"] == 1
    assert got["p2pdist_node_hash_failures_total"] == 0
    assert got["process_resident_memory_bytes"] > 0

    sent = poll(seed_url, lambda v: v["p2pdist_node_uploaded_bytes_total"] > 0)
    assert sent["p2pdist_node_torrents_seeding"] >= 1
    assert sent["p2pdist_node_torrents"] >= 1
    assert all("version=" not in k for k in sent)  # no per-version series on a node
