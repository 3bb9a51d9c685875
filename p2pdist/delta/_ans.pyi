"""Types of the C extension p2pdist.delta._ans (p2pdist/delta/_ans/module.c)."""

from typing import Any, Literal

import numpy as np
from typing_extensions import Buffer

_Bytes = Buffer | np.ndarray[Any, Any]
"""Any contiguous buffer: the kernel reads and writes through the buffer protocol."""

def scratch_size(nbytes: int, word: int, /) -> int: ...
def encode(
    new: _Bytes,
    base: _Bytes,
    word: int,
    key: tuple[int, int] | None,
    scratch: _Bytes,
    row: int = 0,
    /,
) -> tuple[int, bytes] | Literal[False] | None: ...
def decode(
    payload: _Bytes,
    base: _Bytes,
    out: _Bytes,
    word: int,
    context: tuple[int, int, int] | None,
    scratch: _Bytes,
    /,
) -> None: ...
def set_simd(level: int, /) -> int: ...
