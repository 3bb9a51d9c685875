"""Swarm benchmark (issue 5): N consumers of an F-byte model, every peer's upload capped at u.

For each consumer count N and piece size it measures the wall time from "go" until every
consumer holds the whole model, and compares it with, in the same run:

- the fluid lower bound max(F/u_seed, N*F/(u_seed + N*u)) (the seed must send every byte once;
  all uploads together must deliver N*F bytes), here with u_seed = u;
- a single HTTP origin (aiohttp, same files, one token bucket of rate u shared by all
  requests) serving the same N consumers concurrently: N*F/u in theory.

Consumers run in separate processes (a few libtorrent sessions each, 2 cores cannot host 32
processes), and find each other by direct dials: consumer i dials the seed and consumers
0..i-1, so the swarm is a full mesh without a tracker. Every consumer keeps seeding until all
have finished. Run:

    .venv/bin/python bench/swarm.py --consumers 4 16 --size-mib 32 --rate-mb 4 \
        --piece-kib 256 1024 4096 --json swarm.json

At N=32 the origin alone takes N*F/u (e.g. 430 s for 64 MiB at 5 MB/s); `--http-max 16`
measures it only up to N=16 and reports its exact cap N*F/u above that, marked "c"
(computed, not measured) in the table and `"http_measured": false` in the JSON:

    .venv/bin/python bench/swarm.py --consumers 4 16 32 --size-mib 64 --rate-mb 5 \
        --piece-kib 256 --http-max 16 --json swarm.json

Compare setting sets in one run with `--variant NAME=JSON` (repeatable; see parse_variant),
e.g. `--variant default={} --variant q={"seed": {"unchoke_slots_limit": 4}}`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import queue
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from p2pdist.formats.torrent import choose_piece_size, make_torrent
from p2pdist.swarm.session import Swarm

MiB = 1024 * 1024
LOCAL = "127.0.0.1"


def write_model(root: Path, size: int, files: int) -> list[str]:
    """`files` shards of random bytes adding up to `size`."""
    rng = random.Random(5)
    names = []
    for i in range(files):
        part = size // files + (size % files if i == files - 1 else 0)
        name = f"model-{i + 1:05d}-of-{files:05d}.safetensors"
        (root / name).write_bytes(rng.randbytes(part))
        names.append(name)
    return names


def consumer_process(
    first: int,
    count: int,
    torrent: bytes,
    workdir: str,
    rate: int,
    control: Any,
    results: Any,
    settings: dict[str, Any],
    dial: str = "seed-first",
) -> None:
    """Host `count` consumers (sessions) with global indices first..first+count-1."""
    swarms = [Swarm(upload_rate_limit=rate, extra_settings=settings) for _ in range(count)]
    try:
        results.put(("ports", first, [s.listen_port for s in swarms]))
        _, ports, seed_port = control.get()

        def fetch(k: int) -> None:
            index = first + k
            others = [(LOCAL, ports[j]) for j in range(index)]
            seed_peer = (LOCAL, seed_port)
            peers = [*others, seed_peer] if dial == "peers-first" else [seed_peer, *others]
            try:
                result = swarms[k].download(
                    torrent,
                    Path(workdir) / f"consumer{index}",
                    peers=peers,
                    keep_seeding=True,
                    stall_timeout=120,
                )
                results.put(("done", index, time.time(), dataclasses.asdict(result)))
            except Exception as exc:
                results.put(("error", index, time.time(), f"{type(exc).__name__}: {exc}"))

        threads = [threading.Thread(target=fetch, args=(k,)) for k in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        control.get()  # stop: every consumer has finished
    finally:
        for s in swarms:
            s.close()


def run_swarm(
    root: Path,
    files: list[str],
    n: int,
    rate: int,
    piece_size: int,
    per_process: int,
    super_seeding: bool = False,
    settings: dict[str, Any] | None = None,
    seed_settings: dict[str, Any] | None = None,
    dial: str = "seed-first",
) -> dict[str, Any]:
    """One swarm run; returns the wall time and the traffic split.

    `settings` go to every session (consumers and seed), `seed_settings` to the seed only,
    on top of `settings`.
    """
    meta = make_torrent(root, files, name="bench-model", piece_size=piece_size)
    settings = settings or {}
    seed_all = {**settings, **(seed_settings or {})}
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    workdir = tempfile.mkdtemp(prefix="p2pdist-bench-")
    procs, controls = [], []
    try:
        with Swarm(upload_rate_limit=rate, extra_settings=seed_all) as seeder:
            seed = seeder.seed(meta.data, root, super_seeding=super_seeding)
            for first in range(0, n, per_process):
                control = ctx.Queue()
                count = min(per_process, n - first)
                args = (first, count, meta.data, workdir, rate, control, results, settings, dial)
                proc = ctx.Process(target=consumer_process, args=args)
                proc.start()
                procs.append(proc)
                controls.append(control)
            ports = [0] * n
            for _ in procs:
                _, first, got = results.get(timeout=120)
                ports[first : first + len(got)] = got
            start = time.time()
            for control in controls:
                control.put(("go", ports, seeder.listen_port))
            finished: dict[int, float] = {}
            downloaded = 0
            errors = []
            while len(finished) + len(errors) < n:
                try:
                    kind, index, when, payload = results.get(timeout=300)
                except queue.Empty as exc:
                    raise SystemExit(f"consumers silent for 300 s ({len(finished)}/{n})") from exc
                if kind == "done":
                    finished[index] = when - start
                    downloaded += payload["bytes_from_peers"]
                else:
                    errors.append(payload)
            seed_sent = seed.uploaded_bytes()
            for control in controls:
                control.put(("stop",))
            for proc in procs:
                proc.join(60)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
        shutil.rmtree(workdir, ignore_errors=True)
    if errors:
        raise SystemExit(f"{len(errors)} consumer(s) failed: {errors[0]}")
    times = sorted(finished.values())
    peer_sent = max(0, downloaded - seed_sent)
    return {
        "seconds": times[-1],
        # consumers' upload over their capacity while the swarm ran (N*u*T)
        "peer_upload_use": peer_sent / (n * rate * times[-1]),
        "first_done_s": times[0],
        "median_done_s": times[len(times) // 2],
        "seed_copies": seed_sent / meta.total_size,
        "overhead": downloaded / (n * meta.total_size),
        "pieces": -(-meta.total_size // piece_size),
    }


class TokenBucket:
    """`rate` bytes/s shared by every request, handed out first come first served."""

    def __init__(self, rate: int, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)


async def http_origin(root: Path, files: list[str], n: int, rate: int, dest: Path) -> float:
    """N concurrent clients fetch every file from one rate-capped aiohttp origin."""
    chunk = 64 * 1024
    bucket = TokenBucket(rate, burst=chunk)

    async def serve(request: web.Request) -> web.StreamResponse:
        path = root / request.match_info["name"]
        response = web.StreamResponse()
        response.content_length = path.stat().st_size
        await response.prepare(request)
        with open(path, "rb") as f:
            while data := f.read(chunk):
                await bucket.take(len(data))
                await response.write(data)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, LOCAL, 0)
    await site.start()
    port = runner.addresses[0][1]

    async def client(i: int, session: aiohttp.ClientSession) -> None:
        folder = dest / f"client{i}"
        folder.mkdir(parents=True)
        for name in files:
            async with session.get(f"http://{LOCAL}:{port}/{name}") as response:
                response.raise_for_status()
                with open(folder / name, "wb") as f:
                    async for data in response.content.iter_chunked(chunk):
                        f.write(data)

    try:
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            start = time.monotonic()
            await asyncio.gather(*(client(i, session) for i in range(n)))
            return time.monotonic() - start
    finally:
        await runner.cleanup()


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """`NAME=JSON`: JSON keys are libtorrent settings for every session, except "seed" (a dict
    of settings for the seed only), "dial" ("seed-first" or "peers-first") and
    "super_seeding" (bool)."""
    name, _, body = text.partition("=")
    spec = json.loads(body or "{}")
    if not isinstance(spec, dict):
        raise argparse.ArgumentTypeError(f"{text}: JSON object expected")
    return name, spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--consumers", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--size-mib", type=int, default=32)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--rate-mb", type=float, default=4.0, help="upload cap per peer, MB/s")
    parser.add_argument("--piece-kib", type=int, nargs="+", default=None)
    parser.add_argument("--per-process", type=int, default=4, help="sessions per process")
    parser.add_argument("--super-seeding", action="store_true", help="seed with BEP 16")
    parser.add_argument("--settings", type=json.loads, default={}, help="extra libtorrent settings")
    parser.add_argument(
        "--seed-settings", type=json.loads, default={}, help="extra settings for the seed only"
    )
    parser.add_argument(
        "--dial",
        choices=["seed-first", "peers-first"],
        default="seed-first",
        help="order in which a consumer dials the seed and the consumers before it",
    )
    parser.add_argument(
        "--variant",
        type=parse_variant,
        action="append",
        default=[],
        help="NAME=JSON, repeatable: compare setting sets in one run (see parse_variant); "
        "each variant starts from --settings",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant, interleaved")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP origin baseline")
    parser.add_argument(
        "--http-max",
        type=int,
        default=None,
        help="measure the HTTP origin only for N <= this; above it report its exact "
        "theoretical time N*F/u, labelled computed (c) in the table and "
        '"http_measured": false in the JSON',
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    size, rate = args.size_mib * MiB, int(args.rate_mb * 1_000_000)
    pieces = [k * 1024 for k in args.piece_kib] if args.piece_kib else [choose_piece_size(size)]
    base = {
        **args.settings,
        "seed": args.seed_settings,
        "dial": args.dial,
        "super_seeding": args.super_seeding,
    }
    variants = [("default", base)] if not args.variant else []
    for name, spec in args.variant:
        merged = {**args.settings, **spec}
        merged["seed"] = {**args.seed_settings, **spec.get("seed", {})}
        merged.setdefault("dial", args.dial)
        merged.setdefault("super_seeding", args.super_seeding)
        variants.append((name, merged))
    width = max(7, *(len(name) for name, _ in variants))
    rows = []
    with tempfile.TemporaryDirectory(prefix="p2pdist-bench-model-") as tmp:
        root = Path(tmp) / "model"
        root.mkdir()
        files = write_model(root, size, args.files)
        print(
            f"model {size / MiB:.0f} MiB in {args.files} files, upload cap u = {rate / 1e6:g} MB/s "
            f"per peer (seed included), {os.cpu_count()} CPUs, {platform.platform()}"
        )
        for name, spec in variants:
            print(f"  {name}: {json.dumps(spec)}")
        print(
            f"{'variant':<{width}} {'N':>3} {'piece':>6} {'pieces':>6} {'swarm s':>8} "
            f"{'bound s':>8} {'x bound':>8} {'http s':>8} {'http/swarm':>10} {'seed copies':>11} "
            f"{'median s':>8} {'peer up':>7}"
        )
        for n in args.consumers:
            bound = max(size / rate, n * size / (rate + n * rate))
            http_s, http_measured = None, False
            if not args.no_http and (args.http_max is None or n <= args.http_max):
                dest = Path(tmp) / f"http{n}"
                http_s = asyncio.run(http_origin(root, files, n, rate, dest))
                http_measured = True
                shutil.rmtree(dest)
            elif not args.no_http:
                http_s = n * size / rate  # computed, not measured: the origin's cap N*F/u
            for piece in pieces:
                for repeat in range(args.repeats):
                    for name, spec in variants:
                        settings = {
                            k: v
                            for k, v in spec.items()
                            if k not in ("seed", "dial", "super_seeding")
                        }
                        got = run_swarm(
                            root,
                            files,
                            n,
                            rate,
                            piece,
                            args.per_process,
                            super_seeding=bool(spec["super_seeding"]),
                            settings=settings,
                            seed_settings=spec["seed"],
                            dial=spec["dial"],
                        )
                        row = {
                            "variant": name,
                            "spec": spec,
                            "repeat": repeat,
                            "consumers": n,
                            "size_bytes": size,
                            "rate_bytes_s": rate,
                            "piece_bytes": piece,
                            "bound_s": bound,
                            "ratio_to_bound": got["seconds"] / bound,
                            "http_s": http_s,
                            "http_measured": http_measured,
                            "http_over_swarm": (http_s / got["seconds"]) if http_s else None,
                            **got,
                        }
                        rows.append(row)
                        mark = "" if http_measured else "c"
                        http_txt = (
                            f"{http_s:7.1f}{mark or ' '} {http_s / got['seconds']:9.2f}{mark or ' '}"
                            if http_s
                            else " " * 19
                        )
                        print(
                            f"{name:<{width}} {n:>3} {piece // 1024:>5}K {got['pieces']:>6} "
                            f"{got['seconds']:8.1f} {bound:8.1f} {row['ratio_to_bound']:8.2f} "
                            f"{http_txt} {got['seed_copies']:11.2f} {got['median_done_s']:8.1f} "
                            f"{got['peer_upload_use']:7.2f}",
                            flush=True,
                        )
    if args.json:
        args.json.write_text(json.dumps({"bench": "swarm", "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
