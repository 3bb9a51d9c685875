"""The registry face (/v1/) on a real aiohttp server: publish, read, long-poll, refusals."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.formats.manifest import FileEntry
from p2pdist.tracker import STATE, TrackerSettings, create_app
from tests.tracker_world import make_token, make_torrent, make_version

MODEL = "acme/llm"
URL = f"/v1/models/{MODEL}/versions"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "tracker"


@pytest.fixture
def token(data_dir: Path) -> str:
    return make_token(data_dir, "acme")


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
async def client(aiohttp_client: Any, data_dir: Path, token: str) -> Any:
    return await aiohttp_client(create_app(TrackerSettings(data_dir=data_dir, max_body=256 * 1024)))


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def publish(client: Any, token: str | None, version: Any, **body: Any) -> Any:
    name, v = version.manifest.name, version.manifest.version
    headers = auth(token) if token else {}
    return await client.post(
        f"/v1/models/{name}/versions/{v}", json=version.body(**body), headers=headers
    )


async def snapshot(client: Any, token: str) -> list[Any]:
    """Everything the registry would tell an admin: to prove a refusal changed nothing."""
    admin = auth(token)
    models = await (await client.get("/v1/models", headers=admin)).json()
    out: list[Any] = [models]
    for m in models["models"]:
        versions = await (
            await client.get(f"/v1/models/{m['name']}/versions", headers=admin)
        ).json()
        for v in versions["versions"]:
            path = f"/v1/models/{m['name']}/versions/{v['version']}/manifest"
            out.append(await (await client.get(path, headers=admin)).read())
        out.append(versions)
    return out


async def test_publish_then_read_everything_back(client: Any, token: str, key: Any) -> None:
    v1 = make_version(key, MODEL, "v1")
    v2 = make_version(key, MODEL, "v2", parent="v1")
    r = await publish(client, token, v1)
    assert r.status == 201, await r.text()
    assert (await r.json())["created"] is True
    assert (await publish(client, token, v2)).status == 201

    models = (await (await client.get("/v1/models")).json())["models"]
    assert models == [{"name": MODEL, "private": False, "latest": "v2", "versions": 2}]
    versions = (await (await client.get(URL)).json())["versions"]
    assert [(v["version"], v["parent"]) for v in versions] == [("v1", None), ("v2", "v1")]
    assert versions[0]["size"] == v1.manifest.total_size
    assert versions[1]["delta_size"] == v2.manifest.delta_size
    assert {"created", "seeders", "leechers"} <= set(versions[0])
    assert (await (await client.get(f"/v1/models/{MODEL}/latest")).json()) == {"version": "v2"}

    r = await client.get(f"{URL}/v2/manifest")
    assert await r.read() == v2.manifest_bytes
    r = await client.get(f"{URL}/v2/torrent")
    assert r.content_type == "application/x-bittorrent"
    assert await r.read() == v2.torrent
    assert await (await client.get(f"{URL}/v2/torrent?kind=delta")).read() == v2.delta_torrent
    r = await client.get(f"{URL}/v1/torrent?kind=delta")
    assert r.status == 404 and "no delta" in (await r.json())["error"]


async def test_versions_are_immutable(client: Any, token: str, key: Any) -> None:
    v1 = make_version(key, MODEL, "v1")
    assert (await publish(client, token, v1)).status == 201
    again = await publish(client, token, v1)
    assert again.status == 200 and (await again.json())["created"] is False
    before = await snapshot(client, token)
    other = make_version(key, MODEL, "v1", content=b"other weights")
    r = await publish(client, token, other)
    assert r.status == 409
    assert "immutable" in (await r.json())["error"]
    assert await snapshot(client, token) == before


async def test_first_publisher_key_is_pinned(client: Any, token: str, key: Any) -> None:
    assert (await publish(client, token, make_version(key, MODEL, "v1"))).status == 201
    intruder = make_version(Ed25519PrivateKey.generate(), MODEL, "v2", parent="v1")
    r = await publish(client, token, intruder)
    body = await r.json()
    assert r.status == 400 and body["type"] == "SignatureError" and "pinned" in body["error"]
    assert (await (await client.get(f"/v1/models/{MODEL}/latest")).json())["version"] == "v1"


def _tampered(version: Any) -> dict[str, Any]:
    manifest = json.loads(version.manifest_bytes)
    manifest["files"][0]["size"] += 1
    return manifest


def _unsafe(key: Any) -> Any:
    v = make_version(key, MODEL, "v2")
    bad = replace(v.manifest, files=(FileEntry("../../etc/passwd", 1, "cd" * 32),), signature=None)
    return replace(v, manifest=bad.signed(key))


BAD_PUBLISHES = {
    "bad signature": lambda v, k: ({"manifest": _tampered(v)}, 400, "SignatureError"),
    "unsafe path": lambda v, k: ({"manifest": json.loads(_unsafe(k).manifest_bytes)}, 400,
                                 "UnsafePathError"),
    "torrent of other files": lambda v, k: (
        {"torrent": __import__("base64").b64encode(make_torrent("v2", {"x": b"y"})).decode()},
        400, "FormatError"),
    "torrent not bencoded": lambda v, k: ({"torrent": "aGVsbG8="}, 400, "FormatError"),
    "torrent not base64": lambda v, k: ({"torrent": "***"}, 400, "FormatError"),
    "delta without parent": lambda v, k: ({"delta_torrent": "aGVsbG8="}, 400, "FormatError"),
    "private not a bool": lambda v, k: ({"private": "yes"}, 400, "FormatError"),
    "unknown field": lambda v, k: ({"extra": 1}, 400, "FormatError"),
    "manifest of another version": lambda v, k: (
        {"manifest": json.loads(make_version(k, MODEL, "v9").manifest_bytes)}, 400, "FormatError"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_PUBLISHES))
async def test_bad_publish_is_refused_and_changes_nothing(
    client: Any, token: str, key: Any, case: str
) -> None:
    assert (await publish(client, token, make_version(key, MODEL, "v1"))).status == 201
    before = await snapshot(client, token)
    v2 = make_version(key, MODEL, "v2")
    override, status, kind = BAD_PUBLISHES[case](v2, key)
    r = await publish(client, token, v2, **override)
    body = await r.json()
    assert (r.status, body.get("type")) == (status, kind), body
    assert "\n" not in body["error"]
    assert await snapshot(client, token) == before
    assert (await client.get("/healthz")).status == 200


async def test_publish_needs_the_right_token(client: Any, data_dir: Path, key: Any) -> None:
    v1 = make_version(key, MODEL, "v1")
    cases = [
        (None, 401),
        ("p2pt_not-a-token", 401),
        (make_token(data_dir, "other"), 403),
        (make_token(data_dir, "acme", publish=False), 403),
    ]
    for token, status in cases:
        r = await publish(client, token, v1)
        assert r.status == status, (token, await r.text())
        assert (await r.json())["type"] == "AuthError"
    r = await client.post(f"{URL}/v1", json=v1.body(), headers={"Authorization": "Basic abc"})
    assert r.status == 401
    assert (await (await client.get("/v1/models")).json())["models"] == []
    admin = make_token(data_dir, None)
    assert (await publish(client, admin, v1)).status == 201


async def test_parent_must_be_published(client: Any, token: str, key: Any) -> None:
    r = await publish(client, token, make_version(key, MODEL, "v2", parent="v1"))
    assert r.status == 404 and "parent" in (await r.json())["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/acme/llm/versions/latest",
        "/v1/models/acme/llm/versions/v..1",
        "/v1/models/acme/llm/versions/-v1",
        "/v1/models/acme/llm/versions/v%201",
        "/v1/models/ac!me/llm/versions/v1",
        "/v1/models/acme/L--lm/versions/v1",
        "/v1/models/x';DROP TABLE models;--/versions/v1",
        "/v1/models/acme/llm' OR '1'='1/versions/v1",
    ],
)
async def test_bad_names_and_versions_are_refused(
    client: Any, token: str, key: Any, path: str
) -> None:
    assert (await publish(client, token, make_version(key, MODEL, "v1"))).status == 201
    before = await snapshot(client, token)
    r = await client.post(path, json=make_version(key, MODEL, "v1").body(), headers=auth(token))
    assert r.status in (400, 404), await r.text()
    assert "error" in await r.json()
    r = await client.get(path + "/manifest")
    assert r.status in (400, 404)
    assert await snapshot(client, token) == before


async def test_sql_shaped_query_values_are_data(client: Any, token: str, key: Any) -> None:
    assert (await publish(client, token, make_version(key, MODEL, "v1"))).status == 201
    before = await snapshot(client, token)
    r = await client.get(
        f"/v1/models/{MODEL}/latest", params={"after": "v1' OR '1'='1", "wait": "1"}
    )
    assert r.status == 400
    r = await client.get(f"{URL}/v1/torrent", params={"kind": "full' --"})
    assert r.status == 400
    assert await snapshot(client, token) == before


async def test_oversized_and_malformed_bodies(client: Any, token: str, key: Any) -> None:
    r = await client.post(f"{URL}/v1", data=b"x" * (300 * 1024), headers=auth(token))
    assert r.status == 413 and "error" in await r.json()
    r = await client.post(f"{URL}/v1", data=b"\xff\xfe not json", headers=auth(token))
    assert r.status == 400 and (await r.json())["type"] == "FormatError"
    r = await client.post(f"{URL}/v1", json=[1, 2], headers=auth(token))
    assert r.status == 400
    assert (await (await client.get("/v1/models")).json())["models"] == []


async def test_private_model_needs_read_right(
    client: Any, data_dir: Path, token: str, key: Any
) -> None:
    v1 = make_version(key, MODEL, "v1")
    assert (await publish(client, token, v1, private=True)).status == 201
    assert (await (await client.get("/v1/models")).json())["models"] == []
    listed = (await (await client.get("/v1/models", headers=auth(token))).json())["models"]
    assert [m["name"] for m in listed] == [MODEL] and listed[0]["private"] is True
    for path in (f"{URL}/v1/manifest", f"{URL}/v1/torrent", URL, f"/v1/models/{MODEL}/latest"):
        assert (await client.get(path)).status == 404, path  # alike "not found" (finding 6)
        other = auth(make_token(data_dir, "other"))
        assert (await client.get(path, headers=other)).status == 404, path
        reader = auth(make_token(data_dir, "acme", publish=False))
        assert (await client.get(path, headers=reader)).status == 200, path


async def test_a_model_stays_private_or_public(client: Any, token: str, key: Any) -> None:
    """A later version cannot silently differ: a "private" version of a public model would be
    readable by anyone, a public version of a private one would announce without a passkey."""
    for model, first in ((MODEL, True), (MODEL + "-open", False)):
        v1, v2 = make_version(key, model, "v1"), make_version(key, model, "v2")
        assert (await publish(client, token, v1, private=first)).status == 201
        r = await publish(client, token, v2, private=not first)
        body = await r.json()
        assert r.status == 409 and body["type"] == "ConflictError"
        assert f"is a {'private' if first else 'public'} model" in body["error"]
        assert (await publish(client, token, v2, private=first)).status == 201


async def test_unknown_things_are_404(client: Any) -> None:
    for path in (f"{URL}", f"/v1/models/{MODEL}/latest", f"{URL}/v1/manifest", "/v1/nothing"):
        r = await client.get(path)
        assert r.status == 404 and "error" in await r.json(), path


async def test_latest_long_poll_returns_on_publish(client: Any, token: str, key: Any) -> None:
    assert (await publish(client, token, make_version(key, MODEL, "v1"))).status == 201
    waiting = asyncio.create_task(
        client.get(f"/v1/models/{MODEL}/latest", params={"after": "v1", "wait": "30"})
    )
    await asyncio.sleep(0.05)
    assert not waiting.done()
    assert (await publish(client, token, make_version(key, MODEL, "v2", parent="v1"))).status == 201
    r = await asyncio.wait_for(waiting, 10)
    assert r.status == 200 and (await r.json()) == {"version": "v2"}
    r = await client.get(f"/v1/models/{MODEL}/latest", params={"after": "v1", "wait": "5"})
    assert (await r.json()) == {"version": "v2"}  # already newer: no wait


async def test_latest_long_poll_times_out_with_204(client: Any, token: str, key: Any) -> None:
    assert (await publish(client, token, make_version(key, MODEL, "v1"))).status == 201
    r = await client.get(f"/v1/models/{MODEL}/latest", params={"after": "v1", "wait": "0.2"})
    assert r.status == 204
    r = await client.get("/v1/models/acme/unborn/latest", params={"wait": "0.1"})
    assert r.status == 204
    for wait in ("-1", "nan", "soon"):
        r = await client.get(f"/v1/models/{MODEL}/latest", params={"wait": wait})
        assert r.status == 400, wait
    assert client.app[STATE]._published == {}  # waiters leave nothing behind


async def test_long_poll_waits_for_a_first_version(client: Any, token: str, key: Any) -> None:
    waiting = asyncio.create_task(client.get(f"/v1/models/{MODEL}/latest", params={"wait": "30"}))
    await asyncio.sleep(0.05)
    assert (await publish(client, token, make_version(key, MODEL, "v1"))).status == 201
    r = await asyncio.wait_for(waiting, 10)
    assert (await r.json()) == {"version": "v1"}


async def test_a_bare_model_name_is_its_own_namespace(
    client: Any, data_dir: Path, key: Any
) -> None:
    token = make_token(data_dir, "gpt")
    v1 = make_version(key, "gpt", "1.0")
    assert (await publish(client, token, v1)).status == 201
    assert (await publish(client, token, make_version(key, "gpt2", "1.0"))).status == 403
    assert (await (await client.get("/v1/models/gpt/versions/1.0/manifest")).read()) == (
        v1.manifest_bytes
    )


async def test_names_as_hugging_face_writes_them_are_distinct_models(
    client: Any, token: str, key: Any
) -> None:
    """``acme/Llama-3.1-8B`` publishes under its own case; ``acme/llama-3.1-8b`` is another."""
    for name in ("acme/Llama-3.1-8B", "acme/llama-3.1-8b"):
        r = await publish(client, token, make_version(key, name, "v1"))
        assert r.status == 201, await r.text()
    r = await client.get("/v1/models/acme/Llama-3.1-8B/versions/v1/manifest", headers=auth(token))
    assert r.status == 200, await r.text()
    assert (await r.json())["name"] == "acme/Llama-3.1-8B"
