"""BitTorrent metainfo: make a .torrent from a folder of files, and read one back safely.

A version folder (safetensors shards and side files) becomes one multi-file torrent whose root
folder is the version's name. BitTorrent v1 is the default because the clients people already
run cannot join anything else (see DESIGN.md, "Torrents"); hybrid v1+v2 (BEP 52) and v2-only
are options. Integrity rests on the signed blake3 manifest, so the torrent only has to be
deterministic (same files, same bytes, same infohash) and safe to read: a hostile .torrent
must never steer a write outside its folder.

v1 pieces are SHA-1 hashed here in a thread pool (hashlib releases the GIL and the reads are
`os.pread`), which is several times faster than libtorrent's single-threaded
`set_piece_hashes`; hybrid and v2 torrents need libtorrent's merkle trees and use it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import libtorrent as lt

from p2pdist.errors import FormatError, UnsafePathError

KiB = 1024
MiB = 1024 * KiB

MIN_PIECE_SIZE = 16 * KiB
"""The smallest piece libtorrent accepts (one block); only tiny torrents get it."""

SMALL_PIECE_SIZE = 128 * KiB
"""The smallest piece for anything bigger than a few MB."""

MAX_PIECE_SIZE = 16 * MiB
"""Tens of GB at 16 MiB keep the info dict (20 bytes a piece) around 40 KB."""

TARGET_PIECES = 2048
"""About this many pieces per torrent: enough for a small swarm to trade (bench/swarm.py)."""

CREATOR = "p2pdist"

TorrentVersion = Literal["1", "hybrid", "2"]

_HASH_CHUNK = 4 * MiB


@dataclass(frozen=True)
class TorrentMeta:
    """What p2pdist needs to know about a .torrent, as plain values.

    `files` are paths relative to the torrent's root folder (`name`), in torrent order,
    without BEP 47 pad files; `data` is the .torrent file itself.
    """

    name: str
    info_hash_v1: str | None
    info_hash_v2: str | None
    piece_size: int
    total_size: int
    files: tuple[tuple[str, int], ...]
    data: bytes
    private: bool
    web_seeds: tuple[str, ...]
    announce: tuple[str, ...]

    @property
    def info_hash(self) -> str:
        """The hash a swarm is known by: v1 when there is one, else the v2 hash."""
        return self.info_hash_v1 or self.info_hash_v2 or ""


def choose_piece_size(total_size: int) -> int:
    """Pick the piece size for a torrent of `total_size` bytes.

    About TARGET_PIECES pieces, as a power of two between 128 KiB and 16 MiB (16 KiB for
    torrents of at most 4 MiB, so that even they have pieces to trade). Small pieces let a
    small swarm trade: bench/swarm.py on 2 cores, 16 consumers at 5 MB/s each, 256 MiB model:
    128 KiB 1.17x the fluid bound (2 runs), 256 KiB 1.18-1.19x; 32 MiB at 4 MB/s: 128 KiB
    2.2x, 256 KiB 2.4x, 1 MiB 3.3x (DESIGN.md: 4 MiB 3.1x, 1 MiB 1.36x at 64 MiB). Large models get large pieces so the info dict (20 bytes a
    piece) stays small: 2 GB -> 1 MiB, 20 GB and more -> 16 MiB, about 90 KB at 70 GB.
    """
    if total_size < 0:
        raise ValueError(f"total_size must be >= 0, got {total_size}")
    size = MIN_PIECE_SIZE
    floor = SMALL_PIECE_SIZE if total_size > 4 * MiB else MIN_PIECE_SIZE
    while size < floor or (size < MAX_PIECE_SIZE and total_size > size * TARGET_PIECES):
        size *= 2
    return size


def make_torrent(
    root: Path,
    files: Sequence[str],
    *,
    name: str,
    announce: Sequence[str] = (),
    web_seeds: Sequence[str] = (),
    private: bool = False,
    version: TorrentVersion = "1",
    piece_size: int | None = None,
    threads: int | None = None,
) -> TorrentMeta:
    """Make a multi-file torrent of root/<each path in `files`>, with root folder `name`.

    The files keep the order given (pass them sorted for a canonical torrent). The result is
    deterministic: no creation date, creator "p2pdist", no file attributes or mtimes, so the
    same files always give the same bytes and infohash. Web seeds (BEP 19) should point at a
    folder that holds `name/<path>`.
    """
    _check_component(name, what="torrent name")
    rels = [_check_relative(f) for f in files]
    if not rels:
        raise FormatError(f"torrent {name!r}: no files given; pass at least one file")
    if len(set(rels)) != len(rels):
        raise FormatError(f"torrent {name!r}: a file is listed twice; list each file once")
    if version not in ("1", "hybrid", "2"):
        raise ValueError(f"version must be '1', 'hybrid' or '2', got {version!r}")
    root = Path(root)
    sizes = []
    for rel in rels:
        path = root / rel
        if not path.is_file():
            raise FormatError(f"{path}: not a regular file; only files can go in a torrent")
        sizes.append(path.stat().st_size)
    total = sum(sizes)
    if piece_size is None:
        piece_size = choose_piece_size(total)
    if piece_size < MIN_PIECE_SIZE or piece_size & (piece_size - 1):
        raise ValueError(f"piece_size must be a power of two >= 16 KiB, got {piece_size}")

    entries = [
        lt.create_file_entry(f"{name}/{rel}", size) for rel, size in zip(rels, sizes, strict=False)
    ]
    flags = {"1": lt.create_torrent.v1_only, "hybrid": 0, "2": lt.create_torrent.v2_only}[version]
    ct = lt.create_torrent(entries, piece_size, flags)
    ct.set_creator(CREATOR)
    ct.set_creation_date(0)
    for url in announce:
        # One tier of all the URLs (BEP 12), announced to all (`announce_to_all_trackers`):
        # with a tier each, libtorrent held a live tracker's announces back to the retries
        # of a dead one in an earlier tier (measured: minutes apart), and its peers expired.
        ct.add_tracker(url, 0)
    for url in web_seeds:
        ct.add_url_seed(url)
    ct.set_priv(private)

    if version == "1":
        paths = [root / rel for rel in rels]
        for index, digest in _hash_v1_pieces(paths, sizes, piece_size, threads):
            ct.set_hash(index, digest)
    else:
        _hash_with_libtorrent(ct, root, name)
    generated = ct.generate()
    generated.pop(b"creation date", None)
    return read_torrent(lt.bencode(generated))


def _hash_v1_pieces(
    paths: Sequence[Path], sizes: Sequence[int], piece_size: int, threads: int | None
) -> Iterator[tuple[int, bytes]]:
    """SHA-1 every v1 piece of the concatenated files, many pieces at once."""
    offsets = []
    acc = 0
    for size in sizes:
        offsets.append(acc)
        acc += size
    total = acc
    num_pieces = (total + piece_size - 1) // piece_size
    fds = [os.open(p, os.O_RDONLY) for p in paths]
    try:

        def hash_piece(index: int) -> bytes:
            start = index * piece_size
            end = min(start + piece_size, total)
            h = hashlib.sha1()
            for fd, off, size in zip(fds, offsets, sizes, strict=False):
                lo, hi = max(start, off), min(end, off + size)
                pos = lo - off
                while lo < hi:
                    chunk = os.pread(fd, min(_HASH_CHUNK, hi - lo), pos)
                    if not chunk:
                        raise FormatError(
                            f"{paths[fds.index(fd)]}: file shrank while hashing; retry"
                        )
                    h.update(chunk)
                    lo += len(chunk)
                    pos += len(chunk)
            return h.digest()

        workers = threads or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            yield from enumerate(pool.map(hash_piece, range(num_pieces)))
    finally:
        for fd in fds:
            os.close(fd)


def _hash_with_libtorrent(ct: Any, root: Path, name: str) -> None:
    """Let libtorrent hash a hybrid or v2 torrent; it reads <parent>/<name>/<path>."""
    root = root.resolve()
    if root.name == name:
        lt.set_piece_hashes(ct, str(root.parent))
        return
    with tempfile.TemporaryDirectory(prefix="p2pdist-hash-") as parent:
        os.symlink(root, Path(parent) / name)
        lt.set_piece_hashes(ct, parent)


def read_torrent(data: bytes) -> TorrentMeta:
    """Parse and validate a .torrent; reject paths that could escape the download folder.

    Raises UnsafePathError for an absolute path, '..', '.', an empty component, a backslash
    or a NUL in the name or any file path (v1 `files` and v2 `file tree`), FormatError for
    anything libtorrent or bencoding cannot parse.
    """
    if not isinstance(data, bytes | bytearray):
        raise TypeError(f"read_torrent takes bytes, got {type(data).__name__}")
    data = bytes(data)
    try:
        decoded: Any = lt.bdecode(data)
    except RuntimeError as exc:
        raise FormatError(f"torrent: not bencoded ({exc}); check the .torrent file") from exc
    if not isinstance(decoded, dict) or not isinstance(decoded.get(b"info"), dict):
        raise FormatError("torrent: no info dictionary; check the .torrent file")
    info = decoded[b"info"]
    name = _text(info.get(b"name"), "name")
    _check_component(name, what="torrent name")

    files: list[tuple[str, int]] = []
    if b"files" in info:
        entries = info[b"files"]
        if not isinstance(entries, list) or not entries:
            raise FormatError(f"torrent {name!r}: 'files' is not a non-empty list")
        for entry in entries:
            if not isinstance(entry, dict):
                raise FormatError(f"torrent {name!r}: a file entry is not a dictionary")
            parts = entry.get(b"path.utf-8", entry.get(b"path"))
            if not isinstance(parts, list) or not parts:
                raise FormatError(f"torrent {name!r}: a file entry has no path list")
            rel = "/".join(_text(p, "path") for p in parts)
            for part in parts:
                _check_component(_text(part, "path"), what=f"path {rel!r} in {name!r}")
            if b"p" in entry.get(b"attr", b""):
                continue
            files.append((rel, _length(entry.get(b"length"), name)))
    elif b"length" in info:
        files.append((name, _length(info[b"length"], name)))
    elif b"file tree" not in info:
        raise FormatError(f"torrent {name!r}: neither 'files', 'length' nor 'file tree'")
    if b"file tree" in info:
        v2_files = list(_walk_file_tree(info[b"file tree"], (), name))
        if not files:
            files = v2_files
    if len({f for f, _ in files}) != len(files):
        raise FormatError(f"torrent {name!r}: a path appears twice; the torrent is malformed")

    try:
        ti = lt.torrent_info(data)
    except RuntimeError as exc:
        raise FormatError(f"torrent {name!r}: {exc}; check the .torrent file") from exc
    hashes = ti.info_hashes()
    v1 = str(hashes.v1) if hashes.has_v1() else None
    v2 = str(hashes.v2) if hashes.has_v2() else None

    announce: list[str] = []
    if isinstance(decoded.get(b"announce-list"), list):
        for tier in decoded[b"announce-list"]:
            for url in tier if isinstance(tier, list) else []:
                if isinstance(url, bytes) and url.decode("utf-8", "replace") not in announce:
                    announce.append(url.decode("utf-8", "replace"))
    if isinstance(decoded.get(b"announce"), bytes):
        url = decoded[b"announce"].decode("utf-8", "replace")
        if url not in announce:
            announce.insert(0, url)
    seeds = decoded.get(b"url-list", [])
    if isinstance(seeds, bytes):
        seeds = [seeds]
    web_seeds = tuple(s.decode("utf-8", "replace") for s in seeds if isinstance(s, bytes))

    return TorrentMeta(
        name=name,
        info_hash_v1=v1,
        info_hash_v2=v2,
        piece_size=int(ti.piece_length()),
        total_size=sum(size for _, size in files),
        files=tuple(files),
        data=data,
        private=info.get(b"private") == 1,
        web_seeds=web_seeds,
        announce=tuple(announce),
    )


def _walk_file_tree(tree: object, prefix: tuple[str, ...], name: str) -> Iterator[tuple[str, int]]:
    """Yield (path, size) for every file of a BEP 52 file tree, checking each component."""
    if not isinstance(tree, dict) or not tree:
        raise FormatError(f"torrent {name!r}: malformed 'file tree'")
    for key, sub in tree.items():
        if key == b"":
            if not isinstance(sub, dict):
                raise FormatError(f"torrent {name!r}: malformed 'file tree' leaf")
            yield "/".join(prefix), _length(sub.get(b"length"), name)
            continue
        part = _text(key, "file tree")
        _check_component(part, what=f"path {'/'.join((*prefix, part))!r} in {name!r}")
        yield from _walk_file_tree(sub, (*prefix, part), name)


def _text(value: object, field: str) -> str:
    if not isinstance(value, bytes):
        raise FormatError(f"torrent: '{field}' is not a string; the torrent is malformed")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"torrent: '{field}' is not UTF-8; the torrent is malformed") from exc


def _length(value: object, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FormatError(f"torrent {name!r}: a file length is missing or negative")
    return value


def _check_component(part: str, *, what: str) -> None:
    """One path component: non-empty, not '.', '..', no separators, no NUL."""
    if part in ("", ".", "..") or "/" in part or "\\" in part or "\x00" in part:
        raise UnsafePathError(f"{what}: unsafe path component {part!r}; refusing the torrent")


def _check_relative(path: str) -> str:
    """A relative POSIX path made of safe components; returned as given."""
    if not isinstance(path, str) or path.startswith("/") or "\\" in path:
        raise UnsafePathError(f"{path!r}: not a relative POSIX path; use paths like 'a/b.bin'")
    for part in path.split("/"):
        _check_component(part, what=f"path {path!r}")
    return path


__all__ = ["TorrentMeta", "choose_piece_size", "make_torrent", "read_torrent"]
