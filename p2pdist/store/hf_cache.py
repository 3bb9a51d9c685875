"""The Hugging Face hub cache: placing stored versions in it, and finding models there.

A program that loads by repo id (``AutoModel.from_pretrained("org/name")``,
``snapshot_download("org/name", local_files_only=True)``) looks in the hub cache, not in a
folder. So a fetched version can be *placed* there, in the layout huggingface_hub writes
(``file_download.py``: ``repo_folder_name``, ``_create_symlink``, ``refs/<revision>``)::

    <HF_HUB_CACHE>/models--<org>--<name>/
        blobs/<blake3>                                  hard link to p2pdist's blob
        snapshots/<revision>/<path> -> ../../blobs/<blake3>
        refs/main, refs/<version>                       the revision, as text (no newline)

No bytes are copied: each blob is a hard link to the store's (same inode), so a 16 GB model
costs 16 GB once. Only when the hub cache is on another filesystem are the bytes copied, and
the result says so. The revision is a 40-hex name derived from the signed manifest (the
blake3 of its canonical bytes, truncated), so the same version always lands in the same
snapshot folder, and ``revision="v3"`` works too through ``refs/v3``. Blobs are named by
blake3 rather than the hub's sha256 etag: huggingface_hub does not look at blob names when
it reads offline, and a later download from the hub itself adds its own blobs beside ours.

A hard-linked blob shares the store's inode: writing to it (nothing in huggingface_hub or
transformers does) changes the store's copy, which the next load or seed then refuses by its
verify-once records rather than serving.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import blake3

from p2pdist import config
from p2pdist.errors import NotFoundError, P2PDistError, StoreError
from p2pdist.formats.manifest import Manifest, safe_relpath
from p2pdist.ref import validate_name
from p2pdist.store.cache import Store

log = logging.getLogger(__name__)

REPO_PREFIX = "models--"
"""huggingface_hub's ``repo_folder_name`` for repo type ``model``: ``models--org--name``."""

DEFAULT_REF = "main"

# errno values of os.link meaning "not on this filesystem / not here": copy instead
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES}


@dataclass(frozen=True)
class Placement:
    """Where a version was placed in the hub cache and what it cost."""

    repo_id: str
    revision: str
    snapshot: Path
    refs: tuple[str, ...]
    linked: int
    """Blobs hard-linked to the store's (no bytes written)."""
    copied: int
    """Blobs copied because the hub cache is on another filesystem."""
    copied_bytes: int
    files: int

    def describe(self) -> str:
        how = f"{self.linked} hard links"
        if self.copied:
            how += (
                f", {self.copied} files copied ({self.copied_bytes:,} bytes: the hub cache "
                "is on another filesystem than the p2pdist store)"
            )
        return f"placed {self.repo_id} ({', '.join(self.refs)}) in the HF cache: {how}"


def revision_of(manifest: Manifest) -> str:
    """The snapshot name of a version: 40 hex digits derived from its signed manifest."""
    return blake3.blake3(manifest.to_bytes()).hexdigest()[:40]


def repo_folder(repo_id: str, cache: str | Path | None = None) -> Path:
    """``<cache>/models--org--name`` for a repo id, as huggingface_hub names it."""
    validate_name(repo_id)
    return config.hf_hub_cache(cache) / (REPO_PREFIX + "--".join(repo_id.split("/")))


def place(
    store: Store,
    name: str,
    version: str,
    *,
    cache: str | Path | None = None,
    refs: tuple[str, ...] | None = None,
) -> Placement:
    """Put ``name@version`` from ``store`` in the hub cache under repo id ``name``.

    ``refs`` (default ``main`` and the version) are pointed at its revision, so
    ``from_pretrained(name)`` loads it and ``from_pretrained(name, revision=version)`` too.
    Placing again is cheap and idempotent; files a partial fetch did not bring are absent.
    """
    manifest = store.manifest(name, version)
    held = store.held_files(name, version)
    revision = revision_of(manifest)
    repo = repo_folder(name, cache)
    refs = refs if refs is not None else (DEFAULT_REF, version)
    blobs, snaps, ref_dir = repo / "blobs", repo / "snapshots", repo / "refs"
    linked = copied = copied_bytes = 0
    try:
        for d in (blobs, snaps, ref_dir):
            d.mkdir(parents=True, exist_ok=True)
        entries = [e for e in manifest.files if e.path in held]
        for entry in entries:
            how = _put_blob(store.blob_path(entry.blake3), blobs / entry.blake3, entry.size)
            if how == "copied":
                copied, copied_bytes = copied + 1, copied_bytes + entry.size
            elif how == "linked":
                linked += 1
        snapshot = snaps / revision
        for entry in entries:
            link = snapshot / safe_relpath(entry.path)
            if link.is_symlink() or link.exists():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp = link.parent / f".{link.name}.{uuid.uuid4().hex[:8]}.tmp"
            os.symlink(os.path.relpath(blobs / entry.blake3, link.parent), tmp)
            os.replace(tmp, link)
        for ref in refs:
            _write_ref(ref_dir / ref, revision)
    except OSError as e:
        raise StoreError(
            f"cannot place {name}@{version} in the Hugging Face cache at {repo.parent}: "
            f"{e.strerror or e}; set HF_HUB_CACHE to a writable folder"
        ) from None
    if copied:
        log.warning(
            "%s: the HF cache %s is on another filesystem than the store %s; %d files "
            "(%d bytes) were copied, not linked",
            name, repo.parent, store.root, copied, copied_bytes,
        )  # fmt: skip
    return Placement(name, revision, snapshot, refs, linked, copied, copied_bytes, len(entries))


def _put_blob(src: Path, dst: Path, size: int) -> str:
    """Hard-link ``src`` at ``dst`` (a copy across filesystems); 'present' when it is there."""
    if dst.is_file() and dst.stat().st_size == size:
        return "present"
    tmp = dst.with_name(f"{dst.name}.{uuid.uuid4().hex[:8]}.incomplete")
    try:
        try:
            os.link(src, tmp)
            how = "linked"
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
            shutil.copyfile(src, tmp)
            how = "copied"
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return how


def _write_ref(path: Path, revision: str) -> None:
    """huggingface_hub reads a ref file whole and uses it as a folder name: no newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(revision)
    os.replace(tmp, path)


def snapshot_folder(
    repo_id: str, revision: str = DEFAULT_REF, *, cache: str | Path | None = None
) -> Path:
    """The snapshot folder of ``repo_id`` at ``revision`` (a ref or a commit) in the hub cache.

    This is how ``p2pdist publish org/name`` publishes a model that huggingface_hub (or an
    earlier ``fetch --hf-cache``) already put in the cache.
    """
    repo = repo_folder(repo_id, cache)
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = repo / "snapshots" / commit
    if "/" in commit or not snapshot.is_dir():
        raise NotFoundError(
            f"{repo_id} (revision {revision}) is not in the Hugging Face cache at {repo.parent}; "
            f"download it with `hf download {repo_id}` or give the model's folder"
        )
    return snapshot


def links_stay_in_repo(snapshot: Path) -> bool:
    """Whether every symbolic link in a cache snapshot resolves inside its own repo folder
    (``snapshots/<rev>/file -> ../../blobs/<hash>``, as huggingface_hub writes them). Such a
    snapshot is published through its links; one that links elsewhere is refused as any
    folder would be."""
    repo = snapshot.resolve().parent.parent
    for path in snapshot.rglob("*"):
        if path.is_symlink():
            try:
                target = path.resolve(strict=True)
            except (OSError, RuntimeError):
                return False
            if not target.is_relative_to(repo):
                return False
    return True


def in_cache(repo_id: str, *, cache: str | Path | None = None) -> bool:
    """Whether ``repo_id`` has a ``main`` snapshot in the hub cache."""
    try:
        snapshot_folder(repo_id, cache=cache)
    except P2PDistError:  # not there, or not a repo id at all
        return False
    return True
