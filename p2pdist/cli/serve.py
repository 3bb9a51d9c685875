"""Commands that serve the store: ``seed`` (the swarm) and ``origin`` (HTTP web seed)."""

from __future__ import annotations

from pathlib import Path

import click

from p2pdist import config
from p2pdist.cli.options import home_option, metrics_options, start_metrics, wait_forever
from p2pdist.errors import P2PDistError


@click.command()
@home_option
@metrics_options  # issue 16 (ops): the optional node exporter; see p2pdist/metrics.py
def seed(home: Path | None, metrics_port: int | None, metrics_host: str) -> None:
    """Seed every version in the local store until stopped."""
    from p2pdist.store.cache import Store
    from p2pdist.swarm.seeder import seed_all

    store = Store(config.home(home))

    def skipped(ref: str, error: P2PDistError) -> None:
        click.echo(f"Not seeding {ref}: {error}; check it with `p2pdist verify {ref}`", err=True)

    transfers = seed_all(store, on_skip=skipped)
    if not transfers:
        click.echo(f"Nothing to seed in {store.root}.")
        return
    start_metrics(metrics_host, metrics_port)  # issue 16 (ops)
    wait_forever(f"Seeding {len(transfers)} torrents from {store.root}; press Ctrl-C to stop.")


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
