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

import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
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
    ) -> None:
        self.store = Store(config.home(home))
        self.client = client or RegistryClient(config.tracker_url(tracker), config.token(token))
        self.trust = trust or TrustStore()
        self.use_web_seeds = use_web_seeds
        self.stall_timeout = stall_timeout
        self._swarm = swarm
        self._pinned = False

    @property
    def swarm(self) -> Any:
        if self._swarm is None:
            from p2pdist.swarm.seeder import process_swarm

            self._swarm = process_swarm()
        return self._swarm

    # -- resolution and trust -----------------------------------------------------------------
    def resolve(self, ref: ModelRef) -> ModelRef:
        if ref.is_latest:
            return ref.with_version(self.client.latest(ref.name))
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
        # private model (not the publisher's); the infohash covers only the info dict.
        announce = self.announce_url(meta.private)
        if meta.announce != (announce,):
            meta = read_torrent(_with_announce(meta.data, announce))
        return meta

    def announce_url(self, private: bool) -> str:
        """Where this host announces: the configured tracker (this host's passkey for a
        private model), with its announced address and site when configured."""
        from p2pdist.swarm.seeder import with_hints

        return with_hints(self.client.announce_url(private=private))

    # -- the fetch ----------------------------------------------------------------------------
    def fetch(
        self,
        ref_text: str,
        *,
        out: str | Path | None = None,
        seed: bool = False,
        full: bool = False,
        on_progress: ProgressCallback | None = None,
    ) -> FetchResult:
        """Fetch ``ref_text`` into the store (see the module docstring for the order of steps).

        A delta chain whose download stalls (its versions no longer seeded, say after the
        publisher's retention removed them) is given up for the full download, and the result
        says why; ``full=True`` skips delta chains from the start.
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
        if full and not self.store.has(ref.name, ref.version):
            plan = FetchPlan("full", target, target.total_size, target.total_size)
        else:
            plan = make_plan(
                target,
                lambda v: self.store.has(ref.name, v),
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
            peers, web, failures = self._fetch_full(target, on_progress)
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
        snapshot = self.store.snapshot(ref.name, ref.version)
        if seed:
            from p2pdist.swarm.seeder import seed_version

            seed_version(
                self.store, ref.name, ref.version, swarm=self.swarm, announce=self.announce_url
            )
        path = snapshot if out is None else _copy_out(snapshot, target, Path(out))
        seconds = time.monotonic() - started
        return FetchResult(
            target, path, plan, peers, web, failures, seconds, self._pinned, fallback
        )

    def _download(
        self, meta: TorrentMeta, label: str, on_progress: ProgressCallback | None
    ) -> tuple[Path, Any]:
        dest = self.store.partial_dir(meta.info_hash)
        with self.store.downloading(meta.info_hash):
            result = self.swarm.download(
                meta.data,
                dest,
                resume_file=self.store.resume_path(meta.info_hash),
                use_web_seeds=self.use_web_seeds,
                on_progress=None if on_progress is None else (lambda p: on_progress(label, p)),
                stall_timeout=self.stall_timeout,
            )
        return dest, result

    def _fetch_full(
        self, manifest: Manifest, on_progress: ProgressCallback | None
    ) -> tuple[int, int, int]:
        with self.store.lock(manifest.name, manifest.version):
            if self.store.has(manifest.name, manifest.version):  # another process got it
                return 0, 0, 0
            meta = self.checked_torrent(manifest, "full")
            label = f"{manifest.name}@{manifest.version}"
            dest, result = self._download(meta, label, on_progress)
            self._commit(manifest, dest, meta)
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
        parts = [(vdir / SNAPSHOT, manifest.files)]
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

    def _commit(self, manifest: Manifest, dest: Path, meta: TorrentMeta) -> None:
        verify_entries(manifest.files, dest)
        self.store.add_version(manifest, dest, torrent=meta.data, move=True, verified=True)
        shutil.rmtree(dest, ignore_errors=True)


def _with_announce(torrent: bytes, announce: str) -> bytes:
    """The same torrent (same info dict, same infohash) announcing to ``announce`` only."""
    from p2pdist.formats.bencode import bdecode, bencode, info_bytes

    top = bdecode(torrent)
    parts = [b"d", bencode(b"announce"), bencode(announce.encode()), bencode(b"info")]
    parts.append(info_bytes(torrent))
    if b"url-list" in top:
        parts += [bencode(b"url-list"), bencode(top[b"url-list"])]
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


def _copy_out(snapshot: Path, manifest: Manifest, out: Path) -> Path:
    """Copy a version's files into ``out``, a user folder the store must not share bytes with.

    Like huggingface_hub's ``local_dir``: files of ``out`` that the version does not have are
    left alone. Each file is hashed as it is copied (the stored copy may have been damaged
    since it was verified) and renamed into place only when it matches the manifest, so a
    reader never sees half a file or wrong bytes.
    """
    out = out.absolute()
    ref = f"{manifest.name}@{manifest.version}"
    for entry in manifest.files:
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
) -> Path:
    """Fetch ``ref`` (``name@v3``, ``name@latest``) into the store and return its folder.

    The folder is a Hugging Face layout that ``safetensors`` and ``transformers`` read as is.
    With ``seed`` the process keeps serving the version to other peers while it lives; with
    ``full`` it downloads the whole version even where a chain of deltas would do.
    """
    fetcher = Fetcher(home=home, tracker=tracker, token=token, use_web_seeds=use_web_seeds)
    return fetcher.fetch(ref, out=out, seed=seed, full=full).path
