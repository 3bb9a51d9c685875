"""Publishing a version: folder -> store (+ delta) -> signed manifest + torrents -> registry -> seed.

The same function serves ``p2pdist publish``, the trainer's CheckpointPublisher and the demo.
Everything that can be checked locally is checked before the registry hears of the version:
the folder's safetensors headers, the parent's presence, the delta's byte-exact rebuild.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.errors import (
    ConflictError,
    FormatError,
    NotFoundError,
    TrackerError,
    UnsafePathError,
)
from p2pdist.formats.header import read_header
from p2pdist.formats.manifest import (
    WEB_SEEDS_KEY,
    FileEntry,
    Manifest,
    TorrentRef,
    describe_files,
)
from p2pdist.formats.torrent import TorrentMeta, make_torrent
from p2pdist.ref import ModelRef, validate_name, validate_version
from p2pdist.store.cache import Store

TorrentVersion = Literal["1", "hybrid", "2"]


@dataclass(frozen=True)
class PublishedVersion:
    """What a publish produced: the signed manifest, its torrents, and where it lives."""

    manifest: Manifest
    snapshot: Path
    torrent: TorrentMeta
    delta_torrent: TorrentMeta | None
    seconds: float

    @property
    def ref(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version}"

    def __repr__(self) -> str:  # short: the torrents' bytes are tens of kB
        m = self.manifest
        parent = f", delta from {m.parent}" if m.parent else ""
        return (
            f"PublishedVersion({self.ref}, {len(m.files)} files, {m.total_size:,} bytes{parent}, "
            f"infohash {self.torrent.info_hash})"
        )


def torrent_name(name: str, version: str, *, delta: bool = False) -> str:
    """The root folder name inside a version's torrents, e.g. ``org--gpt@v3`` (``.delta``)."""
    base = f"{ModelRef(name).folder_name}@{version}"
    return f"{base}.delta" if delta else base


def folder_files(folder: Path, *, follow_symlinks: bool = False) -> list[str]:
    """The files a publish of ``folder`` takes, as sorted relative POSIX paths.

    Hidden entries (a name starting with ``.``) are left out, as ``list_files`` does. A
    symbolic link is published as a copy of what it points to, at the link's path, when its
    target lies inside the folder; a link that leaves the folder (to a file or a directory)
    is refused, since its bytes are not the folder's, unless ``follow_symlinks`` says to take
    them deliberately (a Hugging Face cache snapshot is such a folder of links). A dangling
    link, a link loop, or anything that is neither a file nor a directory (a FIFO, a socket)
    is refused too: nothing in the folder is ever skipped silently.
    """
    root = folder.resolve()
    out: list[str] = []

    def walk(directory: Path, rel: PurePosixPath, ancestors: frozenset[Path]) -> None:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            path, relpath = Path(entry.path), rel / entry.name
            target = path
            if entry.is_symlink():
                try:
                    target = path.resolve(strict=True)
                except (OSError, RuntimeError):  # dangling, or a loop of links
                    raise FormatError(
                        f"{folder}: {relpath} is a symbolic link to nothing "
                        f"({os.readlink(path)}); remove it or point it at a file"
                    ) from None
                if not follow_symlinks and not target.is_relative_to(root):
                    raise UnsafePathError(
                        f"{folder}: {relpath} is a symbolic link to {target}, outside the "
                        "folder; copy the file in, or publish with --follow-symlinks to "
                        "publish what it points to"
                    )
            if target.is_dir():
                real = target.resolve()
                if real in ancestors:
                    raise FormatError(
                        f"{folder}: {relpath} leads back into {real} (a loop of links); "
                        "remove the link"
                    )
                walk(path, relpath, ancestors | {real})
            elif target.is_file():
                out.append(relpath.as_posix())
            else:
                raise FormatError(
                    f"{folder}: {relpath} is neither a file nor a folder; remove it or move "
                    "it out of the folder"
                )

    walk(folder, PurePosixPath(), frozenset({root}))
    return sorted(out)


def check_folder(folder: Path, *, follow_symlinks: bool = False) -> list[str]:
    """The files a version folder would publish (``folder_files``); every safetensors
    header is validated."""
    if not folder.is_dir():
        raise NotFoundError(f"{folder}: not a folder; publish a Hugging Face style model folder")
    files = folder_files(folder, follow_symlinks=follow_symlinks)
    if not any(f.endswith(".safetensors") for f in files):
        raise FormatError(
            f"{folder}: no .safetensors files; save the model with safetensors "
            "(save_pretrained(..., safe_serialization=True)) first"
        )
    for f in files:
        if f.endswith(".safetensors"):
            read_header(folder / f)
    return files


def check_web_seeds(urls: Sequence[str]) -> None:
    """Refuse a web seed that is not an http(s) URL with a host (it would be signed into the
    torrent, and every consumer would try it)."""
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or url.split() != [url]:
            raise FormatError(
                f"web seed {url!r} is not an http(s) URL: give the folder that holds the "
                "version, as in http://host:8000/ (see `p2pdist origin`)"
            )


def signed_metadata(metadata: dict[str, str] | None, web_seeds: Sequence[str]) -> dict[str, str]:
    """The manifest's metadata: the publisher's, plus its web seeds under ``WEB_SEEDS_KEY``
    (signed with the rest, so that a registry cannot add any; see docs/SECURITY.md)."""
    out = dict(metadata or {})
    if web_seeds:
        out[WEB_SEEDS_KEY] = "\n".join(web_seeds)
    return out


def build_version(
    folder: str | Path,
    *,
    name: str,
    version: str,
    key: Ed25519PrivateKey,
    store: Store,
    parent: str | None = None,
    announce: Sequence[str] = (),
    web_seeds: Sequence[str] = (),
    private: bool = False,
    torrent_version: TorrentVersion = "1",
    metadata: dict[str, str] | None = None,
    follow_symlinks: bool = False,
) -> PublishedVersion:
    """Write a version into the store with its delta, torrents and signed manifest.

    The folder is left untouched. With ``parent``, that version must already be in the store
    (a publisher always has its previous version); the delta is encoded against it and
    decoded again before the manifest is signed, so a delta that does not rebuild is never
    published.
    """
    started = time.monotonic()
    folder = Path(folder)
    validate_name(name)
    validate_version(version)
    if parent is not None:
        validate_version(parent)
        if parent == version:
            raise FormatError(f"{name}@{version}: a version cannot be its own parent")
    check_web_seeds(web_seeds)
    files = check_folder(folder, follow_symlinks=follow_symlinks)
    entries = describe_files(folder, files)
    full = make_torrent(
        folder,
        [e.path for e in entries],
        name=torrent_name(name, version),
        announce=announce,
        web_seeds=web_seeds,
        private=private,
        version=torrent_version,
    )
    manifest = Manifest(
        name=name,
        version=version,
        files=entries,
        parent=parent,
        torrent=TorrentRef(full.info_hash_v1, full.info_hash_v2),
        metadata=signed_metadata(metadata, web_seeds),
    )
    with store.staging() as stage:
        delta_dir: Path | None = None
        delta_meta: TorrentMeta | None = None
        if parent is not None:
            parent_snapshot = store.snapshot(name, parent)
            delta_dir = stage / "delta"
            parent_entries = store.manifest(name, parent).files
            delta_entries = _encode_delta(
                parent_snapshot, parent_entries, folder, delta_dir, entries, stage
            )
            delta_meta = make_torrent(
                delta_dir,
                [e.path for e in delta_entries],
                name=torrent_name(name, version, delta=True),
                announce=announce,
                web_seeds=web_seeds,
                private=private,
                version=torrent_version,
            )
            manifest = replace(
                manifest,
                delta_files=delta_entries,
                delta_torrent=TorrentRef(delta_meta.info_hash_v1, delta_meta.info_hash_v2),
            )
        manifest = manifest.signed(key)
        snapshot = store.add_version(
            manifest,
            folder,
            delta_dir=delta_dir,
            torrent=full.data,
            delta_torrent=delta_meta.data if delta_meta else None,
            move=False,
            verified=True,
        )
    return PublishedVersion(manifest, snapshot, full, delta_meta, time.monotonic() - started)


def _encode_delta(
    parent_snapshot: Path,
    parent_entries: tuple[FileEntry, ...],
    folder: Path,
    delta_dir: Path,
    entries: tuple[FileEntry, ...],
    stage: Path,
) -> tuple[FileEntry, ...]:
    from p2pdist import delta as delta_codec

    delta_dir.mkdir(parents=True)
    written = delta_codec.encode(
        parent_snapshot, folder, delta_dir, new_files=entries, parent_files=parent_entries
    )
    delta_entries = describe_files(delta_dir, written)
    # Prove the delta rebuilds the version byte for byte before anyone can download it.
    rebuilt = stage / "rebuilt"
    rebuilt.mkdir()
    delta_codec.decode(parent_snapshot, delta_dir, rebuilt, expected=entries)
    return delta_entries


def next_version(existing: Sequence[str]) -> str:
    """``v{n+1}`` after the highest ``v<n>`` among ``existing`` (``v1`` when there is none)."""
    numbers = [int(v[1:]) for v in existing if v.startswith("v") and v[1:].isdigit()]
    return f"v{max(numbers, default=0) + 1}"


def publish(
    folder: str | Path,
    *,
    name: str,
    version: str | None = None,
    parent: str | None = None,
    home: str | Path | None = None,
    tracker: str | None = None,
    token: str | None = None,
    web_seeds: Sequence[str] = (),
    private: bool = False,
    torrent_version: TorrentVersion = "1",
    seed: bool = True,
    metadata: dict[str, str] | None = None,
    key: Ed25519PrivateKey | None = None,
    swarm: Any = None,
    follow_symlinks: bool = False,
) -> PublishedVersion:
    """Publish a model folder as ``name@version``: store, sign, register, and seed.

    ``version`` defaults to the next ``v<n>`` the registry has not seen. The signing key is
    this host's (``p2pdist keygen``; created on first publish when absent). With ``seed`` the
    version is served by this process's swarm while it lives. Symbolic links that leave the
    folder are refused unless ``follow_symlinks`` (see ``folder_files``).
    """
    from p2pdist import config
    from p2pdist.client import RegistryClient

    validate_name(name)  # before the registry is asked anything about it
    if version is not None:
        validate_version(version)
    check_web_seeds(web_seeds)
    client = RegistryClient(config.tracker_url(tracker), config.token(token))
    store = Store(config.home(home))
    folder = Path(folder)
    wanted = _Options(
        parent, signed_metadata(metadata, web_seeds), private, tuple(web_seeds), torrent_version
    )
    registered = _registered(client, name, needed=version is None)
    described = functools.cache(
        lambda: describe_files(folder, check_folder(folder, follow_symlinks=follow_symlinks))
    )
    if version is None:
        version = _choose_version(store, described, name, wanted, registered)
    if store.has(name, version):
        published = _already_built(
            store, described, name, version, wanted, None if registered is None else version in registered
        )  # fmt: skip
    else:
        if parent is not None and not store.has(name, parent):
            raise _unknown_parent(store, name, parent, registered)
        published = _build_new(
            folder, store, client, key, name, version, parent, web_seeds, private,
            torrent_version, metadata, follow_symlinks,
        )  # fmt: skip
    client.publish(
        published.manifest.to_bytes(),
        published.torrent.data,
        published.delta_torrent.data if published.delta_torrent else None,
        private=private,
    )
    if seed:
        from p2pdist.swarm.seeder import seed_version

        seed_version(store, name, version, swarm=swarm)
    return published


def _unknown_parent(
    store: Store, name: str, parent: str, registered: list[str] | None
) -> NotFoundError:
    """Why ``--parent`` cannot be used, and the next step: fetch it when the registry has it;
    when it exists nowhere, publish without it or name one that exists."""
    if registered is not None and parent not in registered:
        stored = [m.version for m in store.versions(name)]
        have = ", ".join(stored[-5:]) or "none"
        return NotFoundError(
            f"--parent {parent}: {name}@{parent} exists neither in the store nor in the "
            f"registry; publish without --parent or name a stored version (stored: {have})"
        )
    return NotFoundError(
        f"--parent {parent}: {name}@{parent} is not in the store at {store.root}; fetch it "
        f"first with `p2pdist fetch {name}@{parent}`"
    )


def _registered(client: Any, name: str, *, needed: bool) -> list[str] | None:
    """The versions the registry lists for ``name`` ([] for a model it does not know). When
    it cannot be asked: its error if the answer is ``needed`` (to number a version), else
    None (the publish then fails where it registers, saying why)."""
    try:
        return [v["version"] for v in client.list_versions(name)]
    except NotFoundError:
        return []
    except TrackerError:
        if needed:
            raise
        return None


def _number(version: str) -> int | None:
    return int(version[1:]) if version.startswith("v") and version[1:].isdigit() else None


def _choose_version(
    store: Store,
    described: Callable[[], tuple[FileEntry, ...]],
    name: str,
    wanted: _Options,
    registered: list[str] | None,
) -> str:
    """The version a publish without ``--version`` gets: the newest stored version the
    registry never accepted, when it is newer than every registered one and holds exactly
    this publish (files and options: a retry after a refused registration), else the next
    ``v<n>`` after every version the registry or the store has."""
    assert registered is not None  # _registered raised otherwise
    stored = [m.version for m in store.versions(name)]
    newest_registered = max((n for v in registered if (n := _number(v)) is not None), default=0)
    retry = [
        v for v in stored if v not in set(registered) and (_number(v) or 0) > newest_registered
    ]
    if retry:
        candidate = max(retry, key=lambda v: _number(v) or 0)
        manifest = store.manifest(name, candidate)
        same_files = described() == manifest.files
        if same_files and not _differences(store, name, candidate, wanted):
            return candidate
    return next_version(registered + stored)


@dataclass(frozen=True)
class _Options:
    """What a publish asks for beyond the files, to compare with a version stored earlier.
    (Not the announce URL: outside the infohash, and rewritten by every consumer.)"""

    parent: str | None
    metadata: dict[str, str]
    private: bool
    web_seeds: tuple[str, ...]
    torrent_version: TorrentVersion


def _differences(store: Store, name: str, version: str, wanted: _Options) -> list[str]:
    """How a stored version differs from what a publish asks for, in words ([] if it does not)."""
    from p2pdist.formats.torrent import read_torrent

    manifest = store.manifest(name, version)
    data = store.torrent(name, version, "full")
    if data is None:
        return ["no torrent"]
    full = read_torrent(data)
    kind = (
        "hybrid" if full.info_hash_v1 and full.info_hash_v2 else "1" if full.info_hash_v1 else "2"
    )
    return [
        f"{what} {theirs!r} (asked: {ours!r})"
        for what, theirs, ours in (
            ("parent", manifest.parent, wanted.parent),
            ("metadata", dict(manifest.metadata), wanted.metadata),
            ("private", full.private, wanted.private),
            ("web seeds", list(full.web_seeds), list(wanted.web_seeds)),
            ("torrent version", kind, wanted.torrent_version),
        )
        if theirs != ours
    ]


def _already_built(
    store: Store,
    described: Callable[[], tuple[FileEntry, ...]],
    name: str,
    version: str,
    wanted: _Options,
    registered: bool | None,
) -> PublishedVersion:
    """A version this host stored earlier (a publish whose registration failed, or an identical
    re-publish): reuse it, if it is what this publish asks for. ``registered``: whether the
    registry lists it (None: unknown)."""
    from p2pdist.formats.torrent import read_torrent

    manifest = store.manifest(name, version)
    if described() != manifest.files:
        raise ConflictError(
            f"{name}@{version} is already in the local store with other files; "
            "versions are immutable: publish a new version"
        )
    differences = _differences(store, name, version, wanted)
    if differences:
        what = f"{name}@{version} was built earlier on this host with {'; '.join(differences)}"
        if registered:
            raise ConflictError(f"{what}, and is published so; a version cannot change: "
                                "publish a new version")  # fmt: skip
        since = "as" if registered is False else "if"  # None: the registry could not be asked
        raise ConflictError(
            f"{what}. A version cannot change: publish it as it was, or, {since} the registry "
            f"never accepted it, remove it (`p2pdist rm {name}@{version}`) and publish again"
        )
    full = store.torrent(name, version, "full")
    delta = store.torrent(name, version, "delta")
    assert full is not None  # _differences says "no torrent" otherwise
    return PublishedVersion(
        manifest,
        store.snapshot(name, version),
        read_torrent(full),
        read_torrent(delta) if delta else None,
        0.0,
    )


def _build_new(
    folder: str | Path,
    store: Store,
    client: Any,
    key: Ed25519PrivateKey | None,
    name: str,
    version: str,
    parent: str | None,
    web_seeds: Sequence[str],
    private: bool,
    torrent_version: TorrentVersion,
    metadata: dict[str, str] | None,
    follow_symlinks: bool = False,
) -> PublishedVersion:
    from p2pdist.formats.keys import load_signing_key

    return build_version(
        folder,
        name=name,
        version=version,
        key=key or load_signing_key(create=True),
        store=store,
        parent=parent,
        announce=client.announce_urls(private),
        web_seeds=web_seeds,
        private=private,
        torrent_version=torrent_version,
        metadata=metadata,
        follow_symlinks=follow_symlinks,
    )
