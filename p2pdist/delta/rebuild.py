"""Rebuilding a version from its parent and a delta, proven against the signed manifest.

``decode`` (re-exported as ``p2pdist.delta.decode``) allocates only what the manifest's sizes
allow, decodes segments on a thread pool into per-thread buffers written with ``pwrite``,
hashes every rebuilt file, and renames the files into place only once all of them verified;
anything that fails removes what it wrote. The parent is hashed only to name it when
decoding fails: rebuilt files that verify prove their parent.
"""

from __future__ import annotations

import mmap
import os
import shutil
import threading
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from p2pdist.delta.codec import (
    INDEX_FILE,
    decode_ans,
    decode_plane,
    join_planes,
)
from p2pdist.delta.file import read_table
from p2pdist.delta.io import default_workers, map_file, ordered, read_index, store_error, view
from p2pdist.delta.table import (
    DeltaIndex,
    DeltaTarget,
    Segment,
)
from p2pdist.errors import FormatError, IntegrityError, P2PDistError
from p2pdist.formats.digest import hash_file, hash_files
from p2pdist.formats.header import TensorSpec, read_header
from p2pdist.formats.manifest import FileEntry, safe_relpath


def _check_expected(index: DeltaIndex, expected: Sequence[FileEntry], source: str) -> None:
    """The index must describe exactly the files the (signed) manifest declares."""
    want = {e.path: e for e in expected}
    have = {t.path: t for t in index.files}
    if set(want) != set(have):
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        raise FormatError(
            f"{source}: the delta rebuilds other files than the manifest lists "
            f"(missing {missing[:5]}, unexpected {extra[:5]})"
        )
    for path, entry in want.items():
        target = have[path]
        if (target.size, target.blake3) != (entry.size, entry.blake3):
            raise IntegrityError(
                f"{path}: the delta rebuilds {target.size} bytes with blake3 {target.blake3}, "
                f"but the manifest declares {entry.size} bytes with blake3 {entry.blake3}",
                path=path,
                expected=entry.blake3,
                actual=target.blake3,
            )


def _check_parent_sizes(index: DeltaIndex, parent_dir: Path) -> None:
    """Refuse a parent whose files are missing or of other sizes than the delta's parent."""
    for entry in index.parent_files:
        path = parent_dir / entry.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise IntegrityError(
                f"{entry.path}: parent file missing from {parent_dir}; this delta needs the "
                "parent version it was made against",
                path=entry.path,
                expected=entry.blake3,
            ) from None
        if size != entry.size:
            raise IntegrityError(
                f"{entry.path}: parent file has {size} bytes, the delta was made against "
                f"{entry.size}: wrong parent version",
                path=entry.path,
                expected=entry.blake3,
            )


def _check_parent_digests(index: DeltaIndex, parent_dir: Path) -> None:
    """Refuse a parent whose files are not the ones the delta was made against."""
    digests = hash_files([parent_dir / e.path for e in index.parent_files])
    for entry, actual in zip(index.parent_files, digests, strict=True):
        if actual != entry.blake3:
            raise IntegrityError(
                f"{entry.path}: parent file has blake3 {actual}, the delta was made against "
                f"{entry.blake3}: wrong parent version",
                path=entry.path,
                expected=entry.blake3,
                actual=actual,
            )


class _Parent:
    """The parent's safetensors files, mapped on first use, with their validated headers."""

    def __init__(self, folder: Path, files: Mapping[str, FileEntry], stack: ExitStack) -> None:
        self.folder, self.files, self.stack = folder, files, stack
        self.headers: dict[str, dict[str, TensorSpec]] = {}
        self.maps: dict[str, mmap.mmap | None] = {}

    def base(self, seg: Segment, where: str) -> tuple[str, int]:
        """(file, absolute offset) of a segment's base, checked against the parent's header."""
        ref = seg.base
        assert ref is not None
        if ref.file not in self.files:
            raise FormatError(f"{where}: base file {ref.file!r} is not a listed parent file")
        if ref.file not in self.headers:
            header = read_header(self.folder / ref.file)
            self.headers[ref.file] = header.by_name()
            self.maps[ref.file] = map_file(self.stack, self.folder / ref.file, header.file_size)
        spec = self.headers[ref.file].get(ref.tensor)
        if spec is None or ref.offset + seg.size > spec.nbytes:
            raise FormatError(
                f"{where}: base {ref.tensor!r}[{ref.offset}:+{seg.size}] is not in {ref.file}"
            )
        return ref.file, spec.start + ref.offset


def decode(
    parent_dir: str | Path,
    delta_dir: str | Path,
    out_dir: str | Path,
    *,
    expected: Sequence[FileEntry],
    workers: int | None = None,
    verify_parent: bool = True,
    link_copies: bool = False,
) -> None:
    """Rebuild the files of a version into ``out_dir`` from its parent and its delta.

    ``expected`` are the files the signed manifest declares: their sizes bound every
    allocation, and each rebuilt file must have their blake3 (IntegrityError otherwise). A
    parent other than the one the delta was made against is an IntegrityError naming the file.
    The parent's sizes are checked first and its blake3 only if decoding fails (rebuilt files
    that verify prove the parent right, so a good decode does not hash the parent);
    ``verify_parent=False`` skips that diagnosis, for a parent already verified such as blobs
    of a content-addressed store. Files appear in ``out_dir`` only once all of them verified.

    ``link_copies`` makes a file the version keeps unchanged a hard link to the parent's
    instead of a copy (where the filesystem allows): for a caller that moves the result into
    the store that holds the parent, where those bytes are already kept once. Never for files
    handed to a user, whose writes would reach the parent.
    """
    parent_dir, delta_dir, out_dir = Path(parent_dir), Path(delta_dir), Path(out_dir)
    workers = workers or default_workers()
    index = read_index(delta_dir)
    _check_expected(index, expected, str(delta_dir / INDEX_FILE))
    _check_parent_sizes(index, parent_dir)
    parent_files = {e.path: e for e in index.parent_files}
    tag = uuid.uuid4().hex[:12]
    staged: list[tuple[Path, Path]] = []
    created: list[Path] = []
    renamed: list[Path] = []
    try:
        with ExitStack() as stack:
            parent = _Parent(parent_dir, parent_files, stack)
            pool = stack.enter_context(ThreadPoolExecutor(workers))
            stack.callback(pool.shutdown, cancel_futures=True)
            for number, target in enumerate(index.files):
                final = out_dir / target.path
                for d in reversed(final.parents):
                    if not d.exists():
                        d.mkdir()
                        created.append(d)
                # not the file's own name: a name near the 255-byte limit would not fit
                tmp = final.parent / f".p2pdist-{tag}-{number}.incomplete"
                staged.append((tmp, final))
                if target.copy is not None:
                    source = parent_dir / target.copy
                    if not (link_copies and _hard_link(source, tmp)):
                        shutil.copyfile(source, tmp)
                else:
                    assert target.delta is not None
                    delta_path = delta_dir / safe_relpath(target.delta)
                    _rebuild(pool, parent, delta_path, target, tmp, workers)
                _verify(tmp, target)
        for tmp, final in staged:
            os.replace(tmp, final)
            renamed.append(final)
    except P2PDistError:
        _undo(staged, renamed, created)
        if verify_parent:
            try:
                _check_parent_digests(index, parent_dir)  # a wrong parent, named precisely
            except OSError:
                pass  # the parent cannot be read now: the original error stands
        raise
    except OSError as e:  # disk full, permissions, a file that cannot be read, ...
        _undo(staged, renamed, created)
        raise store_error(f"cannot rebuild the version into {out_dir}", e) from None
    except BaseException:
        _undo(staged, renamed, created)
        raise


def _hard_link(source: Path, link: Path) -> bool:
    """Link ``link`` to the file ``source`` resolves to; False where links cannot be made
    (another filesystem, a filesystem without them), for the caller to copy instead."""
    try:
        os.link(os.path.realpath(source), link)
    except OSError:
        return False
    return True


def _undo(staged: list[tuple[Path, Path]], renamed: list[Path], created: list[Path]) -> None:
    """Remove what a failed decode wrote: staged and renamed files, then new directories (best
    effort: the error that made the decode fail is the one to report)."""
    for path in [tmp for tmp, _ in staged] + renamed:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            pass


def _verify(path: Path, target: DeltaTarget) -> None:
    size = path.stat().st_size
    actual = hash_file(path)
    if size != target.size or actual != target.blake3:
        raise IntegrityError(
            f"{target.path}: rebuilt from the delta with blake3 {actual} ({size} bytes), but "
            f"the manifest declares {target.blake3} ({target.size} bytes); the delta or the "
            "parent is corrupt",
            path=target.path,
            expected=target.blake3,
            actual=actual,
        )


def _rebuild(
    pool: ThreadPoolExecutor,
    parent: _Parent,
    delta_path: Path,
    target: DeltaTarget,
    tmp: Path,
    workers: int,
) -> None:
    header, segments = read_table(delta_path, target.path, target.size)
    payloads = header.by_name()
    where = delta_path.name
    bases = [parent.base(s, where) if s.base is not None else None for s in segments]
    with ExitStack() as local:
        # Segments are decoded into a per-thread buffer and written with pwrite: writing
        # through a map of a new (sparse) file costs a page fault and a zeroed page per 4 KiB.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        local.callback(os.close, fd)
        delta_map = map_file(local, delta_path, header.file_size)
        scratch = threading.local()

        def buffer(size: int) -> np.ndarray:
            buf = getattr(scratch, "buf", None)
            if buf is None or buf.size < size:
                buf = scratch.buf = np.empty(size, np.uint8)
            return buf[:size]

        def work(item: tuple[int, int]) -> None:
            i, offset = item
            seg = segments[i]
            at, base = bases[i], None
            if at is not None:
                base = view(parent.maps[at[0]], at[1], seg.size)
            if seg.op == "copy":
                assert base is not None
                _pwrite(fd, base, offset)
                return
            data: list[np.ndarray | None] = []
            for _codec, name in seg.payloads:
                spec = None if name is None else payloads[name]
                data.append(None if spec is None else view(delta_map, spec.start, spec.nbytes))
            out = buffer(seg.size)
            if seg.op == "raw":
                n = seg.size // seg.word
                planes = [
                    decode_plane(c, None if d is None else d.data, n)
                    for (c, _), d in zip(seg.payloads, data, strict=True)
                ]
                join_planes(planes, out)
            else:
                assert base is not None and data[0] is not None
                decode_ans(data[0], base, out, seg.word, seg.context)
            _pwrite(fd, out, offset)

        offsets = np.cumsum([0] + [s.size for s in segments]).tolist()
        with ordered(pool, work, iter(enumerate(offsets[:-1])), 2 * workers + 2) as results:
            for _ in results:
                pass


def _pwrite(fd: int, data: np.ndarray, offset: int) -> None:
    view = data.data.cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
