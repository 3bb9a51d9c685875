"""One delta file (a safetensors file of payloads): written in a single pass, read validated.

A safetensors header comes first and names every payload's offsets, which are known only once
every segment is encoded. Spooling the payloads and copying them behind the header afterwards
cost a sixth of the encoder's time on fp32 checkpoints (bench/delta.py), so the writer
reserves room for the header instead: ``header_bound`` renders the largest codec table the
planned segments could produce, the payloads are written after that room as they come, and
the real header, padded with spaces (as safetensors allows), fills it at the end. A header
that outgrows its room (more segments fell back to raw planes than the margin allows) is
handled by rewriting the file once, which is correct, only slower.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

from p2pdist.delta.codec import (
    FORMAT_VERSION,
    META_KEY,
    version_problem,
)
from p2pdist.delta.table import (
    Segment,
)
from p2pdist.errors import FormatError
from p2pdist.formats import jsonio
from p2pdist.formats.header import SafetensorsHeader, read_header
from p2pdist.formats.manifest import canonical_json

MARGIN = 2048
"""Header room beyond the bound, for a few segments that fall back from ans to raw planes."""


def header_json(target: str, size: int, segments: list[Segment], lengths: list[int]) -> bytes:
    """The JSON header of a delta file: payload tensors and, in the metadata, the codec table."""
    table = {"format": FORMAT_VERSION, "target": target, "size": size,
             "segments": [s.to_json() for s in segments]}  # fmt: skip
    header: dict[str, Any] = {"__metadata__": {META_KEY: canonical_json(table).decode()}}
    offset = 0
    for i, n in enumerate(lengths):
        header[str(i)] = {"dtype": "U8", "shape": [n], "data_offsets": [offset, offset + n]}
        offset += n
    return json.dumps(header, separators=(",", ":")).encode()


def header_bound(target: str, size: int, worst: list[Segment], payloads: int) -> int:
    """Bytes of header room for ``payloads`` payloads (at most ``size`` bytes in all) and
    segments no longer than ``worst``, whose payload names are placeholders of full length."""
    digits = len(str(max(payloads - 1, 0)))
    big = int("9" * len(str(size)))
    table = {"format": FORMAT_VERSION, "target": target, "size": size,
             "segments": [s.to_json() for s in worst]}  # fmt: skip
    header: dict[str, Any] = {"__metadata__": {META_KEY: canonical_json(table).decode()}}
    for i in range(payloads):
        header[f"{i:0{digits}d}"] = {"dtype": "U8", "shape": [big], "data_offsets": [big, big]}
    n = len(json.dumps(header, separators=(",", ":")).encode())
    n += MARGIN + n // 50
    return n + (-n % 8)


class DeltaFileWriter:
    """Payloads written as they come after ``reserve`` bytes of header room; ``finish`` writes
    the header. Used as a context manager, it closes the file whatever happens."""

    def __init__(self, path: Path, reserve: int) -> None:
        self.path, self.reserve = path, reserve
        self.lengths: list[int] = []
        self._file = path.open("wb")
        self._file.seek(8 + reserve)

    def __enter__(self) -> DeltaFileWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._file.close()

    def add(self, payload: bytes) -> str:
        """Append one payload; returns its tensor name."""
        self._file.write(payload)
        self.lengths.append(len(payload))
        return str(len(self.lengths) - 1)

    def finish(self, target: str, size: int, segments: list[Segment]) -> None:
        """Write the header that describes the payloads and ``segments``; close the file."""
        header = header_json(target, size, segments, self.lengths)
        if len(header) <= self.reserve:
            self._file.seek(0)
            self._file.write(self.reserve.to_bytes(8, "little"))
            self._file.write(header + b" " * (self.reserve - len(header)))
            self._file.close()
            return
        self._file.close()
        header += b" " * (-len(header) % 8)
        moved = self.path.with_name(self.path.name + ".rewrite")
        try:
            with self.path.open("rb") as data, moved.open("wb") as out:
                out.write(len(header).to_bytes(8, "little") + header)
                data.seek(8 + self.reserve)
                shutil.copyfileobj(data, out, 1 << 20)
            os.replace(moved, self.path)
        finally:
            moved.unlink(missing_ok=True)


def read_table(delta_path: Path, target: str, size: int) -> tuple[SafetensorsHeader, list[Segment]]:
    """The validated header and codec table of a delta file that rebuilds ``size`` bytes of
    ``target``: segments that tile the file, payloads that exist and fit their segments."""
    header = read_header(delta_path)
    where = f"{delta_path.name}"
    raw = header.metadata.get(META_KEY)
    if raw is None:
        raise FormatError(f"{where}: no {META_KEY} codec table in the metadata")
    table = jsonio.loads(raw, what=f"{where}: codec table")
    if not isinstance(table, dict) or set(table) != {"format", "target", "size", "segments"}:
        raise FormatError(f"{where}: codec table must have format, target, size, segments")
    if table["format"] != FORMAT_VERSION:
        raise FormatError(f"{where}: codec table: {version_problem(table['format'])}")
    if table["target"] != target or table["size"] != size:
        raise FormatError(
            f"{where}: rebuilds {table['target']!r} of {table['size']!r} bytes, but the index "
            f"says {target!r} of {size}"
        )
    if not isinstance(table["segments"], list):
        raise FormatError(f"{where}: segments must be a list")
    segments = [Segment.from_json(s, where=where) for s in table["segments"]]
    if sum(s.size for s in segments) != size:
        raise FormatError(
            f"{where}: segments cover {sum(s.size for s in segments)} bytes, the file has {size}"
        )
    payloads = header.by_name()
    for seg in segments:
        for codec, name in seg.payloads:
            if name is None:
                continue
            spec = payloads.get(name)
            if spec is None or spec.dtype != "U8" or len(spec.shape) != 1:
                raise FormatError(f"{where}: payload {name!r} missing or not a 1-D U8 tensor")
            if codec == "raw" and spec.nbytes != seg.size // seg.word:
                raise FormatError(f"{where}: raw payload {name!r} has the wrong size")
            if codec == "ans" and spec.nbytes > seg.size:
                raise FormatError(f"{where}: ans payload {name!r} larger than its segment")
    return header, segments


__all__ = ["DeltaFileWriter", "header_bound", "header_json", "read_table"]
