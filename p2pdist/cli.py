"""The ``p2pdist`` command line: thin wrappers over the library functions a program would call.

Expected failures (every P2PDistError) print as one line, ``Error: <message>``, and exit 1;
usage errors exit 2 (click's convention); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from p2pdist import config
from p2pdist.errors import NotFoundError, P2PDistError
from p2pdist.ref import parse_ref


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


def _human(n: int) -> str:
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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="p2pdist")
def cli() -> None:
    """p2pdist: move model weights from a trainer to many machines over BitTorrent,
    verified against a signed blake3 manifest, with lossless delta updates."""


@cli.command()
@click.option(
    "--force", is_flag=True, help="Replace an existing key (consumers must accept the rotation)."
)
def keygen(force: bool) -> None:
    """Create this host's ed25519 signing key in the config dir."""
    from p2pdist.keys import generate_signing_key, load_signing_key, public_key_of

    path = generate_signing_key(overwrite=force)
    click.echo(f"Signing key: {path} (mode 600)")
    click.echo(f"Public key:  {public_key_of(load_signing_key())}")


@cli.command()
@click.argument("name")
@click.argument("public_key")
def trust(name: str, public_key: str) -> None:
    """Pin (or deliberately rotate) the publisher key of model NAME."""
    from p2pdist.keys import TrustStore

    store = TrustStore()
    previous = store.get(name)
    store.trust(name, public_key)
    verb = "Rotated" if previous and previous != public_key.lower() else "Pinned"
    click.echo(f"{verb} publisher key of {name}: {public_key.lower()}")


@cli.command("ls")
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls_cmd(home: Path | None, as_json: bool) -> None:
    """List the models and versions in the local store."""
    from p2pdist.store import Store

    store = Store(config.home(home))
    rows = []
    for name in store.models():
        for m in store.versions(name):
            rows.append(
                {
                    "ref": f"{m.name}@{m.version}",
                    "parent": m.parent,
                    "created": m.created,
                    "files": len(m.files),
                    "size": m.total_size,
                    "delta_size": m.delta_size if m.parent else None,
                    "delta_stored": store.has_delta(m.name, m.version),
                }
            )
    partial = store.partial_downloads()
    if as_json:
        payload = {"home": str(store.root), "versions": rows, "partial_downloads": partial}
        click.echo(json.dumps(payload, indent=2))
        return
    if not rows:
        click.echo(f"No models in {store.root}.")
    else:
        click.echo(f"{'REF':40} {'SIZE':>10} {'DELTA':>10} {'PARENT':10} CREATED")
    for r in rows:
        delta = "-" if r["delta_size"] is None else _human(r["delta_size"])
        if r["delta_size"] is not None and not r["delta_stored"]:
            delta = f"({delta})"  # published as a delta; this host holds only the full files
        click.echo(
            f"{r['ref']:40} {_human(r['size']):>10} {delta:>10} {r['parent'] or '-':10} {r['created']}"
        )
    if partial["count"]:
        click.echo(
            f"{partial['count']} partial download(s), {_human(partial['bytes'])} on disk "
            "(resumed by the next fetch; `p2pdist gc --partial-age 600` removes idle ones)"
        )


def _resolve_local(store: Any, ref_text: str) -> tuple[str, str]:
    ref = parse_ref(ref_text)
    if ref.is_latest:
        latest = store.latest(ref.name)
        if latest is None:
            raise NotFoundError(
                f"no version of {ref.name} in the store at {store.root}; fetch it with "
                f"`p2pdist fetch {ref.name}@latest`"
            )
        return ref.name, latest.version
    return ref.name, ref.version


@cli.command()
@click.argument("ref")
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the details as JSON.")
def info(ref: str, home: Path | None, as_json: bool) -> None:
    """Show a stored version: files, sizes (full and delta), parent, key, infohashes."""
    from p2pdist.store import Store

    store = Store(config.home(home))
    name, version = _resolve_local(store, ref)
    m = store.manifest(name, version)
    data = {
        "ref": f"{m.name}@{m.version}",
        "name": m.name,
        "version": m.version,
        "parent": m.parent,
        "created": m.created,
        "full_bytes": m.total_size,
        "delta_bytes": m.delta_size if m.parent else None,
        "files": [f.to_json() for f in m.files],
        "delta_files": [f.to_json() for f in m.delta_files],
        "torrents": m.to_json()["torrents"],
        "metadata": dict(m.metadata),
        "public_key": m.public_key,
        "snapshot": str(store.snapshot(name, version)),
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"{data['ref']}  (parent: {m.parent or 'none'}, created {m.created})")
    click.echo(f"  full:  {_human(m.total_size)} in {len(m.files)} files")
    if m.parent:
        ratio = m.delta_size / m.total_size if m.total_size else 0.0
        click.echo(f"  delta: {_human(m.delta_size)} from {m.parent} ({ratio:.1%} of full)")
    for f in m.files:
        click.echo(f"    {f.path:50} {_human(f.size):>10}  {f.blake3[:16]}…")
    click.echo(f"  publisher key: {m.public_key}")
    if m.torrent:
        click.echo(f"  torrent v1: {m.torrent.v1 or '-'}  v2: {m.torrent.v2 or '-'}")
    click.echo(f"  folder: {data['snapshot']}")


@cli.command()
@click.argument("ref")
@home_option
def verify(ref: str, home: Path | None) -> None:
    """Re-hash every file of a stored version against its signed manifest."""
    from p2pdist.store import Store

    store = Store(config.home(home))
    name, version = _resolve_local(store, ref)
    from p2pdist.keys import TrustStore

    manifest = store.manifest(name, version)
    TrustStore().check(manifest, pin=False)
    pinned = TrustStore().get(name) == manifest.public_key
    store.verify(name, version)
    key = "by the pinned publisher key" if pinned else "(publisher key not pinned on this host)"
    click.echo(
        f"OK {name}@{version}: signature valid {key}, {len(manifest.files)} files "
        f"({_human(manifest.total_size)}) match their blake3"
    )


@cli.command()
@click.argument("ref")
@home_option
def rm(ref: str, home: Path | None) -> None:
    """Remove a stored version, NAME@VERSION (its bytes are freed by `p2pdist gc`)."""
    from p2pdist.store import Store

    store = Store(config.home(home))
    if "@" not in ref:  # a bare name means @latest elsewhere; here it must be said
        stored = ", ".join(m.version for m in store.versions(parse_ref(ref).name)) or "none"
        raise click.UsageError(
            f"say which version of {ref} to remove, e.g. {ref}@latest (stored: {stored})"
        )
    parsed = parse_ref(ref)
    latest = store.latest(parsed.name) if parsed.is_latest else None
    name, version = parsed.name, latest.version if latest else parsed.version
    if (parsed.is_latest and latest is None) or not store.has(name, version):
        raise NotFoundError(f"{parsed} is not in the store at {store.root}")
    store.remove(name, version)
    click.echo(f"Removed {name}@{version}; run `p2pdist gc` to free its blobs.")


@cli.command()
@home_option
@click.option("--keep", type=click.IntRange(min=1), default=None,
              help="First remove every model's versions but the newest N (a running "
              "`p2pdist seed` stops serving the removed ones).")  # fmt: skip
@click.option("--partial-age", type=click.FloatRange(min=60), default=24 * 3600.0,
              show_default=True,
              help="Seconds an abandoned partial download must have been idle to be removed "
              "(a killed fetch can resume from it until then; a running one is never removed).")  # fmt: skip
def gc(home: Path | None, keep: int | None, partial_age: float) -> None:
    """Delete blobs that no stored version references, and abandoned downloads."""
    from p2pdist.store import Store

    store = Store(config.home(home))
    if keep is not None:
        for name in store.models():
            for old in store.versions(name)[:-keep]:
                store.remove(name, old.version)
                click.echo(f"Removed {name}@{old.version}")
    report = store.gc(partial_max_age=partial_age)
    click.echo(
        f"Removed {report.removed_blobs} unreferenced blobs and {report.removed_staging} stale "
        f"staging folders or abandoned downloads: {_human(report.freed_bytes)} freed."
    )


tracker_option = click.option(
    "--tracker", default=None, help="Tracker/registry URL (default: $P2PDIST_TRACKER)."
)
token_option = click.option(
    "--token", default=None, help="Registry token (default: $P2PDIST_TOKEN)."
)


def _wait_forever(message: str) -> None:
    import time

    click.echo(message, err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("Stopped seeding.", err=True)


@cli.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name: name or org/name.")
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
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@home_option
@tracker_option
@token_option
def publish(
    folder: Path,
    name: str,
    version: str | None,
    parent: str | None,
    web_seeds: tuple[str, ...],
    private: bool,
    torrent_version: str,
    seed: bool,
    as_json: bool,
    home: Path | None,
    tracker: str | None,
    token: str | None,
) -> None:
    """Publish FOLDER (a Hugging Face style model folder) as NAME@VERSION and seed it."""
    from p2pdist.publishing import publish as publish_version

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
        delta = f", delta {_human(m.delta_size)} from {m.parent}" if m.parent else ""
        click.echo(
            f"Published {published.ref}: {_human(m.total_size)} in {len(m.files)} files{delta}"
        )
        click.echo(f"  infohash {published.torrent.info_hash}; publisher key {m.public_key}")
    if seed:
        _wait_forever(f"Seeding {published.ref}; press Ctrl-C to stop.")


@cli.command()
@click.argument("ref")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Copy the files here too.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print a JSON summary (plan, bytes by source, seconds)."
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
@home_option
@tracker_option
@token_option
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
    home: Path | None,
    tracker: str | None,
    token: str | None,
) -> None:
    """Fetch REF (name@v3, name@latest) from the swarm, verified, into the store."""
    from p2pdist.fetcher import Fetcher
    from p2pdist.progress import progress_bar

    fetcher = Fetcher(
        home=home,
        tracker=tracker,
        token=token,
        use_web_seeds=not no_origin,
        stall_timeout=stall_timeout,
    )
    if follow:
        ignored = [flag for flag, given in (("--full", full), ("--out", out), ("--seed", seed))
                   if given]  # fmt: skip
        if ignored:
            raise click.UsageError(f"{', '.join(ignored)}: for one fetch, not with --follow "
                                   "(which seeds what it fetches)")  # fmt: skip
        if not parse_ref(ref).is_latest:
            raise click.UsageError(f"--follow follows name@latest, not {ref}")
        _follow(fetcher, ref, as_json, keep)
        return
    if keep is not None:
        raise click.UsageError("--keep applies to --follow")
    with progress_bar(enabled=not as_json) as update:
        result = fetcher.fetch(ref, out=out, seed=seed, full=full, on_progress=update)
    _print_fetch(result, as_json, indent=2)
    if seed:
        _wait_forever(
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
    click.echo(
        f"Fetched {m.name}@{m.version} ({result.plan.describe()}) in {result.seconds:.1f} s: "
        f"{_human(result.bytes_from_peers)} from peers, "
        f"{_human(result.bytes_from_web_seeds)} from web seeds"
    )
    click.echo(str(result.path))


def _follow(fetcher: Any, ref: str, as_json: bool, keep: int | None) -> None:
    """``fetch --follow``: every new version, in order, until Ctrl-C; seeds what it has."""
    from p2pdist.follower import Follower

    follower = Follower(
        ref, lambda update: _print_fetch(update.result, as_json), fetcher=fetcher, keep=keep
    )
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


@cli.command()
@home_option
def seed(home: Path | None) -> None:
    """Seed every version in the local store until stopped."""
    from p2pdist.seeder import seed_all
    from p2pdist.store import Store

    store = Store(config.home(home))

    def skipped(ref: str, error: P2PDistError) -> None:
        click.echo(f"Not seeding {ref}: {error}; check it with `p2pdist verify {ref}`", err=True)

    transfers = seed_all(store, on_skip=skipped)
    if not transfers:
        click.echo(f"Nothing to seed in {store.root}.")
        return
    _wait_forever(f"Seeding {len(transfers)} torrents from {store.root}; press Ctrl-C to stop.")


@cli.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535),
              help="Port to serve on.")  # fmt: skip
@home_option
def origin(host: str, port: int, home: Path | None) -> None:
    """Serve the store's versions over HTTP as web seeds (BEP 19) for `publish --web-seed`."""
    from p2pdist.origin import run_origin
    from p2pdist.store import Store

    store = Store(config.home(home))
    click.echo(f"p2pdist origin serving {store.root} on http://{host}:{port}/", err=True)
    run_origin(store, host, port)


@cli.command()
@click.option("--keep", is_flag=True, help="Keep the demo's temporary folder for inspection.")
@click.option("--steps", type=click.IntRange(1, 10_000), default=40, show_default=True,
              help="Training steps between versions.")  # fmt: skip
def demo(keep: bool, steps: int) -> None:
    """Train a small LM, publish v1..v3 (deltas) to consumers over a local swarm, and report."""
    from p2pdist.demo import run_demo

    sys.exit(run_demo(keep=keep, steps=steps))


def _mount_optional_groups() -> None:
    try:
        from p2pdist.tracker.cli import tracker_group
    except ImportError:  # pragma: no cover - the tracker ships in the same distribution
        return
    cli.add_command(tracker_group, "tracker")


_mount_optional_groups()


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
