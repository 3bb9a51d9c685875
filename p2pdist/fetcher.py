"""Fetching a version: resolve, trust, plan, download, verify, commit, (seed).

``fetch(ref)`` is the whole of it for a program; ``fetch_version`` returns the details the
CLI's ``--json`` prints. The order matters and is the point of this module:

1. resolve ``latest`` with the registry;
2. verify the manifest's signature against the model's pinned publisher key *before* any
   download (trust on first use pins it);
3. check each .torrent against the infohashes and files the signed manifest names;
4. download into a partial folder that survives a killed process (resume), verify every
   file's blake3, rebuild deltas byte-exactly, and commit to the store in one rename.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from p2pdist import config
from p2pdist.client import RegistryClient
from p2pdist.errors import (
    FormatError,
    IntegrityError,
    NotFoundError,
    SignatureError,
    StoreError,
    SwarmError,
    TrackerError,
)
from p2pdist.formats.keys import TrustStore
from p2pdist.formats.manifest import FileEntry, Manifest, TorrentRef, verify_entries
from p2pdist.formats.torrent import TorrentMeta, read_torrent
from p2pdist.ref import ModelRef, parse_ref
from p2pdist.store.cache import DELTA, SNAPSHOT, Store, damaged
from p2pdist.store.records import RECORDS_DIR, VerifiedRecords, check_file_once
from p2pdist.store.writeback import Writeback
from p2pdist.swarm.plan import FetchPlan, make_plan

log = logging.getLogger(__name__)

_COPY_CHUNK = 8 << 20

ProgressCallback = Callable[[str, Any], None]


@dataclass(frozen=True)
class FetchResult:
    """What a fetch did: the plan, where the version is, and what it cost."""

    manifest: Manifest
    path: Path
    plan: FetchPlan
    bytes_from_peers: int
    bytes_from_web_seeds: int
    hash_failures: int
    seconds: float
    pinned_key: bool
    fallback: str | None = None
    """Why a planned delta chain was given up for the full download (None: it was not)."""
    files: tuple[str, ...] | None = None
    """The files fetched when ``include``/``exclude`` chose some (None: all of them)."""
    hf_cache: Any = None
    """The ``hf_cache.Placement`` when the version was placed in the Hugging Face cache."""
    dropped: tuple[str, ...] = ()
    """Intermediate versions of a delta chain fetched, used and not kept (``keep_chain``)."""

    def __repr__(self) -> str:
        return (
            f"FetchResult({self.manifest.name}@{self.manifest.version}, {self.plan.kind}, "
            f"path={str(self.path)!r}, {self.seconds:.1f} s)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ref": f"{self.manifest.name}@{self.manifest.version}",
            "path": str(self.path),
            "plan": self.plan.kind,
            "plan_detail": self.plan.describe(),
            "base": self.plan.base,
            "chain": [m.version for m in self.plan.chain],
            "planned_bytes": self.plan.bytes,
            "full_bytes": self.plan.full_bytes,
            "bytes_from_peers": self.bytes_from_peers,
            "bytes_from_web_seeds": self.bytes_from_web_seeds,
            "hash_failures": self.hash_failures,
            "seconds": round(self.seconds, 3),
            "pinned_key": self.pinned_key,
            "fallback": self.fallback,
            "files": None if self.files is None else list(self.files),
            "hf_cache": None if self.hf_cache is None else str(self.hf_cache.snapshot),
            "dropped": list(self.dropped),
            "downloaded": "full" if self.fallback else self.plan.kind,
        }


class Fetcher:
    """Fetches versions of models from one registry into one store."""

    def __init__(
        self,
        *,
        home: str | Path | None = None,
        tracker: str | None = None,
        token: str | None = None,
        use_web_seeds: bool = True,
        stall_timeout: float = 60.0,
        swarm: Any = None,
        client: RegistryClient | None = None,
        trust: TrustStore | None = None,
        web_seeds: Sequence[str] | None = None,
        hf_cache: bool | None = None,
        keep_chain: bool = False,
    ) -> None:
        self.store = Store(config.home(home))
        self.client = client or RegistryClient(config.tracker_url(tracker), config.token(token))
        self.trust = trust or TrustStore()
        self.use_web_seeds = use_web_seeds
        self.web_seeds = config.web_seeds(web_seeds)
        """Web seeds this host trusts for every version, besides each manifest's signed ones."""
        self.stall_timeout = stall_timeout
        self._swarm = swarm
        self._pinned = False
        self.hf_cache = config.hf_cache_default(hf_cache)
        self.keep_chain = keep_chain
        self.writeback_interval = config.writeback_interval()
        """Seconds between flushes of a running download to disk (0: only at the commit)."""

    @property
    def swarm(self) -> Any:
        if self._swarm is None:
            from p2pdist.swarm.seeder import process_swarm

            self._swarm = process_swarm()
        return self._swarm

    # -- resolution and trust -----------------------------------------------------------------
    def resolve(self, ref: ModelRef) -> ModelRef:
        """``latest`` or a movable tag to the version it names now; a withdrawn version is
        refused (NotFoundError with the publisher's reason). With the tracker out of reach an
        exact version stays as asked (it may be stored)."""
        if ref.is_latest:
            return ref.with_version(self.client.latest(ref.name))
        try:
            return ref.with_version(self.client.resolve(ref.name, ref.version))
        except TrackerError:
            return ref

    def trusted_manifest(self, name: str, version: str) -> Manifest:
        """The registry's manifest of name@version, signature and publisher key checked."""
        data = self.client.manifest_bytes(name, version)
        manifest = Manifest.from_bytes(data, source=f"manifest of {name}@{version}")
        if (manifest.name, manifest.version) != (name, version):
            raise SignatureError(
                f"the registry answered {name}@{version} with the manifest of "
                f"{manifest.name}@{manifest.version}; refusing it"
            )
        if self.trust.check(manifest):
            self._pinned = True
        return manifest

    def checked_torrent(self, manifest: Manifest, kind: str) -> TorrentMeta:
        """The registry's torrent, refused unless it is exactly the one the manifest names."""
        ref = manifest.torrent if kind == "full" else manifest.delta_torrent
        entries = manifest.files if kind == "full" else manifest.delta_files
        where = f"{manifest.name}@{manifest.version} ({kind} torrent)"
        if ref is None:
            raise NotFoundError(f"{where}: the manifest names no such torrent")
        meta = read_torrent(self.client.torrent(manifest.name, manifest.version, kind))
        _check_torrent(meta, ref, entries, where)
        # Announce to the tracker this host is configured with, under its own passkey for a
        # private model (not the publisher's), and dial only the web seeds the publisher
        # signed or this host configured: the infohash covers only the info dict, so the
        # registry could have changed both (docs/SECURITY.md).
        announce = self.announce_urls(meta.private)
        seeds = tuple(dict.fromkeys((*manifest.web_seeds, *self.web_seeds)))
        unsigned = [url for url in meta.web_seeds if url not in seeds]
        if unsigned:
            log.warning(
                "%s: ignoring web seed(s) the signed manifest does not name: %s",
                where,
                ", ".join(unsigned),
            )
        # The info dict is kept byte for byte, so only these fields change.
        data = _rewritten(meta.data, announce, seeds)
        return dataclasses.replace(meta, data=data, announce=tuple(announce), web_seeds=seeds)

    def announce_urls(self, private: bool) -> list[str]:
        """Where this host announces: every configured tracker (this host's passkey for a
        private model), with its announced address and site when configured."""
        from p2pdist.swarm.seeder import with_hints

        return [with_hints(url) for url in self.client.announce_urls(private=private)]

    def announce_url(self, private: bool) -> str:
        """The first of ``announce_urls``: what a seeded version announces to."""
        return self.announce_urls(private)[0]

    # -- the fetch ----------------------------------------------------------------------------
    def fetch(
        self,
        ref_text: str,
        *,
        out: str | Path | None = None,
        seed: bool = False,
        full: bool = False,
        on_progress: ProgressCallback | None = None,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        hf_cache: bool | None = None,
    ) -> FetchResult:
        """Fetch ``ref_text`` into the store (see the module docstring for the order of steps).

        A delta chain whose download stalls (its versions no longer seeded, say after the
        publisher's retention removed them) is given up for the full download, and the result
        says why; ``full=True`` skips delta chains from the start. ``include``/``exclude``
        (globs, as huggingface_hub's ``allow_patterns``/``ignore_patterns``) fetch only the
        files they choose (the version is stored as partial). ``hf_cache`` (default: the
        ``hf_cache`` setting) places the version in the Hugging Face cache as well.
        """
        started = time.monotonic()
        self._pinned = False
        asked = parse_ref(ref_text)
        ref = self.resolve(asked)
        try:
            target = self.trusted_manifest(ref.name, ref.version)
        except TrackerError:
            if asked.is_latest or not self.store.has(ref.name, ref.version):
                raise
            # a version named exactly and already stored needs no registry; its stored
            # manifest must still be signed by the key pinned for the model
            target = self.store.manifest(ref.name, ref.version)
            self.trust.check(target, pin=False)
            log.warning("the registry cannot be reached; %s is served from the store", ref)
        chosen = select_files(target, include, exclude)
        if (
            chosen is None
            and self.store.has(ref.name, ref.version)
            and self.store.is_partial(ref.name, ref.version)
        ):  # a partial version, now asked for whole: complete it
            chosen = tuple(f.path for f in target.files)
        if chosen is not None and self.store.has(ref.name, ref.version):
            held = self.store.held_files(ref.name, ref.version)
            if held >= set(chosen):
                chosen = None if held >= {f.path for f in target.files} else tuple(sorted(held))
            else:  # a partial version that this fetch extends: one download of both
                chosen = tuple(sorted(held | set(chosen)))
        if chosen is not None and not set(chosen) <= self._held(ref.name, ref.version):
            have = self._held(ref.name, ref.version)
            size = sum(f.size for f in target.files if f.path in set(chosen) - have)
            plan = FetchPlan("full", target, size, target.total_size)
        elif full and not self.store.has(ref.name, ref.version):
            plan = FetchPlan("full", target, target.total_size, target.total_size)
        else:
            plan = make_plan(
                target,
                lambda v: self.store.has(ref.name, v) and not self.store.is_partial(ref.name, v),
                lambda v: self.trusted_manifest(ref.name, v),
            )
        fallback = None
        if plan.kind != "local":
            self._check_space(plan)
        # Each version is downloaded and committed under its own lock, and a process holds
        # at most one such lock at a time (no lock-order cycles between fetches of different
        # targets that share a chain); after taking it, the store is asked again.
        peers = web = failures = 0
        if plan.kind == "local":
            stored = self.store.manifest(ref.name, ref.version)
            if stored.to_bytes() != target.to_bytes():
                raise IntegrityError(
                    f"{ref}: the stored manifest differs from the registry's; remove the local "
                    f"copy with `p2pdist rm {ref}` and fetch again"
                )
            self._check_stored(target)
        elif plan.kind == "full":
            peers, web, failures = self._fetch_full(target, on_progress, only=chosen)
        else:
            assert plan.base is not None
            try:
                peers, web, failures = self._fetch_chain(plan.base, plan.chain, on_progress)
            except SwarmError as stalled:
                log.warning("%s; fetching %s in full instead", stalled, ref)
                full_size = target.total_size
                self._check_space(FetchPlan("full", target, full_size, full_size))
                peers, web, failures = self._fetch_full(target, on_progress)
                # said only once the full download has worked (it may fail too)
                fallback = f"{stalled}; fetched {ref} in full instead ({full_size:,} bytes)"
        dropped = () if self.keep_chain or plan.kind != "delta" else self._drop_chain(plan)
        snapshot = self.store.snapshot(ref.name, ref.version)
        placed = None
        if self.hf_cache if hf_cache is None else hf_cache:
            from p2pdist.store import hf_cache as hf

            placed = hf.place(self.store, ref.name, ref.version)
        if seed:
            from p2pdist.swarm.seeder import seed_version

            seed_version(
                self.store, ref.name, ref.version, swarm=self.swarm, announce=self.announce_url
            )
        held = self.store.held_files(ref.name, ref.version)
        path = snapshot if out is None else _copy_out(snapshot, target, Path(out), held)
        seconds = time.monotonic() - started
        files = None if len(held) == len(target.files) else tuple(sorted(held))
        return FetchResult(
            target, path, plan, peers, web, failures, seconds, self._pinned, fallback,
            files, placed, dropped,
        )  # fmt: skip

    def _held(self, name: str, version: str) -> set[str]:
        return set(self.store.held_files(name, version)) if self.store.has(name, version) else set()

    def _drop_chain(self, plan: FetchPlan) -> tuple[str, ...]:
        """Remove the versions a delta chain passed through on its way to the target (they
        were not asked for; ``keep_chain`` keeps them). The base and the target stay."""
        dropped: list[str] = []
        digests: set[str] = set()
        for manifest in plan.chain[:-1]:
            if self.store.has(manifest.name, manifest.version):
                self.store.remove(manifest.name, manifest.version)
                dropped.append(manifest.version)
                digests.update(f.blake3 for f in (*manifest.files, *manifest.delta_files))
        self.store.release_blobs(digests)
        return tuple(dropped)

    def _download(
        self,
        meta: TorrentMeta,
        label: str,
        on_progress: ProgressCallback | None,
        only: tuple[str, ...] | None = None,
    ) -> tuple[Path, Any]:
        dest = self.store.partial_dir(meta.info_hash)
        extra: dict[str, Any] = {} if only is None else {"only_files": only}
        last: list[Any] = []

        def report(p: Any) -> None:
            last[:] = [p]
            assert on_progress is not None
            on_progress(label, p)

        with self.store.downloading(meta.info_hash), Writeback(dest, self.writeback_interval):
            result = self.swarm.download(
                meta.data,
                dest,
                resume_file=self.store.resume_path(meta.info_hash),
                use_web_seeds=self.use_web_seeds,
                on_progress=None if on_progress is None else report,
                stall_timeout=self.stall_timeout,
                **extra,
            )
        if on_progress is not None:  # the swarm may stop before its last update: say it ended
            from p2pdist.swarm.transfer import Progress

            total = sum(size for path, size in meta.files if only is None or path in only)
            peers = last[0].peers if last else 0
            rate = int(total / result.seconds) if result.seconds > 0 else 0
            on_progress(label, Progress(total, total, rate, 0, peers, 0, "finished", 0.0))
        return dest, result

    def _fetch_full(
        self,
        manifest: Manifest,
        on_progress: ProgressCallback | None,
        only: tuple[str, ...] | None = None,
    ) -> tuple[int, int, int]:
        with self.store.lock(manifest.name, manifest.version):
            wanted = set(only) if only is not None else {f.path for f in manifest.files}
            if wanted <= self._held(manifest.name, manifest.version):  # another process got it
                return 0, 0, 0
            meta = self.checked_torrent(manifest, "full")
            label = f"{manifest.name}@{manifest.version}"
            held = self._held(manifest.name, manifest.version) & wanted
            missing = None if not held and only is None else tuple(sorted(wanted - held))
            dest, result = self._download(meta, label, on_progress, missing)
            # Files of a partial version already held come from the store (after the
            # download: libtorrent never writes into a store blob), not from the swarm again.
            snapshot = self.store.version_dir(manifest.name, manifest.version) / SNAPSHOT
            for path in sorted(held):
                target = dest / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.unlink(missing_ok=True)
                try:
                    os.link((snapshot / path).resolve(), target)
                except OSError:  # a filesystem without hard links
                    shutil.copyfile((snapshot / path).resolve(), target)
            self._commit(manifest, dest, meta, only)
        return result.bytes_from_peers, result.bytes_from_web_seeds, result.hash_failures

    def _fetch_chain(
        self, base: str, chain: tuple[Manifest, ...], on_progress: ProgressCallback | None
    ) -> tuple[int, int, int]:
        peers = web = failures = 0
        parent = base
        for manifest in chain:
            if manifest.parent != parent:
                raise FormatError(f"{manifest.name}@{manifest.version}: delta chain is broken")
            with self.store.lock(manifest.name, manifest.version):
                if not self.store.has(manifest.name, manifest.version):
                    got = self._fetch_delta(manifest, parent, on_progress)
                    peers, web, failures = peers + got[0], web + got[1], failures + got[2]
            parent = manifest.version
        return peers, web, failures

    def _fetch_delta(
        self, manifest: Manifest, parent: str, on_progress: ProgressCallback | None
    ) -> tuple[int, int, int]:
        """Download one version's delta, rebuild it from ``parent`` and commit it."""
        from p2pdist import delta as delta_codec

        meta = self.checked_torrent(manifest, "delta")
        label = f"{manifest.name}@{manifest.version} (delta from {parent})"
        delta_dir, result = self._download(meta, label, on_progress)
        verify_entries(manifest.delta_files, delta_dir)
        with self.store.staging() as stage:
            rebuilt = stage / "files"
            rebuilt.mkdir()
            try:
                delta_codec.decode(
                    self.store.snapshot(manifest.name, parent),
                    delta_dir,
                    rebuilt,
                    expected=manifest.files,
                    # The parent's blobs were verified when stored: hash them only if the
                    # delta does not rebuild from them (below), not on every fetch.
                    verify_parent=False,
                    # Files the version keeps as they were are blobs the store holds: linked,
                    # not copied (8 RL followers of a 64 MiB model, 3 of 4 shards unchanged:
                    # BENCHMARKS.md, "Cluster", part 4).
                    link_copies=True,
                )
            except (FormatError, IntegrityError) as failure:
                self._blame_damaged_parent(manifest, parent, failure)
                raise
            # Keep the full torrent too, so this host seeds the version to late joiners.
            full_torrent = self.checked_torrent(manifest, "full").data
            self.store.add_version(
                manifest,
                rebuilt,
                delta_dir=delta_dir,
                torrent=full_torrent,
                delta_torrent=meta.data,
                move=True,
                verified=True,
            )
        shutil.rmtree(delta_dir, ignore_errors=True)
        return result.bytes_from_peers, result.bytes_from_web_seeds, result.hash_failures

    def _check_space(self, plan: FetchPlan) -> None:
        """Refuse up front a fetch that cannot fit (it would fill the disk, then fail): the
        download, plus for a delta chain the largest version it rebuilds; what this fetch's
        own partial downloads already hold counts as available (resumed, it needs no new
        space for that)."""
        if plan.kind == "delta":  # each step rebuilds one version in staging, then commits it
            needed = plan.bytes + max(m.total_size for m in plan.chain)
            refs = [m.delta_torrent for m in plan.chain]
        else:
            needed, refs = plan.bytes, [plan.target.torrent]
        resumable = sum(self.store.partial_bytes(r.v1 or r.v2 or "") for r in refs if r)
        self.store.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.store.root).free
        if free + resumable < needed:
            raise StoreError(
                f"{plan.target.name}@{plan.target.version} needs {needed:,} bytes in "
                f"{self.store.root} and {free:,} are free; free space or fetch into another "
                "--home"
            )

    def _check_stored(self, manifest: Manifest) -> None:
        """A stored version is handed out only as it was stored: each file hashed once, then
        trusted while its identity (inode, size, times) is unchanged (the verify-once records
        that loading uses): a later write or truncation is caught, at the cost of a stat."""
        ref = f"{manifest.name}@{manifest.version}"
        vdir = self.store.version_dir(manifest.name, manifest.version)
        records = VerifiedRecords(self.store.root / RECORDS_DIR)
        held = self.store.held_files(manifest.name, manifest.version)
        parts = [(vdir / SNAPSHOT, tuple(f for f in manifest.files if f.path in held))]
        if self.store.has_delta(manifest.name, manifest.version):  # it seeds them too
            parts.append((vdir / DELTA, manifest.delta_files))
        for folder, entries in parts:
            for entry in entries:
                self._check_stored_file(ref, folder / entry.path, entry, records)

    @staticmethod
    def _check_stored_file(
        ref: str, path: Path, entry: FileEntry, records: VerifiedRecords
    ) -> None:
        try:
            check_file_once(path, entry, records)
        except IntegrityError as e:
            if e.actual is not None:
                reason = f"blake3 {e.actual} differs from the manifest's {entry.blake3}"
            else:
                reason = "missing" if not path.exists() else "not the size the manifest says"
            e.path, e.expected = entry.path, entry.blake3
            raise damaged(ref, f"{entry.path}: {reason}", e) from None

    def _blame_damaged_parent(self, manifest: Manifest, parent: str, failure: Exception) -> None:
        """A delta that does not rebuild from a stored parent whose files no longer match that
        parent's manifest (edited in place, a bad disk): name the parent, not the delta."""
        where = f"{manifest.name}@{parent}"
        stored = self.store.manifest(manifest.name, parent)
        try:
            verify_entries(stored.files, self.store.snapshot(manifest.name, parent))
        except IntegrityError as damaged:
            raise IntegrityError(
                f"{where} in the store is damaged ({damaged}), so the delta to "
                f"{manifest.version} cannot be applied to it; remove it with `p2pdist rm "
                f"{where}` (or fetch with --full) and fetch again"
            ) from failure

    def _commit(
        self, manifest: Manifest, dest: Path, meta: TorrentMeta, only: tuple[str, ...] | None
    ) -> None:
        if only is not None and len(set(only)) == len(manifest.files):
            only = None  # every file: a whole version
        entries = manifest.files if only is None else [f for f in manifest.files if f.path in only]
        verify_entries(entries, dest)
        # A partial version keeps no torrent: a seed must not offer pieces it does not hold.
        torrent = meta.data if only is None else None
        self.store.add_version(manifest, dest, torrent=torrent, move=True, verified=True, only=only)
        shutil.rmtree(dest, ignore_errors=True)


def _rewritten(torrent: bytes, announce: Sequence[str], web_seeds: Sequence[str]) -> bytes:
    """The same torrent (same info dict, same infohash) announcing to ``announce`` only (the
    first as ``announce``; with several, all of them as one BEP 12 tier, announced to all: see
    ``formats.torrent`` for why not a tier each), with ``web_seeds`` as its only web seeds;
    every other key outside the info dict (BEP 17 ``httpseeds``, comments) is dropped."""
    from p2pdist.formats.bencode import bencode, info_bytes

    parts = [b"d", bencode(b"announce"), bencode(announce[0].encode())]
    if len(announce) > 1:
        parts += [bencode(b"announce-list"), bencode([[url.encode() for url in announce]])]
    parts.append(bencode(b"info"))
    parts.append(info_bytes(torrent))
    if web_seeds:
        parts += [bencode(b"url-list"), bencode([url.encode() for url in web_seeds])]
    parts.append(b"e")
    return b"".join(parts)


def _check_torrent(
    meta: TorrentMeta, ref: TorrentRef | None, entries: tuple[FileEntry, ...], where: str
) -> None:
    if ref is None:
        raise NotFoundError(f"{where}: the manifest names no such torrent")
    if (ref.v1 and meta.info_hash_v1 != ref.v1) or (ref.v2 and meta.info_hash_v2 != ref.v2):
        raise SignatureError(
            f"{where}: infohash {meta.info_hash} is not the one the signed manifest names "
            f"({ref.v1 or ref.v2}); refusing to download"
        )
    if sorted(meta.files) != sorted((e.path, e.size) for e in entries):
        raise SignatureError(f"{where}: the torrent's files differ from the signed manifest's")


def select_files(
    manifest: Manifest, include: Sequence[str] | None, exclude: Sequence[str] | None
) -> tuple[str, ...] | None:
    """The paths ``include``/``exclude`` choose, matched as huggingface_hub matches
    ``allow_patterns``/``ignore_patterns`` (fnmatch; a pattern ending in ``/`` means the
    folder's files); None when they choose every file. No file chosen is an error."""
    if not include and not exclude:
        return None

    def matches(path: str, patterns: Sequence[str]) -> bool:
        return any(fnmatch.fnmatch(path, p + "*" if p.endswith("/") else p) for p in patterns)

    paths = [f.path for f in manifest.files]
    chosen = [p for p in paths if (not include or matches(p, include))]
    chosen = [p for p in chosen if not (exclude and matches(p, exclude))]
    if not chosen:
        raise NotFoundError(
            f"{manifest.name}@{manifest.version}: no file matches --include "
            f"{list(include or [])} --exclude {list(exclude or [])}; its files are "
            f"{', '.join(paths[:8])}{' …' if len(paths) > 8 else ''}"
        )
    return None if len(chosen) == len(paths) else tuple(chosen)


def _copy_out(
    snapshot: Path, manifest: Manifest, out: Path, held: frozenset[str] | None = None
) -> Path:
    """Copy a version's files into ``out``, a user folder the store must not share bytes with.

    Like huggingface_hub's ``local_dir``: files of ``out`` that the version does not have are
    left alone. Each file is hashed as it is copied (the stored copy may have been damaged
    since it was verified) and renamed into place only when it matches the manifest, so a
    reader never sees half a file or wrong bytes.
    """
    out = out.absolute()
    ref = f"{manifest.name}@{manifest.version}"
    for entry in manifest.files:
        if held is not None and entry.path not in held:
            continue
        dst = out / entry.path
        tmp = dst.parent / f".p2pdist-{uuid.uuid4().hex[:12]}.incomplete"
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            digest = _copy_hashing((snapshot / entry.path).resolve(), tmp)
            if digest != entry.blake3:
                raise IntegrityError(
                    f"{entry.path}: the stored copy of {ref} is damaged (blake3 {digest}, the "
                    f"manifest says {entry.blake3}); remove it with `p2pdist rm {ref}` and "
                    "fetch again",
                    path=entry.path,
                    expected=entry.blake3,
                    actual=digest,
                )
            os.replace(tmp, dst)
        except OSError as e:
            raise StoreError(f"cannot write {dst}: {e.strerror or e}") from None
        finally:
            tmp.unlink(missing_ok=True)
    return out


def _copy_hashing(src: Path, dst: Path) -> str:
    """Copy ``src`` to a new file ``dst``; the blake3 of the bytes copied."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with open(src, "rb") as reader, open(dst, "xb") as writer:
        while chunk := reader.read(_COPY_CHUNK):
            hasher.update(chunk)
            writer.write(chunk)
    return hasher.hexdigest()


def fetch(
    ref: str,
    *,
    home: str | Path | None = None,
    tracker: str | None = None,
    token: str | None = None,
    out: str | Path | None = None,
    use_web_seeds: bool = True,
    seed: bool = False,
    full: bool = False,
    web_seeds: Sequence[str] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    hf_cache: bool | None = None,
    keep_chain: bool = False,
) -> Path:
    """Fetch ``ref`` (``name@v3``, ``name@latest``) into the store and return its folder.

    The folder is a Hugging Face layout that ``safetensors`` and ``transformers`` read as is.
    With ``seed`` the process keeps serving the version to other peers while it lives; with
    ``full`` it downloads the whole version even where a chain of deltas would do.
    Web seeds: those the version's signed manifest names, plus ``web_seeds`` (or the
    configured ones, ``P2PDIST_WEB_SEEDS``); never those only the registry adds.
    ``include``/``exclude`` are huggingface_hub's ``allow_patterns``/``ignore_patterns``;
    ``hf_cache`` places the version in the Hugging Face cache (``from_pretrained(name)``
    then finds it offline); ``keep_chain`` keeps the versions a delta chain passed through.
    """
    fetcher = Fetcher(
        home=home, tracker=tracker, token=token, use_web_seeds=use_web_seeds,
        web_seeds=web_seeds, hf_cache=hf_cache, keep_chain=keep_chain,
    )  # fmt: skip
    result = fetcher.fetch(
        ref, out=out, seed=seed, full=full, include=include, exclude=exclude, hf_cache=hf_cache
    )
    return result.path
