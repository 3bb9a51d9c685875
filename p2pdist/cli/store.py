"""Commands on the local store: ``ls``, ``info``, ``verify``, ``rm``, ``gc``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from p2pdist import config
from p2pdist.cli.options import home_option, human
from p2pdist.errors import NotFoundError
from p2pdist.ref import parse_ref


@click.command("ls")
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls_cmd(home: Path | None, as_json: bool) -> None:
    """List the models and versions in the local store."""
    from p2pdist.store.cache import Store

    store = Store(config.home(home))
    rows: list[dict[str, Any]] = []
    for name in store.models():
        for m in store.versions(name):
            held = len(store.held_files(m.name, m.version))
            rows.append(
                {
                    "ref": f"{m.name}@{m.version}",
                    "parent": m.parent,
                    "created": m.created,
                    "files": len(m.files),
                    "size": m.total_size,
                    "delta_size": m.delta_size if m.parent else None,
                    "delta_stored": store.has_delta(m.name, m.version),
                    "partial": None
                    if held == len(m.files)
                    else {"files": held, "of": len(m.files)},
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
        delta = "-" if r["delta_size"] is None else human(r["delta_size"])
        if r["delta_size"] is not None and not r["delta_stored"]:
            delta = f"({delta})"  # published as a delta; this host holds only the full files
        some = (
            f"  partial: {r['partial']['files']} of {r['partial']['of']} files"
            if r["partial"]
            else ""
        )
        click.echo(
            f"{r['ref']:40} {human(r['size']):>10} {delta:>10} {r['parent'] or '-':10} "
            f"{r['created']}{some}"
        )
    if partial["count"]:
        click.echo(
            f"{partial['count']} partial download(s), {human(partial['bytes'])} on disk "
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


@click.command()
@click.argument("ref")
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the details as JSON.")
def info(ref: str, home: Path | None, as_json: bool) -> None:
    """Show a stored version: files, sizes (full and delta), parent, key, infohashes."""
    from p2pdist.store.cache import Store

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
    click.echo(f"  full:  {human(m.total_size)} in {len(m.files)} files")
    if m.parent:
        ratio = m.delta_size / m.total_size if m.total_size else 0.0
        click.echo(f"  delta: {human(m.delta_size)} from {m.parent} ({ratio:.1%} of full)")
    for f in m.files:
        click.echo(f"    {f.path:50} {human(f.size):>10}  {f.blake3[:16]}…")
    click.echo(f"  publisher key: {m.public_key}")
    if m.torrent:
        click.echo(f"  torrent v1: {m.torrent.v1 or '-'}  v2: {m.torrent.v2 or '-'}")
    click.echo(f"  folder: {data['snapshot']}")


@click.command()
@click.argument("ref")
@home_option
def verify(ref: str, home: Path | None) -> None:
    """Re-hash every file of a stored version against its signed manifest."""
    from p2pdist.store.cache import Store

    store = Store(config.home(home))
    name, version = _resolve_local(store, ref)
    from p2pdist.formats.keys import TrustStore

    manifest = store.manifest(name, version)
    TrustStore().check(manifest, pin=False)
    pinned = TrustStore().get(name) == manifest.public_key
    store.verify(name, version)
    key = "by the pinned publisher key" if pinned else "(publisher key not pinned on this host)"
    click.echo(
        f"OK {name}@{version}: signature valid {key}, {len(manifest.files)} files "
        f"({human(manifest.total_size)}) match their blake3"
    )


@click.command()
@click.argument("ref")
@home_option
def rm(ref: str, home: Path | None) -> None:
    """Remove a stored version, NAME@VERSION (its bytes are freed by `p2pdist gc`)."""
    from p2pdist.store.cache import Store

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


@click.command()
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
    from p2pdist.store.cache import Store

    store = Store(config.home(home))
    if keep is not None:
        for name in store.models():
            for old in store.versions(name)[:-keep]:
                store.remove(name, old.version)
                click.echo(f"Removed {name}@{old.version}")
    report = store.gc(partial_max_age=partial_age)
    click.echo(
        f"Removed {report.removed_blobs} unreferenced blobs and {report.removed_staging} stale "
        f"staging folders or abandoned downloads: {human(report.freed_bytes)} freed."
    )
