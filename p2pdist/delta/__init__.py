"""Lossless deltas between two versions of a model: encode against a parent, decode byte-exactly.

A training run publishes a new version every few hundred steps; most of each tensor's bits
did not change, so a version published with a parent ships a delta instead of the full
shards. ``encode(parent_dir, new_dir, out_dir)`` writes the delta; ``decode(parent_dir,
delta_dir, out_dir, expected=...)`` rebuilds every file of the new version and proves each
against the blake3 the signed manifest declares: a mismatch is an error, never a fallback.

What a delta holds (docs/FORMAT_DELTA.md):

- ``delta.json``: the parent files the delta reads (path, size, blake3: decoding against
  another parent is refused), and for every file of the new version its path, size, blake3
  and how to get it: ``copy`` of a parent file with the same bytes, or ``delta``, a delta file.
- one ``delta-NNNNN.safetensors`` per rebuilt file: uint8 payload tensors, and in its
  ``__metadata__`` the codec table: the target file as a list of *segments* (its safetensors
  header, then each tensor in file order, large tensors cut in chunks), each a ``copy`` of
  its base (the same-named tensor anywhere in the parent), an ``ans`` payload coding the
  moves against that base, or ``raw`` byte planes (see delta_codec).

Tensors are matched by name across the whole version, so a tensor that moved between shards
is still a delta. Unchanged tensors cost nothing, same dtype and shape cost about the entropy
of their moves, anything else is stored as zstd byte planes of its raw bits.

Both sides map their files (mmap) and hold a few segments at a time; segments run on a
thread pool (the C kernel, numpy and zstd release the GIL). Delta files are written in one
pass (delta/file.py). Decoding (delta/rebuild.py) allocates only what the manifest's sizes
allow, writes to hidden temporary names, and renames only once every file verified.
"""

from __future__ import annotations

import math
import mmap
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from p2pdist.delta.codec import (
    INDEX_FILE,
    MAX_SEGMENT,
    Coded,
    encode_segment,
    float_key,
)
from p2pdist.delta.file import DeltaFileWriter, header_bound
from p2pdist.delta.io import default_workers, map_file, ordered, read_index, store_error, view
from p2pdist.delta.rebuild import decode
from p2pdist.delta.table import (
    BaseRef,
    DeltaIndex,
    DeltaTarget,
    Segment,
)
from p2pdist.errors import FormatError, P2PDistError
from p2pdist.formats.header import DTYPE_SIZES, SafetensorsHeader, TensorSpec, read_header
from p2pdist.formats.manifest import FileEntry, describe_files, list_files, safe_relpath

CHUNK_BYTES = 4 << 20
"""Tensors larger than this are cut into chunks: memory per worker stays a few chunks, and
one large tensor (an embedding) still keeps every core busy."""


def delta_size(delta_dir: str | Path) -> int:
    """Total bytes of a delta folder's files (index included), as the swarm would move them."""
    delta_dir = Path(delta_dir)
    return sum((delta_dir / name).stat().st_size for name in read_index(delta_dir).delta_files)


@dataclass(frozen=True)
class _Job:
    """One segment to encode: where its bytes are in the new file and in the parent."""

    offset: int
    size: int
    word: int
    key: tuple[int, int] | None
    base: BaseRef | None
    base_offset: int
    tensor: str | None
    row: int = 0
    """Words per row of the tensor when the segment holds whole rows (for the row classes)."""


# --------------------------------------------------------------------------- encode


def _parent_tensors(parent_dir: Path, paths: Sequence[str]) -> dict[str, tuple[str, TensorSpec]]:
    """Every tensor of the parent's safetensors files by name (first file in path order wins)."""
    found: dict[str, tuple[str, TensorSpec]] = {}
    for path in paths:
        if not path.endswith(".safetensors"):
            continue
        try:
            header = read_header(parent_dir / path)
        except FormatError:
            continue
        for spec in header.tensors:
            found.setdefault(spec.name, (path, spec))
    return found


def _chunks(size: int, step: int) -> Iterator[tuple[int, int]]:
    for start in range(0, size, step):
        yield start, min(step, size - start)


def _plan(
    header: SafetensorsHeader | None,
    size: int,
    parent: Mapping[str, tuple[str, TensorSpec]],
    chunk: int,
) -> Iterator[_Job]:
    """The segments of one target file, in file order."""
    if header is None:
        for start, n in _chunks(size, chunk):
            yield _Job(start, n, 1, None, None, 0, None)
        return
    for start, n in _chunks(header.data_start, chunk):
        yield _Job(start, n, 1, None, None, 0, None)
    for spec in header.tensors:
        word = DTYPE_SIZES[spec.dtype]
        step = max(word, chunk - chunk % word)
        row = _row_words(spec.shape)
        if row and row * word <= step:
            step -= step % (row * word)  # chunks of whole rows
        else:
            row = 0
        found = parent.get(spec.name)
        same = found is not None and (found[1].dtype, found[1].shape) == (spec.dtype, spec.shape)
        key = float_key(spec.dtype)
        for start, n in _chunks(spec.nbytes, step):
            if found is not None and same:
                file, base = found
                ref = BaseRef(file, spec.name, start)
                yield _Job(
                    spec.start + start, n, word, key, ref, base.start + start, spec.name, row
                )
            else:
                yield _Job(spec.start + start, n, word, None, None, 0, spec.name)


def _row_words(shape: tuple[int, ...]) -> int:
    """Words per row of a weight matrix (the weights of one output: everything after the first
    dimension), 0 for a vector or a scalar."""
    if len(shape) < 2 or shape[0] < 2:
        return 0
    return math.prod(shape[1:])


def _worst(job: _Job, name: str) -> Segment:
    """The longest segment a job becomes (for the header room): ``ans`` with a base (``copy``
    is shorter; ``raw``, when ans does not pay, is left to the room's margin), else ``raw``
    with a payload per plane; ``name`` is the longest payload name."""
    if job.base is None:
        planes = (("zstd", name),) * job.word
        return Segment(job.size, "raw", job.word, None, planes, None, job.tensor)
    context = None if job.key is None else (job.key[0], job.key[1], (1 << job.key[1]) - 1)
    return Segment(job.size, "ans", job.word, job.base, (("ans", name),), context, job.tensor)


def encode(
    parent_dir: str | Path,
    new_dir: str | Path,
    out_dir: str | Path,
    *,
    files: Sequence[str] | None = None,
    new_files: Sequence[FileEntry] = (),
    parent_files: Sequence[FileEntry] = (),
    workers: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> list[str]:
    """Write into ``out_dir`` the delta that rebuilds ``new_dir`` from ``parent_dir``.

    ``files`` are the new version's files (default: every non-hidden file of ``new_dir``).
    ``new_files`` and ``parent_files`` are the versions' files as their manifests describe
    them, when the caller has them (a publisher does): the files they list are not hashed
    again unless their size changed. Their digests are trusted; a wrong one gives a delta
    whose rebuilt files fail their check, which is why a publisher decodes every delta before
    it signs. Returns the delta's file names (``delta.json`` first). Nothing is left in
    ``out_dir`` if encoding fails (a failed write, such as a full disk, is a StoreError).
    """
    parent_dir, new_dir, out_dir = Path(parent_dir), Path(new_dir), Path(out_dir)
    workers = workers or default_workers()
    if chunk_bytes < 8 or chunk_bytes > MAX_SEGMENT:
        raise ValueError(f"chunk_bytes must be between 8 and {MAX_SEGMENT}")
    new_paths = sorted(safe_relpath(p) for p in (list_files(new_dir) if files is None else files))
    parent_paths = list_files(parent_dir)
    new_entries = _describe(new_dir, new_paths, new_files)
    parent_tensors = _parent_tensors(parent_dir, parent_paths)
    same_path = [p for p in new_paths if p in set(parent_paths)]
    candidates = sorted(set(same_path) | {f for f, _ in parent_tensors.values()})
    parent_entries = {e.path: e for e in _describe(parent_dir, candidates, parent_files)}

    targets: list[DeltaTarget] = []
    plans: list[tuple[int, FileEntry, SafetensorsHeader | None]] = []
    for entry in new_entries:
        old = parent_entries.get(entry.path)
        if old is not None and (old.size, old.blake3) == (entry.size, entry.blake3):
            targets.append(DeltaTarget(entry.path, entry.size, entry.blake3, copy=entry.path))
            continue
        header = None
        if entry.path.endswith(".safetensors"):
            try:
                header = read_header(new_dir / entry.path)
            except FormatError:
                header = None
        name = f"delta-{len(plans) + 1:05d}.safetensors"
        targets.append(DeltaTarget(entry.path, entry.size, entry.blake3, delta=name))
        plans.append((len(targets) - 1, entry, header))

    out_dir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    written: list[Path] = []
    used: set[str] = {t.copy for t in targets if t.copy is not None}
    try:
        with ExitStack() as stack:
            parent_maps = {
                f: map_file(stack, parent_dir / f, parent_entries[f].size)
                for f in {f for f, _ in parent_tensors.values()}
            }
            pool = stack.enter_context(ThreadPoolExecutor(workers))
            stack.callback(pool.shutdown, cancel_futures=True)
            for ti, entry, header in plans:
                delta_name = targets[ti].delta
                assert delta_name is not None
                partial = out_dir / f".{delta_name}.{tag}.incomplete"
                written.append(partial)
                jobs = list(_plan(header, entry.size, parent_tensors, chunk_bytes))
                payloads = sum(1 if job.base else job.word for job in jobs)
                longest = "9" * len(str(max(payloads - 1, 0)))
                worst = [_worst(job, longest) for job in jobs]
                reserve = header_bound(entry.path, entry.size, worst, payloads)
                with DeltaFileWriter(partial, reserve) as writer:
                    segments = _encode_target(
                        pool, new_dir / entry.path, entry.size, jobs, parent_maps, writer, workers
                    )
                    writer.finish(entry.path, entry.size, segments)
                used.update(s.base.file for s in segments if s.base is not None)
        index = DeltaIndex(tuple(parent_entries[p] for p in sorted(used)), tuple(targets))
        index_tmp = out_dir / f".{INDEX_FILE}.{tag}.incomplete"
        written.append(index_tmp)
        index_tmp.write_bytes(index.to_bytes())
        for ti, _, _ in plans:
            delta_name = targets[ti].delta
            assert delta_name is not None
            os.replace(out_dir / f".{delta_name}.{tag}.incomplete", out_dir / delta_name)
            written.append(out_dir / delta_name)
        os.replace(index_tmp, out_dir / INDEX_FILE)
    except BaseException as e:
        for p in written:
            p.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, P2PDistError):
            raise store_error(f"cannot write the delta into {out_dir}", e) from None
        raise
    return index.delta_files


def _describe(folder: Path, paths: Sequence[str], known: Sequence[FileEntry]) -> list[FileEntry]:
    """Entries of ``paths`` under ``folder``: from ``known`` where it lists the file with its
    current size, else hashed."""
    by_path = {e.path: e for e in known}
    reuse = {p for p in paths if p in by_path and (folder / p).stat().st_size == by_path[p].size}
    hashed = {e.path: e for e in describe_files(folder, [p for p in paths if p not in reuse])}
    return [by_path[p] if p in reuse else hashed[p] for p in paths]


def _encode_target(
    pool: ThreadPoolExecutor,
    path: Path,
    size: int,
    jobs: list[_Job],
    parent_maps: Mapping[str, mmap.mmap | None],
    writer: DeltaFileWriter,
    workers: int,
) -> list[Segment]:
    """Encode one file's segments on the pool, writing payloads in order; return the table."""
    with ExitStack() as local:
        new_map = map_file(local, path, size)

        def work(job: _Job) -> Coded:
            new = view(new_map, job.offset, job.size)
            base = None
            if job.base is not None:
                base = view(parent_maps[job.base.file], job.base_offset, job.size)
            return encode_segment(new, base, job.word, job.key, job.row)

        segments: list[Segment] = []
        with ordered(pool, work, iter(jobs), 2 * workers + 2) as results:
            for job, coded in results:
                refs = [
                    (p.codec, None if p.payload is None else writer.add(p.payload))
                    for p in coded.payloads
                ]
                base = None if coded.op == "raw" else job.base
                seg = Segment(job.size, coded.op, coded.word, base, tuple(refs), coded.context,
                              job.tensor)  # fmt: skip
                segments.append(_merge(segments, seg))
    return segments


def _merge(segments: list[Segment], seg: Segment) -> Segment:
    """Fold an unchanged chunk into the previous one when both copy adjacent parent bytes."""
    if not segments or not seg.is_copy or not segments[-1].is_copy:
        return seg
    prev = segments[-1]
    assert prev.base is not None and seg.base is not None
    if (
        prev.tensor == seg.tensor
        and (prev.base.file, prev.base.tensor) == (seg.base.file, seg.base.tensor)
        and prev.base.offset + prev.size == seg.base.offset
    ):
        segments.pop()
        return Segment(prev.size + seg.size, "copy", base=prev.base, tensor=prev.tensor)
    return seg


__all__ = [
    "CHUNK_BYTES",
    "INDEX_FILE",
    "DeltaIndex",
    "DeltaTarget",
    "Segment",
    "decode",
    "delta_size",
    "encode",
    "read_index",
]
