"""The registry face: ``name@version`` -> signed manifest and torrents, JSON under ``/v1/``.

Publishing is the one write, and it is checked before anything is stored: the token may
publish in the model's namespace, the manifest parses (safe paths, known format) and its
signature verifies, its name and version equal the URL's, its key is the model's pinned key,
its declared parent is published, and the uploaded .torrent files hash to exactly the
infohashes the manifest signs. Versions are immutable: the same bytes again answer 200, other
bytes 409. Refusals are ``{"error": "<one line>", "type": "<p2pdist error>"}``.

A model name may hold one ``/`` (``org/name``); the routes match it with a pattern that
allows one slash, and the method and the path's last segment decide the route.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
import re
from typing import Any, Literal

from aiohttp import web
from aiohttp.typedefs import Handler

from p2pdist.client import passkey_for
from p2pdist.errors import FormatError, P2PDistError
from p2pdist.formats import jsonio
from p2pdist.formats.bencode import bdecode, bencode, info_bytes, infohashes
from p2pdist.formats.manifest import Manifest, TorrentRef
from p2pdist.ref import ModelRef, validate_name, validate_version
from p2pdist.tracker.peers import SwarmCounts
from p2pdist.tracker.registry_store import (
    Grant,
    ModelInfo,
    NewVersion,
    RegistryStore,
    TrackedHash,
)
from p2pdist.tracker.state import MAX_WAIT, STATE, ApiError, TrackerState, api_error

NAME = r"{name:[^/]+(?:/[^/]+)?}"
_PUBLISH_FIELDS = {"manifest", "torrent", "delta_torrent", "private"}


def _name(request: web.Request) -> str:
    return validate_name(request.match_info["name"])


def _version(request: web.Request) -> str:
    return validate_version(request.match_info["version"])


async def _grant(request: web.Request) -> Grant | None:
    """The grant of the request's bearer token; None without one; 401 for an unknown one."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "Authorization must be 'Bearer <token>'", "AuthError")
    grant = await request.app[STATE].grant_for_token(token.strip())
    if grant is None:
        raise ApiError(
            401, "token not recognised by this tracker; make one with `p2pdist tracker token`",
            "AuthError",
        )  # fmt: skip
    return grant


def _not_found(name: str) -> ApiError:
    """The one answer for a model that does not exist and for a private one this request may
    not read: the two must look alike, or anyone could confirm a private model's name."""
    return ApiError(
        404, f"model {name} not found (a private model needs a token that can read it: "
        "P2PDIST_TOKEN)", "NotFoundError",
    )  # fmt: skip


async def _readable_model(request: web.Request, name: str) -> ModelInfo:
    """The model, if it exists and this request may read it; else 404 alike."""
    state = request.app[STATE]
    info: ModelInfo | None = await state.db_call(lambda db: db.model(name))
    if info is None or not await _may_read(request, info):
        raise _not_found(name)
    return info


async def _may_read(request: web.Request, info: ModelInfo) -> bool:
    """Whether the request may read the model (an unknown or malformed token is still a 401:
    that says something about the token, nothing about the model)."""
    if not info.private:
        return True
    grant = await _grant(request)
    return grant is not None and grant.can_read(info.namespace)


def _bearer(request: web.Request) -> str:
    """The bearer token of a request ``_grant`` already accepted."""
    return request.headers["Authorization"].partition(" ")[2].strip()


_PASSKEY_URL = re.compile(rb"/announce/[0-9a-f]{32}$")


def _announce_as(torrent: bytes, passkey: str) -> bytes:
    """A private torrent whose announce URLs carry ``passkey`` (the reader's own) instead of
    the publisher's: each reader announces with its own rights only, and never learns another
    token's passkey. Only ``announce``/``announce-list`` change, outside the info dict, so
    the infohash the manifest signs stays the same (checked)."""
    meta = bdecode(torrent)

    def swap(url: Any) -> Any:
        if isinstance(url, bytes):
            return _PASSKEY_URL.sub(b"/announce/" + passkey.encode(), url)
        return url

    if b"announce" in meta:
        meta[b"announce"] = swap(meta[b"announce"])
    if isinstance(meta.get(b"announce-list"), list):
        meta[b"announce-list"] = [
            [swap(u) for u in tier] if isinstance(tier, list) else tier
            for tier in meta[b"announce-list"]
        ]
    out = bencode(meta)
    if info_bytes(out) != info_bytes(torrent):  # pragma: no cover - bencode is canonical
        raise ApiError(500, "cannot give this torrent the reader's passkey", "TrackerError")
    return out


# -- publish --------------------------------------------------------------------------------
def _decode_b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"{what} is not valid base64") from None


def _swarm_ids(
    torrent: bytes, signed: TorrentRef | None, kind: Literal["full", "delta"]
) -> list[tuple[bytes, Literal["full", "delta"]]]:
    """Check a .torrent against the manifest's infohashes; return its 20-byte swarm ids."""
    if signed is None:
        raise FormatError(f"the manifest declares no {kind} torrent, but one was uploaded")
    v1, v2 = infohashes(torrent)
    if (v1, v2) != (signed.v1, signed.v2):
        raise FormatError(
            f"the {kind} .torrent hashes to v1={v1} v2={v2}, but the manifest signs "
            f"v1={signed.v1} v2={signed.v2}"
        )
    ids: list[tuple[bytes, Literal["full", "delta"]]] = []
    if v1 is not None:
        ids.append((bytes.fromhex(v1), kind))
    if v2 is not None:
        ids.append((bytes.fromhex(v2)[:20], kind))  # BEP 52: v2 swarms announce truncated
    return ids


def check_publish(name: str, version: str, body: bytes) -> NewVersion:
    """Validate a publish body for ``name@version``; raise a p2pdist error on the first problem."""
    obj = jsonio.loads(body, what="publish body")
    if not isinstance(obj, dict) or not {"manifest", "torrent"} <= set(obj) <= _PUBLISH_FIELDS:
        raise FormatError(f"publish body must be an object with fields {sorted(_PUBLISH_FIELDS)}")
    private = obj.get("private", False)
    if not isinstance(private, bool):
        raise FormatError("private must be true or false")
    manifest = Manifest.from_json(obj["manifest"], source=f"{name}@{version} manifest")
    if (manifest.name, manifest.version) != (name, version):
        raise FormatError(
            f"the manifest is for {manifest.name}@{manifest.version}, "
            f"but the URL publishes {name}@{version}"
        )
    manifest.verify_signature()
    assert manifest.public_key is not None
    torrent = _decode_b64(obj["torrent"], "torrent")
    if manifest.torrent is None:
        raise FormatError("the manifest declares no full torrent")
    ids = _swarm_ids(torrent, manifest.torrent, "full")
    delta_raw = obj.get("delta_torrent")
    delta = None if delta_raw is None else _decode_b64(delta_raw, "delta_torrent")
    if delta is not None:
        ids += _swarm_ids(delta, manifest.delta_torrent, "delta")
    elif manifest.delta_torrent is not None:
        raise FormatError("the manifest declares a delta torrent, but none was uploaded")
    if len({i for i, _ in ids}) != len(ids):
        raise FormatError("the full and delta torrents have the same infohash")
    return NewVersion(
        model=name,
        version=version,
        parent=manifest.parent,
        created=manifest.created,
        size=manifest.total_size,
        delta_size=manifest.delta_size,
        public_key=manifest.public_key,
        private=private,
        manifest=manifest.to_bytes(),
        torrent=torrent,
        delta_torrent=delta,
        info_hashes=tuple(ids),
    )


def _store(db: RegistryStore, new: NewVersion) -> tuple[str, list[TrackedHash]]:
    outcome = db.publish(new)
    info = db.model(new.model)
    assert info is not None
    tracked = [TrackedHash(h, new.model, new.version, k, info.private) for h, k in new.info_hashes]
    return outcome, tracked


async def publisher_grant(request: web.Request, namespace: str, missing: str) -> Grant:
    """The request's grant, which must publish in ``namespace``: else 401 (``missing``, the
    start of the message for a request without a token) or 403."""
    grant = await _grant(request)
    if grant is None:
        raise ApiError(401, f"{missing}: pass one (P2PDIST_TOKEN)", "AuthError")
    if not grant.can_publish(namespace):
        raise ApiError(403, f"this token cannot publish in namespace {namespace}", "AuthError")
    return grant


async def read_body(request: web.Request, limit: int) -> bytes:
    """A request body of at most ``limit`` bytes, read under the idle timeout: a body that
    stops arriving (or trickles a byte now and then) for ``idle_timeout`` seconds is a 408,
    so no client holds a connection and its buffers open by sending slowly."""
    idle = request.app[STATE].settings.idle_timeout
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = await asyncio.wait_for(request.content.readany(), idle)
        except asyncio.TimeoutError:
            raise ApiError(
                408, f"the request body stopped arriving for {idle:g} s", "FormatError"
            ) from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"a request body is at most {limit} bytes", "FormatError")
        chunks.append(chunk)


async def publish(request: web.Request) -> web.Response:
    """``POST /v1/models/{name}/versions/{version}``."""
    state = request.app[STATE]
    name, version = _name(request), _version(request)
    namespace = ModelRef(name).namespace
    await publisher_grant(request, namespace, "publishing needs a token")
    body = await read_body(request, state.settings.max_body)
    new = await asyncio.to_thread(check_publish, name, version, body)
    outcome, tracked = await state.db_call(_store, new)
    state.track(tracked)
    if outcome == "created":
        state.published(name)
    answer = {
        "name": name,
        "version": version,
        "created": outcome == "created",
        "infohashes": [t.info_hash.hex() for t in tracked],
    }
    return web.json_response(answer, status=201 if outcome == "created" else 200)


# -- reads ----------------------------------------------------------------------------------
async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    grant = await _grant(request)
    models = [
        {"name": m.name, "private": m.private, "latest": m.latest, "versions": m.versions}
        for m in await state.db_call(lambda db: db.models())
        if not m.private or (grant is not None and grant.can_read(m.namespace))
    ]
    return web.json_response({"models": models})


async def list_versions(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = _name(request)
    await _readable_model(request, name)
    listed = []
    counts = await state.swarm_counts()  # one scrape of the swarms, not two per version
    yanked = await state.db_call(lambda db: db.yanked(name))
    for v in await state.db_call(lambda db: db.versions(name)):
        full = counts.get((name, v.version, "full"), SwarmCounts())
        delta = counts.get((name, v.version, "delta"), SwarmCounts())
        listed.append(
            {
                "version": v.version,
                "parent": v.parent,
                "created": v.created,
                "published": v.published,
                "size": v.size,
                "delta_size": v.delta_size,
                "seeders": full.complete,
                "leechers": full.incomplete,
                "delta_seeders": delta.complete,
                "delta_leechers": delta.incomplete,
                **({"yanked": yanked[v.version] or ""} if v.version in yanked else {}),
            }
        )
    return web.json_response({"versions": listed})


def _wait_seconds(request: web.Request) -> float:
    text = request.query.get("wait", "0")
    try:
        wait = float(text)
    except ValueError:
        raise FormatError(f"wait must be a number of seconds, not {text[:24]!r}") from None
    if not math.isfinite(wait) or wait < 0:
        raise FormatError(f"wait must be between 0 and {MAX_WAIT:g} seconds")
    return min(wait, MAX_WAIT)


def _newer_than(db: RegistryStore, name: str, after: str | None) -> str | None:
    """The latest version if it is newer than ``after`` (any, when None); None otherwise.
    Withdrawn (yanked) versions are never the latest, so followers do not move to them."""
    every = db.versions(name)
    yanked = db.yanked(name)
    versions = [v for v in every if v.version not in yanked]
    if after is not None and after not in {v.version for v in every}:
        raise api_error(FormatError(f"{name}@{after} is not published; cannot wait after it"))
    if not versions:
        return None
    if after is None:
        return versions[-1].version
    seqs = {v.version: v.seq for v in every}
    return versions[-1].version if versions[-1].seq > seqs[after] else None


async def latest(request: web.Request) -> web.Response:
    """``GET /v1/models/{name}/latest[?after=V&wait=S]`` — long-polls when ``wait`` is given."""
    state: TrackerState = request.app[STATE]
    name = _name(request)
    after = request.query.get("after")
    if after is not None:
        validate_version(after)
    wait = _wait_seconds(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        event = state.publish_event(name)
        try:
            info = await state.db_call(lambda db: db.model(name))
            if info is not None and not await _may_read(request, info):
                info = None  # looks exactly like a model not published yet
            if info is not None:
                newer = await state.db_call(_newer_than, name, after)
                if newer is not None:
                    return web.json_response({"version": newer})
            elif wait == 0:
                raise _not_found(name)
            remaining = deadline - loop.time()
            if remaining <= 0 or state.closing:
                return web.Response(status=204)
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        finally:
            state.release(name, event)


async def manifest(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name, version = _name(request), _version(request)
    await _readable_model(request, name)
    data = await state.db_call(lambda db: db.blob(name, version, "manifest"))
    return web.Response(body=data, content_type="application/json")


async def torrent(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name, version = _name(request), _version(request)
    kind = request.query.get("kind", "full")
    if kind not in ("full", "delta"):
        raise ApiError(400, f"kind must be full or delta, not {kind[:24]!r}", "FormatError")
    info = await _readable_model(request, name)
    data = await state.db_call(
        lambda db: db.blob(name, version, "torrent" if kind == "full" else "delta")
    )
    if info.private:
        data = _announce_as(data, passkey_for(_bearer(request)))
    filename = f"{name.replace('/', '--')}@{version}{'.delta' if kind == 'delta' else ''}.torrent"
    return web.Response(
        body=data,
        content_type="application/x-bittorrent",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn refusals and unexpected failures under /v1/ into ``{"error": ...}`` answers."""
    state = request.app[STATE]
    route = request.match_info.route.name or "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except ApiError as e:
        status = e.status
        return _error(e.status, str(e), e.kind)
    except P2PDistError as e:
        error = api_error(e)
        status = error.status
        return _error(error.status, str(error), error.kind)
    except web.HTTPException as e:
        status = e.status
        if e.status < 400:
            raise
        too_large = isinstance(e, web.HTTPRequestEntityTooLarge)
        return _error(e.status, (e.text or e.reason) if too_large else e.reason)
    except Exception as e:
        state.metrics.errors += 1
        request.app.logger.exception("unexpected failure in %s %s", request.method, request.path)
        return _error(500, f"internal error ({type(e).__name__}); see the tracker's log")
    finally:
        if request.path.startswith("/v1/"):
            state.metrics.registry_requests[(route, status)] += 1


def _error(status: int, message: str, kind: str | None = None) -> web.Response:
    body: dict[str, str] = {"error": message.splitlines()[0] if message else "error"}
    if kind:
        body["type"] = kind
    return web.json_response(body, status=status)


def add_routes(app: web.Application) -> None:
    base = f"/v1/models/{NAME}"
    app.router.add_get("/v1/models", list_models, name="models")
    app.router.add_get(f"{base}/versions", list_versions, name="versions")
    app.router.add_get(f"{base}/latest", latest, name="latest")
    app.router.add_post(f"{base}/versions/{{version}}", publish, name="publish")
    app.router.add_get(f"{base}/versions/{{version}}/manifest", manifest, name="manifest")
    app.router.add_get(f"{base}/versions/{{version}}/torrent", torrent, name="torrent")
    from p2pdist.tracker import lifecycle  # it builds on this module's checks

    lifecycle.add_routes(app, base)


__all__ = [
    "add_routes",
    "check_publish",
    "grant_of",
    "json_errors",
    "publisher_grant",
    "read_body",
    "readable_model",
]

grant_of = _grant
readable_model = _readable_model
