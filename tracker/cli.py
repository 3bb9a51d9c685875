"""``p2pdist tracker serve`` and ``p2pdist tracker token`` (also ``python -m p2pdist.tracker``).

The group is ``tracker_group``; the main CLI mounts it as ``p2pdist tracker``. ``serve``
prints the URL it listens on and where its database is, then runs until SIGINT or SIGTERM,
when it stops accepting, releases long-polls, closes the database and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import click
from aiohttp import web

from p2pdist import config
from p2pdist.errors import P2PDistError, RefError
from p2pdist.ref import validate_name
from p2pdist.tracker.app import create_app
from p2pdist.tracker.db import DB_FILENAME, Database
from p2pdist.tracker.front import FrontSite
from p2pdist.tracker.state import DEFAULT_INTERVAL, TrackerSettings


def default_data_dir() -> Path:
    """``$P2PDIST_HOME/tracker``: where a tracker keeps its database unless told otherwise."""
    return config.home() / "tracker"


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve_until_signalled(settings: TrackerSettings, host: str, port: int) -> None:
    """Run the tracker on ``host:port`` until SIGINT/SIGTERM; print its URL once listening.

    Connections meet the raw announce front first (``front.FrontSite``); everything but
    announces and scrapes is handed to aiohttp.
    """
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = FrontSite(runner, host, port, reuse_address=True)
        await site.start()
        actual = site.port
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        click.echo(f"p2pdist tracker listening on {_url(host, actual)}")
        click.echo(f"database: {settings.db_path}")
        sys.stdout.flush()
        await stop.wait()
        click.echo("p2pdist tracker stopping")
    finally:
        await runner.cleanup()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop when it is installed (an optional speedup of the announce path;
    see BENCHMARKS.md), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _fail(error: P2PDistError) -> click.ClickException:
    return click.ClickException(str(error))


@click.group("tracker")
def tracker_group() -> None:
    """Run the tracker (BitTorrent announce + model registry) and manage its tokens."""


@tracker_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=6969, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port, printed at start).")  # fmt: skip
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the SQLite database [default: $P2PDIST_HOME/tracker].")  # fmt: skip
@click.option("--interval", default=DEFAULT_INTERVAL, show_default=True,
              type=click.IntRange(1, 86400), help="Seconds between a peer's announces.")  # fmt: skip
@click.option("--open", "track_unknown", is_flag=True,
              help="Also track infohashes the registry does not know.")  # fmt: skip
@click.option("-v", "--verbose", is_flag=True, help="Log every request.")
@click.option("--no-locality", is_flag=True,
              help="Hand out peers regardless of site (tracker/locality.py; for comparisons).")  # fmt: skip
def serve(
    host: str,
    port: int,
    data_dir: Path | None,
    interval: int,
    track_unknown: bool,
    verbose: bool,
    no_locality: bool,
) -> None:
    """Serve /announce, /scrape, the /v1/ registry, /metrics and a status page."""
    from p2pdist.tracker import locality

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
    locality.ENABLED = not no_locality
    settings = TrackerSettings(
        data_dir=data_dir or default_data_dir(), interval=interval, track_unknown=track_unknown
    )
    try:
        run(serve_until_signalled(settings, host, port))
    except P2PDistError as e:
        raise _fail(e) from None
    except OSError as e:
        raise click.ClickException(
            f"cannot listen on {_url(host, port)}: {e.strerror or e}"
        ) from None


@tracker_group.command("token")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the SQLite database [default: $P2PDIST_HOME/tracker].")  # fmt: skip
@click.option("--namespace", default=None,
              help="The org (or bare model name) the token is for [default: every namespace].")  # fmt: skip
@click.option("--read-only", is_flag=True, help="Read private models only; no publishing.")
def token(data_dir: Path | None, namespace: str | None, read_only: bool) -> None:
    """Print a new token (shown once; the tracker stores only its hash)."""
    if namespace is not None and ("/" in namespace or not _is_name(namespace)):
        raise click.BadParameter(
            f"{namespace!r} is not a namespace: one name segment, the org of org/model "
            "(lowercase letters, digits, '.', '_', '-')",
            param_hint="--namespace",
        )
    path = (data_dir or default_data_dir()) / DB_FILENAME
    is_new = not path.exists()  # a typo in --data would otherwise print a token nobody knows
    try:
        db = Database(path)
        try:
            value = db.create_token(namespace, publish=not read_only)
        finally:
            db.close()
    except P2PDistError as e:
        raise _fail(e) from None
    if is_new:
        click.echo(f"new tracker database at {path} (no tracker has used it yet)", err=True)
    rights = "read" if read_only else "read and publish"
    click.echo(f"{rights} on {namespace or 'every namespace'}", err=True)
    click.echo(value)


def _is_name(text: str) -> bool:
    try:
        return validate_name(text) == text
    except RefError:
        return False


__all__ = ["default_data_dir", "run", "serve_until_signalled", "tracker_group"]
