"""What the delta's encoder and decoder share: the index of a delta folder, mapped files, bounded
parallel work in order, and OSErrors as StoreErrors."""

from __future__ import annotations

import errno
import mmap
import os
import traceback
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from p2pdist.delta.codec import (
    INDEX_FILE,
)
from p2pdist.delta.table import (
    DeltaIndex,
)
from p2pdist.errors import FormatError, NotFoundError, StoreError

MAX_INDEX_BYTES = 64 << 20


def default_workers() -> int:
    """Threads for coding segments: one per core, at most 8 (memory is a few segments each)."""
    return max(1, min(os.cpu_count() or 2, 8))


def read_index(delta_dir: str | Path) -> DeltaIndex:
    """Read and validate ``delta.json`` of a delta folder."""
    path = Path(delta_dir) / INDEX_FILE
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no delta index; is this a delta folder?") from None
    if size > MAX_INDEX_BYTES:
        raise FormatError(f"{path}: delta index of {size} bytes (limit {MAX_INDEX_BYTES})")
    return DeltaIndex.from_bytes(path.read_bytes(), source=str(path))


def map_file(stack: ExitStack, path: Path, size: int) -> mmap.mmap | None:
    """``size`` bytes of ``path`` mapped read-only until ``stack`` closes (None for 0 bytes)."""
    if size == 0:
        return None
    f = stack.enter_context(path.open("rb"))
    m = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    stack.callback(_unmap, m)
    return m


def _unmap(m: mmap.mmap) -> None:
    """Unmap now, or when the last view dies (a traceback may still hold one after an error)."""
    try:
        m.close()
    except BufferError:
        pass


def view(m: mmap.mmap | None, offset: int, size: int) -> np.ndarray:
    """A uint8 array over ``size`` bytes of a mapping, without copying."""
    if m is None:
        return np.empty(0, np.uint8)
    return np.frombuffer(m, dtype=np.uint8, count=size, offset=offset)


@contextmanager
def ordered(
    pool: ThreadPoolExecutor, fn: Any, items: Iterator[Any], window: int
) -> Iterator[Iterator[tuple[Any, Any]]]:
    """``pool.map`` in order with at most ``window`` calls in flight (bounded memory).

    Leaving the block, normally or by an exception (a failed segment, a full disk), cancels
    the calls not started and waits for the running ones: none may outlive the files and
    maps the caller closes next (a late ``pwrite`` to a closed descriptor writes into
    whatever file reused its number).
    """
    pending: deque[tuple[Any, Future[Any]]] = deque()

    def settled(fut: Future[Any]) -> Any:
        try:
            return fut.result()
        except BaseException as e:
            # The worker's finished frames hold views of the caller's maps: cleared, they no
            # longer keep a deleted file's space (or a map) alive while the error is kept.
            traceback.clear_frames(e.__traceback__)
            raise

    def results() -> Iterator[tuple[Any, Any]]:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= window:
                it, fut = pending.popleft()
                yield it, settled(fut)
        while pending:
            it, fut = pending.popleft()
            yield it, settled(fut)

    try:
        yield results()
    finally:
        for _, fut in pending:
            fut.cancel()
        wait([fut for _, fut in pending])


def store_error(what: str, e: OSError) -> StoreError:
    """A StoreError for ``e`` that names the file concerned and keeps the errno."""
    where = f" ({e.filename})" if e.filename else ""
    hint = " (disk full: free space and retry)" if e.errno == errno.ENOSPC else ""
    error = StoreError(f"{what}: {e.strerror or e}{where}{hint}")
    error.errno = e.errno
    return error
