"""``p2pdist tracker serve``, ``token``, ``backup`` and ``restore`` (also ``python -m p2pdist.tracker``).

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
def serve(
    host: str, port: int, data_dir: Path | None, interval: int, track_unknown: bool, verbose: bool
) -> None:
    """Serve /announce, /scrape, the /v1/ registry, /metrics and a status page."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)
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


@tracker_group.command("backup")
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the SQLite database [default: $P2PDIST_HOME/tracker].")  # fmt: skip
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
def backup(dest: Path, data_dir: Path | None, force: bool) -> None:
    """Copy the registry database to DEST (a file, or a folder for a time-stamped file) while
    the tracker runs: one consistent snapshot, checked, written atomically. See docs/DEPLOY.md."""
    from p2pdist.tracker.backup import backup_database

    try:
        result = backup_database(data_dir or default_data_dir(), dest, overwrite=force)
    except P2PDistError as e:
        raise _fail(e) from None
    click.echo(result.describe())


@tracker_group.command("restore")
@click.argument("backup_file", metavar="BACKUP", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the SQLite database [default: $P2PDIST_HOME/tracker].")  # fmt: skip
def restore(backup_file: Path, data_dir: Path | None) -> None:
    """Make BACKUP the registry database (stop the tracker first); the database it replaces
    is kept beside it as tracker.sqlite3.before-restore-<time>."""
    from p2pdist.tracker.backup import restore_database

    try:
        result = restore_database(backup_file, data_dir or default_data_dir())
    except P2PDistError as e:
        raise _fail(e) from None
    click.echo(f"restored {result.describe()}")
    if result.previous is not None:
        click.echo(f"the database it replaced is kept as {result.previous}")


def _is_name(text: str) -> bool:
    try:
        return validate_name(text) == text
    except RefError:
        return False


__all__ = ["default_data_dir", "run", "serve_until_signalled", "tracker_group"]
