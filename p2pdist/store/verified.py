"""Proving mapped shards against their signed manifest, and the verify-once records.

A version's safetensors files are mapped privately (``MappedShard``): the header is parsed
from the mapping, the blake3 is computed over the same mapping, and CPU tensors are views
on it. The loader hands out a file's tensors only after the file's bytes hashed to the
blake3 the signed manifest lists. Two policies:

- ``always`` (default): every load re-hashes every file it reads. Costs one pass of blake3
  over the bytes (overlapped with the copy to the device); catches any change, however made.
- ``once``: after a file verified, its identity (device, inode, size, mtime, ctime) is
  recorded under ``<store>/verified/<blake3>``; a later load of a file with the same
  identity skips the hash. Catches a change by write(2), truncation or replacement (a write
  bumps mtime and ctime, a replacement changes the inode; ctime cannot be set back by a
  user), but not bit rot on the disk, writes to the raw block device, writes through
  another process's shared memory map (the kernel does not always timestamp them), or
  someone with root who sets the clock back. A record is not written while the file's ctime is younger than the
  timestamp granularity window, so that a write landing in the same clock tick as the hash
  cannot hide behind an equal timestamp (git's "racy clean" problem).

See docs/LOADING.md for the trade-off in numbers.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import blake3
import torch

from p2pdist.errors import ConfigError, FormatError, NotFoundError
from p2pdist.formats.header import MAX_HEADER_SIZE, SafetensorsHeader, TensorSpec, parse_header
from p2pdist.formats.keys import TrustStore
from p2pdist.formats.manifest import FileEntry, Manifest
from p2pdist.formats.shards import INDEX_FILE, SINGLE_FILE, index_shard_names
from p2pdist.store.records import (
    FileIdentity,
    VerifiedRecords,
    check_digest,
    check_size,
    hash_buffer,
)

VerifyPolicy = Literal["always", "once"]
POLICIES: tuple[str, ...] = ("always", "once")


def check_policy(verify: object) -> VerifyPolicy:
    """Return ``verify`` if it names a policy, else raise ConfigError naming the choices."""
    if verify not in POLICIES:
        raise ConfigError(f"verify={verify!r}: expected one of {', '.join(map(repr, POLICIES))}")
    return verify  # type: ignore[return-value]


TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    "F8_E8M0": torch.float8_e8m0fnu,
    "I16": torch.int16,
    "U16": torch.uint16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "F32": torch.float32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F64": torch.float64,
    "C64": torch.complex64,
}


def tensor_view(base: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    """A zero-copy tensor over ``spec``'s bytes of the mapping (a copy if misaligned)."""
    dtype = TORCH_DTYPES[spec.dtype]
    if spec.nbytes == 0:
        return torch.empty(spec.shape, dtype=dtype)
    raw = base[spec.start : spec.end]
    if spec.start % dtype.itemsize:  # the mapping is page-aligned: only the offset matters
        raw = raw.clone()
    return raw.view(dtype).view(spec.shape)


class MappedShard:
    """One safetensors file of a version: its entry, a private mapping, its validated header."""

    def __init__(self, folder: Path, entry: FileEntry) -> None:
        self.entry = entry
        self.path = path = folder / entry.path
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise NotFoundError(f"{entry.path}: missing from {folder}") from None
        try:
            st = os.fstat(fd)
            check_size(entry, st.st_size)
            self.identity = FileIdentity.from_stat(st)
            if st.st_size < 8:
                raise FormatError(f"{entry.path}: not a safetensors file (shorter than 8 bytes)")
            self.mm = mmap.mmap(fd, st.st_size, access=mmap.ACCESS_COPY)
        finally:
            os.close(fd)
        # Writable private mapping: torch.frombuffer accepts it silently, writes stay private.
        self.base = torch.frombuffer(self.mm, dtype=torch.uint8)
        self.verified = False
        self._header: SafetensorsHeader | None = None
        self.header_error: FormatError | None = None
        size = st.st_size
        header_size = int.from_bytes(self.mm[:8], "little")
        raw = self.header_bytes = self.mm[: 8 + min(header_size, MAX_HEADER_SIZE, size - 8)]
        try:
            self._header = parse_header(raw, size, source=entry.path)
        except FormatError as e:
            self.header_error = e

    @property
    def header(self) -> SafetensorsHeader:
        if self._header is None:
            assert self.header_error is not None
            raise self.header_error
        return self._header

    def verify(self, policy: VerifyPolicy, records: VerifiedRecords | None) -> None:
        """Hash the mapping against the manifest (or trust a matching verify-once record)."""
        if self.verified or self.trusted(policy, records):
            self.verified = True
            return
        check_digest(self.entry, hash_buffer(memoryview(self.mm)))
        self.vouch(policy, records)

    def trusted(self, policy: VerifyPolicy, records: VerifiedRecords | None) -> bool:
        """Whether a verify-once record vouches for the file, as mapped and as it is now.

        The file is looked at again (a lazy reader verifies long after it mapped the file): a
        record vouches only for the file as it was mapped and still is, and a file cut short
        since is an IntegrityError, not a SIGBUS from hashing past its end.
        """
        now = self._identity_now()
        if now is not None:
            check_size(self.entry, now.size)
        return (
            policy == "once"
            and records is not None
            and now == self.identity
            and records.matches(self.entry.blake3, self.identity)
        )

    def vouch(self, policy: VerifyPolicy, records: VerifiedRecords | None) -> None:
        """The file hashed to its digest: mark it verified and, for ``once``, record its
        identity if the file did not change while it was hashed."""
        self.verified = True
        if policy == "once" and records is not None and self._identity_now() == self.identity:
            records.record(self.entry.blake3, self.identity)

    def _identity_now(self) -> FileIdentity | None:
        """The file's identity now; None once it is gone (the mapping keeps its bytes)."""
        try:
            return FileIdentity.from_stat(os.stat(self.path))
        except FileNotFoundError:
            return None

    def tensor(self, spec: TensorSpec) -> torch.Tensor:
        return tensor_view(self.base, spec)


class CopyHasher:
    """The blake3 of a file computed from what a copy of it read: the header as parsed, each
    copied range from its copy, the ranges not copied from the mapping, in file order, on one
    thread beside the copying one. A file changed while it is copied then fails its check,
    instead of handing out a copy of other bytes than those hashed."""

    def __init__(self, shard: MappedShard, pool: ThreadPoolExecutor) -> None:
        self.shard, self.pool = shard, pool
        self.hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
        self.at = 0
        self._last: Future[None] | None = None
        self._feed(shard.header_bytes)

    def _feed(self, data: bytes | memoryview | torch.Tensor) -> Future[None]:
        view = data.numpy().data if isinstance(data, torch.Tensor) else memoryview(data)
        self.at += len(view)
        self._last = self.pool.submit(_update, self.hasher, view)
        return self._last

    def gap_to(self, offset: int) -> None:
        """Hash the mapping up to ``offset`` (bytes nothing copied)."""
        if offset > self.at:
            self._feed(memoryview(self.shard.mm)[self.at : offset])

    def copied(self, offset: int, data: torch.Tensor) -> Future[None]:
        """Hash ``data``, a CPU copy of the file's bytes from ``offset``; the Future is done
        once it was read (a buffer may be refilled only then)."""
        self.gap_to(offset)
        assert offset == self.at, (offset, self.at)
        return self._feed(data)

    def finish(self, policy: VerifyPolicy, records: VerifiedRecords | None) -> None:
        """Hash the rest of the file, wait, and check the digest (IntegrityError)."""
        self.gap_to(self.shard.entry.size)
        assert self._last is not None
        self._last.result()  # one thread, in order: the last update done means all are
        check_digest(self.shard.entry, self.hasher.hexdigest())
        self.shard.vouch(policy, records)


def check_signature(manifest: Manifest) -> None:
    manifest.verify_signature(trusted_key=TrustStore().get(manifest.name))


def open_shards(folder: Path, manifest: Manifest) -> list[MappedShard]:
    """Map every safetensors file of the version. Which files those are comes from the signed
    manifest (and the index file's bytes as verified, not read again), never from what the
    folder happens to hold: a shard deleted together with its index is missing, not skipped."""
    folder = Path(folder)
    known = {e.path: e for e in manifest.files}
    if INDEX_FILE in known:
        try:
            data = (folder / INDEX_FILE).read_bytes()  # small JSON: verified before trusted
        except FileNotFoundError:
            raise NotFoundError(f"{INDEX_FILE}: missing from {folder}") from None
        check_size(known[INDEX_FILE], len(data))
        check_digest(known[INDEX_FILE], hash_buffer(data))
        names = index_shard_names(data, source=INDEX_FILE)
    elif (folder / INDEX_FILE).is_file():
        raise FormatError(f"{folder}: {INDEX_FILE} is not listed in the signed manifest")
    elif SINGLE_FILE in known:
        names = [SINGLE_FILE]
    else:
        names = sorted(p for p in known if p.endswith(".safetensors") and "/" not in p)
        if not names:
            raise NotFoundError(f"{folder}: the signed manifest lists no safetensors files")
    missing = [n for n in names if n not in known]
    if missing:
        raise FormatError(f"{folder}: {', '.join(missing)} not listed in the signed manifest")
    shards = [MappedShard(folder, known[n]) for n in names]
    seen: dict[str, str] = {}
    for shard in shards:
        if shard.header_error is not None:
            continue
        for spec in shard.header.tensors:
            if spec.name in seen:
                raise FormatError(
                    f"{folder}: tensor {spec.name!r} appears in both {seen[spec.name]} and "
                    f"{shard.entry.path}"
                )
            seen[spec.name] = shard.entry.path
    return shards


def raise_header_errors(
    shards: Sequence[MappedShard], policy: VerifyPolicy, records: VerifiedRecords | None
) -> None:
    """A bad header of a file that also fails its hash is reported as the integrity error."""
    for shard in shards:
        if shard.header_error is not None:
            shard.verify(policy, records)
            raise shard.header_error


__all__ = [
    "POLICIES",
    "TORCH_DTYPES",
    "CopyHasher",
    "FileIdentity",
    "MappedShard",
    "VerifiedRecords",
    "VerifyPolicy",
    "check_digest",
    "check_policy",
    "check_signature",
    "check_size",
    "hash_buffer",
    "open_shards",
    "raise_header_errors",
    "tensor_view",
]


def _update(hasher: blake3.blake3, data: memoryview) -> None:
    hasher.update(data)
