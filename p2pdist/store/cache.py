"""The local store: content-addressed blobs and one committed folder per model version.

Layout under ``$P2PDIST_HOME`` (see docs/FORMAT.md)::

    blobs/<blake3>                           every file's bytes, stored once across versions
    models/<org--name>/<version>/
        snapshot/<path> -> blobs/<blake3>    the Hugging Face folder (relative symlinks)
        delta/<path>    -> blobs/<blake3>    delta files against the parent, when published so
        p2pdist.json                         the signed manifest
        partial.json                         the files held, when a fetch chose some (--include)
        full.torrent, delta.torrent          the torrents, when known
    staging/<pid>-<id>/                      work in progress; never read by anyone else
    locks/                                   file locks (per version, and one for gc)
    partial/<infohash>/                      a download in progress (survives kill -9: resume)
    resume/<infohash>.resume                 libtorrent resume data of unfinished downloads

A version becomes visible in one ``rename`` of its staged folder, after every file has been
verified against its manifest, so nothing half-written is ever seen. Two processes adding
the same version serialise on a file lock and the second finds the work done.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from p2pdist import config
from p2pdist.errors import (
    ConflictError,
    IntegrityError,
    NotFoundError,
    RefError,
    StoreError,
)
from p2pdist.formats.digest import hash_file
from p2pdist.formats.manifest import (
    MANIFEST_FILENAME,
    FileEntry,
    Manifest,
    safe_relpath,
    verify_entries,
)
from p2pdist.ref import ModelRef, name_from_folder, validate_name, validate_version

SNAPSHOT = "snapshot"
DELTA = "delta"
FULL_TORRENT = "full.torrent"
PARTIAL = "partial.json"
DELTA_TORRENT = "delta.torrent"


@dataclass(frozen=True)
class GcReport:
    """What ``gc`` freed."""

    removed_blobs: int
    freed_bytes: int
    removed_staging: int


@contextlib.contextmanager
def _store_errors(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if isinstance(e, StoreError):
            raise
        hint = (
            " (disk full: free space or set P2PDIST_HOME elsewhere)"
            if e.errno == errno.ENOSPC
            else ""
        )
        error = StoreError(f"{what}: {e.strerror or e}{hint}")
        error.errno = e.errno
        raise error from None


log = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """A p2pdist store rooted at ``root`` (default: the configured ``$P2PDIST_HOME``)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else config.home()
        self.blobs_dir = self.root / "blobs"
        self.models_dir = self.root / "models"
        self.staging_root = self.root / "staging"
        self.locks_dir = self.root / "locks"
        self.resume_dir = self.root / "resume"
        with _store_errors(f"cannot create the store at {self.root}"):
            for d in (
                self.blobs_dir,
                self.models_dir,
                self.staging_root,
                self.locks_dir,
                self.resume_dir,
            ):
                d.mkdir(parents=True, exist_ok=True)
        self._clean_stale_staging()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- paths ------------------------------------------------------------------------------
    def model_dir(self, name: str) -> Path:
        return self.models_dir / ModelRef(validate_name(name)).folder_name

    def version_dir(self, name: str, version: str) -> Path:
        return self.model_dir(name) / validate_version(version)

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / digest

    def resume_path(self, info_hash: str) -> Path:
        return self.resume_dir / f"{info_hash}.resume"

    def partial_dir(self, info_hash: str) -> Path:
        """Where a download of that torrent lands; kept across a killed process for resume."""
        return self.root / "partial" / info_hash

    def lock(self, name: str, version: str) -> FileLock:
        """A cross-process lock on one version (adding it, or fetching it)."""
        label = f"{ModelRef(validate_name(name)).folder_name}@{validate_version(version)}.lock"
        return FileLock(str(self.locks_dir / label), is_singleton=True)

    @contextlib.contextmanager
    def downloading(self, info_hash: str) -> Iterator[None]:
        """Held while a process downloads into ``partial_dir(info_hash)``: gc leaves the
        partial of a running download alone, however long it has been idle."""
        with open(self.locks_dir / f"partial-{info_hash}.lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _download_running(self, info_hash: str) -> bool:
        path = self.locks_dir / f"partial-{info_hash}.lock"
        if not path.exists():
            return False
        with open(path, "a+b") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False

    @contextlib.contextmanager
    def _gc_lock(self, *, exclusive: bool) -> Iterator[None]:
        """A readers-writer lock between adds (shared) and gc (exclusive), across processes.

        An add places blobs before its version references them; gc must not run in between.
        """
        with open(self.locks_dir / "gc.lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- queries ----------------------------------------------------------------------------
    def has(self, name: str, version: str) -> bool:
        return (self.version_dir(name, version) / MANIFEST_FILENAME).is_file()

    def _require(self, name: str, version: str) -> Path:
        vdir = self.version_dir(name, version)
        if not (vdir / MANIFEST_FILENAME).is_file():
            raise NotFoundError(
                f"{name}@{version} is not in the store at {self.root}; fetch it with "
                f"`p2pdist fetch {name}@{version}`"
            )
        return vdir

    def manifest(self, name: str, version: str) -> Manifest:
        path = self._require(name, version) / MANIFEST_FILENAME
        manifest = Manifest.read(path)
        if (manifest.name, manifest.version) != (name, version):
            raise IntegrityError(
                f"{path}: holds {manifest.name}@{manifest.version}, not {name}@{version}; "
                "the store was altered: remove that folder and fetch again"
            )
        return manifest

    def snapshot(self, name: str, version: str) -> Path:
        """The version's Hugging Face folder (symlinks into blobs)."""
        return self._require(name, version) / SNAPSHOT

    def delta_dir(self, name: str, version: str) -> Path | None:
        path = self._require(name, version) / DELTA
        return path if path.is_dir() else None

    def held_files(self, name: str, version: str) -> frozenset[str]:
        """The paths of the version's files this store holds: all of them, unless a fetch
        chose some (``--include``/``--exclude``), which ``partial.json`` records."""
        vdir = self._require(name, version)
        if (vdir / PARTIAL).is_file():
            return frozenset(json.loads((vdir / PARTIAL).read_text())["files"])
        return frozenset(f.path for f in self.manifest(name, version).files)

    def is_partial(self, name: str, version: str) -> bool:
        """Whether the stored version lacks some of its files (a fetch with ``--include``)."""
        return (self._require(name, version) / PARTIAL).is_file()

    def torrent(self, name: str, version: str, kind: str = "full") -> bytes | None:
        path = self._require(name, version) / (FULL_TORRENT if kind == "full" else DELTA_TORRENT)
        return path.read_bytes() if path.is_file() else None

    def models(self) -> list[str]:
        names = []
        for d in sorted(self.models_dir.iterdir()):
            if d.is_dir() and any((v / MANIFEST_FILENAME).is_file() for v in d.iterdir()):
                with contextlib.suppress(RefError):  # a folder p2pdist did not make
                    names.append(name_from_folder(d.name))
        return names

    def versions(self, name: str) -> list[Manifest]:
        """The stored versions of a model, oldest first.

        By creation time; within one second (``created`` has no finer resolution, and a
        trainer can publish several versions a second) in natural order of names (v9 before
        v10), except that a version never comes before its parent.
        """
        mdir = self.model_dir(name)
        if not mdir.is_dir():
            return []
        found = {
            m.version: m
            for m in (
                Manifest.read(v / MANIFEST_FILENAME)
                for v in mdir.iterdir()
                if (v / MANIFEST_FILENAME).is_file()
            )
        }

        ordered: list[Manifest] = []
        placed: set[str] = set()
        by_second: dict[str, list[Manifest]] = {}
        for m in found.values():
            by_second.setdefault(m.created, []).append(m)
        for created in sorted(by_second):
            waiting = sorted(by_second[created], key=lambda m: _natural(m.version))
            while waiting:  # the first in natural order whose parent (in this second) is placed
                ready = next(
                    (m for m in waiting if m.parent not in found or m.parent in placed
                     or found[m.parent].created != created),
                    waiting[0],  # a cycle of parents: natural order breaks it
                )  # fmt: skip
                ordered.append(ready)
                placed.add(ready.version)
                waiting.remove(ready)
        return ordered

    def latest(self, name: str) -> Manifest | None:
        versions = self.versions(name)
        return versions[-1] if versions else None

    # -- adding -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh private folder on the store's filesystem, removed when the block ends."""
        path = self.staging_root / f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        with _store_errors(f"cannot create staging folder in {self.staging_root}"):
            path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def add_version(
        self,
        manifest: Manifest,
        files_dir: str | Path,
        *,
        delta_dir: str | Path | None = None,
        torrent: bytes | None = None,
        delta_torrent: bytes | None = None,
        move: bool = False,
        verified: bool = False,
        only: Collection[str] | None = None,
    ) -> Path:
        """Commit a version: blobs first, then one atomic rename of its folder.

        ``files_dir`` holds the version's files at their relative paths (``delta_dir`` its
        delta files). Each is checked against the manifest unless ``verified`` says the caller
        just did; ``move`` lets files on the store's filesystem be renamed instead of copied.
        Adding a version that is already stored with the same manifest is a no-op; with a
        different manifest it is a ConflictError (versions are immutable).

        ``only`` (paths) adds a partial version holding just those files; it is recorded in
        ``partial.json``, and adding the version again with more files replaces it.
        """
        name, version = manifest.name, manifest.version
        files_dir = Path(files_dir)
        entries = manifest.files
        if only is not None:
            wanted = set(only)
            entries = tuple(e for e in manifest.files if e.path in wanted)
            if len(entries) == len(manifest.files):
                only = None
        with self.lock(name, version), self._gc_lock(exclusive=False):
            vdir = self.version_dir(name, version)
            replacing = False
            if (vdir / MANIFEST_FILENAME).is_file():
                existing = (vdir / MANIFEST_FILENAME).read_bytes()
                if existing != manifest.to_bytes():
                    raise ConflictError(
                        f"{name}@{version} is already in the store with a different manifest; "
                        "versions are immutable: publish a new version"
                    )
                held = self.held_files(name, version)
                if held >= {e.path for e in entries}:
                    return vdir / SNAPSHOT
                replacing = True  # a partial version that this add completes (further)
            if not verified:
                verify_entries(entries, files_dir)
                if delta_dir is not None:
                    verify_entries(manifest.delta_files, delta_dir)
            with (
                self.staging() as stage,
                _store_errors(f"cannot add {name}@{version} to {self.root}"),
            ):
                self._link_entries(entries, files_dir, stage, vdir, SNAPSHOT, move=move)
                if only is not None:
                    held_now = sorted(e.path for e in entries)
                    (stage / PARTIAL).write_text(json.dumps({"files": held_now}))
                if delta_dir is not None and manifest.delta_files:
                    self._link_entries(
                        manifest.delta_files, Path(delta_dir), stage, vdir, DELTA, move=move
                    )
                if torrent is not None:
                    (stage / FULL_TORRENT).write_bytes(torrent)
                if delta_torrent is not None:
                    (stage / DELTA_TORRENT).write_bytes(delta_torrent)
                (stage / MANIFEST_FILENAME).write_bytes(manifest.to_bytes())
                _fsync_dir(stage)
                vdir.parent.mkdir(parents=True, exist_ok=True)
                if replacing:
                    trash = self.staging_root / f"{os.getpid()}-rm-{uuid.uuid4().hex[:8]}"
                    os.rename(vdir, trash)
                    os.rename(stage, vdir)
                    shutil.rmtree(trash, ignore_errors=True)
                else:
                    os.rename(stage, vdir)
                _fsync_dir(vdir.parent)
        return vdir / SNAPSHOT

    def _link_entries(
        self,
        entries: Sequence[FileEntry],
        src_dir: Path,
        stage: Path,
        final: Path,
        sub: str,
        *,
        move: bool,
    ) -> None:
        """Put each file in blobs/ and link it from stage/sub/<path>, relative to where the
        staged folder will live once renamed to ``final``."""
        for entry in entries:
            safe_relpath(entry.path)
            blob = self._put_blob(src_dir / entry.path, entry, move=move)
            link = stage / sub / entry.path
            link.parent.mkdir(parents=True, exist_ok=True)
            target_dir = (final / sub / entry.path).parent
            os.symlink(os.path.relpath(blob, target_dir), link)

    def _put_blob(self, src: Path, entry: FileEntry, *, move: bool) -> Path:
        blob = self.blob_path(entry.blake3)
        if blob.is_file() and blob.stat().st_size == entry.size:
            if move and _same_file(src, blob):
                # Our own staged file, hashed moments ago (by the caller that says verified,
                # or by add_version), is this blob: a hard link a delta made for a file it
                # kept unchanged. Hashing it again would read the same bytes twice.
                return blob
            # Hashed before it is shared again: a blob damaged on disk is replaced by these
            # good bytes (repairing every version that links it) rather than linked anew.
            if hash_file(blob) == entry.blake3:
                return blob
            log.warning("%s: stored blob %s is damaged; replacing it", entry.path, blob.name)
        tmp = self.blobs_dir / f"{entry.blake3}.{uuid.uuid4().hex[:8]}.incomplete"
        real_src = src.resolve()
        try:
            if move and not src.is_symlink():
                try:
                    os.rename(real_src, tmp)
                except OSError:
                    shutil.copyfile(real_src, tmp)
            else:
                shutil.copyfile(real_src, tmp)
                # The source is not ours: it may have changed since it was hashed. A blob is
                # named by its blake3, so the copy itself is what gets checked.
                actual = hash_file(tmp)
                if actual != entry.blake3:
                    raise IntegrityError(
                        f"{entry.path}: changed while it was being added (blake3 {actual}, "
                        f"expected {entry.blake3}); publish again once it is written",
                        path=entry.path,
                        expected=entry.blake3,
                        actual=actual,
                    )
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, blob)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return blob

    # -- checking and cleaning --------------------------------------------------------------
    def verify(self, name: str, version: str) -> Manifest:
        """Re-hash every file (and delta file) of a stored version against its manifest. A
        failure is an IntegrityError naming the version and how to repair it."""
        manifest = self.manifest(name, version)
        vdir = self.version_dir(name, version)
        held = self.held_files(name, version)
        try:
            verify_entries([f for f in manifest.files if f.path in held], vdir / SNAPSHOT)
            if manifest.delta_files and (vdir / DELTA).is_dir():
                verify_entries(manifest.delta_files, vdir / DELTA)
        except IntegrityError as e:
            raise damaged(f"{name}@{version}", str(e), e) from None
        return manifest

    def remove(self, name: str, version: str) -> None:
        """Forget a version (its blobs stay until ``gc``)."""
        vdir = self._require(name, version)
        with self.lock(name, version):
            trash = self.staging_root / f"{os.getpid()}-rm-{uuid.uuid4().hex[:8]}"
            os.rename(vdir, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def referenced_blobs(self) -> set[str]:
        refs: set[str] = set()
        for mdir in self.models_dir.iterdir():
            if not mdir.is_dir():
                continue
            for vdir in mdir.iterdir():
                mpath = vdir / MANIFEST_FILENAME
                if mpath.is_file():
                    m = Manifest.read(mpath)
                    refs.update(f.blake3 for f in m.files)
                    if (vdir / DELTA).is_dir():
                        refs.update(f.blake3 for f in m.delta_files)
        return refs

    def release_blobs(self, digests: Collection[str]) -> int:
        """Delete those of ``digests`` that no stored version references (the blobs of
        versions just removed); the bytes freed. Unlike ``gc`` it touches nothing else."""
        if not digests:
            return 0
        freed = 0
        with self._gc_lock(exclusive=True):
            keep = self.referenced_blobs()
            for digest in set(digests) - keep:
                blob = self.blob_path(digest)
                with contextlib.suppress(FileNotFoundError):
                    freed += blob.stat().st_size
                    blob.unlink()
        return freed

    def gc(self, *, partial_max_age: float = 24 * 3600) -> GcReport:
        """Delete blobs that no stored version references, stale staging folders, and
        abandoned partial downloads (with their resume data) untouched for ``partial_max_age``.
        """
        with self._gc_lock(exclusive=True):
            staged = self._clean_stale_staging()
            keep = self.referenced_blobs()
            removed = freed = 0
            for blob in self.blobs_dir.iterdir():
                if blob.name in keep:
                    continue
                if blob.name.endswith(".incomplete") and _recent(blob):
                    continue
                size = blob.stat().st_size
                blob.unlink(missing_ok=True)
                removed += 1
                freed += size
            partial_root = self.root / "partial"
            for folder in partial_root.iterdir() if partial_root.is_dir() else ():
                if self._download_running(folder.name):
                    continue
                newest = max((p.stat().st_mtime for p in folder.rglob("*")), default=0.0)
                if time.time() - max(newest, folder.stat().st_mtime) < partial_max_age:
                    continue  # one to resume soon (or a download by an older p2pdist)
                freed += sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())
                shutil.rmtree(folder, ignore_errors=True)
                self.resume_path(folder.name).unlink(missing_ok=True)
                staged += 1
        return GcReport(removed, freed, staged)

    def _clean_stale_staging(self) -> int:
        """Remove staging folders whose process is gone (an interrupted add or fetch)."""
        removed = 0
        for entry in self.staging_root.iterdir():
            pid_text = entry.name.split("-", 1)[0]
            if pid_text.isdigit() and _pid_alive(int(pid_text)) and int(pid_text) != 0:
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed += 1
        return removed

    def has_delta(self, name: str, version: str) -> bool:
        """Whether this store holds the version's delta files (a consumer that fetched the
        version in full does not)."""
        return (self.version_dir(name, version) / DELTA).is_dir()

    def partial_downloads(self) -> dict[str, int]:
        """How many downloads are in progress or abandoned, and the bytes they hold."""
        root = self.root / "partial"
        folders = [f for f in root.iterdir() if f.is_dir()] if root.is_dir() else []
        return {"count": len(folders), "bytes": sum(_bytes_under(f) for f in folders)}

    def partial_bytes(self, info_hash: str) -> int:
        """The bytes a partial download of ``info_hash`` holds (0 when there is none)."""
        folder = self.partial_dir(info_hash)
        return _bytes_under(folder) if folder.is_dir() else 0

    def disk_usage(self) -> int:
        return sum(b.stat().st_size for b in self.blobs_dir.iterdir() if b.is_file())


def damaged(ref: str, detail: str, cause: IntegrityError) -> IntegrityError:
    """The error for a stored version whose files are not what it stored: what is wrong and
    how to repair it (``cause`` says which file, expected and found)."""
    return IntegrityError(
        f"{ref} in the store is damaged ({detail}); remove it with `p2pdist rm {ref}` and "
        "fetch it again",
        path=cause.path,
        expected=cause.expected,
        actual=cause.actual,
    )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _bytes_under(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def _recent(path: Path, seconds: float = 3600) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except FileNotFoundError:
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RUNS = re.compile(r"\d+|\D+")


def _natural(text: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key that orders the digit runs of ``text`` by value: v9 < v10 < v10a."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in _RUNS.findall(text))
