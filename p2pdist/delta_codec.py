"""The arithmetic of one delta segment: bytes in, byte planes out, and back, losslessly.

A *segment* is a run of bytes of a target file (a tensor, a slice of a large tensor, a
header, a side file) rebuilt from an optional *base* run of the same length in the parent
version. ``delta.py`` decides what the segments are and where their payloads live; this
module only computes, on numpy arrays, and never touches files. Every function here works on
values so that the property tests can drive it directly.

The transform of a segment of ``n`` words of ``word`` bytes (little-endian, as safetensors
stores them), see docs/FORMAT.md:

1. ``op``: ``xor`` gives ``z = new ^ base``; ``sub`` gives ``d = new - base`` modulo
   2**(8*word), then zigzag ``z = (d << 1) ^ (d >> (8*word - 1))`` (arithmetic shift), so that
   a weight that moved a few units in the last place becomes a small number whatever the
   sign of the move, and a carry across the exponent costs nothing. Without a base ``z = new``.
2. ``order`` (``sub``/``xor`` with a base only): the words are stably sorted by a key read
   from the *base*, ``(base >> shift) & (2**bits - 1)`` (the exponent of a float). Weights
   of one exponent move by similar numbers of units in the last place, so grouping them
   gives the entropy coder homogeneous runs (bf16: 32 % -> 28 % of full size). The decoder
   recomputes the same order from the base, so it costs no bytes.
3. Byte planes: plane ``i`` holds byte ``i`` of every word. Each plane is stored as
   ``zero`` (every byte 0: no payload), ``raw`` or ``zstd`` (one frame, content size set).

zstd and numpy release the GIL, so ``delta.py`` runs segments on a thread pool.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import zstandard

from p2pdist.errors import FormatError

WORD_TYPES: dict[int, type[np.unsignedinteger]] = {
    1: np.uint8,
    2: np.uint16,
    4: np.uint32,
    8: np.uint64,
}
SIGNED_TYPES: dict[int, type[np.signedinteger]] = {
    1: np.int8,
    2: np.int16,
    4: np.int32,
    8: np.int64,
}
OPS = ("xor", "sub")
PLANE_CODECS = ("zero", "raw", "zstd")

ZSTD_LEVEL = 1
"""zstd level of plane frames. Measured on bf16 and fp32 AdamW checkpoint pairs: level 1 with
a small hash table and minimum match 7 compresses the (mostly literal) planes both better
and faster than levels 2-19 except 19 (which is 100x slower for 1 % less)."""
ZSTD_WINDOW_LOG = 17
ZSTD_HASH_LOG = 8
ZSTD_MIN_MATCH = 7
MAX_WINDOW_SIZE = 1 << 24
"""Decoder cap on a frame's window (our frames use 2**17): a hostile frame cannot make the
decoder allocate a large window."""
RAW_ENTROPY_BITS = 7.9
"""A plane whose sampled byte entropy is above this is stored raw without trying zstd (the
low mantissa planes of fp32 moves are noise)."""
RAW_IF_SAVES_LESS = 0.01
"""A zstd frame must save at least this fraction of the plane, or the plane is stored raw."""
_SAMPLE = 1 << 16


@dataclass(frozen=True)
class Transform:
    """How a segment's words become planes: ``op``, word size, and optional grouping key."""

    op: str = "xor"
    word: int = 1
    order: tuple[int, int] | None = None
    """(shift, bits) of the key read from the base words, or None for file order."""

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise FormatError(f"delta: unknown segment op {self.op!r} (known: xor, sub)")
        if self.word not in WORD_TYPES:
            raise FormatError(f"delta: word size {self.word!r} is not 1, 2, 4 or 8")
        if self.order is not None:
            shift, bits = self.order
            if not (
                isinstance(shift, int)
                and isinstance(bits, int)
                and 0 <= shift
                and 1 <= bits <= 16
                and shift + bits <= 8 * self.word
            ):
                raise FormatError(f"delta: invalid order key {self.order!r} for {self.word}-byte words")


@dataclass(frozen=True)
class Plane:
    """One encoded byte plane: its codec and payload (None for ``zero``)."""

    codec: str
    payload: bytes | None = None


def float_order(dtype: str) -> tuple[int, int] | None:
    """The grouping key (shift, bits) that selects the exponent of a float dtype, else None."""
    return {
        "BF16": (7, 8),
        "F16": (10, 5),
        "F32": (23, 8),
        "F64": (52, 11),
        "F8_E4M3": (3, 4),
        "F8_E5M2": (2, 5),
    }.get(dtype)


def _words(buf: np.ndarray, word: int) -> np.ndarray:
    return buf.view(WORD_TYPES[word])


def _order(base_words: np.ndarray, order: tuple[int, int]) -> np.ndarray:
    shift, bits = order
    key = (base_words >> WORD_TYPES[base_words.itemsize](shift)) & WORD_TYPES[
        base_words.itemsize
    ]((1 << bits) - 1)
    key = key.astype(np.uint8 if bits <= 8 else np.uint16)
    return np.argsort(key, kind="stable")


def forward(new: np.ndarray, base: np.ndarray | None, t: Transform) -> list[np.ndarray | None]:
    """The byte planes of ``new`` (uint8, length a multiple of ``t.word``) against ``base``.

    A plane that is all zero is returned as None.
    """
    w = t.word
    words = _words(new, w)
    if base is None:
        if t.order is not None:
            raise FormatError("delta: an order key needs a base")
        z = words
    else:
        base_words = _words(base, w)
        if t.op == "xor":
            z = words ^ base_words
        else:
            d = (words - base_words).view(SIGNED_TYPES[w])
            z = ((d << SIGNED_TYPES[w](1)) ^ (d >> SIGNED_TYPES[w](8 * w - 1))).view(
                WORD_TYPES[w]
            )
        if not z.any():
            return [None] * w
        if t.order is not None:
            z = z[_order(base_words, t.order)]
    if w == 1:
        return [z if z.any() else None]
    cols = z.view(np.uint8).reshape(-1, w)
    planes: list[np.ndarray | None] = []
    for i in range(w):
        plane = np.ascontiguousarray(cols[:, i])
        planes.append(plane if plane.any() else None)
    return planes


def inverse(
    planes: list[np.ndarray | None], base: np.ndarray | None, t: Transform, out: np.ndarray
) -> None:
    """Write into ``out`` (uint8, writable) the bytes whose planes against ``base`` are ``planes``."""
    w = t.word
    if all(p is None for p in planes):
        if base is None:
            out[:] = 0
        else:
            out[:] = base
        return
    n = out.size // w
    if w == 1:
        z = planes[0] if planes[0] is not None else np.zeros(n, np.uint8)
    else:
        z = np.empty(n, WORD_TYPES[w])
        cols = z.view(np.uint8).reshape(-1, w)
        for i, plane in enumerate(planes):
            cols[:, i] = 0 if plane is None else plane
    out_words = _words(out, w)
    if base is None:
        out_words[:] = z
        return
    base_words = _words(base, w)
    if t.order is not None:
        unsorted = np.empty_like(z)
        unsorted[_order(base_words, t.order)] = z
        z = unsorted
    if t.op == "xor":
        np.bitwise_xor(base_words, z, out=out_words)
    else:
        s = z.view(SIGNED_TYPES[w])
        one = SIGNED_TYPES[w](1)
        d = ((z >> WORD_TYPES[w](1)).view(SIGNED_TYPES[w])) ^ (-(s & one))
        np.add(base_words, d.view(WORD_TYPES[w]), out=out_words)


# --------------------------------------------------------------------------- plane coding

_local = threading.local()


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
    sample = plane[:_SAMPLE] if plane.size > _SAMPLE else plane
    counts = np.bincount(sample, minlength=256)
    p = counts[counts > 0] / sample.size
    return float(-(p * np.log2(p)).sum())


def encode_plane(plane: np.ndarray | None) -> Plane:
    """Choose the cheapest codec for one plane: zero, zstd, or raw when zstd does not pay."""
    if plane is None:
        return Plane("zero")
    data = memoryview(plane).cast("B")
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
    try:
        data = _decompressor().decompress(payload, max_output_size=n, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise FormatError(f"delta: zstd plane does not decompress ({e})") from None
    if len(data) != n:
        raise FormatError(f"delta: zstd plane gave {len(data)} bytes, expected {n}")
    return np.frombuffer(data, dtype=np.uint8)


__all__ = [
    "OPS",
    "PLANE_CODECS",
    "Plane",
    "Transform",
    "decode_plane",
    "encode_plane",
    "float_order",
    "forward",
    "inverse",
]
