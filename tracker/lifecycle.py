"""The registry's lifecycle face: publisher statements (yank, tag, key rotation), resolving.

    POST /v1/models/{name}/statements        a signed ``formats.statement.Statement``; the
         token must may publish in the namespace, the signature must be by the pinned key.
         200 {"applied": "<kind>", "detail": "<one line>"}
    GET  /v1/models/{name}/resolve/{ref}     {"version": V}: ``ref`` is a version (refused
         with 410 when it was withdrawn, saying why) or a tag (the version it points at).
    GET  /v1/models/{name}/tags              {"tags": {tag: version}}

A withdrawn version stays downloadable by its manifest and torrents (delta chains and audits
need them); what changes is that ``latest`` and followers skip it and a fetch by its exact
name is refused with the publisher's reason.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from p2pdist.formats.statement import Statement
from p2pdist.ref import LATEST, ModelRef, validate_version
from p2pdist.tracker.registry import _name, publisher_grant, read_body, readable_model
from p2pdist.tracker.registry_store import RegistryStore
from p2pdist.tracker.state import STATE, ApiError

MAX_STATEMENT = 64 * 1024


async def post_statement(request: web.Request) -> web.Response:
    """``POST /v1/models/{name}/statements``."""
    state = request.app[STATE]
    name = _name(request)
    namespace = ModelRef(name).namespace
    await publisher_grant(request, namespace, "statements need a token")
    body = await read_body(request, MAX_STATEMENT)
    statement = await asyncio.to_thread(Statement.from_bytes, body)
    if statement.model != name:
        raise ApiError(
            400, f"the statement is for {statement.model}, but the URL names {name}", "FormatError"
        )
    detail = await state.db_call(lambda db: db.apply_statement(statement))
    if statement.kind == "yank":
        state.published(name)  # long-polls look again (latest may have gone back)
    return web.json_response({"applied": statement.kind, "detail": detail})


def _resolve(db: RegistryStore, name: str, ref: str) -> str:
    tags = db.tags(name)
    if ref in tags:
        return tags[ref]
    if db.version(name, ref) is None:
        raise ApiError(404, f"{name}@{ref}: no such version or tag", "NotFoundError")
    yanked = db.yanked(name)
    if ref in yanked:
        reason = yanked[ref]
        why = f": {reason}" if reason else " (no reason given)"
        raise ApiError(410, f"{name}@{ref} was withdrawn by its publisher{why}", "NotFoundError")
    return ref


async def resolve(request: web.Request) -> web.Response:
    """``GET /v1/models/{name}/resolve/{ref}``."""
    state = request.app[STATE]
    name = _name(request)
    ref = request.match_info["ref"]
    if ref != LATEST:
        validate_version(ref)
    await readable_model(request, name)
    if ref == LATEST:
        info = await state.db_call(lambda db: db.model(name))
        if info is None or info.latest is None:
            raise ApiError(404, f"model {name} has no version to fetch", "NotFoundError")
        return web.json_response({"version": info.latest})
    version = await state.db_call(lambda db: _resolve(db, name, ref))
    return web.json_response({"version": version})


async def list_tags(request: web.Request) -> web.Response:
    """``GET /v1/models/{name}/tags``."""
    state = request.app[STATE]
    name = _name(request)
    await readable_model(request, name)
    return web.json_response({"tags": await state.db_call(lambda db: db.tags(name))})


def add_routes(app: web.Application, base: str) -> None:
    app.router.add_post(f"{base}/statements", post_statement, name="statements")
    app.router.add_get(f"{base}/resolve/{{ref}}", resolve, name="resolve")
    app.router.add_get(f"{base}/tags", list_tags, name="tags")


__all__ = ["add_routes"]
