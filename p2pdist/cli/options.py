"""Options and formatting shared by the command modules."""

from __future__ import annotations

from pathlib import Path

import click


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


def wait_forever(message: str) -> None:
    """Print ``message`` and block until Ctrl-C (the swarm seeds from its own threads)."""
    import time

    click.echo(message, err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("Stopped seeding.", err=True)
