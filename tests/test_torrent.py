"""p2pdist.formats.torrent: deterministic torrents that libtorrent agrees with, and safe reading."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import libtorrent as lt
import pytest

from p2pdist.errors import FormatError, UnsafePathError
from p2pdist.formats.torrent import (
    MAX_PIECE_SIZE,
    MIN_PIECE_SIZE,
    choose_piece_size,
    make_torrent,
    read_torrent,
)

KiB = 1024
MiB = 1024 * KiB


def write_files(root: Path, sizes: dict[str, int], seed: int = 0) -> list[str]:
    from tests.conftest import write_random_files

    return write_random_files(root, sizes, seed)


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "v1"
    files = write_files(
        root,
        {
            "config.json": 300,
            "model-00001-of-00002.safetensors": 700 * KiB + 13,
            "model-00002-of-00002.safetensors": 200 * KiB,
            "model.safetensors.index.json": 1200,
            "tokenizer/vocab.txt": 5000,
        },
    )
    return root, files


def libtorrent_made(root: Path, files: list[str], name: str, piece_size: int, flags: int) -> bytes:
    """The same torrent, hashed by libtorrent's own set_piece_hashes from <parent>/<name>."""
    entries = [lt.create_file_entry(f"{name}/{f}", (root / f).stat().st_size) for f in files]
    ct = lt.create_torrent(entries, piece_size, flags)
    ct.set_creator("p2pdist")
    ct.set_creation_date(0)
    parent = root.parent / "lt-parent"
    parent.mkdir()
    os.symlink(root, parent / name)
    lt.set_piece_hashes(ct, str(parent))
    return lt.bencode(ct.generate())


def test_make_torrent_is_deterministic_and_reads_back(model: tuple[Path, list[str]]) -> None:
    root, files = model
    a = make_torrent(root, files, name="org-model-v1")
    b = make_torrent(root, files, name="org-model-v1", threads=1)
    assert a.data == b.data
    assert a == read_torrent(a.data)
    assert a.name == "org-model-v1"
    assert a.files == tuple((f, (root / f).stat().st_size) for f in files)
    assert a.total_size == sum(size for _, size in a.files)
    assert a.info_hash_v2 is None and a.info_hash == a.info_hash_v1
    assert a.piece_size == choose_piece_size(a.total_size)
    decoded = lt.bdecode(a.data)
    assert b"creation date" not in decoded
    assert decoded[b"created by"] == b"p2pdist"
    assert not a.private and a.web_seeds == () and a.announce == ()


@pytest.mark.parametrize("piece_size", [16 * KiB, 64 * KiB, 256 * KiB, 1 * MiB])
def test_v1_pieces_match_libtorrent(model: tuple[Path, list[str]], piece_size: int) -> None:
    root, files = model
    ours = make_torrent(root, files, name="m", piece_size=piece_size, threads=4)
    theirs = libtorrent_made(root, files, "m", piece_size, lt.create_torrent.v1_only)
    assert ours.data == theirs
    info = lt.bdecode(ours.data)[b"info"]
    assert ours.info_hash_v1 == hashlib.sha1(lt.bencode(info)).hexdigest()
    assert len(info[b"pieces"]) == 20 * -(-ours.total_size // piece_size)


def test_changed_byte_changes_infohash(model: tuple[Path, list[str]]) -> None:
    root, files = model
    before = make_torrent(root, files, name="m")
    path = root / files[1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    assert make_torrent(root, files, name="m").info_hash_v1 != before.info_hash_v1


def test_hybrid_has_both_hashes_and_matches_libtorrent(model: tuple[Path, list[str]]) -> None:
    root, files = model
    meta = make_torrent(root, files, name="m", version="hybrid", piece_size=64 * KiB)
    assert meta.info_hash_v1 and len(meta.info_hash_v1) == 40
    assert meta.info_hash_v2 and len(meta.info_hash_v2) == 64
    info = lt.bencode(lt.bdecode(meta.data)[b"info"])
    assert meta.info_hash_v2 == hashlib.sha256(info).hexdigest()
    assert meta.info_hash_v1 == hashlib.sha1(info).hexdigest()
    assert [f for f, _ in meta.files] == files  # pad files are not listed
    assert meta.data == libtorrent_made(root, files, "m", 64 * KiB, 0)


def test_v2_only_has_only_v2(model: tuple[Path, list[str]]) -> None:
    root, files = model
    meta = make_torrent(root, files, name="m", version="2")
    assert meta.info_hash_v1 is None and meta.info_hash_v2 is not None
    assert meta.info_hash == meta.info_hash_v2
    assert [f for f, _ in meta.files] == files


def test_metadata_round_trips(model: tuple[Path, list[str]]) -> None:
    root, files = model
    meta = make_torrent(
        root,
        files,
        name="m",
        announce=["http://127.0.0.1:1/announce", "http://backup/announce"],
        web_seeds=["http://origin.example/models/"],
        private=True,
    )
    assert meta.private
    assert meta.announce == ("http://127.0.0.1:1/announce", "http://backup/announce")
    assert meta.web_seeds == ("http://origin.example/models/",)
    public = make_torrent(root, files, name="m")
    assert public.info_hash_v1 != meta.info_hash_v1  # the private flag is in the info dict


def test_single_file_torrent_reads(tmp_path: Path) -> None:
    info = {b"name": b"model.safetensors", b"piece length": 16384, b"pieces": b"x" * 20}
    info[b"length"] = 100
    meta = read_torrent(lt.bencode({b"info": info}))
    assert meta.files == (("model.safetensors", 100),)


def torrent_with(info_update: dict[bytes, object]) -> bytes:
    info: dict[bytes, object] = {
        b"name": b"m",
        b"piece length": 16384,
        b"pieces": b"x" * 20,
        b"files": [{b"length": 10, b"path": [b"ok.bin"]}],
    }
    info.update(info_update)
    return lt.bencode({b"info": info})


@pytest.mark.parametrize(
    "update",
    [
        {b"name": b".."},
        {b"name": b"a/b"},
        {b"name": b""},
        {b"files": [{b"length": 10, b"path": [b"..", b"etc", b"passwd"]}]},
        {b"files": [{b"length": 10, b"path": [b"/etc/passwd"]}]},
        {b"files": [{b"length": 10, b"path": [b"a", b"", b"b"]}]},
        {b"files": [{b"length": 10, b"path": [b"..\\..\\x"]}]},
        {b"files": [{b"length": 10, b"path": [b"a/../../b"]}]},
        {b"files": [{b"length": 10, b"path": [b"ok"], b"path.utf-8": [b"..", b"x"]}]},
        {b"file tree": {b"..": {b"x": {b"": {b"length": 10}}}}, b"meta version": 2},
    ],
)
def test_unsafe_paths_are_rejected(update: dict[bytes, object]) -> None:
    with pytest.raises(UnsafePathError):
        read_torrent(torrent_with(update))


@pytest.mark.parametrize("bad", ["../x", "/abs", "a//b", "a\\b", "./a", ""])
def test_make_torrent_rejects_unsafe_paths(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UnsafePathError):
        make_torrent(tmp_path, [bad], name="m")


def test_make_torrent_rejects_unsafe_name_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    with pytest.raises(UnsafePathError):
        make_torrent(tmp_path, ["a"], name="../m")
    with pytest.raises(FormatError, match="not a regular file"):
        make_torrent(tmp_path, ["missing.bin"], name="m")
    with pytest.raises(FormatError, match="no files"):
        make_torrent(tmp_path, [], name="m")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        lt.bencode({b"announce": b"http://x"}),
        lt.bencode({b"info": {b"name": b"m", b"piece length": 16384, b"pieces": b"x"}}),
        torrent_with({b"pieces": b"short"}),
        torrent_with({b"files": [{b"length": -1, b"path": [b"a"]}]}),
        torrent_with({b"files": []}),
        torrent_with({b"name": 5}),
        torrent_with({b"name": b"\xff\xfe"}),
    ],
)
def test_malformed_torrents_are_format_errors(data: bytes) -> None:
    with pytest.raises(FormatError):
        read_torrent(data)


def test_choose_piece_size_is_monotone_bounded_power_of_two() -> None:
    sizes = [0, 1, 100 * KiB, 4 * MiB, 4 * MiB + 1, 64 * MiB, 512 * MiB, 2 << 30, 7 << 30]
    sizes += [20 << 30, 70 << 30, 1 << 40]
    chosen = [choose_piece_size(s) for s in sizes]
    assert chosen == sorted(chosen)
    for size, piece in zip(sizes, chosen, strict=False):
        assert piece & (piece - 1) == 0
        assert MIN_PIECE_SIZE <= piece <= MAX_PIECE_SIZE
        if size > 4 * MiB:
            assert piece >= 128 * KiB
    assert choose_piece_size(1 << 40) == MAX_PIECE_SIZE
    assert choose_piece_size(20 << 30) == MAX_PIECE_SIZE
    # the info dict of a large model stays small: 20 bytes a piece
    assert 20 * (70 << 30) // choose_piece_size(70 << 30) < 100 * KiB


def test_bad_piece_size_and_version_rejected(model: tuple[Path, list[str]]) -> None:
    root, files = model
    with pytest.raises(ValueError):
        make_torrent(root, files, name="m", piece_size=3 * KiB)
    with pytest.raises(ValueError):
        make_torrent(root, files, name="m", version="3")  # type: ignore[arg-type]


def test_messages_name_a_torrent_by_the_version_it_holds(tmp_path: Path) -> None:
    from p2pdist.publishing import torrent_name
    from p2pdist.swarm.transfer import label

    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"x" * 100)

    def named(name: str) -> str:
        return label(read_torrent(make_torrent(folder, ["a.bin"], name=name).data))

    assert named(torrent_name("org/gpt", "v3")) == "org/gpt@v3"
    assert named(torrent_name("org/gpt", "v3", delta=True)) == "org/gpt@v3 (delta)"
    assert named(torrent_name("gpt", "v1")) == "gpt@v1"
    assert named("some-other-torrent") == "some-other-torrent"
