"""Property tests: every delta rebuilds its target bit for bit, whatever the tensors hold."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pdist import delta
from p2pdist.delta_codec import (
    OPS,
    Transform,
    decode_plane,
    encode_plane,
    float_order,
    forward,
    inverse,
)
from p2pdist.header import DTYPE_SIZES
from p2pdist.manifest import describe_files, list_files
from p2pdist.shards import save_state_dict

TORCH_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2, "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16,
    "BF16": torch.bfloat16, "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32,
    "I64": torch.int64, "U64": torch.uint64, "F64": torch.float64,
}  # fmt: skip


@st.composite
def pairs(draw: st.DrawFn) -> tuple[str, bytes, bytes]:
    """A dtype and two byte strings of equal length: the parent's and the new tensor's bits.

    The new bits are the parent's with a few low bits moved (a training step), or random.
    """
    dtype = draw(st.sampled_from(sorted(DTYPE_SIZES)))
    n = draw(st.integers(0, 300)) * DTYPE_SIZES[dtype]
    old = draw(st.binary(min_size=n, max_size=n))
    if draw(st.booleans()):
        new = draw(st.binary(min_size=n, max_size=n))
    else:
        a = np.frombuffer(old, np.uint8).copy()
        flips = draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=20)) if n else []
        for i in flips:
            a[i] ^= 1 << draw(st.integers(0, 7))
        new = a.tobytes()
    return dtype, old, new


def _codec_round_trip(new: bytes, base: bytes | None, t: Transform) -> bytes:
    new_a = np.frombuffer(new, np.uint8)
    base_a = None if base is None else np.frombuffer(base, np.uint8)
    planes = [encode_plane(p) for p in forward(new_a, base_a, t)]
    decoded = [decode_plane(p.codec, p.payload, len(new) // t.word) for p in planes]
    out = np.empty(len(new), np.uint8)
    inverse(decoded, base_a, t, out)
    return out.tobytes()


@settings(max_examples=300, deadline=None)
@given(pairs(), st.sampled_from(OPS), st.booleans())
def test_segment_codec_is_lossless(pair: tuple[str, bytes, bytes], op: str, grouped: bool) -> None:
    dtype, old, new = pair
    if not new:
        return
    word = DTYPE_SIZES[dtype]
    order = float_order(dtype) if grouped else None
    assert _codec_round_trip(new, old, Transform(op, word, order)) == new
    assert _codec_round_trip(new, None, Transform("xor", word)) == new


@st.composite
def versions(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Two state dicts over random names, dtypes and shapes (0-d and empty included)."""
    names = draw(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=6, unique=True))
    old, new = {}, {}
    for name in names:
        shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
        for sd in (old, new):
            dtype = draw(st.sampled_from(sorted(TORCH_DTYPES)))
            if sd is new and name in old and draw(st.booleans()):
                dtype, shape = old[name][0], old[name][1]
            n = int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZES[dtype]
            sd[name] = (dtype, shape, draw(st.binary(min_size=n, max_size=n)))
    if draw(st.booleans()):
        new.pop(names[0])

    def tensors(sd: dict) -> dict[str, torch.Tensor]:
        out = {}
        for name, (dtype, shape, raw) in sd.items():
            t = torch.frombuffer(bytearray(raw) or bytearray(1), dtype=torch.uint8)[: len(raw)]
            if dtype == "BOOL":
                t = t & 1
            out[name] = t.view(TORCH_DTYPES[dtype]).reshape(shape).clone()
        return out

    return tensors(old), tensors(new)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(versions(), st.integers(1, 4), st.sampled_from([8, 24, 1 << 20]))
def test_version_round_trip(
    pair: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]], shards: int, chunk: int
) -> None:
    old, new = pair
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_state_dict(old, root / "a", max_shard_size=max(1, 600 // shards))
        save_state_dict(new, root / "b", max_shard_size=max(1, 900 // shards))
        delta.encode(root / "a", root / "b", root / "d", chunk_bytes=chunk, workers=2)
        expected = describe_files(root / "b", list_files(root / "b"))
        delta.decode(root / "a", root / "d", root / "out", expected=expected)
        for entry in expected:
            assert (root / "out" / entry.path).read_bytes() == (
                root / "b" / entry.path
            ).read_bytes()
