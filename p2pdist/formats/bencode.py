"""Bencoding (BEP 3): encode, strictly decode, and find a .torrent's info dict and infohashes.

The tracker hashes the info dict of every .torrent a publisher uploads and compares the result
with the signed manifest, so decoding must be strict (one valid encoding per value: integers
without leading zeros or ``-0``, dictionary keys sorted and unique, nothing after the value)
and bounded (nesting depth, input size), and the infohash must be computed over the info
dict's exact bytes as they appear in the file, never over a re-encoding.

Values map as: integer <-> int, byte string <-> bytes, list <-> list, dictionary <-> dict
with bytes keys. ``str`` is accepted when encoding (as UTF-8) and never produced by decoding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from p2pdist.errors import FormatError

MAX_DEPTH = 64
"""Deepest nesting of lists and dictionaries accepted; real metainfo nests about 6 levels."""

MAX_TORRENT_BYTES = 64 * 1024 * 1024
"""Largest .torrent accepted (a 16 MiB-piece torrent of tens of GB is about 40 KB)."""


def bencode(value: Any) -> bytes:
    """Encode ``value`` (int, bytes, str, list/tuple, dict with bytes or str keys)."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: Any, out: list[bytes]) -> None:
    if isinstance(value, bool):
        raise TypeError("bencode cannot encode bool; use 0 or 1")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, str):
        _encode(value.encode("utf-8"), out)
    elif isinstance(value, (list, tuple)):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, Mapping):
        keyed = {(k.encode("utf-8") if isinstance(k, str) else k): v for k, v in value.items()}
        if len(keyed) != len(value) or not all(isinstance(k, bytes) for k in keyed):
            raise TypeError("bencode dictionary keys must be unique bytes or str")
        out.append(b"d")
        for key in sorted(keyed):
            _encode(key, out)
            _encode(keyed[key], out)
        out.append(b"e")
    else:
        raise TypeError(f"bencode cannot encode {type(value).__name__}")


class _Decoder:
    """A strict recursive-descent decoder that remembers where the top-level info dict lies."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.info_span: tuple[int, int] | None = None

    def fail(self, problem: str) -> FormatError:
        return FormatError(f"bencode: {problem} at byte {self.pos}")

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_DEPTH}")
        if self.pos >= len(self.data):
            raise self.fail("unexpected end of data")
        c = self.data[self.pos]
        if c == 0x69:  # i
            return self.integer()
        if 0x30 <= c <= 0x39:
            return self.string()
        if c == 0x6C:  # l
            self.pos += 1
            items = []
            while self.peek() != 0x65:
                items.append(self.value(depth + 1))
            self.pos += 1
            return items
        if c == 0x64:  # d
            return self.dictionary(depth)
        raise self.fail(f"unexpected byte {bytes([c])!r}")

    def peek(self) -> int:
        if self.pos >= len(self.data):
            raise self.fail("unexpected end of data")
        return self.data[self.pos]

    def integer(self) -> int:
        end = self.data.find(b"e", self.pos + 1)
        if end < 0:
            raise self.fail("unterminated integer")
        digits = self.data[self.pos + 1 : end]
        body = digits[1:] if digits.startswith(b"-") else digits
        if (
            not body
            or not body.isdigit()
            or len(body) > 64
            or (body.startswith(b"0") and len(body) > 1)
            or digits == b"-0"
        ):
            raise self.fail(f"invalid integer {digits[:32]!r}")
        self.pos = end + 1
        return int(digits)

    def string(self) -> bytes:
        colon = self.data.find(b":", self.pos)
        if colon < 0 or colon - self.pos > 20:
            raise self.fail("invalid string length")
        digits = self.data[self.pos : colon]
        if not digits.isdigit() or (digits.startswith(b"0") and len(digits) > 1):
            raise self.fail(f"invalid string length {digits[:32]!r}")
        length = int(digits)
        start = colon + 1
        if start + length > len(self.data):
            raise self.fail(f"string of {length} bytes runs past the end")
        self.pos = start + length
        return self.data[start : self.pos]

    def dictionary(self, depth: int) -> dict[bytes, Any]:
        self.pos += 1
        result: dict[bytes, Any] = {}
        previous: bytes | None = None
        while self.peek() != 0x65:
            if not 0x30 <= self.peek() <= 0x39:
                raise self.fail("dictionary key is not a byte string")
            key = self.string()
            if previous is not None and key <= previous:
                raise self.fail(f"dictionary key {key[:32]!r} is unsorted or repeated")
            previous = key
            start = self.pos
            result[key] = self.value(depth + 1)
            if depth == 0 and key == b"info":
                self.info_span = (start, self.pos)
        self.pos += 1
        return result


def bdecode(data: bytes) -> Any:
    """Decode exactly one bencoded value that fills ``data``; raise FormatError otherwise."""
    value, _ = _decode_top(data)
    return value


def _decode_top(data: bytes) -> tuple[Any, _Decoder]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("bdecode takes bytes")
    data = bytes(data)
    decoder = _Decoder(data)
    try:
        value = decoder.value(0)
    except RecursionError:
        raise decoder.fail("nesting too deep") from None
    if decoder.pos != len(data):
        raise decoder.fail(f"{len(data) - decoder.pos} bytes of trailing data")
    return value, decoder


def info_bytes(torrent: bytes) -> bytes:
    """The raw bytes of a .torrent's ``info`` dictionary, exactly as they appear in the file."""
    if len(torrent) > MAX_TORRENT_BYTES:
        raise FormatError(f"torrent larger than {MAX_TORRENT_BYTES} bytes")
    value, decoder = _decode_top(torrent)
    if not isinstance(value, dict) or decoder.info_span is None:
        raise FormatError("torrent: not a dictionary with an info dictionary")
    if not isinstance(value[b"info"], dict):
        raise FormatError("torrent: info is not a dictionary")
    start, end = decoder.info_span
    return torrent[start:end]


def infohashes(torrent: bytes) -> tuple[str | None, str | None]:
    """The (v1, v2) infohashes of a .torrent as lowercase hex, each None when absent.

    v1 (SHA-1 of the info dict) exists when the info dict has ``pieces``; v2 (SHA-256, BEP 52)
    when it has ``meta version`` 2. A hybrid torrent has both; a dict with neither is refused.
    """
    raw = info_bytes(torrent)
    info = bdecode(raw)
    has_v1 = isinstance(info.get(b"pieces"), bytes)
    has_v2 = info.get(b"meta version") == 2
    if not has_v1 and not has_v2:
        raise FormatError("torrent: info dictionary has neither v1 pieces nor meta version 2")
    v1 = hashlib.sha1(raw).hexdigest() if has_v1 else None
    v2 = hashlib.sha256(raw).hexdigest() if has_v2 else None
    return v1, v2


__all__ = ["MAX_DEPTH", "MAX_TORRENT_BYTES", "bdecode", "bencode", "info_bytes", "infohashes"]
