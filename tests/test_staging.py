"""The chunk planner of the CUDA loading path, as pure logic (tests/test_loader.py drives the
copier through the loader on the CPU, and the device errors through ``load``)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdist.loading.staging import plan_chunks


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=0, max_size=12),
    chunk=st.integers(1, 257),
    origin=st.integers(0, 100),
)
def test_plan_chunks_covers_every_byte_once(sizes: list[int], chunk: int, origin: int) -> None:
    ranges, pos = [], origin
    for size in sizes:
        ranges.append((pos, pos + size))
        pos += size
    chunks = plan_chunks(ranges, chunk)
    covered: dict[int, list[tuple[int, int]]] = {i: [] for i in range(len(sizes))}
    cursor = origin
    for c in chunks:
        assert c.start == cursor and 0 < c.end - c.start <= chunk
        cursor = c.end
        buf = 0
        for p in c.pieces:
            assert p.buf_offset == buf and p.length > 0
            assert ranges[p.index][0] + p.dst_offset == c.start + p.buf_offset
            covered[p.index].append((p.dst_offset, p.length))
            buf += p.length
        assert buf == c.end - c.start
    assert cursor == pos
    for i, size in enumerate(sizes):
        offsets = sorted(covered[i])
        assert sum(n for _, n in offsets) == size
        assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(offsets))


def test_plan_chunks_refuses_gaps() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        plan_chunks([(0, 4), (5, 8)], 4)
