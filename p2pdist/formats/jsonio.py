"""The one strict JSON reader for everything p2pdist parses from elsewhere.

Registry answers, manifests, publish bodies, delta indexes (``delta.json``), codec tables,
safetensors headers and shard indexes all come from someone else, and Python's ``json``
answers hostile input with the wrong errors: a document nested 100,000 deep raises
``RecursionError``, a 5,000-digit integer ``ValueError`` (Python 3.11's limit on int
digits), ``NaN`` and ``Infinity`` are accepted, and a repeated key silently keeps the last
value (two readers of one signed manifest could then see different things). ``loads``
refuses all of these with one ``FormatError`` naming what was read and why:

- at most ``MAX_DEPTH`` nested arrays and objects;
- number literals of at most ``MAX_NUMBER_CHARS`` characters, finite;
- no ``NaN``/``Infinity``, no repeated key in an object, UTF-8 only.

The limits are far above what any p2pdist document needs (a manifest nests 4 deep, its
largest number is a size below 2**63), so they refuse only what is hostile or broken.
"""

from __future__ import annotations

import json
import math
from typing import Any

from p2pdist.errors import FormatError

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted."""

MAX_NUMBER_CHARS = 40
"""Longest number literal accepted (a 64-bit integer has at most 20 characters)."""


class _Refused(ValueError):
    """Raised inside the decoder's hooks; becomes the FormatError's reason."""


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _Refused(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text} is out of range")
    return value


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"key {key[:64]!r} appears twice in one object")
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(
    parse_int=_int, parse_float=_float, parse_constant=_constant, object_pairs_hook=_object
)


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays/objects deeper than ``limit`` (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def loads(data: bytes | str, *, what: str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse ``data`` as strict JSON; FormatError("<what> is not valid UTF-8 JSON (<why>)")."""

    def refuse(reason: str) -> FormatError:
        return FormatError(f"{what} is not valid UTF-8 JSON ({reason})")

    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise refuse(f"not UTF-8 at byte {e.start}") from None
    else:
        text = data
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise refuse(f"nested too deeply: more than {max_depth} levels") from None
    except json.JSONDecodeError as e:
        raise refuse(f"{e.msg} at line {e.lineno} column {e.colno}") from None
    except ValueError as e:  # _Refused, or an int beyond the interpreter's digit limit
        raise refuse(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if _depth_exceeds(value, max_depth):
        raise refuse(f"nested too deeply: more than {max_depth} levels")
    return value


__all__ = ["MAX_DEPTH", "MAX_NUMBER_CHARS", "loads"]
