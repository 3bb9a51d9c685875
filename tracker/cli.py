"""``p2pdist tracker serve``, ``token``, ``backup`` and ``restore`` (also ``python -m p2pdist.tracker``).

``--db`` picks the registry (a SQLite file, the default, or ``postgresql://…``) and
``--peers`` the peer store (``memory``, the default, or ``redis://…``); see
``registry_store.py`` and ``peers.py``.

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
from p2pdist.tracker.db import DB_FILENAME
from p2pdist.tracker.front import FrontSite
from p2pdist.tracker.registry_postgres import redacted
from p2pdist.tracker.registry_store import TokenInfo, is_database_url, open_registry
from p2pdist.tracker.state import DEFAULT_INTERVAL, STATE, TrackerSettings


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
        click.echo(f"database: {_where(settings.registry_location)}")
        if settings.peers not in (None, "memory"):
            click.echo(f"peers: {runner.app[STATE].peers.location}")
        sys.stdout.flush()
        await stop.wait()
        click.echo("p2pdist tracker stopping")
    finally:
        await runner.cleanup()


def _where(location: str | Path) -> str:
    if isinstance(location, str) and is_database_url(location):
        return redacted(location)
    return str(location)


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


_db_option = click.option(
    "--db", "db", default=None, metavar="PATH|URL",
    help="The registry: a SQLite file, or a postgresql:// URL shared by replicas "
    "[default: DATA/tracker.sqlite3].",
)  # fmt: skip


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
@_db_option
@click.option("--peers", "peers", default=None, metavar="memory|URL",
              help="Where swarms are kept: 'memory' (in this process) or a redis:// URL shared "
              "by replicas [default: memory].")  # fmt: skip
@click.option("--fresh-db", is_flag=True,
              help="If the SQLite database is empty or damaged, move it aside and start a new "
              "one (every model and token in it is then gone) instead of refusing to start.")  # fmt: skip
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path),
              help="PEM certificate chain: serve https on the port (with --tls-key).")  # fmt: skip
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path),
              help="PEM private key of --tls-cert.")  # fmt: skip
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="CIDR",
              help="A proxy whose X-Forwarded-For / X-Real-IP name the client (repeatable); "
              "from anyone else those headers are ignored.")  # fmt: skip
@click.option("--accept-ip-from", "accept_ip_from", multiple=True, metavar="CIDR",
              help="Clients in this network may announce their own private address (BEP 3 "
              "ip=, P2PDIST_ANNOUNCE_ADDRESS; repeatable). Ignored from anyone else.")  # fmt: skip
@click.option("--idle-timeout", default=TrackerSettings.idle_timeout, show_default=True,
              type=click.FloatRange(1, 3600), help="Seconds an idle connection is kept.")  # fmt: skip
@click.option("--max-connections-per-address", "per_address",
              default=TrackerSettings.max_connections_per_address, show_default=True,
              type=click.IntRange(1), help="Connections one client address may hold at once "
              "(trusted proxies exempt).")  # fmt: skip
@click.option("-v", "--verbose", is_flag=True, help="Log every request (one line each).")
@click.option("--no-locality", is_flag=True,
              help="Hand out peers regardless of site (tracker/locality.py; for comparisons).")  # fmt: skip
def serve(
    host: str,
    port: int,
    data_dir: Path | None,
    interval: int,
    track_unknown: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    trusted_proxies: tuple[str, ...],
    accept_ip_from: tuple[str, ...],
    idle_timeout: float,
    per_address: int,
    verbose: bool,
    db: str | None,
    peers: str | None,
    fresh_db: bool,
    no_locality: bool,
) -> None:
    """Serve /announce, /scrape, the /v1/ registry, /metrics and a status page.

    Several trackers given the same --db postgresql://… and --peers redis://… serve one
    registry and one swarm (replicas behind a load balancer, or listed as tracker tiers).
    """
    from p2pdist.tracker import locality

    locality.ENABLED = not no_locality
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
            accept_ip_from=accept_ip_from,
            idle_timeout=idle_timeout,
            max_connections_per_address=per_address,
            db=db,
            peers=peers,
            fresh_db=fresh_db,
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
@_db_option
@click.option("--namespace", default=None,
              help="The org (or bare model name) the token is for [default: every namespace].")  # fmt: skip
@click.option("--read-only", is_flag=True, help="Read private models only; no publishing.")
@click.option("--list", "list_tokens", is_flag=True,
              help="List the tokens (id, scope, creation time; never the secret).")  # fmt: skip
@click.option("--revoke", "revoke", metavar="ID", default=None,
              help="Revoke the token with this id (from --list); trackers refuse it within "
              "seconds.")  # fmt: skip
def token(
    data_dir: Path | None,
    db: str | None,
    namespace: str | None,
    read_only: bool,
    list_tokens: bool,
    revoke: str | None,
) -> None:
    """Print a new token (shown once; the tracker stores only its hash), or list or revoke."""
    if namespace is not None and ("/" in namespace or not _is_name(namespace)):
        raise click.BadParameter(
            f"{namespace!r} is not a namespace: one name segment, the org of org/model "
            "(letters, digits, '.', '_', '-')",
            param_hint="--namespace",
        )
    if list_tokens and revoke is not None:
        raise click.UsageError("--list and --revoke do not go together")
    where: str | Path = db if db is not None else (data_dir or default_data_dir()) / DB_FILENAME
    is_new = isinstance(where, Path) and not where.exists()
    if is_new and (list_tokens or revoke is not None):
        raise click.ClickException(f"no tracker database at {where}")
    try:
        store = open_registry(where)
        try:
            if list_tokens:
                _print_tokens(store.tokens())
                return
            if revoke is not None:
                gone = store.revoke_token(revoke)
                click.echo(
                    f"revoked token {gone.token_id} ({_scope(gone)}, created {gone.created})"
                )
                return
            value = store.create_token(namespace, publish=not read_only)
        finally:
            store.close()
    except P2PDistError as e:
        raise _fail(e) from None
    if is_new:  # a typo in --data would otherwise print a token nobody knows
        click.echo(f"new tracker database at {where} (no tracker has used it yet)", err=True)
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


@tracker_group.command("reset-pin")
@click.argument("name")
@click.option("--reason", required=True, help="Why (kept in the audit record).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the SQLite database [default: $P2PDIST_HOME/tracker].")  # fmt: skip
@_db_option
def reset_pin(name: str, reason: str, data_dir: Path | None, db: str | None) -> None:
    """Unpin model NAME's publisher key (a lost key): its next publish pins the key that
    signs it. Leaves an audit record (`tracker audit`). Consumers still see the new key and
    accept it deliberately (`p2pdist trust`)."""
    where: str | Path = db if db is not None else (data_dir or default_data_dir()) / DB_FILENAME
    try:
        store = open_registry(where, create=False)
        try:
            old = store.reset_pin(validate_name(name), reason)
        finally:
            store.close()
    except P2PDistError as e:
        raise _fail(e) from None
    click.echo(f"{name}: key {old[:16]}… unpinned; its next publish pins a new key")


@tracker_group.command("audit")
@click.argument("name", required=False)
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the SQLite database [default: $P2PDIST_HOME/tracker].")  # fmt: skip
@_db_option
def audit(name: str | None, data_dir: Path | None, db: str | None) -> None:
    """Print the audit trail (yanks, tags, key rotations, pin resets), oldest first."""
    where: str | Path = db if db is not None else (data_dir or default_data_dir()) / DB_FILENAME
    try:
        store = open_registry(where, create=False)
        try:
            rows = store.audit(name)
        finally:
            store.close()
    except P2PDistError as e:
        raise _fail(e) from None
    for at, model, action, detail in rows:
        click.echo(f"{at}  {model}  {action}  {detail}")


def _scope(info: TokenInfo) -> str:
    rights = "read and publish" if info.publish else "read"
    return f"{rights} on {info.namespace or 'every namespace'}"


def _print_tokens(tokens: list[TokenInfo]) -> None:
    if not tokens:
        click.echo("no tokens", err=True)
        return
    click.echo(f"{'ID':<12}  {'CREATED':<20}  SCOPE")
    for t in tokens:
        click.echo(f"{t.token_id:<12}  {t.created:<20}  {_scope(t)}")


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
