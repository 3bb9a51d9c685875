from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from p2pdist.errors import FormatError
from p2pdist.formats.shards import (
    INDEX_FILE,
    SINGLE_FILE,
    ShardedReader,
    load_state_dict,
    read_header,
    save_state_dict,
)

from .conftest import small_state_dict


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return _raw(a) == _raw(b)


def _raw(t: torch.Tensor) -> bytes:
    return bytes(t.reshape(-1).contiguous().view(torch.uint8).numpy())


def test_single_file_round_trip_every_dtype(tmp_path: Path) -> None:
    sd = small_state_dict()
    assert save_state_dict(sd, tmp_path) == [SINGLE_FILE]
    back = load_file(tmp_path / SINGLE_FILE)  # plain safetensors reads it
    assert set(back) == set(sd)
    for k in sd:
        assert _same(sd[k], back[k]), k


def test_sharded_layout_matches_hugging_face(tmp_path: Path) -> None:
    sd = small_state_dict()
    files = save_state_dict(sd, tmp_path, max_shard_size=1024)
    shards = [f for f in files if f != INDEX_FILE]
    assert len(shards) > 1
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert set(index["weight_map"]) == set(sd)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in sd.values())
    back = load_state_dict(tmp_path)
    for k in sd:
        assert _same(sd[k], back[k]), k


def test_shared_storage_is_unshared(tmp_path: Path) -> None:
    w = torch.randn(4, 4)
    save_state_dict({"a": w, "b": w}, tmp_path)
    back = load_state_dict(tmp_path)
    assert torch.equal(back["a"], back["b"])


def test_reader_is_lazy_and_names_missing_tensor(tmp_path: Path) -> None:
    save_state_dict(small_state_dict(), tmp_path, max_shard_size=1024)
    with ShardedReader(tmp_path) as reader:
        assert "embed.weight" in reader
        assert reader.spec("embed.weight").shape == (64, 16)
        with pytest.raises(LookupError, match="nope"):
            reader.get_tensor("nope")


def _write_raw(path: Path, header: dict, data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_truncated_shard_is_rejected(tmp_path: Path) -> None:
    save_state_dict(small_state_dict(), tmp_path)
    path = tmp_path / SINGLE_FILE
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(FormatError, match="truncated"):
        read_header(path)


def test_header_claiming_more_bytes_than_file(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 10_000) + b"{}")
    with pytest.raises(FormatError, match="claims 10000 bytes"):
        read_header(path)


def test_huge_header_is_refused_before_allocation(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 60))
    with pytest.raises(FormatError, match="limit"):
        read_header(path)


@pytest.mark.parametrize(
    ("header", "data", "match"),
    [
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 8, "outside"),
        ({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "need 12"),
        ({"t": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, "unknown dtype"),
        ({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, b"\0" * 8, "shape"),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "contiguous"),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8, "padded"),
        ({"__metadata__": {"a": 1}}, b"", "metadata"),
    ],
)
def test_hostile_headers(tmp_path: Path, header: dict, data: bytes, match: str) -> None:
    path = tmp_path / "x.safetensors"
    _write_raw(path, header, data)
    with pytest.raises(FormatError, match=match):
        read_header(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"__metadata__":' + "[" * 200_000 + "]" * 200_000 + "}", "nested too deeply"),
        ('{"t":{"dtype":"F32","shape":[' + "9" * 5000 + '],"data_offsets":[0,0]}}', "JSON"),
        ('{"t":{"dtype":"F32","shape":[9223372036854775808,0],"data_offsets":[0,0]}}', "shape"),
        ('{"t":{"dtype":"F32","dtype":"F32","shape":[0],"data_offsets":[0,0]}}', "'dtype' appears"),
        ('{"__metadata__":{},"__metadata__":{}}', "'__metadata__' appears twice"),
        ('{"__metadata__":[]}', "metadata"),
        ('{"\\ud800":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}', "not valid UTF-8"),
    ],
)
def test_malformed_or_ambiguous_headers_are_one_format_error(
    tmp_path: Path, text: str, match: str
) -> None:
    """A hostile publisher's header (its hash checks out) is a FormatError, never a crash;
    repeated keys too (safetensors lets the last win; p2pdist refuses to guess)."""
    raw = text.encode()
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(FormatError, match=match):
        read_header(path)


def test_null_metadata_reads_as_none(tmp_path: Path) -> None:
    raw = b'{"__metadata__":null,"t":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}'
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"ab")
    header = read_header(path)
    assert header.metadata == {} and [t.name for t in header.tensors] == ["t"]


def test_non_json_header(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{{")
    with pytest.raises(FormatError, match="JSON"):
        read_header(path)
