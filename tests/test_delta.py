"""Deltas between versions: byte-exact round trips, what costs nothing, and hostile deltas."""

from __future__ import annotations

import errno
import json
import os
import struct
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard

from p2pdist import delta
from p2pdist.delta import rebuild as delta_rebuild
from p2pdist.delta.codec import (
    META_KEY,
)
from p2pdist.delta.file import DeltaFileWriter
from p2pdist.delta.table import (
    Segment,
)
from p2pdist.errors import FormatError, IntegrityError, NotFoundError, StoreError
from p2pdist.formats.manifest import FileEntry, describe_files, list_files
from p2pdist.formats.shards import read_header, save_state_dict

ALL_DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.float8_e4m3fn, torch.float8_e5m2,
    torch.int16, torch.uint16, torch.float16, torch.bfloat16,
    torch.int32, torch.uint32, torch.float32, torch.int64, torch.uint64, torch.float64,
]  # fmt: skip


def _random(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """A tensor of random bits (any dtype, NaNs and all)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    n = int(np.prod(shape, dtype=np.int64)) * itemsize
    raw = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen)
    if dtype == torch.bool:
        raw = raw & 1
    return raw.view(dtype).reshape(shape)


def _nudge(t: torch.Tensor) -> torch.Tensor:
    """A float tensor after a small optimiser-like step."""
    return (t.float() + 1e-3 * torch.sign(torch.sin(torch.arange(t.numel()))).reshape(t.shape)).to(
        t.dtype
    )


def _model(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(64, 32, generator=gen) * 0.02,
        "layer.0.weight": torch.randn(32, 32, generator=gen).bfloat16() * 0.02,
        "layer.0.bias": torch.zeros(32),
        "layer.1.weight": torch.randn(48, 32, generator=gen).half(),
        "scale": torch.tensor(1.5),
        "empty": torch.empty(0, 3),
        "steps": torch.tensor([7], dtype=torch.int64),
    }


def _write(
    folder: Path, sd: dict[str, torch.Tensor], *, shard: int = 10_000, **side: bytes
) -> Path:
    save_state_dict(sd, folder, max_shard_size=shard)
    for name, data in side.items():
        path = folder / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def _expected(folder: Path) -> tuple[FileEntry, ...]:
    return describe_files(folder, list_files(folder))


def _round_trip(tmp: Path, parent: Path, new: Path, **kwargs: object) -> Path:
    names = delta.encode(parent, new, tmp / "delta", **kwargs)  # type: ignore[arg-type]
    assert names[0] == delta.INDEX_FILE
    assert sorted(names) == list_files(tmp / "delta")
    out = tmp / "out"
    delta.decode(parent, tmp / "delta", out, expected=_expected(new))
    assert list_files(out) == list_files(new)
    for name in list_files(new):
        assert (out / name).read_bytes() == (new / name).read_bytes(), name
    return tmp / "delta"


def _segments(delta_dir: Path) -> list[Segment]:
    segs = []
    for name in delta.read_index(delta_dir).delta_files[1:]:
        table = json.loads(read_header(delta_dir / name).metadata[META_KEY])
        segs += [Segment.from_json(s, where=name) for s in table["segments"]]
    return segs


def test_round_trip_of_a_trained_step(tmp_path: Path) -> None:
    old = _model()
    new = {k: _nudge(v) if v.is_floating_point() else v + 1 for k, v in old.items()}
    parent = _write(tmp_path / "v1", old, **{"config.json": b"{}", "tok__vocab.txt": b"a\nb\n"})
    child = _write(tmp_path / "v2", new, **{"config.json": b"{}", "tok__vocab.txt": b"a\nc\n"})
    d = _round_trip(tmp_path, parent, child)
    index = delta.read_index(d)
    how = {t.path: (t.copy, t.delta) for t in index.files}
    assert how["config.json"] == ("config.json", None)
    assert how["tok/vocab.txt"][1] is not None
    assert delta.delta_size(d) == sum((d / n).stat().st_size for n in list_files(d))


def test_unchanged_tensors_cost_nothing(tmp_path: Path) -> None:
    old = _model()
    new = dict(old, **{"layer.0.weight": _nudge(old["layer.0.weight"])})
    d = _round_trip(tmp_path, _write(tmp_path / "a", old), _write(tmp_path / "b", new))
    for seg in _segments(d):
        if seg.tensor is not None and seg.tensor != "layer.0.weight":
            assert seg.is_copy, seg.tensor
    # the payloads hold no more than the one changed tensor
    payload = sum(
        spec.nbytes
        for name in delta.read_index(d).delta_files[1:]
        for spec in read_header(d / name).tensors
    )
    assert 0 < payload < old["layer.0.weight"].numel() * 2


def test_identical_version_is_all_references(tmp_path: Path) -> None:
    sd = _model()
    d = _round_trip(tmp_path, _write(tmp_path / "a", sd), _write(tmp_path / "b", sd))
    assert delta.read_index(d).delta_files == [delta.INDEX_FILE]


def test_tensor_moving_between_shards_is_a_delta(tmp_path: Path) -> None:
    old = _model()
    # another insertion order and shard size: tensors land in other shards of other names
    new = {k: _nudge(v) if v.is_floating_point() else v for k, v in reversed(old.items())}
    d = _round_trip(
        tmp_path, _write(tmp_path / "a", old, shard=5_000), _write(tmp_path / "b", new, shard=9_000)
    )
    segs = {s.tensor: s for s in _segments(d) if s.tensor}
    assert segs["embed.weight"].base is not None
    assert segs["embed.weight"].op == "ans"
    assert segs["embed.weight"].context is not None  # the exponent of F32


def test_added_removed_reshaped_and_retyped_tensors(tmp_path: Path) -> None:
    old = _model()
    new = dict(old)
    del new["layer.0.bias"]
    new["added"] = torch.arange(10, dtype=torch.int32)
    new["embed.weight"] = old["embed.weight"].reshape(32, 64).clone()
    new["layer.1.weight"] = old["layer.1.weight"].float()
    new["scale"] = torch.tensor(2.5)
    d = _round_trip(tmp_path, _write(tmp_path / "a", old), _write(tmp_path / "b", new))
    segs = {s.tensor: s for s in _segments(d) if s.tensor}
    assert segs["added"].base is None
    assert segs["embed.weight"].base is None
    assert segs["layer.1.weight"].base is None
    # same dtype and shape, but one changed word: ans tables would cost more than 4 raw bytes
    assert segs["scale"].op == "raw"


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_every_dtype_round_trips(tmp_path: Path, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    old = {
        "a": _random((33, 7), dtype, gen),
        "s": _random((), dtype, gen),
        "e": _random((0,), dtype, gen),
    }
    new = dict(old, a=_random((33, 7), dtype, gen), s=_random((), dtype, gen))
    _round_trip(tmp_path, _write(tmp_path / "a", old), _write(tmp_path / "b", new))


def test_small_chunks(tmp_path: Path) -> None:
    old = _model()
    new = {k: _nudge(v) if v.is_floating_point() else v for k, v in old.items()}
    a, b = _write(tmp_path / "a", old), _write(tmp_path / "b", new)
    d = _round_trip(tmp_path / "x", a, b, chunk_bytes=64, workers=3)
    # 64-byte chunks are too small for ans to pay (its tables alone cost more): raw planes
    assert len([s for s in _segments(d) if s.tensor == "embed.weight"]) == 64 * 32 * 4 // 64


def test_integer_moves_use_one_context_and_random_moves_fall_back_to_raw(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(2)
    old = {
        "steps": torch.arange(4096, dtype=torch.int64),
        "noise": _random((64, 64), torch.float32, gen),
    }
    new = {"steps": old["steps"] + 3, "noise": _random((64, 64), torch.float32, gen)}
    d = _round_trip(tmp_path, _write(tmp_path / "a", old), _write(tmp_path / "b", new))
    segs = {s.tensor: s for s in _segments(d) if s.tensor}
    assert (segs["steps"].op, segs["steps"].context) == ("ans", None)
    # random bits against random bits: the moves cost more than the bits themselves
    assert (segs["noise"].op, segs["noise"].base) == ("raw", None)


def test_header_room_is_small_and_outgrowing_it_still_writes_the_file(tmp_path: Path) -> None:
    old = _model()
    new = {k: _nudge(v) if v.is_floating_point() else v for k, v in old.items()}
    a, b = _write(tmp_path / "a", old, shard=1 << 30), _write(tmp_path / "b", new, shard=1 << 30)
    d = _round_trip(tmp_path / "x", a, b)
    assert 0 < _unused_header_room(_main_delta(d)) < 4096
    # every based tensor falls back to raw planes: the header outgrows the room kept for ans
    gen = torch.Generator().manual_seed(5)
    old = {f"t{i}": _random((8, 8), torch.float32, gen) for i in range(64)}
    new = {k: _random((8, 8), torch.float32, gen) for k in old}
    a, b = _write(tmp_path / "c", old, shard=1 << 30), _write(tmp_path / "e", new, shard=1 << 30)
    d = _round_trip(tmp_path / "y", a, b)
    assert all(s.op == "raw" for s in _segments(d) if s.tensor)
    assert _unused_header_room(_main_delta(d)) < 8  # rewritten with a header of its own size
    assert not list(d.glob(".*"))


def _unused_header_room(path: Path) -> int:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n - len(raw[8 : 8 + n].rstrip(b" "))


def test_side_files_and_a_broken_safetensors_file(tmp_path: Path) -> None:
    sd = _model()
    a = _write(tmp_path / "a", sd, **{"x.safetensors": b"not safetensors", "empty.txt": b""})
    b = _write(tmp_path / "b", sd, **{"x.safetensors": b"still not", "empty.txt": b"", "new": b"1"})
    _round_trip(tmp_path, a, b)


def test_files_argument_limits_the_version(tmp_path: Path) -> None:
    sd = _model()
    a = _write(tmp_path / "a", sd)
    b = _write(tmp_path / "b", sd, **{"p2pdist.json": b"{}", "config.json": b"{}"})
    files = [f for f in list_files(b) if f != "p2pdist.json"]
    delta.encode(a, b, tmp_path / "d", files=files)
    assert {t.path for t in delta.read_index(tmp_path / "d").files} == set(files)


# --------------------------------------------------------------------------- hostile input


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path, Path, tuple[FileEntry, ...]]:
    gen = torch.Generator().manual_seed(3)
    old = {
        "w": torch.randn(256, 64, generator=gen).bfloat16(),
        "b": torch.randn(512, generator=gen),
    }
    new = {k: _nudge(v) for k, v in old.items()}
    a = _write(tmp_path / "a", old, shard=1 << 30, **{"config.json": b'{"a": 1}'})
    b = _write(tmp_path / "b", new, shard=1 << 30, **{"config.json": b'{"a": 2}'})
    delta.encode(a, b, tmp_path / "d")
    return a, b, tmp_path / "d", _expected(b)


def _nothing_visible(out: Path) -> None:
    assert not out.exists() or list(out.rglob("*")) == []


def _decode_fails(
    pair: tuple[Path, Path, Path, tuple[FileEntry, ...]], exc: type, match: str
) -> None:
    a, _b, d, expected = pair
    out = d.parent / "out"
    with pytest.raises(exc, match=match):
        delta.decode(a, d, out, expected=expected)
    _nothing_visible(out)


def _table(path: Path) -> tuple[dict, dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    return header, json.loads(header["__metadata__"][META_KEY]), raw[8 + n :]


def _rewrite(path: Path, header: dict, table: dict, data: bytes) -> None:
    header["__metadata__"][META_KEY] = json.dumps(table)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _ans(table: dict) -> dict:
    """The largest ans segment (the bf16 weight ``w``)."""
    return max((s for s in table["segments"] if s["op"] == "ans"), key=lambda s: s["size"])


def _set_payload(path: Path, name: str, payload: bytes) -> None:
    """Replace payload tensor ``name`` of a delta file, moving the payloads after it."""
    header, table, data = _table(path)
    start, end = header[name]["data_offsets"]
    data = data[:start] + payload + data[end:]
    shift = len(payload) - (end - start)
    for key, spec in header.items():
        if key != "__metadata__" and spec["data_offsets"][0] >= end and key != name:
            spec["data_offsets"] = [o + shift for o in spec["data_offsets"]]
    header[name]["data_offsets"], header[name]["shape"] = (
        [start, start + len(payload)],
        [len(payload)],
    )
    _rewrite(path, header, table, data)


def _main_delta(d: Path) -> Path:
    index = delta.read_index(d)
    return d / next(t.delta for t in index.files if t.path == "model.safetensors")


def test_digests_the_caller_knows_are_not_computed_again(pair) -> None:
    a, b, d, expected = pair
    parent_files = _expected(a)
    again = d.parent / "again"
    delta.encode(a, b, again, new_files=expected, parent_files=parent_files)
    for name in delta.read_index(d).delta_files:
        assert (again / name).read_bytes() == (d / name).read_bytes(), name
    # a digest given with the file's size is trusted, so a wrong one shows in the delta, whose
    # rebuilt file then fails its check (a publisher decodes every delta before signing)
    lying = tuple(
        replace(e, blake3="0" * 64) if e.path == "model.safetensors" else e for e in expected
    )
    wrong = d.parent / "wrong"
    delta.encode(a, b, wrong, new_files=lying, parent_files=parent_files)
    with pytest.raises(IntegrityError, match=r"model\.safetensors: rebuilt from the delta"):
        delta.decode(a, wrong, d.parent / "out3", expected=lying)
    # a listed file whose size changed is hashed
    stale = tuple(replace(e, size=e.size + 1) for e in expected)
    fresh = d.parent / "fresh"
    delta.encode(a, b, fresh, new_files=stale, parent_files=parent_files)
    assert delta.read_index(fresh).files == delta.read_index(d).files


def test_known_digests_skip_hashing_and_a_good_decode_does_not_hash_the_parent(
    pair, monkeypatch
) -> None:
    a, b, d, expected = pair
    parent_files = _expected(a)
    hashed: list[str] = []
    real_describe, real_hash_files = delta.describe_files, delta_rebuild.hash_files

    def describe(folder: Path, paths: list[str]) -> tuple[FileEntry, ...]:
        hashed.extend(f"{Path(folder).name}/{p}" for p in paths)
        return real_describe(folder, paths)

    def hash_files(paths: list[Path]) -> list[str]:
        hashed.extend(str(p) for p in paths)
        return real_hash_files(paths)

    monkeypatch.setattr(delta, "describe_files", describe)
    monkeypatch.setattr(delta_rebuild, "hash_files", hash_files)
    delta.encode(a, b, d.parent / "known", new_files=expected, parent_files=parent_files)
    assert hashed == []
    delta.decode(a, d.parent / "known", d.parent / "out4", expected=expected)
    assert hashed == []  # the rebuilt files were checked (hash_file), the parent was not hashed
    delta.encode(a, b, d.parent / "unknown")
    assert sorted(hashed) == sorted(
        [f"b/{e.path}" for e in expected] + [f"a/{e.path}" for e in parent_files]
    )


def test_wrong_parent_is_refused_naming_the_file(pair) -> None:
    a = pair[0]
    raw = bytearray((a / "model.safetensors").read_bytes())
    raw[-1] ^= 1
    (a / "model.safetensors").write_bytes(bytes(raw))
    _decode_fails(pair, IntegrityError, "model.safetensors: parent file has blake3")
    # without verification of the parent, the ans stream's own check (its final states) or the
    # rebuilt file's blake3 still catches it
    a, _, d, expected = pair
    with pytest.raises((FormatError, IntegrityError), match=r"another parent|rebuilt"):
        delta.decode(a, d, d.parent / "out2", expected=expected, verify_parent=False)
    _nothing_visible(d.parent / "out2")


def test_disk_full_while_encoding_is_a_store_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch
) -> None:
    gen = torch.Generator().manual_seed(5)
    old = {f"w{i}": torch.randn(256, 64, generator=gen).bfloat16() for i in range(4)}
    a = _write(tmp_path / "a", old, shard=1 << 30)
    b = _write(tmp_path / "b", {k: _nudge(v) for k, v in old.items()}, shard=1 << 30)
    real_add, calls = DeltaFileWriter.add, []

    def full_disk(self: DeltaFileWriter, payload: bytes) -> str:
        calls.append(len(payload))
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_add(self, payload)

    monkeypatch.setattr(DeltaFileWriter, "add", full_disk)
    out = tmp_path / "delta"
    with pytest.raises(StoreError, match=r"No space left on device \(disk full"):
        delta.encode(a, b, out)
    assert len(calls) > 2
    assert not out.exists() or list(out.iterdir()) == []


def test_disk_full_while_rebuilding_is_a_store_error_and_leaves_nothing(pair, monkeypatch) -> None:
    writes = []

    def full_disk(fd: int, data: np.ndarray, offset: int) -> None:
        writes.append(offset)
        if len(writes) > 2:  # a few segments land, then the disk fills
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.pwrite(fd, memoryview(data).cast("B"), offset)

    monkeypatch.setattr(delta_rebuild, "_pwrite", full_disk)
    _decode_fails(pair, StoreError, r"No space left on device \(disk full: free space and retry\)")
    assert len(writes) > 2
    with pytest.raises(StoreError) as failure:
        delta.decode(pair[0], pair[2], pair[2].parent / "out5", expected=pair[3])
    assert failure.value.errno == errno.ENOSPC


def test_a_failed_rebuild_waits_for_the_segments_still_running(tmp_path: Path, monkeypatch) -> None:
    """A segment that fails must not leave others writing once the output is closed: the
    descriptor's number may then belong to another file, which they would overwrite."""
    gen = torch.Generator().manual_seed(8)
    old = {"w": torch.randn(4096, 64, generator=gen)}
    a = _write(tmp_path / "a", old, shard=1 << 30)
    b = _write(tmp_path / "b", {k: _nudge(v) for k, v in old.items()}, shard=1 << 30)
    delta.encode(a, b, tmp_path / "d", chunk_bytes=1 << 16)  # 16 segments
    late, calls, lock, second_is_writing = [], [], threading.Lock(), threading.Event()
    real = delta_rebuild._pwrite

    def slow_then_full(fd: int, data: np.ndarray, offset: int) -> None:
        with lock:
            calls.append(offset)
            first = len(calls) == 1
        if first:  # the disk fills while another segment is being written
            second_is_writing.wait(5)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        target = os.fstat(fd).st_ino
        second_is_writing.set()
        time.sleep(0.2)  # still writing while the first segment's error propagates
        try:
            if os.fstat(fd).st_ino != target:
                late.append(offset)  # the number now names another file
        except OSError:
            late.append(offset)  # closed under us
        real(fd, data, offset)

    monkeypatch.setattr(delta_rebuild, "_pwrite", slow_then_full)
    with pytest.raises(StoreError, match="disk full"):
        delta.decode(a, tmp_path / "d", tmp_path / "out", expected=_expected(b), workers=2)
    print("CALLS", calls, "LATE", late)
    assert len(calls) > 1  # another segment was in flight when the first failed
    assert late == []
    _nothing_visible(tmp_path / "out")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc (Linux)")
def test_a_kept_decode_error_does_not_keep_the_files_mapped(pair) -> None:
    """A caller that keeps the error (a Future does) must not keep the delta and the parent
    mapped with it: a deleted file's space would stay allocated."""
    a, _b, d, expected = pair
    path = _main_delta(d)
    name, payload = _ans_payload(path)
    _set_payload(path, name, payload[:-1])  # fails in a worker, inside the ans decoder
    with pytest.raises(FormatError) as failure:
        delta.decode(a, d, d.parent / "out", expected=expected, verify_parent=False)
    assert failure.value.__traceback__ is not None  # held here, as a failed Future holds it
    mapped = Path("/proc/self/maps").read_text()
    assert str(path) not in mapped and str(a / "model.safetensors") not in mapped


def test_a_parent_that_cannot_be_read_does_not_hide_why_decoding_failed(pair, monkeypatch) -> None:
    path = _main_delta(pair[2])
    name, payload = _ans_payload(path)
    _set_payload(path, name, payload[:-1])  # a corrupt delta ...

    def unreadable(paths: list[Path]) -> list[str]:  # ... and a parent that cannot be read now
        raise PermissionError(13, "Permission denied", str(paths[0]))

    monkeypatch.setattr(delta_rebuild, "hash_files", unreadable)
    _decode_fails(pair, FormatError, "extra bits")


def test_missing_parent_file(pair) -> None:
    (pair[0] / "model.safetensors").unlink()
    _decode_fails(pair, IntegrityError, "parent file missing")


def test_manifest_disagreeing_with_the_index(pair) -> None:
    a, _b, d, expected = pair
    lied = tuple(
        FileEntry(e.path, e.size + 1, e.blake3) if e.path == "config.json" else e for e in expected
    )
    with pytest.raises(IntegrityError, match=r"config\.json"):
        delta.decode(a, d, d.parent / "out", expected=lied)
    with pytest.raises(FormatError, match="other files"):
        delta.decode(a, d, d.parent / "out", expected=expected[:-1])
    _nothing_visible(d.parent / "out")


def test_truncated_delta_file(pair) -> None:
    path = _main_delta(pair[2])
    path.write_bytes(path.read_bytes()[:-10])
    _decode_fails(pair, FormatError, "truncated")


def test_corrupt_payload_byte(pair) -> None:
    path = _main_delta(pair[2])
    header, table, data = _table(path)
    data = bytearray(data)
    data[len(data) // 2] ^= 0xFF
    _rewrite(path, header, table, bytes(data))
    _decode_fails(pair, (FormatError, IntegrityError), "zstd plane|ans payload|blake3")


def test_decompression_bomb_is_refused(pair) -> None:
    path = _main_delta(pair[2])
    header, table, data = _table(path)
    seg = next(
        s for s in table["segments"] if any(p["codec"] == "zstd" for p in s.get("planes", []))
    )
    plane = next(p for p in seg["planes"] if p["codec"] == "zstd")
    bomb = zstandard.ZstdCompressor().compress(bytes(1 << 26))
    old = header[plane["payload"]]
    start, end = old["data_offsets"]
    data = data[:start] + bomb + data[end:]
    shift = len(bomb) - (end - start)
    for name, spec in header.items():
        if name != "__metadata__" and spec["data_offsets"][0] >= end:
            spec["data_offsets"] = [o + shift for o in spec["data_offsets"]]
    old["data_offsets"], old["shape"] = [start, start + len(bomb)], [len(bomb)]
    _rewrite(path, header, table, data)
    _decode_fails(pair, FormatError, "decompression bomb")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t["segments"][1].update(size=t["segments"][1]["size"] * 2), "segments cover"),
        (lambda t: t["segments"][1].update(size=1 << 40), "limit"),
        (lambda t: t["segments"][1].update(word=3), "word"),
        (lambda t: t["segments"][1].update(op="add"), "op"),
        (lambda t: t.update(size=5), "rebuilds"),
        (lambda t: t.update(format=1), "older p2pdist"),
        (lambda t: _ans(t).update(payload="nope"), "payload"),
        (lambda t: _ans(t).update(payload=None), "payload name"),
        (lambda t: _ans(t).update(context=[9, 8, 0]), "context key"),
        (lambda t: _ans(t).update(context=[7, 8, 256]), "context offset"),
        (lambda t: _ans(t).update(context=[7, 8]), "invalid context"),
        (lambda t: _ans(t).update(context=[7, True, 0]), "invalid context"),
        (lambda t: _ans(t).update(base=None), "invalid base"),
        (lambda t: _ans(t).update(word=2.0), "word"),
        (lambda t: _ans(t).update(planes=[]), "exactly"),
        (lambda t: _ans(t).update(op="copy"), "exactly"),
        (lambda t: _ans(t).update(op="raw"), "exactly"),
        (
            lambda t: t["segments"][1].update(base={"file": "../x", "tensor": "w", "offset": 0}),
            "unsafe path",
        ),
        (
            lambda t: t["segments"][1].update(
                base={"file": "model.safetensors", "tensor": "w", "offset": 1 << 30}
            ),
            "is not in",
        ),
    ],
)
def test_lying_codec_table(pair, edit, match) -> None:
    """Every field of the codec table is checked before anything is decoded."""
    path = _main_delta(pair[2])
    header, table, data = _table(path)
    edit(table)
    _rewrite(path, header, table, data)
    _decode_fails(pair, FormatError, match)


def _ans_payload(path: Path) -> tuple[str, bytes]:
    header, table, data = _table(path)
    name = _ans(table)["payload"]
    start, end = header[name]["data_offsets"]
    return name, data[start:end]


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda p: p[:-1], "extra bits"),
        (lambda p: p[: len(p) // 2], "ans payload"),
        (lambda p: p + b"\0", "extra bits"),
        (lambda p: b"", "class header"),
        (lambda p: b"\xff" * 6 + p[6:], "class header"),
        (lambda p: b"\x00" + b"\xff" * 6 + p[7:], "frequency table"),
        (lambda p: bytes(1 << 20), "larger than its segment"),
        (lambda p: p[:-9] + bytes([p[-9] ^ 0x10]) + p[-8:], "ans payload|rebuilt"),
    ],
    ids=[
        "one byte short",
        "half",
        "trailing byte",
        "empty",
        "bad class header",
        "bad table",
        "too large",
        "flip",
    ],
)
def test_tampered_ans_payload(pair, edit, match) -> None:
    path = _main_delta(pair[2])
    name, payload = _ans_payload(path)
    assert len(payload) > 100
    _set_payload(path, name, edit(payload))
    _decode_fails(pair, (FormatError, IntegrityError), match)


def test_an_older_format_is_refused_saying_what_to_do(pair) -> None:
    d = pair[2]
    index = json.loads((d / delta.INDEX_FILE).read_bytes())
    (d / delta.INDEX_FILE).write_bytes(json.dumps(dict(index, version=2)).encode())
    _decode_fails(pair, FormatError, "older p2pdist.*fetch the version in full")
    (d / delta.INDEX_FILE).write_bytes(json.dumps(dict(index, version=4)).encode())
    _decode_fails(pair, FormatError, "upgrade p2pdist")


def test_a_file_name_near_the_length_limit_rebuilds(tmp_path: Path) -> None:
    name = "x" * 243 + ".bin"  # 247 bytes: legal, but not with a staging suffix added to it
    sd = {"w": torch.arange(64, dtype=torch.float32)}
    a = _write(tmp_path / "a", sd, **{name: b"old" * 100})
    b = _write(tmp_path / "b", sd, **{name: b"new" * 100})
    delta.encode(a, b, tmp_path / "d")
    delta.decode(a, tmp_path / "d", tmp_path / "out", expected=_expected(b))
    assert (tmp_path / "out" / name).read_bytes() == b"new" * 100


def test_bad_index(pair) -> None:
    d = pair[2]
    index = json.loads((d / delta.INDEX_FILE).read_bytes())
    entry = {k: index["files"][0][k] for k in ("path", "size", "blake3")}
    for how in ("copy", "delta"):
        (d / delta.INDEX_FILE).write_bytes(
            json.dumps(dict(index, files=[dict(entry, **{how: None})])).encode()
        )
        _decode_fails(pair, FormatError, f"{how} must be a relative path, not None")
    (d / delta.INDEX_FILE).write_bytes(b"[]")
    _decode_fails(pair, FormatError, "not a p2pdist delta index")
    (d / delta.INDEX_FILE).unlink()
    _decode_fails(pair, NotFoundError, "no delta index")


def test_failure_after_a_good_file_leaves_nothing(pair) -> None:
    a, _b, d, expected = pair
    out = d.parent / "out"
    out.mkdir()
    (out / "keep.txt").write_bytes(b"mine")
    path = _main_delta(d)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(FormatError):
        delta.decode(a, d, out, expected=expected)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_unchanged_files_are_linked_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch commits into the store that holds the parent, so a file the version keeps
    unchanged is a hard link to the parent's bytes there; a decode for anyone else copies
    (their writes must not reach the parent), and so does one where links cannot be made."""
    old = _model()
    new = dict(old, **{"layer.0.weight": _nudge(old["layer.0.weight"])})
    parent = _write(tmp_path / "v1", old, shard=1, **{"config.json": b"{}"})
    child = _write(tmp_path / "v2", new, shard=1, **{"config.json": b"{}"})
    delta.encode(parent, child, tmp_path / "delta")
    kept = [t.path for t in delta.read_index(tmp_path / "delta").files if t.copy is not None]
    assert "config.json" in kept and len(kept) < len(list_files(child))

    def decoded(out: Path, **kwargs: bool) -> Path:
        delta.decode(parent, tmp_path / "delta", out, expected=_expected(child), **kwargs)
        for name in list_files(child):
            assert (out / name).read_bytes() == (child / name).read_bytes(), name
        return out

    linked = decoded(tmp_path / "linked", link_copies=True)
    copied = decoded(tmp_path / "copied")
    for name in kept:
        assert os.path.samefile(linked / name, parent / name), name
        assert not os.path.samefile(copied / name, parent / name), name
    changed = set(list_files(child)) - set(kept)
    assert changed and not any(os.path.samefile(linked / n, parent / n) for n in changed)

    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    fallback = decoded(tmp_path / "fallback", link_copies=True)
    assert not any(os.path.samefile(fallback / n, parent / n) for n in kept)
