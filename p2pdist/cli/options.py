"""Options and formatting shared by the command modules."""

from __future__ import annotations

from pathlib import Path

import click


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


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
