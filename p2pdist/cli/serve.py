"""Commands that serve the store: ``seed`` (the swarm) and ``origin`` (HTTP web seed)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import click

from p2pdist import config
from p2pdist.cli.options import (
    home_option,
    metrics_options,
    start_metrics,
    token_option,
    tracker_option,
)


@click.command()
@home_option
@tracker_option
@token_option
@click.option("--status-every", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds between status lines when stderr is not a terminal (0: none).")  # fmt: skip
@click.option("--poll-every", default=0.25, show_default=True,
              type=click.FloatRange(min=0.01, max=2.0),
              help="Seconds between looks for versions added to the store.")  # fmt: skip
@metrics_options  # the optional node exporter; see p2pdist/metrics.py
def seed(
    home: Path | None,
    tracker: str | None,
    token: str | None,
    status_every: float,
    poll_every: float,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Seed every version in the local store until stopped (SIGINT or SIGTERM).

    Follows the store: versions added while it runs (publish --no-seed, fetch, another
    process) are served within --poll-every seconds, removed ones dropped within 2 s.
    Announces to the configured tracker (--tracker, $P2PDIST_TRACKER), private models under
    this host's own token.
    """
    from p2pdist.client import RegistryClient
    from p2pdist.store.cache import Store
    from p2pdist.swarm.seeder import SeedDaemon, process_swarm, with_hints

    store = Store(config.home(home))
    client = RegistryClient(config.tracker_url(tracker), config.token(token))

    def announce(private: bool) -> str:
        return with_hints(client.announce_url(private=private))

    def say(line: str) -> None:
        click.echo(f"p2pdist seed: {line}", err=True)

    stop = threading.Event()
    caught: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        caught.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    swarm = process_swarm()
    daemon = SeedDaemon(store, swarm=swarm, announce=announce, say=say)
    daemon.sync()
    start_metrics(metrics_host, metrics_port)
    torrents = sum(len(t) for t in daemon.serving.values())
    click.echo(
        f"Seeding {torrents} torrents ({len(daemon.serving)} versions) from {store.root} on "
        f"port {swarm.listen_port}, announcing to {client.base_url}; following the store; "
        "Ctrl-C or SIGTERM stops.",
        err=True,
    )
    daemon.run(
        stop,
        status_every=None if sys.stderr.isatty() else (status_every or None),
        poll=poll_every,
    )
    status = daemon.status()
    swarm.close()
    say(f"stopped on {caught[0] if caught else 'request'} ({status})")


@click.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535),
              help="Port to serve on.")  # fmt: skip
@home_option
def origin(host: str, port: int, home: Path | None) -> None:
    """Serve the store's versions over HTTP as web seeds (BEP 19) for `publish --web-seed`."""
    from p2pdist.store.cache import Store
    from p2pdist.swarm.origin import run_origin

    store = Store(config.home(home))
    click.echo(f"p2pdist origin serving {store.root} on http://{host}:{port}/", err=True)
    run_origin(store, host, port)
