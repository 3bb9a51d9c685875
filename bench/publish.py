"""Publishing throughput against blake3 alone on the same bytes, in the same run.

    python bench/publish.py [--size-mb 512] [--shard-mb 128] [--repeats 3] [--json PATH]

What a publish costs before the network is involved: write the state dict as safetensors
shards, blake3 every file (the manifest), SHA-1 every piece (the v1 torrent), sign, and commit
to the store (blobs + one rename). The baseline is the blake3 library alone over the same
files (multi-threaded, memory-mapped, one file after another): the manifest's hashing
(``describe_files``) should run at >= 90% of its speed (issue 2), so the manifest is never
what makes a publish slow. The torrent step is also timed against libtorrent's own
single-threaded ``set_piece_hashes`` (DESIGN.md: threaded piece hashing is the lever).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import blake3
import libtorrent as lt
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.formats.manifest import describe_files, list_files
from p2pdist.formats.shards import save_state_dict
from p2pdist.formats.torrent import choose_piece_size, make_torrent
from p2pdist.publishing import build_version
from p2pdist.store.cache import Store


def state_dict(size_mb: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tensors, total, i = {}, size_mb * 1024 * 1024, 0
    while total > 0:
        n = min(8 * 1024 * 1024, total) // 4
        dtype = torch.float32 if i % 2 == 0 else torch.bfloat16
        t = torch.randn(n, generator=g).to(dtype)
        tensors[f"layers.{i}.weight"] = t
        total -= t.numel() * t.element_size()
        i += 1
    return tensors


def lt_piece_hashes(folder: Path, files: list[str], piece: int) -> None:
    entries = [lt.create_file_entry(f"m/{f}", (folder / f).stat().st_size) for f in files]
    ct = lt.create_torrent(entries, piece, lt.create_torrent.v1_only)
    lt.set_piece_hashes(ct, str(folder.parent / "lt-root"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--shard-mb", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    sd = state_dict(args.size_mb)
    key = Ed25519PrivateKey.generate()
    work = Path(tempfile.mkdtemp(prefix="p2pdist-bench-publish-"))
    times: dict[str, list[float]] = {
        k: [] for k in ("shards", "blake3", "manifest", "torrent", "lt_torrent", "publish")
    }
    try:
        for r in range(args.repeats):
            folder = work / f"src{r}"
            t0 = time.perf_counter()
            save_state_dict(sd, folder, max_shard_size=args.shard_mb * 1024 * 1024)
            times["shards"].append(time.perf_counter() - t0)
            files = list_files(folder)
            size = sum((folder / f).stat().st_size for f in files)
            t0 = time.perf_counter()
            for f in files:
                hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
                hasher.update_mmap(str(folder / f))
                hasher.hexdigest()
            times["blake3"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            describe_files(folder, files)
            times["manifest"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            meta = make_torrent(folder, files, name="m")
            times["torrent"].append(time.perf_counter() - t0)
            (work / "lt-root").mkdir(exist_ok=True)
            link = work / "lt-root" / "m"
            if link.exists() or link.is_symlink():
                link.unlink()
            link.symlink_to(folder)
            t0 = time.perf_counter()
            lt_piece_hashes(folder, files, meta.piece_size)
            times["lt_torrent"].append(time.perf_counter() - t0)
            store = Store(work / f"home{r}")
            t0 = time.perf_counter()
            build_version(folder, name="bench/publish", version="v1", key=key, store=store)
            times["publish"].append(time.perf_counter() - t0)
            shutil.rmtree(work / f"home{r}")
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    full = med["shards"] + med["publish"]
    rows = [
        ("blake3 library alone (baseline)", med["blake3"]),
        ("manifest hashing (describe_files)", med["manifest"]),
        ("write shards", med["shards"]),
        ("torrent, threaded piece hashing", med["torrent"]),
        ("torrent, lt.set_piece_hashes", med["lt_torrent"]),
        ("build_version (blake3+torrent+sign+store)", med["publish"]),
        ("shards + build_version (a whole publish)", full),
    ]
    mb = size / 1e6
    print(f"{mb:.0f} MB in {len(files)} shards of <= {args.shard_mb} MiB, piece size "
          f"{choose_piece_size(size) // 1024} KiB, {os.cpu_count()} cores, median of {args.repeats}")  # fmt: skip
    print(f"{'step':45} {'seconds':>8} {'MB/s':>8} {'x blake3':>9}")
    for label, seconds in rows:
        print(f"{label:45} {seconds:8.3f} {mb / seconds:8.0f} {seconds / med['blake3']:9.2f}")
    print(
        f"manifest hashing at {med['blake3'] / med['manifest']:.0%} of the blake3 library's speed "
        f"(goal >= 90%); threaded torrent hashing {med['lt_torrent'] / med['torrent']:.2f}x "
        "faster than libtorrent's"
    )
    if args.json:
        args.json.write_text(json.dumps({
            "machine": platform.platform(), "cores": os.cpu_count(), "bytes": size,
            "median_seconds": med, "publish_over_blake3": full / med["blake3"],
            "manifest_speed_vs_blake3": med["blake3"] / med["manifest"],
            "build_version_over_blake3": med["publish"] / med["blake3"],
            "lt_over_threaded_torrent": med["lt_torrent"] / med["torrent"],
        }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
