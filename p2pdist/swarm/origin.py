"""An HTTP origin: the store's versions served as BEP 19 web seeds.

A torrent published with ``--web-seed http://host:port/`` asks this server for
``/<torrent root>/<path>`` with HTTP Range requests; a fetch then completes even when no peer
is up, and peers take over as they appear (Kraken's origin role). Only committed versions of
public models are served, by name, read-only; nothing else on disk is reachable.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from p2pdist.errors import P2PDistError
from p2pdist.formats.manifest import safe_relpath
from p2pdist.formats.torrent import read_torrent
from p2pdist.ref import name_from_folder, validate_version
from p2pdist.store.cache import DELTA, SNAPSHOT, Store

STORE = web.AppKey("store", Store)


def _resolve(store: Store, root: str, path: str) -> Path:
    """The file behind ``/<org--name>@<version>[.delta]/<path>``, or HTTPNotFound."""
    delta = root.endswith(".delta")
    base = root[: -len(".delta")] if delta else root
    folder, sep, version = base.rpartition("@")
    try:
        if not sep:
            raise ValueError(root)
        name = name_from_folder(folder)
        validate_version(version)
        safe_relpath(path)
    except (P2PDistError, ValueError):
        raise web.HTTPNotFound() from None
    try:  # the version can be removed (or its blobs collected) while it is being served
        if not store.has(name, version):
            raise web.HTTPNotFound()
        full = store.torrent(name, version, "full")
        if full is None or read_torrent(full).private:  # private models: not served anonymously
            raise web.HTTPNotFound()
        manifest = store.manifest(name, version)
        entries = manifest.delta_files if delta else manifest.files
        if path not in {e.path for e in entries}:
            raise web.HTTPNotFound()
        served = store.version_dir(name, version) / (DELTA if delta else SNAPSHOT)
        resolved: Path = (served / path).resolve(strict=True)
    except (P2PDistError, OSError):
        raise web.HTTPNotFound() from None
    if not resolved.is_relative_to(store.blobs_dir.resolve()):  # a link made to point elsewhere
        raise web.HTTPNotFound()
    return resolved


async def serve_file(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    path = await asyncio.to_thread(
        _resolve, store, request.match_info["root"], request.match_info["path"]
    )
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=31536000, immutable"})


def create_origin_app(store: Store) -> web.Application:
    """The origin as an aiohttp application (GET and HEAD with Range, via FileResponse)."""
    app = web.Application()
    app[STORE] = store
    app.router.add_get("/{root}/{path:.+}", serve_file)
    return app


class _OneLine(logging.Filter):
    """aiohttp logs a malformed request with its traceback: one line is enough, and a client
    must not be able to fill the log with stacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            record.msg, record.args = f"{record.getMessage()}: {record.exc_info[1]}", ()
            record.exc_info, record.exc_text = None, None
        return True


def run_origin(store: Store, host: str, port: int) -> None:
    """Serve until interrupted (``p2pdist origin``)."""
    logging.getLogger("aiohttp.server").addFilter(_OneLine())
    web.run_app(create_origin_app(store), host=host, port=port, print=None)
