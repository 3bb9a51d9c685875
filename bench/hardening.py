"""What the client-side hardening of issue 15 costs, against the code it replaced, same run.

    python bench/hardening.py [--files 20000] [--repeats 5] [--json PATH]

- Publish's folder walk: ``publishing.folder_files`` (checks every symbolic link, refuses
  what leaves the folder) against ``formats.manifest.list_files`` (the walk it replaced),
  on a folder of many small files with some links inside it.
- A consumer's torrent check: ``checked_torrent`` now always rewrites the registry's torrent
  (its announce URL and web seeds, the info dict kept byte for byte), against parsing it
  alone (the old path when the announce URL was already this host's), for the torrent of a
  70 GB model (16 MiB pieces, 1,000 files).
- Delta planes: ``decode_plane`` with the zstd window check against zstd's decompress alone.

Each figure is the median of ``--repeats`` runs; ratios are new / old (1.00 = free).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2pdist.delta.codec import decode_plane, encode_plane
from p2pdist.fetcher import _rewritten
from p2pdist.formats.bencode import bencode
from p2pdist.formats.manifest import list_files
from p2pdist.formats.torrent import read_torrent
from p2pdist.publishing import folder_files

MiB = 1 << 20


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def make_folder(root: Path, count: int) -> None:
    for i in range(count):
        sub = root / f"d{i % 100:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"f{i:06d}.json").write_bytes(b"{}")
    for i in range(100):  # links inside the folder: published as copies
        (root / f"link{i:03d}.json").symlink_to(f"d{i:03d}/f{i:06d}.json")


def big_torrent() -> bytes:
    pieces = 4480  # 70 GiB at 16 MiB
    files = [{b"length": pieces * 16 * MiB // 1000, b"path": [f"model-{i:05d}.safetensors".encode()]}
             for i in range(1000)]  # fmt: skip
    total = sum(f[b"length"] for f in files)
    count = (total + 16 * MiB - 1) // (16 * MiB)
    info = {b"files": files, b"name": b"org--big@v1", b"piece length": 16 * MiB,
            b"pieces": os.urandom(20 * count)}  # fmt: skip
    return bencode({b"announce": b"http://127.0.0.1:6969/announce", b"info": info})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="p2pdist-bench-") as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        make_folder(folder, args.files)
        assert len(folder_files(folder)) == len(list_files(folder))
        old = median_seconds(lambda: list_files(folder), args.repeats)
        new = median_seconds(lambda: folder_files(folder), args.repeats)
        rows.append((f"folder walk, {args.files + 100} files", old, new))

    torrent = big_torrent()
    announce = "http://127.0.0.1:6969/announce"
    seeds = ("http://127.0.0.1:8000/",)
    old = median_seconds(lambda: read_torrent(torrent), args.repeats)
    new = median_seconds(
        lambda: _rewritten(read_torrent(torrent).data, announce, seeds), args.repeats
    )
    rows.append((f"torrent check, {len(torrent) // 1024} KiB torrent", old, new))

    rng = np.random.default_rng(0)
    plane = (rng.integers(0, 4, 8 * MiB, dtype=np.uint8) * 3).astype(np.uint8)
    coded = encode_plane(plane)
    assert coded.codec == "zstd" and coded.payload is not None
    dctx = zstandard.ZstdDecompressor()
    old = median_seconds(
        lambda: dctx.decompress(coded.payload, max_output_size=plane.size), args.repeats * 4
    )
    new = median_seconds(lambda: decode_plane("zstd", coded.payload, plane.size), args.repeats * 4)
    rows.append(("zstd plane decode, 8 MiB", old, new))

    print(f"{platform.machine()}, {os.cpu_count()} cores (shared), median of {args.repeats}")
    print(f"{'step':42s} {'old s':>9s} {'new s':>9s} {'new/old':>8s}")
    for name, old, new in rows:
        print(f"{name:42s} {old:9.4f} {new:9.4f} {new / old:8.2f}")
    if args.json:
        args.json.write_text(
            json.dumps([{"step": n, "old_s": o, "new_s": w, "ratio": w / o} for n, o, w in rows])
        )


if __name__ == "__main__":
    main()
