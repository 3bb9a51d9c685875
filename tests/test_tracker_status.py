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
