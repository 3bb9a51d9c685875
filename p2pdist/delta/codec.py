"""The delta format as values: segment coding, codec tables, the index.

Nothing here touches a file; ``delta/__init__.py`` and ``delta/file.py`` do the I/O.

A *segment* is a run of bytes of a target file (a tensor, a slice of a large tensor, a
header, a side file), rebuilt from an optional *base* run of the same length in the parent
version. ``delta/__init__.py`` decides what the segments are and where their payloads live; this
module only computes, on numpy arrays and buffers, so that the property tests can drive it
directly. A segment is coded one of three ways (docs/FORMAT_DELTA.md has the byte layout):

- ``copy``: the base bytes, unchanged; no payload.
- ``ans`` (with a base of the same dtype and shape): each word's move ``new - base`` (modulo
  2**(8*word)), zigzagged so that a move of a few units in the last place is a small number
  whatever its sign, split into a token (small values, or the position of the leading one
  and the two bits below it) and raw extra bits. Tokens are rANS-coded with one frequency
  table per *context*, the exponent of the base word for floats: weights of one exponent
  move by similar numbers of units in the last place. A segment of whole rows of a 16-bit
  weight matrix also classes its rows and columns by how far they moved (2 x 2), each class
  with its own tables. On the AdamW pairs of bench/delta.py (k->k+10) this gives 0.269 of
  full size for bf16 (0.274 without classes) and 0.635 for fp32, against 0.282 and 0.640 for
  zstd on byte planes grouped by exponent (format 1); the extra bits of fp32 moves, noise,
  are 0.52 of full size alone. The kernel is C (``_ans/*.c``): two passes to encode,
  one to decode, no sorting, the GIL released, with AVX-512 and AVX2 versions of both picked
  at load time, byte-identical to the portable one.
- ``raw`` (no base: an added tensor, another dtype or shape, a header, a side file, or a
  move that ``ans`` cannot shrink): byte planes of the words, plane ``i`` holding byte ``i``
  of every word, each stored as ``zero`` (no payload), ``raw`` or ``zstd``.

zstd, numpy and the C kernel release the GIL, so ``delta/__init__.py`` runs segments on a thread pool.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from p2pdist.errors import FormatError

try:
    from p2pdist.delta import _ans
except ImportError as e:  # pragma: no cover - a source tree that was never built
    raise ImportError(
        f"p2pdist's C extension p2pdist.delta._ans is not built ({e}): run `make install` or "
        "`pip install -e .` (needs a C compiler and Python's headers)"
    ) from e

INDEX_FILE = "delta.json"
FORMAT_NAME = "p2pdist-delta"
FORMAT_VERSION = 3
"""1: xor/sub byte planes sorted by exponent, zstd. 2: copy / raw / ans segments. 3: ans
with 32 interleaved rANS states instead of 4, so that vector decoders (AVX2, AVX-512) decode
a group of 32 words at once."""
META_KEY = "p2pdist.delta"
MAX_SEGMENT = 64 << 20
"""The decoder refuses a segment that must be decoded and is larger than this."""

WORD_TYPES: dict[int, type[np.unsignedinteger]] = {
    1: np.uint8,
    2: np.uint16,
    4: np.uint32,
    8: np.uint64,
}
OPS = ("copy", "raw", "ans")
PLANE_CODECS = ("zero", "raw", "zstd")
MAX_KEY_BITS = 16

ZSTD_LEVEL = 1
"""zstd level of raw planes (headers, added tensors). Level 1 with a small hash table and
minimum match 7 measured better and faster than levels 2-19 on weight planes."""
ZSTD_WINDOW_LOG = 17
ZSTD_HASH_LOG = 8
ZSTD_MIN_MATCH = 7
MAX_WINDOW_SIZE = 1 << 24
"""Decoder cap on a frame's window (our frames use 2**17): a hostile frame cannot make the
decoder allocate a large window."""
RAW_ENTROPY_BITS = 7.9
"""A plane whose sampled byte entropy is above this is stored raw without trying zstd."""
RAW_IF_SAVES_LESS = 0.01
"""A zstd frame must save at least this fraction of the plane, or the plane is stored raw."""
_SAMPLE = 1 << 16


@dataclass(frozen=True)
class Plane:
    """One encoded payload: its codec (a plane codec, or ``ans``) and bytes (None for ``zero``)."""

    codec: str
    payload: bytes | None = None


@dataclass(frozen=True)
class Coded:
    """How one segment was coded, before ``delta/__init__.py`` places its payloads in a file."""

    op: str
    word: int
    context: tuple[int, int, int] | None = None
    """``ans`` only: (shift, bits, lo) of the context read from the base words."""
    payloads: tuple[Plane, ...] = ()
    """``raw``: one per byte plane; ``ans``: one; ``copy``: none."""


def float_key(dtype: str) -> tuple[int, int] | None:
    """The context key (shift, bits) that selects the exponent of a float dtype, else None."""
    return {
        "BF16": (7, 8),
        "F16": (10, 5),
        "F32": (23, 8),
        "F64": (52, 11),
        "F8_E4M3": (3, 4),
        "F8_E5M2": (2, 5),
        "F8_E4M3FNUZ": (3, 4),
        "F8_E5M2FNUZ": (2, 5),
    }.get(dtype)


def version_problem(version: Any) -> str:
    """Why a delta of another format version cannot be read, and what to do instead."""
    if isinstance(version, int) and not isinstance(version, bool) and version < FORMAT_VERSION:
        return (
            f"delta format {version} was written by an older p2pdist and is no longer read "
            f"(this one reads format {FORMAT_VERSION}): fetch the version in full, or publish "
            "it again"
        )
    return f"delta format {version!r}; this p2pdist reads {FORMAT_VERSION}: upgrade p2pdist"


def check_context(context: Any, word: int) -> tuple[int, int, int]:
    """A valid ``[shift, bits, lo]`` for ``word``-byte words as a tuple, else FormatError."""
    if not (
        isinstance(context, list | tuple)
        and len(context) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) for v in context)
    ):
        raise FormatError(f"delta: invalid context {context!r}")
    shift, bits, lo = context
    if not (0 <= shift and 1 <= bits <= MAX_KEY_BITS and shift + bits <= 8 * word):
        raise FormatError(f"delta: invalid context key {context!r} for {word}-byte words")
    if not 0 <= lo < 1 << bits:
        raise FormatError(f"delta: context offset {lo} out of range")
    return shift, bits, lo


def encode_segment(
    new: np.ndarray,
    base: np.ndarray | None,
    word: int,
    key: tuple[int, int] | None = None,
    row: int = 0,
) -> Coded:
    """Code ``new`` (uint8, a multiple of ``word`` bytes) against ``base`` (same length) or none.

    With a base: ``copy`` when equal, else ``ans`` with context ``key`` (None: one context),
    unless its payload would not be smaller than the raw bytes; then, and without a base,
    ``raw`` byte planes. ``row`` is the tensor's words per row (the segment holding whole
    rows), or 0: ``ans`` then also classes rows and columns by how much they moved (a row of
    a weight matrix is one output's weights, and Adam moves some outputs further than others).
    """
    if word not in WORD_TYPES or new.size % word:
        raise ValueError(f"{new.size} bytes are not words of {word}")
    if base is not None:
        if base.size != new.size:
            raise ValueError("new and base differ in length")
        with _scratch(new.size, word) as scratch:
            coded = _ans.encode(new, base, word, key, scratch, row)
        if coded is None:
            return Coded("copy", word)
        if coded is not False:
            lo, payload = coded
            assert key is None or lo is not None
            context = None if key is None else (key[0], key[1], lo)
            return Coded("ans", word, context, (Plane("ans", payload),))
    return Coded("raw", word, None, tuple(encode_plane(p) for p in split_planes(new, word)))


def decode_ans(
    payload: bytes | memoryview | np.ndarray,
    base: np.ndarray,
    out: np.ndarray,
    word: int,
    context: tuple[int, int, int] | None,
) -> None:
    """Rebuild into ``out`` the words an ``ans`` payload codes against ``base``."""
    if len(payload) > out.size:
        raise FormatError(
            f"delta: ans payload of {len(payload)} bytes is larger than its {out.size}-byte segment"
        )
    try:
        with _scratch(out.size, word) as scratch:
            _ans.decode(payload, base, out, word, context, scratch)
    except ValueError as e:
        raise FormatError(
            f"delta: ans payload does not decode ({e}): the delta is corrupt, or was made "
            "against another parent"
        ) from None


@contextmanager
def _scratch(nbytes: int, word: int) -> Iterator[np.ndarray]:
    """A scratch buffer for the C kernel, taken from the process's spares and given back:
    fresh memory for every segment costs a page fault per 4 KiB (a third of the encoder's
    time), and a publisher that encodes every few hundred steps would fault its buffers in
    again on every version if they lived and died with a version's worker threads."""
    need = _ans.scratch_size(nbytes, word)
    with _spare_lock:
        buf = _spare.pop() if _spare else None
    if buf is None or buf.size < need:
        buf = np.empty(need, np.uint8)
    try:
        yield buf
    finally:
        with _spare_lock:
            if sum(b.size for b in _spare) + buf.size <= MAX_SPARE_BYTES:
                _spare.append(buf)


def split_planes(new: np.ndarray, word: int) -> list[np.ndarray | None]:
    """Byte ``i`` of every word of ``new`` for each ``i`` (None for a plane that is all zero)."""
    if word == 1:
        return [new if new.any() else None]
    cols = new.reshape(-1, word)
    planes: list[np.ndarray | None] = []
    for i in range(word):
        plane = np.ascontiguousarray(cols[:, i])
        planes.append(plane if plane.any() else None)
    return planes


def join_planes(planes: list[np.ndarray | None], out: np.ndarray) -> None:
    """Write into ``out`` (uint8, writable) the words whose byte planes are ``planes``."""
    word = len(planes)
    if word == 1:
        out[:] = 0 if planes[0] is None else planes[0]
        return
    cols = out.reshape(-1, word)
    for i, plane in enumerate(planes):
        cols[:, i] = 0 if plane is None else plane


# --------------------------------------------------------------------------- plane coding

_local = threading.local()
# Scratch buffers kept between segments and encodes, up to this many bytes in all: four of
# the 13-23 MiB that the default 4 MiB segments need (a host coding on more cores faults the
# rest in again per version; one that once coded 64 MiB segments does not keep their 233 MiB).
MAX_SPARE_BYTES = 96 << 20
_spare: list[np.ndarray] = []
_spare_lock = threading.Lock()


def _compressor() -> zstandard.ZstdCompressor:
    cctx = getattr(_local, "cctx", None)
    if cctx is None:
        params = zstandard.ZstdCompressionParameters.from_level(
            ZSTD_LEVEL,
            window_log=ZSTD_WINDOW_LOG,
            hash_log=ZSTD_HASH_LOG,
            min_match=ZSTD_MIN_MATCH,
            write_content_size=True,
            write_checksum=False,
        )
        cctx = _local.cctx = zstandard.ZstdCompressor(compression_params=params)
    return cctx


def _decompressor() -> zstandard.ZstdDecompressor:
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE)
    return dctx


def _sample_entropy(plane: np.ndarray) -> float:
    sample = plane[:: plane.size // _SAMPLE] if plane.size >= 2 * _SAMPLE else plane
    counts = np.bincount(sample, minlength=256)
    p = counts[counts > 0] / sample.size
    return float(-(p * np.log2(p)).sum())


def encode_plane(plane: np.ndarray | None) -> Plane:
    """Choose the cheapest codec for one plane: zero, zstd, or raw when zstd does not pay."""
    if plane is None:
        return Plane("zero")
    data = plane.data.cast("B")
    if plane.size >= _SAMPLE and _sample_entropy(plane) > RAW_ENTROPY_BITS:
        return Plane("raw", bytes(data))
    packed = _compressor().compress(data)
    if len(packed) > plane.size * (1 - RAW_IF_SAVES_LESS):
        return Plane("raw", bytes(data))
    return Plane("zstd", packed)


def decode_plane(codec: str, payload: memoryview | bytes | None, n: int) -> np.ndarray | None:
    """The ``n`` bytes of a plane, never allocating more than ``n`` for a hostile payload."""
    if codec == "zero":
        return None
    if payload is None:
        raise FormatError(f"delta: a {codec} plane without a payload")
    if codec == "raw":
        if len(payload) != n:
            raise FormatError(f"delta: raw plane of {len(payload)} bytes, expected {n}")
        return np.frombuffer(payload, dtype=np.uint8)
    if codec != "zstd":
        raise FormatError(f"delta: unknown plane codec {codec!r}")
    try:
        declared = zstandard.frame_content_size(payload)
    except zstandard.ZstdError as e:
        raise FormatError(f"delta: zstd plane is not a zstd frame ({e})") from None
    if declared != n:
        raise FormatError(
            f"delta: zstd plane declares {declared} bytes, expected {n} "
            "(truncated, tampered, or a decompression bomb)"
        )
    # The one-shot decoder ignores max_window_size (only streaming checks it), so the
    # format's limit is checked here from the frame header.
    window = zstandard.get_frame_parameters(payload).window_size
    if window > MAX_WINDOW_SIZE:
        raise FormatError(
            f"delta: zstd plane uses a {window:,}-byte window, above the format's limit of "
            f"{MAX_WINDOW_SIZE:,} (docs/FORMAT_DELTA.md); the delta is not p2pdist's"
        )
    try:
        data = _decompressor().decompress(payload, max_output_size=n, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise FormatError(f"delta: zstd plane does not decompress ({e})") from None
    if len(data) != n:
        raise FormatError(f"delta: zstd plane gave {len(data)} bytes, expected {n}")
    return np.frombuffer(data, dtype=np.uint8)


__all__ = [
    "FORMAT_VERSION",
    "INDEX_FILE",
    "MAX_SEGMENT",
    "META_KEY",
    "OPS",
    "PLANE_CODECS",
    "Coded",
    "Plane",
    "check_context",
    "decode_ans",
    "decode_plane",
    "encode_plane",
    "encode_segment",
    "float_key",
    "join_planes",
    "split_planes",
    "version_problem",
]
