"""Moving mapped bytes onto a device: device names, chunk plans, double-buffered staging.

The loader's CUDA path copies each shard's tensors through two pinned host buffers, so that
the host copy of one chunk overlaps the DMA of the previous one (docs/LOADING.md). This
module owns that machinery; the plan is pure logic, and the copier runs on the CPU with
plain buffers, which is how the tests drive it where no GPU exists.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import torch

from p2pdist.errors import ConfigError, NotFoundError

DEFAULT_CHUNK_BYTES = 32 * 1024 * 1024
STAGING_BUFFERS = 2


# -- devices ----------------------------------------------------------------------------------
def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from itself or its name ("float16", "torch.bfloat16"), else ConfigError."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    found = getattr(torch, dtype.removeprefix("torch."), None) if isinstance(dtype, str) else None
    if not isinstance(found, torch.dtype):
        raise ConfigError(
            f"dtype {dtype!r} is not a torch dtype; pass one such as torch.float16, or its name"
        )
    return found


def parse_device(device: str | torch.device) -> torch.device:
    """A concrete torch device that exists here, or ConfigError / NotFoundError saying why not."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(
            f"device {device!r} is not a device name ({e}); use 'cpu' or 'cuda:N'"
        ) from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ConfigError(f"device {device!r}: p2pdist loads onto 'cpu' or 'cuda[:N]' only")
    if not torch.cuda.is_available():
        raise NotFoundError(
            f"device {device!r} does not exist: torch sees no CUDA device here (torch "
            f"{torch.__version__}, built with CUDA {torch.version.cuda}); load with device='cpu'"
        )
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if not 0 <= index < count:
        raise NotFoundError(
            f"device {device!r} does not exist: this machine has {count} CUDA device(s), "
            f"cuda:0 to cuda:{count - 1}"
        )
    return torch.device("cuda", index)


# -- chunk planning (pure) ------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """Bytes ``[buf_offset, buf_offset+length)`` of a chunk go to ``dst_offset`` of tensor ``index``."""

    index: int
    dst_offset: int
    buf_offset: int
    length: int


@dataclass(frozen=True)
class Chunk:
    """One staged copy: source bytes ``[start, end)`` of the file, split into tensor pieces."""

    start: int
    end: int
    pieces: tuple[Piece, ...]


def plan_chunks(ranges: Sequence[tuple[int, int]], chunk_bytes: int) -> list[Chunk]:
    """Cut contiguous, ordered byte ranges (one per tensor) into chunks of at most chunk_bytes.

    Empty ranges get no piece. Every byte of every range lands in exactly one piece, so a
    chunk is one host copy of ``end - start`` bytes and one device copy per piece.
    """
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    chunks: list[Chunk] = []
    nonempty = [(i, s, e) for i, (s, e) in enumerate(ranges) if e > s]
    for (_, _, prev_end), (_, start, _) in itertools.pairwise(nonempty):
        if start != prev_end:
            raise ValueError("ranges must be contiguous and in file order")
    if not nonempty:
        return chunks
    pos, end_all = nonempty[0][1], nonempty[-1][2]
    k = 0
    while pos < end_all:
        chunk_end = min(pos + chunk_bytes, end_all)
        pieces = []
        while k < len(nonempty) and nonempty[k][1] < chunk_end:
            index, start, end = nonempty[k]
            lo, hi = max(start, pos), min(end, chunk_end)
            pieces.append(Piece(index, lo - start, lo - pos, hi - lo))
            if end > chunk_end:
                break
            k += 1
        chunks.append(Chunk(pos, chunk_end, tuple(pieces)))
        pos = chunk_end
    return chunks


# -- copying --------------------------------------------------------------------------------
class StagedCopier:
    """Moves byte ranges of a mapping into device tensors through double-buffered staging.

    On CUDA the staging buffers are pinned and the device copies run on a side stream: the
    host copy into one buffer overlaps the DMA out of the other, and a buffer is refilled
    only after the event recorded behind its last DMA completed. On CPU the same code runs
    with plain buffers and no stream (the tests use that to exercise the plan and the
    buffer rotation).
    """

    def __init__(self, device: torch.device, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        self.device = device
        self.chunk_bytes = chunk_bytes
        cuda = device.type == "cuda"
        self.buffers = [
            torch.empty(chunk_bytes, dtype=torch.uint8, pin_memory=cuda)
            for _ in range(STAGING_BUFFERS)
        ]
        self.stream = torch.cuda.Stream(device) if cuda else None
        self._events: list[Any] = [None] * STAGING_BUFFERS
        self._readers: list[Future[None] | None] = [None] * STAGING_BUFFERS
        self._turn = 0
        self.lock = threading.Lock()

    def copy(
        self,
        source: torch.Tensor,
        chunks: Sequence[Chunk],
        dsts: Sequence[torch.Tensor],
        on_staged: Callable[[int, torch.Tensor], Future[None]] | None = None,
    ) -> None:
        """Copy ``source[chunk.start:chunk.end]`` pieces into the flat uint8 tensors ``dsts``.

        ``on_staged(offset, staging)`` sees each chunk as staged (to hash what was read); a
        buffer is refilled only once its Future is done, as only once its DMA is.
        """
        stream = self.stream
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(self.device))
        for chunk in chunks:
            b = self._turn
            self._turn = (b + 1) % STAGING_BUFFERS
            if self._events[b] is not None:
                self._events[b].synchronize()
            reader, self._readers[b] = self._readers[b], None
            if reader is not None:
                reader.result()
            staging = self.buffers[b][: chunk.end - chunk.start]
            staging.copy_(source[chunk.start : chunk.end])
            if on_staged is not None:
                self._readers[b] = on_staged(chunk.start, staging)
            if stream is None:
                self._scatter(staging, chunk, dsts)
                continue
            with torch.cuda.stream(stream):
                self._scatter(staging, chunk, dsts)
                event = torch.cuda.Event()
                event.record(stream)
            self._events[b] = event

    @staticmethod
    def _scatter(staging: torch.Tensor, chunk: Chunk, dsts: Sequence[torch.Tensor]) -> None:
        for p in chunk.pieces:
            dst = dsts[p.index][p.dst_offset : p.dst_offset + p.length]
            dst.copy_(staging[p.buf_offset : p.buf_offset + p.length], non_blocking=True)

    def finish(self) -> None:
        """Block until every device copy issued so far has landed, and every staged chunk
        was read by its ``on_staged`` reader."""
        if self.stream is not None:
            self.stream.synchronize()
        readers, self._readers = self._readers, [None] * STAGING_BUFFERS
        for reader in readers:
            if reader is not None:
                reader.result()


_COPIERS: dict[torch.device, StagedCopier] = {}
_COPIERS_LOCK = threading.Lock()


def shared_copier(device: torch.device) -> StagedCopier:
    """The process's staging buffers for ``device`` (pinning memory is slow: reuse it)."""
    with _COPIERS_LOCK:
        copier = _COPIERS.get(device)
        if copier is None:
            copier = _COPIERS[device] = StagedCopier(device)
        return copier


__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "Chunk",
    "Piece",
    "StagedCopier",
    "parse_device",
    "plan_chunks",
    "shared_copier",
]
