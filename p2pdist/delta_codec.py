"""The delta format as values: segment arithmetic, plane coding, codec tables, the index.

Nothing here touches a file; ``delta.py`` does the I/O (mapping, spooling, atomic renames).

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

import json
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from p2pdist.errors import FormatError
from p2pdist.manifest import FileEntry, canonical_json, safe_relpath

INDEX_FILE = "delta.json"
FORMAT_NAME = "p2pdist-delta"
FORMAT_VERSION = 1
META_KEY = "p2pdist.delta"
MAX_SEGMENT = 64 << 20
"""The decoder refuses a segment that must be decompressed and is larger than this."""

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
                raise FormatError(
                    f"delta: invalid order key {self.order!r} for {self.word}-byte words"
                )


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
    key = (base_words >> WORD_TYPES[base_words.itemsize](shift)) & WORD_TYPES[base_words.itemsize](
        (1 << bits) - 1
    )
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
            z = ((d << SIGNED_TYPES[w](1)) ^ (d >> SIGNED_TYPES[w](8 * w - 1))).view(WORD_TYPES[w])
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
    sample = plane[:: plane.size // _SAMPLE] if plane.size >= 2 * _SAMPLE else plane
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


# --------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class BaseRef:
    """Where a segment's base lies: ``offset`` bytes into tensor ``tensor`` of parent ``file``."""

    file: str
    tensor: str
    offset: int


@dataclass(frozen=True)
class Segment:
    """``size`` bytes of a target file, rebuilt from ``planes`` and an optional base."""

    size: int
    transform: Transform
    base: BaseRef | None
    planes: tuple[tuple[str, str | None], ...]
    """(codec, payload tensor name or None) per byte plane."""
    tensor: str | None = None
    """The target tensor this segment belongs to (informative)."""

    @property
    def is_copy(self) -> bool:
        return self.base is not None and all(c == "zero" for c, _ in self.planes)

    def to_json(self) -> dict[str, Any]:
        t = self.transform
        return {
            "size": self.size,
            "op": t.op,
            "word": t.word,
            "order": None if t.order is None else list(t.order),
            "base": None
            if self.base is None
            else {"file": self.base.file, "tensor": self.base.tensor, "offset": self.base.offset},
            "planes": [
                {"codec": c} if p is None else {"codec": c, "payload": p} for c, p in self.planes
            ],
            "tensor": self.tensor,
        }

    @classmethod
    def from_json(cls, obj: Any, *, where: str) -> Segment:
        keys = {"size", "op", "word", "order", "base", "planes", "tensor"}
        if not isinstance(obj, dict) or set(obj) != keys:
            raise FormatError(f"{where}: a segment must have exactly {sorted(keys)}")
        size, order, base, planes = obj["size"], obj["order"], obj["base"], obj["planes"]
        if not _is_count(size) or size == 0:
            raise FormatError(f"{where}: invalid segment size {size!r}")
        if order is not None and not (isinstance(order, list) and len(order) == 2):
            raise FormatError(f"{where}: invalid order {order!r}")
        transform = Transform(obj["op"], obj["word"], None if order is None else tuple(order))
        if size % transform.word:
            raise FormatError(f"{where}: size {size} is not a multiple of word {transform.word}")
        ref = None
        if base is not None:
            if not (
                isinstance(base, dict)
                and set(base) == {"file", "tensor", "offset"}
                and isinstance(base["tensor"], str)
                and _is_count(base["offset"])
            ):
                raise FormatError(f"{where}: invalid base {base!r}")
            ref = BaseRef(safe_relpath(base["file"]), base["tensor"], base["offset"])
        elif transform.order is not None:
            raise FormatError(f"{where}: an order key without a base")
        if not isinstance(planes, list) or len(planes) != transform.word:
            raise FormatError(f"{where}: need {transform.word} planes")
        parsed = []
        for p in planes:
            codec = p.get("codec") if isinstance(p, dict) else None
            if codec not in PLANE_CODECS:
                raise FormatError(f"{where}: invalid plane {p!r}")
            if codec == "zero":
                if set(p) != {"codec"}:
                    raise FormatError(f"{where}: a zero plane has no payload")
                parsed.append((codec, None))
            else:
                if set(p) != {"codec", "payload"} or not isinstance(p["payload"], str):
                    raise FormatError(f"{where}: a {codec} plane needs a payload name")
                parsed.append((codec, p["payload"]))
        tensor = obj["tensor"]
        if tensor is not None and not isinstance(tensor, str):
            raise FormatError(f"{where}: invalid tensor name {tensor!r}")
        seg = cls(size, transform, ref, tuple(parsed), tensor)
        if size > MAX_SEGMENT and not seg.is_copy:
            raise FormatError(f"{where}: segment of {size} bytes (limit {MAX_SEGMENT})")
        return seg


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --------------------------------------------------------------------------- the index


@dataclass(frozen=True)
class DeltaTarget:
    """A file of the new version and how the delta rebuilds it: ``copy`` xor ``delta``."""

    path: str
    size: int
    blake3: str
    copy: str | None = None
    delta: str | None = None

    @property
    def entry(self) -> FileEntry:
        return FileEntry(self.path, self.size, self.blake3)

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.entry.to_json()
        if self.copy is not None:
            obj["copy"] = self.copy
        else:
            obj["delta"] = self.delta
        return obj


@dataclass(frozen=True)
class DeltaIndex:
    """The content of ``delta.json``: which parent it applies to, and how to rebuild each file."""

    parent_files: tuple[FileEntry, ...]
    files: tuple[DeltaTarget, ...]

    @property
    def delta_files(self) -> list[str]:
        """Every file of the delta folder, ``delta.json`` first."""
        return [INDEX_FILE, *sorted(t.delta for t in self.files if t.delta is not None)]

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "parent_files": [e.to_json() for e in self.parent_files],
                "files": [t.to_json() for t in self.files],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = INDEX_FILE) -> DeltaIndex:
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FormatError(f"{source}: not valid UTF-8 JSON ({e})") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
            raise FormatError(f"{source}: not a p2pdist delta index")
        if obj.get("version") != FORMAT_VERSION:
            raise FormatError(
                f"{source}: delta format version {obj.get('version')!r}; this p2pdist reads "
                f"{FORMAT_VERSION}: upgrade p2pdist"
            )
        if set(obj) != {"format", "version", "parent_files", "files"}:
            raise FormatError(f"{source}: unexpected fields {sorted(obj)}")
        parents = obj["parent_files"]
        if not isinstance(parents, list):
            raise FormatError(f"{source}: parent_files must be a list")
        parent_files = tuple(FileEntry.from_json(p, where=source) for p in parents)
        files = obj["files"]
        if not isinstance(files, list):
            raise FormatError(f"{source}: files must be a list")
        targets = []
        parent_paths = {p.path for p in parent_files}
        for f in files:
            if not isinstance(f, dict):
                raise FormatError(f"{source}: file entry is not an object")
            how = set(f) - {"path", "size", "blake3"}
            if how not in ({"copy"}, {"delta"}):
                raise FormatError(f"{source}: file entry needs exactly one of copy and delta")
            entry = FileEntry.from_json(
                {k: f.get(k) for k in ("path", "size", "blake3")}, where=source
            )
            copy, delta = f.get("copy"), f.get("delta")
            if copy is not None and safe_relpath(copy) not in parent_paths:
                raise FormatError(
                    f"{source}: {entry.path} copies {copy!r}, not a listed parent file"
                )
            if delta is not None and (safe_relpath(delta) == INDEX_FILE):
                raise FormatError(f"{source}: {entry.path} names the index as its delta file")
            targets.append(DeltaTarget(entry.path, entry.size, entry.blake3, copy, delta))
        paths = [t.path for t in targets]
        deltas = [t.delta for t in targets if t.delta is not None]
        if len(set(paths)) != len(paths) or len(set(deltas)) != len(deltas):
            raise FormatError(f"{source}: duplicate file or delta file")
        if len({p.path for p in parent_files}) != len(parent_files):
            raise FormatError(f"{source}: duplicate parent file")
        return cls(parent_files, tuple(targets))


__all__ = [
    "FORMAT_VERSION",
    "INDEX_FILE",
    "MAX_SEGMENT",
    "META_KEY",
    "OPS",
    "PLANE_CODECS",
    "BaseRef",
    "DeltaIndex",
    "DeltaTarget",
    "Plane",
    "Segment",
    "Transform",
    "decode_plane",
    "encode_plane",
    "float_order",
    "forward",
    "inverse",
]
