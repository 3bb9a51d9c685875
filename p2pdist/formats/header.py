"""The safetensors header: its byte layout, validated before anything is read or allocated.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the data. This module distrusts every length (as
safetensors itself does): the header size, each dtype and shape, and each offset are checked
against the file, and the tensors must tile the data section exactly. It needs no torch, so
the delta codec and the publisher's checks stay light.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pdist.errors import FormatError, NotFoundError
from p2pdist.formats import jsonio

MAX_HEADER_SIZE = 100 * 1024 * 1024

DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E4M3FNUZ": 1,
    "F8_E5M2FNUZ": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}


@dataclass(frozen=True)
class TensorSpec:
    """Where one tensor's bytes lie in its file (absolute offsets) and how to read them."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header: tensors in file order, metadata, and byte layout."""

    header_size: int
    tensors: tuple[TensorSpec, ...]
    metadata: Mapping[str, str]
    file_size: int

    @property
    def data_start(self) -> int:
        return 8 + self.header_size

    def by_name(self) -> dict[str, TensorSpec]:
        return {t.name: t for t in self.tensors}


def parse_header(raw: bytes, file_size: int, *, source: str = "<bytes>") -> SafetensorsHeader:
    """Validate a safetensors header given its first bytes and the total file size.

    ``raw`` must hold at least the 8-byte length prefix and the JSON header.
    """
    if file_size < 8 or len(raw) < 8:
        raise FormatError(f"{source}: not a safetensors file (shorter than 8 bytes)")
    (header_size,) = struct.unpack("<Q", raw[:8])
    if header_size > MAX_HEADER_SIZE:
        raise FormatError(
            f"{source}: safetensors header claims {header_size} bytes (limit 100 MiB)"
        )
    if 8 + header_size > file_size:
        raise FormatError(
            f"{source}: safetensors header claims {header_size} bytes but the file has "
            f"{file_size}; the file is truncated or not safetensors"
        )
    if len(raw) < 8 + header_size:
        raise FormatError(f"{source}: header bytes missing")
    doc = jsonio.loads(raw[8 : 8 + header_size], what=f"{source}: safetensors header")
    if not isinstance(doc, dict):
        raise FormatError(f"{source}: safetensors header is not a JSON object")
    metadata = doc.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata  # absent or null, as safetensors reads it
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise FormatError(f"{source}: __metadata__ must map strings to strings")
    data_start = 8 + header_size
    data_size = file_size - data_start
    specs: list[TensorSpec] = []
    for name, info in doc.items():
        specs.append(_tensor_spec(name, info, data_start, data_size, source))
    specs.sort(key=lambda t: (t.start, t.end))
    cursor = data_start
    for spec in specs:
        if spec.start != cursor:
            raise FormatError(
                f"{source}: tensor {spec.name!r} starts at byte {spec.start - data_start} of the "
                f"data section, expected {cursor - data_start} (offsets must be contiguous)"
            )
        cursor = spec.end
    if cursor != file_size:
        raise FormatError(
            f"{source}: tensors cover {cursor - data_start} bytes but the data section has "
            f"{data_size}; the file is truncated or padded"
        )
    return SafetensorsHeader(header_size, tuple(specs), dict(metadata), file_size)


def _tensor_spec(name: str, info: Any, data_start: int, data_size: int, source: str) -> TensorSpec:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{source}: a tensor name is not valid UTF-8 ({name!r})") from None
    if not isinstance(info, dict):
        raise FormatError(f"{source}: tensor {name!r} entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise FormatError(f"{source}: tensor {name!r} has unknown dtype {dtype!r}")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or math.prod(d for d in shape if d) >= 1 << 63  # torch counts elements in an int64
    ):
        raise FormatError(f"{source}: tensor {name!r} has invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_size
    ):
        raise FormatError(
            f"{source}: tensor {name!r} has data_offsets {offsets!r} outside the "
            f"{data_size}-byte data section"
        )
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise FormatError(
            f"{source}: tensor {name!r} spans {offsets[1] - offsets[0]} bytes but dtype {dtype} "
            f"and shape {shape} need {expected}"
        )
    return TensorSpec(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def read_header(path: str | Path) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file without reading its tensors."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise FormatError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > MAX_HEADER_SIZE or 8 + header_size > size:
                return parse_header(prefix, size, source=str(path))
            raw = prefix + f.read(header_size)
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file") from None
    return parse_header(raw, size, source=str(path))
