"""Verified loading against safetensors on the same shards, in the same run.

    python bench/load.py [--size-mb 1024] [--shards 4] [--repeats 5] [--device cpu|cuda]
                         [--dir DIR] [--json PATH]

Builds a signed version of about ``--size-mb`` (fp32 and bf16 tensors in several shards) in
a private store, then times each method ``--repeats`` times, alternating methods so that
every one sees the same page cache (all shards stay cached: the machine has the memory),
and reports medians and ratios to the baselines.

CPU methods:
  load_file           safetensors.torch.load_file per shard (0.8: lazy views on a mapping)
  load_file+touch     the same, then one read per 4 KiB page of every tensor (makes it resident)
  load_file+clone     the same, then a copy of every tensor (tensors that own their memory)
  blake3              blake3 of every shard, nothing else: the floor of any verified load
  p2p                 p2pdist.load, verify="always" (views on a private mapping, hashed first)
  p2p copy            p2pdist.load, copy=True (owned tensors, hash overlapped with the copy)
  p2p once            p2pdist.load, verify="once" with the record in place
CUDA methods (when a GPU is at hand, or --device cuda):
  pinned h2d          one host-to-device copy of the same bytes from pinned memory (the limit)
  load_file cuda      safetensors.torch.load_file(device="cuda") per shard
  p2p cuda            p2pdist.load(device="cuda"), verify="always"
  p2p cuda once       the same with verify="once"
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
from typing import Any

import blake3
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.torch import load_file

from p2pdist.formats.manifest import Manifest, describe_files, list_files
from p2pdist.formats.shards import save_state_dict, shard_files
from p2pdist.loading import loader
from p2pdist.store.cache import Store

REF = "bench/load@v1"


def build(home: Path, size_mb: int, shards: int) -> Path:
    """A stored version of about size_mb MB in ``shards`` files; reused when already built."""
    store = Store(home)
    if store.has("bench/load", "v1"):
        return store.snapshot("bench/load", "v1")
    total = size_mb * 1024 * 1024
    per_tensor = 16 * 1024 * 1024
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    i = 0
    while sum(t.numel() * t.element_size() for t in sd.values()) < total:
        dtype = torch.bfloat16 if i % 3 == 2 else torch.float32
        rows = per_tensor // (1024 * dtype.itemsize)
        sd[f"layers.{i}.weight"] = torch.randn(rows, 1024, generator=g).to(dtype)
        sd[f"layers.{i}.bias"] = torch.randn(1024, generator=g).to(dtype)
        i += 1
    src = home.parent / "src"
    save_state_dict(sd, src, max_shard_size=total // shards + 1)
    key = Ed25519PrivateKey.generate()
    manifest = Manifest(
        name="bench/load", version="v1", files=describe_files(src, list_files(src))
    ).signed(key)
    store.add_version(manifest, src, move=True)
    return store.snapshot("bench/load", "v1")


def touch(tensors: dict[str, torch.Tensor]) -> int:
    total = 0
    for t in tensors.values():
        flat = t.reshape(-1).view(torch.uint8)
        total += int(flat[::4096].sum())
    return total


def time_methods(
    methods: dict[str, Callable[[], Any]], repeats: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            sync()
            start = time.perf_counter()
            result = fn()
            sync()
            times[name].append(time.perf_counter() - start)
            del result
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (kept if given)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda" or (args.device is None and torch.cuda.is_available())

    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="p2pdist-bench-load-")
    work = args.dir or Path(tmp.name)  # type: ignore[union-attr]
    home = work / "home"
    os.environ["P2PDIST_CONFIG_DIR"] = str(work / "config")
    snap = build(home, args.size_mb, args.shards)
    files = [snap / f for f in shard_files(snap)]
    nbytes = sum(f.stat().st_size for f in files)

    def lf(device: str = "cpu") -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out.update(load_file(f, device=device))
        return out

    def hash_all() -> list[str]:
        out = []
        for f in files:
            h = blake3.blake3(max_threads=blake3.blake3.AUTO)
            h.update_mmap(str(f))
            out.append(h.hexdigest())
        return out

    def p2p(**kw: Any) -> dict[str, torch.Tensor]:
        return loader.load(REF, home=home, fetch=False, **kw)

    p2p(verify="once")  # writes the verify-once records (the files are old enough by now)
    methods: dict[str, Callable[[], Any]] = {
        "load_file": lf,
        "load_file+touch": lambda: touch(lf()),
        "load_file+clone": lambda: {k: v.clone() for k, v in lf().items()},
        "blake3": hash_all,
        "p2p": p2p,
        "p2p copy": lambda: p2p(copy=True),
        "p2p once": lambda: p2p(verify="once"),
    }
    sync: Callable[[], None] = lambda: None  # noqa: E731
    if cuda:
        dev = torch.device("cuda")
        pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        pos = 0
        for f in files:
            data = torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8)
            pinned[pos : pos + data.numel()].copy_(data)
            pos += data.numel()
        target = torch.empty(nbytes, dtype=torch.uint8, device=dev)
        methods.update(
            {
                "pinned h2d": lambda: target.copy_(pinned, non_blocking=True),
                "load_file cuda": lambda: lf("cuda"),
                "p2p cuda": lambda: p2p(device="cuda"),
                "p2p cuda once": lambda: p2p(device="cuda", verify="once"),
            }
        )
        sync = torch.cuda.synchronize
        p2p(device="cuda")  # warm-up: CUDA context, pinned staging buffers
    times = time_methods(methods, args.repeats, sync)
    med = {name: statistics.median(v) for name, v in times.items()}

    gb = nbytes / 1e9
    print(
        f"load: {len(files)} shards, {nbytes / 2**20:.0f} MiB, {args.repeats} alternating runs, "
        f"median; {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name()}" if cuda else "")
    )
    print(f"{'method':<18}{'median s':>10}{'GB/s':>8}{'/clone':>8}{'/touch':>8}   runs")
    for name, t in med.items():
        runs = " ".join(f"{x:.3f}" for x in times[name])
        print(
            f"{name:<18}{t:>10.4f}{gb / t:>8.2f}{t / med['load_file+clone']:>8.2f}"
            f"{t / med['load_file+touch']:>8.2f}   {runs}"
        )
    result: dict[str, Any] = {
        "bytes": nbytes,
        "shards": len(files),
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "median_s": med,
        "runs_s": times,
        "ratios": {
            "p2p / load_file+clone": med["p2p"] / med["load_file+clone"],
            "p2p / load_file+touch": med["p2p"] / med["load_file+touch"],
            "p2p / load_file": med["p2p"] / med["load_file"],
            "p2p copy / load_file+clone": med["p2p copy"] / med["load_file+clone"],
            "p2p / blake3": med["p2p"] / med["blake3"],
        },
    }
    if cuda:
        frac = med["pinned h2d"] / med["p2p cuda"]
        result["device"] = torch.cuda.get_device_name()
        result["ratios"]["p2p cuda bandwidth / pinned h2d"] = frac
        result["ratios"]["p2p cuda / load_file cuda"] = med["p2p cuda"] / med["load_file cuda"]
        print(f"p2p cuda reaches {frac:.0%} of the pinned host-to-device bandwidth (goal 80%)")
    for name, value in result["ratios"].items():
        print(f"  {name}: {value:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
