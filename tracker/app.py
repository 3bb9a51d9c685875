"""The tracker application: ``create_app(settings) -> web.Application``.

Routes come from the three faces (announce.py, registry.py, status.py); shared state is one
``TrackerState`` under the ``STATE`` app key; resources are opened and closed symmetrically
by ``cleanup_ctx``: the database (and its thread), and the background task that expires
peers which stopped announcing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from aiohttp import web

from p2pdist.tracker import announce, registry, status
from p2pdist.tracker.state import STATE, TrackerSettings, TrackerState


async def _database(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    await state.open()
    yield
    await state.close()


async def _expiry(app: web.Application) -> AsyncIterator[None]:
    """Forget peers whose TTL passed, every quarter interval (at least once a second)."""
    state = app[STATE]
    period = max(1.0, state.settings.interval / 4)

    async def sweep() -> None:
        while True:
            await asyncio.sleep(period)
            state.peers.expire(time.monotonic())

    task = asyncio.create_task(sweep(), name="tracker-expiry")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _wake_long_polls(app: web.Application) -> None:
    app[STATE].wake_all()


def create_app(settings: TrackerSettings, state: TrackerState | None = None) -> web.Application:
    """Build the tracker application; nothing is opened until the app starts."""
    app = web.Application(
        client_max_size=settings.max_body,
        middlewares=[registry.json_errors],
    )
    app[STATE] = state or TrackerState(settings)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_expiry)
    app.on_shutdown.append(_wake_long_polls)
    announce.add_routes(app)
    registry.add_routes(app)
    status.add_routes(app)
    return app


__all__ = ["create_app"]
