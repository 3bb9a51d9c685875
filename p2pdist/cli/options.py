"""Options and formatting shared by the command modules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from p2pdist.metrics import NodeMetrics

F = TypeVar("F", bound=Callable[..., Any])


def human(n: int) -> str:
    """Bytes in the one unit system of every display (binary: KiB, MiB, GiB)."""
    from p2pdist.progress import human_bytes

    return human_bytes(n)


home_option = click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Store folder (default: $P2PDIST_HOME, else `home` in config.toml, else ~/.cache/p2pdist).",
)


tracker_option = click.option(
    "--tracker", default=None, help="Tracker/registry URL (default: $P2PDIST_TRACKER)."
)
token_option = click.option(
    "--token", default=None, help="Registry token (default: $P2PDIST_TOKEN)."
)


def metrics_options(f: F) -> F:
    """``--metrics-port`` and ``--metrics-host`` for a long-running node command."""
    f = click.option(
        "--metrics-host", default="127.0.0.1", show_default=True,
        help="Address of the metrics endpoint (0.0.0.0 to let a scraper on another host in).",
    )(f)  # fmt: skip
    return click.option(
        "--metrics-port", type=click.IntRange(0, 65535), default=None,
        help="Serve Prometheus metrics (bytes up/down, peers, versions served, hash failures) "
        "at http://HOST:PORT/metrics; 0 picks a free port. Off unless given.",
    )(f)  # fmt: skip


def start_metrics(host: str, port: int | None) -> NodeMetrics | None:
    """Start the node's metrics endpoint when a port was given; say where it is."""
    if port is None:
        return None
    from p2pdist.metrics import serve_node_metrics

    server, node = serve_node_metrics(host, port)
    click.echo(f"Metrics at {server.url}", err=True)
    return node


def wait_forever(message: str) -> None:
    """Print ``message`` and block until Ctrl-C or SIGTERM (the swarm seeds from its own
    threads); either is a clean stop: resume data written, exit 0."""
    import signal
    import time

    def stop(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    click.echo(message, err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("Stopped seeding.", err=True)
