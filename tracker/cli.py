"""``p2pdist tracker serve`` and ``p2pdist tracker token`` (also ``python -m p2pdist.tracker``).

The group is ``tracker_group``; the main CLI mounts it as ``p2pdist tracker``. ``serve``
prints the URL it listens on and where its database is, then runs until SIGINT or SIGTERM,
when it stops accepting, releases long-polls, closes the database and exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import ssl
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import click
from aiohttp import web

from p2pdist import config
from p2pdist.errors import ConfigError, P2PDistError, RefError
from p2pdist.ref import validate_name
from p2pdist.tracker.access import ACCESS_LOG, AccessLogger
from p2pdist.tracker.app import create_app
from p2pdist.tracker.db import DB_FILENAME, Database
from p2pdist.tracker.front import FrontSite
from p2pdist.tracker.state import DEFAULT_INTERVAL, TrackerSettings


def default_data_dir() -> Path:
    """``$P2PDIST_HOME/tracker``: where a tracker keeps its database unless told otherwise."""
    return config.home() / "tracker"


def _url(host: str, port: int, tls: bool = False) -> str:
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The TLS context of ``serve --tls-cert/--tls-key`` (TLS 1.2 and up); ConfigError with
    the file to fix when the certificate or key cannot be loaded or do not match."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as e:
        raise ConfigError(f"cannot load TLS certificate: {e.filename}: no such file") from None
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(
            f"cannot load TLS certificate {cert} with key {key}: "
            f"{getattr(e, 'reason', None) or e} (a PEM certificate chain and its PEM private key)"
        ) from None
    return context


def _raise_fd_limit() -> None:
    """Raise the soft file descriptor limit to the hard one: every connection is one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # pragma: no cover - a sandbox that forbids it
            pass


def make_runner(settings: TrackerSettings, *, verbose: bool = False) -> web.AppRunner:
    """The tracker's ``AppRunner``: aiohttp keeps an idle connection ``settings.idle_timeout``
    seconds (its default is an hour), and with ``verbose`` logs every request."""
    return web.AppRunner(
        create_app(settings),
        handle_signals=False,
        access_log_class=AccessLogger,
        access_log=ACCESS_LOG if verbose else None,
        keepalive_timeout=settings.idle_timeout,
        shutdown_timeout=5.0,
    )


async def serve_until_signalled(
    settings: TrackerSettings,
    host: str,
    port: int,
    tls: ssl.SSLContext | None = None,
    verbose: bool = False,
) -> None:
    """Run the tracker on ``host:port`` until SIGINT/SIGTERM; print its URL once listening.

    Connections meet the raw announce front first (``front.FrontSite``); everything but
    announces and scrapes is handed to aiohttp. With ``tls`` the port speaks https only.
    """
    _raise_fd_limit()
    runner = make_runner(settings, verbose=verbose)
    await runner.setup()
    try:
        site = FrontSite(runner, host, port, reuse_address=True, ssl_context=tls)
        await site.start()
        actual = site.port
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        click.echo(f"p2pdist tracker listening on {_url(host, actual, tls is not None)}")
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
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path),
              help="PEM certificate chain: serve https on the port (with --tls-key).")  # fmt: skip
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path),
              help="PEM private key of --tls-cert.")  # fmt: skip
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="CIDR",
              help="A proxy whose X-Forwarded-For / X-Real-IP name the client (repeatable); "
              "from anyone else those headers are ignored.")  # fmt: skip
@click.option("--idle-timeout", default=TrackerSettings.idle_timeout, show_default=True,
              type=click.FloatRange(1, 3600), help="Seconds an idle connection is kept.")  # fmt: skip
@click.option("--max-connections-per-address", "per_address",
              default=TrackerSettings.max_connections_per_address, show_default=True,
              type=click.IntRange(1), help="Connections one client address may hold at once "
              "(trusted proxies exempt).")  # fmt: skip
@click.option("-v", "--verbose", is_flag=True, help="Log every request (one line each).")
def serve(
    host: str,
    port: int,
    data_dir: Path | None,
    interval: int,
    track_unknown: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    trusted_proxies: tuple[str, ...],
    idle_timeout: float,
    per_address: int,
    verbose: bool,
) -> None:
    """Serve /announce, /scrape, the /v1/ registry, /metrics and a status page."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(message)s",
    )
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    try:
        tls = None if tls_cert is None or tls_key is None else server_tls_context(tls_cert, tls_key)
        settings = TrackerSettings(
            data_dir=data_dir or default_data_dir(),
            interval=interval,
            track_unknown=track_unknown,
            trusted_proxies=trusted_proxies,
            idle_timeout=idle_timeout,
            max_connections_per_address=per_address,
        )
        run(serve_until_signalled(settings, host, port, tls, verbose))
    except P2PDistError as e:
        raise _fail(e) from None
    except OSError as e:
        raise click.ClickException(
            f"cannot listen on {_url(host, port, tls_cert is not None)}: {e.strerror or e}"
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


__all__ = [
    "default_data_dir",
    "make_runner",
    "run",
    "serve_until_signalled",
    "server_tls_context",
    "tracker_group",
]
