"""Commands that move versions: ``publish`` and ``fetch`` (with ``--follow``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from p2pdist.cli.options import (
    home_option,
    human,
    metrics_options,
    start_metrics,
    token_option,
    tracker_option,
    wait_forever,
)
from p2pdist.errors import P2PDistError
from p2pdist.ref import parse_ref

if TYPE_CHECKING:
    from p2pdist.metrics import NodeMetrics


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--name",
    default=None,
    help="Model name: name or org/Name (default: FOLDER when it is a repo id in the HF cache).",
)
@click.option("--version", "version", default=None, help="Version (default: the next v<n>).")
@click.option("--parent", default=None, help="Publish a delta against this stored version.")
@click.option(
    "--web-seed", "web_seeds", multiple=True, help="HTTP origin URL (BEP 19), repeatable."
)
@click.option("--private", is_flag=True, help="Private model: reading and announcing need a token.")
@click.option(
    "--torrent-version",
    type=click.Choice(["1", "hybrid", "2"]),
    default="1",
    show_default=True,
    help="BitTorrent v1 (every client), hybrid v1+v2, or v2 only.",
)
@click.option(
    "--seed/--no-seed", default=True, help="Keep seeding until stopped (default) or just register."
)
@click.option(
    "--follow-symlinks",
    is_flag=True,
    help="Publish what symbolic links that leave FOLDER point to (refused by default).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@home_option
@tracker_option
@token_option
def publish(
    folder: Path,
    name: str | None,
    version: str | None,
    parent: str | None,
    web_seeds: tuple[str, ...],
    private: bool,
    torrent_version: str,
    seed: bool,
    follow_symlinks: bool,
    as_json: bool,
    home: Path | None,
    tracker: str | None,
    token: str | None,
) -> None:
    """Publish FOLDER (a Hugging Face style model folder) as NAME@VERSION and seed it.

    FOLDER may also be a repo id already in the local Hugging Face cache (``org/Name``, as
    ``hf download`` or ``fetch --hf-cache`` left it): its ``main`` snapshot is published,
    under that name unless ``--name`` says otherwise.
    """
    from p2pdist.publishing import publish as publish_version

    if not folder.exists():
        from p2pdist.store import hf_cache

        repo_id = str(folder)
        if hf_cache.in_cache(repo_id):
            folder = hf_cache.snapshot_folder(repo_id)
            name = name or repo_id
            follow_symlinks = follow_symlinks or hf_cache.links_stay_in_repo(folder)
    if name is None:
        raise click.UsageError("--name is required unless FOLDER is a repo id in the HF cache")
    published = publish_version(
        folder,
        name=name,
        version=version,
        parent=parent,
        home=home,
        tracker=tracker,
        token=token,
        web_seeds=web_seeds,
        private=private,
        torrent_version=torrent_version,  # type: ignore[arg-type]
        seed=seed,
        follow_symlinks=follow_symlinks,
    )
    m = published.manifest
    summary = {
        "ref": published.ref,
        "parent": m.parent,
        "full_bytes": m.total_size,
        "delta_bytes": m.delta_size if m.parent else None,
        "infohash_v1": published.torrent.info_hash_v1,
        "infohash_v2": published.torrent.info_hash_v2,
        "public_key": m.public_key,
        "seconds": round(published.seconds, 3),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        delta = f", delta {human(m.delta_size)} from {m.parent}" if m.parent else ""
        click.echo(
            f"Published {published.ref}: {human(m.total_size)} in {len(m.files)} files{delta}"
        )
        click.echo(f"  infohash {published.torrent.info_hash}; publisher key {m.public_key}")
    if seed:
        wait_forever(f"Seeding {published.ref}; press Ctrl-C to stop.")


@click.command()
@click.argument("ref")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Copy the files here too.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print a JSON summary (plan, bytes by source, seconds) on stdout and NDJSON "
    "progress events on stderr.",
)
@click.option("--no-origin", is_flag=True, help="Never download from web seeds (HTTP origins).")
@click.option(
    "--seed", is_flag=True, help="Keep seeding the version after the fetch, until stopped."
)
@click.option(
    "--stall-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Give up after this many seconds without data.",
)
@click.option(
    "--full",
    is_flag=True,
    help="Download the whole version even where a chain of deltas from a stored one would do.",
)
@click.option(
    "--follow",
    is_flag=True,
    help="Keep following the model: fetch each new version (by delta) as it is published.",
)
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=None,
    help="With --follow: keep only the newest N versions of the model in the store.",
)
@click.option(
    "--include",
    multiple=True,
    metavar="GLOB",
    help="Fetch only the files matching GLOB (repeatable; like allow_patterns).",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="Skip the files matching GLOB (repeatable; like ignore_patterns).",
)
@click.option(
    "--hf-cache/--no-hf-cache",
    default=None,
    help="Also place the version in the Hugging Face cache (HF_HUB_CACHE), hard-linked, so "
    "from_pretrained(NAME) finds it offline (default: the hf_cache setting, off).",
)
@click.option(
    "--keep-chain",
    is_flag=True,
    help="Keep the intermediate versions a delta chain passed through (default: removed).",
)
@home_option
@tracker_option
@token_option
@metrics_options
def fetch(
    ref: str,
    out: Path | None,
    as_json: bool,
    no_origin: bool,
    seed: bool,
    stall_timeout: float,
    full: bool,
    follow: bool,
    keep: int | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    hf_cache: bool | None,
    keep_chain: bool,
    home: Path | None,
    tracker: str | None,
    token: str | None,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    """Fetch REF (name@v3, name@latest) from the swarm, verified, into the store."""
    from p2pdist.fetcher import Fetcher
    from p2pdist.progress import progress_display

    fetcher = Fetcher(
        home=home,
        tracker=tracker,
        token=token,
        use_web_seeds=not no_origin,
        stall_timeout=stall_timeout,
        hf_cache=hf_cache,
        keep_chain=keep_chain,
    )
    if follow:
        ignored = [flag for flag, given in (("--full", full), ("--out", out), ("--seed", seed),
                   ("--include", include), ("--exclude", exclude)) if given]  # fmt: skip
        if ignored:
            raise click.UsageError(f"{', '.join(ignored)}: for one fetch, not with --follow "
                                   "(which seeds what it fetches)")  # fmt: skip
        if not parse_ref(ref).is_latest:
            raise click.UsageError(f"--follow follows name@latest, not {ref}")
        _follow(fetcher, ref, as_json, keep, start_metrics(metrics_host, metrics_port))
        return
    if keep is not None:
        raise click.UsageError("--keep applies to --follow")
    if seed and (include or exclude):
        raise click.UsageError(
            "--seed serves whole versions; a fetch with --include/--exclude holds part of one"
        )
    if metrics_port is not None and not seed:
        raise click.UsageError(
            "--metrics-port is for processes that keep running: --seed or --follow"
        )
    node_metrics = start_metrics(metrics_host, metrics_port)
    with progress_display("json" if as_json else "auto") as update:
        result = fetcher.fetch(
            ref, out=out, seed=seed, full=full, on_progress=update,
            include=include or None, exclude=exclude or None,
        )  # fmt: skip
    if node_metrics is not None:
        node_metrics.record_fetch(result)
    _print_fetch(result, as_json, indent=2)
    if seed:
        wait_forever(
            f"Seeding {result.manifest.name}@{result.manifest.version}; press Ctrl-C to stop."
        )


def _print_fetch(result: Any, as_json: bool, indent: int | None = None) -> None:
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=indent))
        return
    m = result.manifest
    if result.fallback:
        click.echo(f"Delta chain given up: {result.fallback}", err=True)
    if result.pinned_key:
        click.echo(f"Pinned publisher key of {m.name}: {m.public_key}", err=True)
    how = "in full: the delta chain was given up" if result.fallback else result.plan.describe()
    click.echo(
        f"Fetched {m.name}@{m.version} ({how}) in {result.seconds:.1f} s: "
        f"{human(result.bytes_from_peers)} from peers, "
        f"{human(result.bytes_from_web_seeds)} from web seeds"
    )
    if result.files is not None:
        click.echo(f"  partial: {len(result.files)} of {len(m.files)} files", err=True)
    if result.dropped:
        click.echo(
            f"  intermediate versions not kept: {', '.join(result.dropped)} (--keep-chain "
            "keeps them)",
            err=True,
        )
    if result.hf_cache is not None:
        click.echo(f"  {result.hf_cache.describe()}", err=True)
    click.echo(str(result.path))


def _follow(
    fetcher: Any, ref: str, as_json: bool, keep: int | None, metrics: NodeMetrics | None
) -> None:
    """``fetch --follow``: every new version, in order, until Ctrl-C; seeds what it has."""
    from p2pdist.follower import Follower

    def on_update(update: Any) -> None:
        if metrics is not None:
            metrics.record_fetch(update.result)
        _print_fetch(update.result, as_json)

    follower = Follower(ref, on_update, fetcher=fetcher, keep=keep)
    click.echo(f"Following {parse_ref(ref).name}@latest; press Ctrl-C to stop.", err=True)
    try:
        follower.run_forever()
    except KeyboardInterrupt:
        follower.stop()
        click.echo("Stopped following.", err=True)
    except P2PDistError:
        raise
    except Exception as e:
        raise P2PDistError(f"following stopped: {e}") from e
