"""/healthz, /metrics and the HTML status page, on a real server with real swarms."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.tracker import TrackerSettings, create_app
from tests.tracker_world import announce_query, make_token, make_version, peer_id


async def _world(aiohttp_client: Any, tmp_path: Path) -> tuple[Any, Any]:
    data_dir = tmp_path / "tracker"
    token = make_token(data_dir, None)
    client = await aiohttp_client(create_app(TrackerSettings(data_dir=data_dir)))
    key = Ed25519PrivateKey.generate()
    public = make_version(key, "acme/llm", "v1")
    secret = make_version(key, "hidden/model", "v1")
    headers = {"Authorization": f"Bearer {token}"}
    for v, private in ((public, False), (secret, True)):
        r = await client.post(
            f"/v1/models/{v.manifest.name}/versions/v1", json=v.body(private), headers=headers
        )
        assert r.status == 201
    for n, left in ((1, 0), (2, 5), (3, 5)):
        await client.get(f"/announce?{announce_query(public.v1, peer_id(n), 7000 + n, left)}")
    return client, public


async def test_healthz(aiohttp_client: Any, tmp_path: Path) -> None:
    client, _ = await _world(aiohttp_client, tmp_path)
    r = await client.get("/healthz")
    assert r.status == 200 and (await r.json())["status"] == "ok"


async def test_metrics_are_prometheus_text(aiohttp_client: Any, tmp_path: Path) -> None:
    client, _ = await _world(aiohttp_client, tmp_path)
    await client.get("/announce?info_hash=short")
    await client.get("/v1/models/acme/llm/versions")
    text = await (await client.get("/metrics")).text()
    for line in text.splitlines():
        assert line.startswith("#") or re.match(r"^[a-z0-9_]+(\{[^}]*\})? \d+(\.\d+)?$", line), line
    assert 'p2pdist_tracker_announces_total{event="started"} 3' in text
    assert "p2pdist_tracker_announce_failures_total 1" in text
    assert 'p2pdist_tracker_seeders{model="acme/llm",version="v1",kind="full"} 1' in text
    assert 'p2pdist_tracker_leechers{model="acme/llm",version="v1",kind="full"} 2' in text
    assert 'registry_requests_total{route="versions",status="200"} 1' in text
    assert 'route="publish",status="201"} 2' in text
    assert "p2pdist_tracker_peers 3" in text
    assert "hidden/model" not in text


async def test_status_page_lists_public_models(aiohttp_client: Any, tmp_path: Path) -> None:
    client, _ = await _world(aiohttp_client, tmp_path)
    r = await client.get("/")
    assert r.content_type == "text/html"
    page = await r.text()
    assert "<h2>acme/llm</h2>" in page
    row = re.search(r"<tr><td>v1</td>.*?</tr>", page)
    assert row is not None
    assert re.findall(r"<td class='?n[^>]*>(\d+)</td>", row.group(0)) == ["1", "2"]
    assert "hidden/model" not in page and "1 private not shown" in page


async def test_status_page_counts_full_and_delta_seeders_apart(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """Three hosts that seed both torrents of v2 are 3 full and 3 delta seeders, as the API
    says, not 6 seeders (the page once added the two swarms)."""
    data_dir = tmp_path / "tracker"
    token = make_token(data_dir, None)
    client = await aiohttp_client(create_app(TrackerSettings(data_dir=data_dir)))
    key = Ed25519PrivateKey.generate()
    headers = {"Authorization": f"Bearer {token}"}
    v1, v2 = make_version(key, "acme/llm", "v1"), make_version(key, "acme/llm", "v2", "v1")
    for v in (v1, v2):
        path = f"/v1/models/acme/llm/versions/{v.manifest.version}"
        assert (await client.post(path, json=v.body(), headers=headers)).status == 201
    assert v2.manifest.delta_torrent is not None and v2.manifest.delta_torrent.v1 is not None
    delta = bytes.fromhex(v2.manifest.delta_torrent.v1)
    for n in (1, 2, 3):
        for info_hash in (v2.v1, delta):
            await client.get(f"/announce?{announce_query(info_hash, peer_id(n), 7000 + n, 0)}")
    await client.get(f"/announce?{announce_query(delta, peer_id(4), 7004, 9)}")
    api = await (await client.get("/v1/models/acme/llm/versions")).json()
    row_api = next(v for v in api["versions"] if v["version"] == "v2")
    assert (row_api["seeders"], row_api["delta_seeders"], row_api["delta_leechers"]) == (3, 3, 1)
    page = await (await client.get("/")).text()
    assert "<th>delta seeders</th><th>delta leechers</th>" in page
    row = re.search(r"<tr><td>v2</td>.*?</tr>", page)
    assert row is not None
    assert re.findall(r"<td class='?n[^>]*>(\d+)</td>", row.group(0)) == ["3", "0", "3", "1"]


def _series(text: str, name: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    }


def test_per_version_series_are_bounded_and_only_for_live_swarms(tmp_path: Path) -> None:
    from p2pdist.tracker.db import ModelInfo
    from p2pdist.tracker.peers import SwarmCounts
    from p2pdist.tracker.state import TrackerState
    from p2pdist.tracker.status import MAX_VERSION_SERIES, render_metrics

    state = TrackerState(TrackerSettings(data_dir=tmp_path))
    models = [ModelInfo("acme/big", False, "k", "v500", 500), ModelInfo("x/p", True, "k", "v1", 1)]
    counts = {("acme/big", f"v{i}", "full"): SwarmCounts() for i in range(1, 501)}
    live = MAX_VERSION_SERIES + 20
    for i in range(1, live + 1):  # v1..v70 have peers: v70 the most
        counts[("acme/big", f"v{i}", "full")] = SwarmCounts(complete=i, incomplete=1)
    counts[("x/p", "v1", "full")] = SwarmCounts(complete=99)
    text = render_metrics(state, models, counts)
    seeders = _series(text, "p2pdist_tracker_seeders")
    assert len(seeders) == MAX_VERSION_SERIES
    assert 'p2pdist_tracker_seeders{model="acme/big",version="v70",kind="full"}' in seeders
    assert not any('version="v1",' in k or 'version="v300"' in k for k in seeders)
    assert "x/p" not in text  # private: counted in the totals, never named
    assert _series(text, "p2pdist_tracker_version_series_omitted") == {
        "p2pdist_tracker_version_series_omitted": 20
    }
    total = sum(range(1, live + 1)) + 99
    assert (
        _series(text, "p2pdist_tracker_seeders_total")['p2pdist_tracker_seeders_total{kind="full"}']
        == total
    )
    assert (
        _series(text, "p2pdist_tracker_active_swarms")['p2pdist_tracker_active_swarms{kind="full"}']
        == live + 1
    )


async def test_a_versions_series_goes_when_its_last_peer_does(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    client, public = await _world(aiohttp_client, tmp_path)
    label = 'p2pdist_tracker_seeders{model="acme/llm",version="v1",kind="full"}'
    assert label in await (await client.get("/metrics")).text()
    for n, left in ((1, 0), (2, 5), (3, 5)):
        query = announce_query(public.v1, peer_id(n), 7000 + n, left, event="stopped")
        await client.get(f"/announce?{query}")
    text = await (await client.get("/metrics")).text()
    assert label not in text
    assert 'p2pdist_tracker_seeders_total{kind="full"} 0' in text


async def test_latency_histograms_and_process_metrics(aiohttp_client: Any, tmp_path: Path) -> None:
    client, _ = await _world(aiohttp_client, tmp_path)
    await client.get("/v1/models/acme/llm/versions")
    await client.get("/scrape?info_hash=" + "%00" * 20)
    text = await (await client.get("/metrics")).text()
    h = _series(text, "p2pdist_tracker_request_seconds_count")
    assert h['p2pdist_tracker_request_seconds_count{route="announce"}'] == 3
    assert h['p2pdist_tracker_request_seconds_count{route="scrape"}'] == 1
    assert h['p2pdist_tracker_request_seconds_count{route="versions"}'] == 1
    assert h['p2pdist_tracker_request_seconds_count{route="publish"}'] == 2
    buckets = [
        v
        for k, v in _series(text, "p2pdist_tracker_request_seconds_bucket").items()
        if 'route="announce"' in k
    ]
    assert buckets == sorted(buckets) and buckets[-1] == 3  # cumulative, +Inf = count
    assert "# TYPE p2pdist_tracker_request_seconds histogram" in text
    process = {k: v for k, v in _series(text, "process_open_fds").items()}
    assert process["process_open_fds"] > 2
    assert _series(text, "process_resident_memory_bytes")["process_resident_memory_bytes"] > 1e6
    assert _series(text, "process_cpu_seconds_total")["process_cpu_seconds_total"] > 0
