"""Strict bencoding, and infohashes computed over a .torrent's exact info bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import libtorrent as lt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pdist.errors import FormatError
from p2pdist.formats.bencode import bdecode, bencode, info_bytes, infohashes

values = st.recursive(
    st.integers() | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.binary(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@given(values)
def test_round_trip(value: object) -> None:
    assert bdecode(bencode(value)) == value


def test_known_encodings() -> None:
    assert bencode({"spam": ["a", 1, -3], b"cow": b"moo"}) == b"d3:cow3:moo4:spaml1:ai1ei-3eee"
    assert bdecode(b"i0e") == 0 and bdecode(b"0:") == b""


@pytest.mark.parametrize(
    "data",
    [
        b"", b"i01e", b"i-0e", b"ie", b"i1", b"i-e", b"01:a", b"5:abc", b"-1:a", b"x",
        b"l", b"d", b"i1ei2e", b"d1:b0:1:a0:e", b"d1:a0:1:a0:e", b"di1e0:e", b"l" * 100 + b"e" * 100,
        b"i" + b"9" * 100 + b"e",
    ],
)  # fmt: skip
def test_refuses_what_is_not_strict_bencode(data: bytes) -> None:
    with pytest.raises(FormatError):
        bdecode(data)


def test_refuses_what_it_cannot_encode() -> None:
    for value in (True, 1.5, None, {1: 2}):
        with pytest.raises(TypeError):
            bencode(value)


def test_info_bytes_are_the_exact_span() -> None:
    info = {"name": "x", "piece length": 16384, "pieces": b"\x00" * 20, "length": 3}
    raw = bencode({"announce": "http://t/announce", "info": info, "zz": {"info": 1}})
    assert info_bytes(raw) == bencode(info)
    with pytest.raises(FormatError):
        info_bytes(bencode({"announce": "x"}))
    with pytest.raises(FormatError):
        infohashes(bencode({"info": {"name": "no pieces"}}))


@pytest.mark.parametrize("version", ["v1", "hybrid"])
def test_infohashes_match_libtorrent(tmp_path: Path, version: str) -> None:
    folder = tmp_path / "v1"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"a" * 70_000)
    (folder / "b.json").write_bytes(b"{}")
    flags = lt.create_torrent.v1_only if version == "v1" else 0
    ct = lt.create_torrent(lt.list_files(str(folder)), 16384, flags)
    lt.set_piece_hashes(ct, str(tmp_path))
    data = lt.bencode(ct.generate())
    ti = lt.torrent_info(data)
    v1, v2 = infohashes(data)
    assert v1 == str(ti.info_hashes().v1)
    assert v1 == hashlib.sha1(info_bytes(data)).hexdigest()
    if version == "hybrid":
        assert v2 == str(ti.info_hashes().v2)
    else:
        assert v2 is None
