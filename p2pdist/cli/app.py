"""The ``p2pdist`` command line: thin wrappers over the library functions a program would call.

Expected failures (every P2PDistError) print as one line, ``Error: <message>``, and exit 1;
usage errors exit 2 (click's convention); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from p2pdist.errors import P2PDistError


class _Group(click.Group):
    """A click group that turns p2pdist's expected errors into one line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except P2PDistError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(1)
        except OSError as e:  # a path the user gave that cannot be used, a port in use, ...
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            click.echo(f"Error: {where}{e.strerror or e}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)

    # `tracker` is mounted on first use: importing it pulls in aiohttp (1.4 s on a loaded
    # 2-core machine), which every fetch and seed paid at start for nothing.
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "tracker"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "tracker" and cmd_name not in self.commands:
            try:
                from p2pdist.tracker.cli import tracker_group
            except ImportError:  # pragma: no cover - the tracker ships in the same distribution
                return None
            self.add_command(tracker_group, "tracker")
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="p2pdist")
def cli() -> None:
    """p2pdist: move model weights from a trainer to many machines over BitTorrent,
    verified against a signed blake3 manifest, with lossless delta updates."""


@cli.command()
@click.option("--keep", is_flag=True, help="Keep the demo's temporary folder for inspection.")
@click.option("--steps", type=click.IntRange(1, 10_000), default=40, show_default=True,
              help="Training steps between versions.")  # fmt: skip
def demo(keep: bool, steps: int) -> None:
    """Train a small LM, publish v1..v3 (deltas) to consumers over a local swarm, and report."""
    from p2pdist.demo.runner import run_demo

    sys.exit(run_demo(keep=keep, steps=steps))


def _add_commands() -> None:
    from p2pdist.cli import keys, registry, serve, store, transfer

    for command in (
        keys.keygen,
        keys.trust,
        store.ls_cmd,
        store.info,
        store.verify,
        store.rm,
        store.gc,
        transfer.publish,
        transfer.fetch,
        serve.seed,
        serve.origin,
        registry.yank,
        registry.tag,
        registry.rotate_key,
    ):
        cli.add_command(command)


_add_commands()


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="p2pdist")
    except SystemExit:
        raise
    except BrokenPipeError:  # pragma: no cover - e.g. `p2pdist ls | head`
        sys.exit(0)


if __name__ == "__main__":
    main()
