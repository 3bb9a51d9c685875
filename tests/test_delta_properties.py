"""Property tests: every delta rebuilds its target bit for bit, whatever the tensors hold, and
no payload, however hostile, makes the decoder read or write outside its buffers."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from p2pdist import delta
from p2pdist.delta import _ans
from p2pdist.delta.codec import (
    WORD_TYPES,
    decode_ans,
    decode_plane,
    encode_segment,
    float_key,
    join_planes,
)
from p2pdist.errors import FormatError
from p2pdist.formats.header import DTYPE_SIZES
from p2pdist.formats.manifest import describe_files, list_files
from p2pdist.formats.shards import save_state_dict
from p2pdist.store.verified import TORCH_DTYPES


@st.composite
def pairs(draw: st.DrawFn) -> tuple[str, bytes, bytes]:
    """A dtype and two byte strings of equal length: the parent's and the new tensor's bits.

    The new words are the parent's moved by a few units in the last place (a training step),
    by anything up to the whole word, a few flipped bits, or random.
    """
    dtype = draw(st.sampled_from(sorted(DTYPE_SIZES)))
    word = DTYPE_SIZES[dtype]
    n = draw(st.integers(0, 600))
    old = draw(st.binary(min_size=n * word, max_size=n * word))
    how = draw(st.sampled_from(["ulps", "wide", "flips", "random"]))
    if how == "random":
        return dtype, old, draw(st.binary(min_size=n * word, max_size=n * word))
    words = np.frombuffer(old, WORD_TYPES[word]).copy()
    if how == "flips":
        a = words.view(np.uint8)
        for i in draw(st.lists(st.integers(0, max(n * word - 1, 0)), max_size=20)) if n else []:
            a[i] ^= 1 << draw(st.integers(0, 7))
        return dtype, old, a.tobytes()
    return (
        dtype,
        old,
        _moved(words, 8 if how == "ulps" else 8 * word, draw(st.integers(0, 2**32 - 1))),
    )


def _moved(words: np.ndarray, scale: int, seed: int) -> bytes:
    """``words`` each moved up or down by a random number of up to ``scale`` bits."""
    rng = np.random.default_rng(seed)
    n = words.size
    shifts = (64 - rng.integers(1, scale + 1, n)).astype(np.uint64)
    moves = rng.integers(0, 2**63, n, dtype=np.uint64) >> shifts
    moves = np.where(rng.integers(0, 2, n).astype(bool), ~moves + np.uint64(1), moves)
    return (words + moves.astype(words.dtype)).tobytes()


@st.composite
def keys(draw: st.DrawFn, word: int, dtype: str) -> tuple[int, int] | None:
    """The dtype's own context key, no context, or any valid key for the word size."""
    kind = draw(st.sampled_from(["dtype", "none", "any"]))
    if kind == "dtype":
        return float_key(dtype)
    if kind == "none":
        return None
    bits = draw(st.integers(1, min(16, 8 * word)))
    return draw(st.integers(0, 8 * word - bits)), bits


def _decode(coded, base: np.ndarray | None, size: int) -> bytes:
    out = np.zeros(size, np.uint8)
    if coded.op == "copy":
        assert base is not None
        out[:] = base
    elif coded.op == "raw":
        n = size // coded.word
        planes = [decode_plane(p.codec, p.payload, n) for p in coded.payloads]
        join_planes(planes, out)
    else:
        assert base is not None and len(coded.payloads) == 1
        decode_ans(coded.payloads[0].payload, base, out, coded.word, coded.context)
    return out.tobytes()


def _ans_both_ways(
    payload: bytes, base: np.ndarray, size: int, word: int, context: tuple[int, int, int] | None
) -> bytes | str:
    """What each decoder this CPU has (AVX-512, AVX2, portable C) makes of a payload, the bytes
    or the error, checked to be the same: production runs only the best one."""
    results = []
    for level in (2, 1, 0):
        was = _ans.set_simd(level)
        try:
            out = np.zeros(size, np.uint8)
            decode_ans(payload, base, out, word, context)
            results.append(out.tobytes())
        except FormatError as e:
            results.append(str(e))
        finally:
            _ans.set_simd(was)
    assert results[0] == results[1] == results[2]
    return results[0]


def test_the_best_decoder_the_cpu_has_is_used() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    avx2 = {"avx2", "bmi2"} <= flags
    avx512 = avx2 and {"avx512f", "avx512bw", "avx512cd", "avx512vl", "avx512vbmi"} <= flags
    best = _ans.set_simd(9)
    try:
        assert best == (2 if avx512 else 1 if avx2 else 0)
        assert _ans.set_simd(0) == 0
    finally:
        _ans.set_simd(best)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["BF16", "F16", "F32", "I32"]),
    st.integers(32, 5000),
    st.sampled_from([1, 3, 8, 14]),
    st.integers(0, 2**32 - 1),
)
def test_vector_and_portable_coders_agree(dtype: str, n: int, scale: int, seed: int) -> None:
    """Moves of up to ``scale`` bits (tokens with up to 13 extra bits for 16-bit words, 29 for
    32-bit ones come from the wide moves of random words below) code to the same payload and
    decode to the same bytes whichever vector code runs."""
    word = DTYPE_SIZES[dtype]
    rng = np.random.default_rng(seed)
    old = rng.integers(0, 256, n * word, dtype=np.uint8)
    new = _moved(old.view(WORD_TYPES[word]), min(scale, 8 * word), seed)
    if seed % 4 == 0:  # a few words moved by anything: the widest tokens
        wide = np.frombuffer(_moved(old.view(WORD_TYPES[word]), 8 * word, seed + 1), np.uint8)
        new_a = np.frombuffer(new, np.uint8).copy()
        pick = rng.integers(0, n, max(1, n // 50))
        for i in pick:
            new_a[i * word : (i + 1) * word] = wide[i * word : (i + 1) * word]
        new = new_a.tobytes()
    payloads = []
    for level in (2, 1, 0):
        was = _ans.set_simd(level)
        try:
            coded = encode_segment(np.frombuffer(new, np.uint8), old, word, float_key(dtype))
        finally:
            _ans.set_simd(was)
        payloads.append((coded.op, coded.context, [p.payload for p in coded.payloads]))
    assert payloads[0] == payloads[1] == payloads[2]
    assume(coded.op == "ans")
    assert _ans_both_ways(coded.payloads[0].payload, old, n * word, word, coded.context) == new


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["BF16", "F16", "I16"]),
    st.sampled_from([32, 96, 256, 768]),
    st.integers(16, 200),
    st.sampled_from([1, 3, 8]),
    st.integers(0, 2**32 - 1),
)
def test_coders_agree_with_row_classes(
    dtype: str, row: int, rows: int, scale: int, seed: int
) -> None:
    """Segments of whole rows (at least 64 Ki words, so that classes are used) code to the
    same payload and decode to the same bytes whichever vector code runs."""
    word = DTYPE_SIZES[dtype]
    rows = max(rows, -(-(64 << 10) // row))
    rng = np.random.default_rng(seed)
    old = rng.integers(0, 256, rows * row * word, dtype=np.uint8)
    new = np.frombuffer(_moved(old.view(WORD_TYPES[word]), scale, seed), np.uint8)
    payloads = []
    for level in (2, 1, 0):
        was = _ans.set_simd(level)
        try:
            coded = encode_segment(new, old, word, float_key(dtype), row=row)
        finally:
            _ans.set_simd(was)
        payloads.append([p.payload for p in coded.payloads])
    assert payloads[0] == payloads[1] == payloads[2]
    assume(coded.op == "ans")
    payload = coded.payloads[0].payload
    assert payload[:1] != b"\x00"  # classes in use
    assert _ans_both_ways(payload, old, new.size, word, coded.context) == new.tobytes()


@settings(max_examples=60, deadline=None)
@given(
    st.integers(33, 3000),
    st.sampled_from([(0, 16), (0, 1), (4, 12), (7, 8), (10, 5), (13, 3), (15, 1)]),
    st.sampled_from([1, 3, 8, 14]),
    st.integers(0, 2**32 - 1),
)
def test_coders_agree_on_any_context_key_of_16_bit_words(
    n: int, key: tuple[int, int], scale: int, seed: int
) -> None:
    """Context keys of any width, 16 bits included (keys that would be negative as signed
    16-bit numbers), code 16-bit words to the same payload whichever vector code runs."""
    shift, bits = key
    rng = np.random.default_rng(seed)
    old = rng.integers(0, 256, n * 2, dtype=np.uint8)
    new = np.frombuffer(_moved(old.view(np.uint16), scale, seed), np.uint8)
    payloads = []
    for level in (2, 1, 0):
        was = _ans.set_simd(level)
        try:
            coded = encode_segment(new, old, 2, (shift, bits))
        finally:
            _ans.set_simd(was)
        payloads.append((coded.op, coded.context, [p.payload for p in coded.payloads]))
    assert payloads[0] == payloads[1] == payloads[2]
    assume(coded.op == "ans")
    payload = coded.payloads[0].payload
    assert _ans_both_ways(payload, old, new.size, 2, coded.context) == new.tobytes()


def _rows_pair(rows: int = 512, cols: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """bf16 weights and a step that moves some rows (outputs) and columns further than others."""
    rng = np.random.default_rng(7)
    old = torch.from_numpy(rng.standard_normal((rows, cols)).astype(np.float32) * 0.02)
    scale = np.outer(rng.choice([0.2, 3.0], rows), rng.choice([0.5, 2.0], cols))
    step = torch.from_numpy((rng.standard_normal((rows, cols)) * scale * 1e-3).astype(np.float32))
    bits = [t.bfloat16().view(torch.uint16).numpy().view(np.uint8) for t in (old, old + step)]
    return bits[0].reshape(-1), bits[1].reshape(-1)


def test_row_and_column_classes_pay_and_round_trip() -> None:
    old, new = _rows_pair()
    plain = encode_segment(new, old, 2, float_key("BF16"))
    rows = encode_segment(new, old, 2, float_key("BF16"), row=256)
    assert plain.op == rows.op == "ans"
    with_classes = rows.payloads[0].payload
    assert with_classes[:2] == bytes([0x80, 0x02])  # varint 256: rows of 256 words
    assert plain.payloads[0].payload[:1] == b"\x00"  # no classes
    assert len(with_classes) < 0.97 * len(plain.payloads[0].payload)
    assert _ans_both_ways(with_classes, old, new.size, 2, rows.context) == new.tobytes()
    # no classes for rows that do not tile the segment, are not whole groups of 32 words, or
    # are fewer than 16, nor for 32-bit words (where they measured as no smaller)
    for row in (100, 48, new.size // 2 // 2, new.size // 2 // 8):
        coded = encode_segment(new, old, 2, float_key("BF16"), row=row)
        assert coded.payloads[0].payload[:1] == b"\x00", row
    coded = encode_segment(new, old, 4, float_key("F32"), row=128)
    assert coded.op == "ans" and coded.payloads[0].payload[:1] == b"\x00"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda p: bytes([0x30]) + p[2:], "class row length"),  # rows of 48 words
        (lambda p: b"\x80\x80\x40" + p[2:], "class row length"),  # longer than the segment
        (lambda p: p[:2] + bytes([0x52]) + p[3:], "class counts"),  # 5 row classes
        (lambda p: p[:2] + bytes([0x23]) + p[3:], "class counts"),  # 3 column classes
        (lambda p: p[:3], "truncated classes"),
        (lambda p: p[:2] + bytes([0x32]) + b"\xff" * 128 + p[3 + 128 :], "class out of range"),
    ],
)
def test_tampered_class_header(edit, match) -> None:
    old, new = _rows_pair()
    coded = encode_segment(new, old, 2, float_key("BF16"), row=256)
    payload = coded.payloads[0].payload
    assert payload[:3] == bytes([0x80, 0x02, 0x22])  # 256 words a row, 2 x 2 classes
    with pytest.raises(FormatError, match=match):
        decode_ans(edit(payload), old, np.zeros(new.size, np.uint8), 2, coded.context)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_segment_codec_is_lossless(data: st.DataObject) -> None:
    dtype, old, new = data.draw(pairs())
    word = DTYPE_SIZES[dtype]
    key = data.draw(keys(word, dtype))
    new_a, old_a = np.frombuffer(new, np.uint8), np.frombuffer(old, np.uint8)
    coded = encode_segment(new_a, old_a, word, key)
    event(coded.op)
    assert (coded.op == "copy") == (new == old)
    if coded.op == "ans":
        payload = coded.payloads[0].payload
        assert payload is not None and len(payload) < len(new)
        assert (coded.context is None) == (key is None)
    assert _decode(coded, old_a, len(new)) == new
    assert _decode(encode_segment(new_a, None, word), None, len(new)) == new


def test_ans_pays_for_small_moves() -> None:
    rng = np.random.default_rng(0)
    old = (rng.standard_normal(1 << 16) * 0.02).astype(np.float32)
    new = old + (rng.standard_normal(old.size) * 1e-4).astype(np.float32)
    coded = encode_segment(new.view(np.uint8), old.view(np.uint8), 4, float_key("F32"))
    assert coded.op == "ans" and coded.context is not None
    payload = coded.payloads[0].payload
    assert payload is not None and len(payload) < 0.7 * new.nbytes
    assert _decode(coded, old.view(np.uint8), new.nbytes) == new.tobytes()


@st.composite
def ans_payloads(draw: st.DrawFn) -> tuple[bytes, bytes, int, tuple[int, int, int] | None]:
    """A valid ans payload with its base, word and context."""
    dtype = draw(st.sampled_from(sorted(DTYPE_SIZES)))
    word = DTYPE_SIZES[dtype]
    n = draw(st.integers(64, 600))
    old = draw(st.binary(min_size=n * word, max_size=n * word))
    new = _moved(np.frombuffer(old, WORD_TYPES[word]), 4, draw(st.integers(0, 2**32 - 1)))
    key = draw(keys(word, dtype))
    coded = encode_segment(np.frombuffer(new, np.uint8), np.frombuffer(old, np.uint8), word, key)
    assume(coded.op == "ans")
    payload = coded.payloads[0].payload
    assert payload is not None
    return payload, old, word, coded.context


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(ans_payloads(), st.data())
def test_tampered_ans_payload_never_escapes(
    case: tuple[bytes, bytes, int, tuple[int, int, int] | None], data: st.DataObject
) -> None:
    """Cut, extended or flipped payloads give FormatError or wrong bytes, nothing worse.

    (Wrong bytes are then refused by the rebuilt file's blake3.)"""
    payload, old, word, context = case
    edit = data.draw(st.sampled_from(["cut", "extend", "flip", "random"]))
    if edit == "cut":
        bad = payload[: data.draw(st.integers(0, len(payload) - 1))]
    elif edit == "extend":
        bad = payload + data.draw(st.binary(min_size=1, max_size=16))
    elif edit == "flip":
        i = data.draw(st.integers(0, len(payload) - 1))
        bad = payload[:i] + bytes([payload[i] ^ data.draw(st.integers(1, 255))]) + payload[i + 1 :]
    else:
        bad = data.draw(st.binary(max_size=len(old)))
    _ans_both_ways(bad, np.frombuffer(old, np.uint8), len(old), word, context)


@pytest.mark.parametrize("word", [1, 2, 4, 8])
def test_ans_decoder_refuses_mismatched_buffers(word: int) -> None:
    base = np.zeros(8 * word, np.uint8)
    with pytest.raises(FormatError, match="larger than"):
        decode_ans(bytes(8 * word + 1), base, np.zeros(8 * word, np.uint8), word, None)
    with pytest.raises(ValueError):
        decode_ans(b"", base, np.zeros(4 * word, np.uint8), word, None)
    with pytest.raises(ValueError):
        decode_ans(b"", base, np.zeros(8 * word, np.uint8), word, (8 * word, 1, 0))


@st.composite
def versions(draw: st.DrawFn) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Two state dicts over random names, dtypes and shapes (0-d, empty and 1-row included),
    where a kept tensor is often the parent's after a small step."""
    names = draw(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=6, unique=True))
    old, new = {}, {}
    for name in names:
        shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
        if draw(st.booleans()):
            shape = (1, draw(st.integers(1, 300)))
        for sd in (old, new):
            dtype = draw(st.sampled_from(sorted(TORCH_DTYPES)))
            if sd is new and name in old and draw(st.booleans()):
                dtype, shape = old[name][0], old[name][1]
            n = int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZES[dtype]
            raw = draw(st.binary(min_size=n, max_size=n))
            if sd is new and name in old and old[name][:2] == (dtype, shape):
                word = DTYPE_SIZES[dtype]
                moved = np.frombuffer(old[name][2], WORD_TYPES[word]) + WORD_TYPES[word](1)
                raw = draw(st.sampled_from([raw, moved.tobytes(), old[name][2]]))
            sd[name] = (dtype, shape, raw)
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
