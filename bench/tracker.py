"""Tracker benchmark: announces per second under concurrent clients, against /healthz.

Starts ``python -m p2pdist.tracker serve`` in a subprocess with a fresh database, publishes
``--hashes`` versions (one infohash each), then runs two phases with the same number of
concurrent aiohttp clients on loopback for the same duration:

- baseline: ``GET /healthz`` (no I/O: the cost of aiohttp's request path itself);
- announce: ``GET /announce`` for random published infohashes, each client a peer with its
  own peer_id and port, a third of them seeders, numwant 50.

Prints requests/s, p50 and p99 latency of both and the ratio announce/baseline. The client
runs in this process and the server in another; on a small machine they share the cores, so
the absolute figures are a floor, and the ratio is the number to compare.

    .venv/bin/python bench/tracker.py [--clients 100] [--hashes 300] [--duration 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import aiohttp
import yarl
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.bencode import bencode, infohashes
from p2pdist.client import RegistryClient
from p2pdist.manifest import FileEntry, Manifest, TorrentRef


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _publish(url: str, token: str, count: int) -> list[bytes]:
    """Publish ``count`` single-file versions; return their 20-byte v1 infohashes."""
    client = RegistryClient(url, token=token, timeout=30)
    key = Ed25519PrivateKey.generate()
    hashes = []
    for i in range(count):
        payload = os.urandom(32)
        info = {"length": 32, "name": f"v{i}", "piece length": 16384,
                "pieces": hashlib.sha1(payload).digest()}  # fmt: skip
        torrent = bencode({"announce": f"{url}/announce", "info": info})
        v1, _ = infohashes(torrent)
        manifest = Manifest(
            name=f"bench/m{i}", version="v1", files=(FileEntry("w.bin", 32, "ab" * 32),),
            torrent=TorrentRef(v1=v1),
        ).signed(key)  # fmt: skip
        client.publish(manifest.to_bytes(), torrent, None)
        assert v1 is not None
        hashes.append(bytes.fromhex(v1))
    return hashes


async def _phase(
    url: str, clients: int, duration: float, make_path: Any
) -> tuple[int, list[float], int]:
    """Run ``clients`` loops for ``duration`` s; return (requests, latencies in s, failures)."""
    latencies: list[float] = []
    failures = 0
    stop_at = time.perf_counter() + duration
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(w: int) -> None:
            nonlocal failures
            rng = random.Random(w)
            while time.perf_counter() < stop_at:
                target = yarl.URL(url + make_path(w, rng), encoded=True)
                t0 = time.perf_counter()
                async with session.get(target) as r:
                    body = await r.read()
                latencies.append(time.perf_counter() - t0)
                if r.status != 200 or b"failure reason" in body:
                    failures += 1

        await asyncio.gather(*(worker(w) for w in range(clients)))
    return len(latencies), latencies, failures


def _stats(
    name: str, n: int, latencies: list[float], failures: int, duration: float
) -> dict[str, Any]:
    qs = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [0.0] * 99
    return {
        "name": name,
        "requests": n,
        "failures": failures,
        "requests_per_s": n / duration,
        "p50_ms": qs[49] * 1000,
        "p99_ms": qs[98] * 1000,
    }


async def _run(
    url: str, hashes: list[bytes], clients: int, duration: float
) -> list[dict[str, Any]]:
    def healthz(w: int, rng: random.Random) -> str:
        return "/healthz"

    def announce(w: int, rng: random.Random) -> str:
        info_hash = rng.choice(hashes)
        peer = b"-PB0001-" + f"{w:012d}".encode()
        left = 0 if w % 3 == 0 else 1000
        return (
            f"/announce?info_hash={quote_from_bytes(info_hash, safe='')}"
            f"&peer_id={quote_from_bytes(peer, safe='')}&port={10000 + w}"
            f"&uploaded=0&downloaded=0&left={left}&compact=1&numwant=50"
        )

    results = []
    for name, make_path in (("healthz (baseline)", healthz), ("announce", announce)):
        await _phase(url, clients, min(1.0, duration), make_path)  # warm-up
        n, latencies, failures = await _phase(url, clients, duration, make_path)
        results.append(_stats(name, n, latencies, failures, duration))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--hashes", type=int, default=300)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="p2pdist-bench-tracker-") as tmp:
        data = Path(tmp) / "data"
        token = subprocess.run(
            [sys.executable, "-m", "p2pdist.tracker", "token", "--data", str(data)],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "p2pdist.tracker", "serve", "--port", str(port),
             "--data", str(data)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert server.stdout is not None
            server.stdout.readline()
            t0 = time.perf_counter()
            hashes = _publish(url, token, args.hashes)
            publish_s = time.perf_counter() - t0
            results = asyncio.run(_run(url, hashes, args.clients, args.duration))
        finally:
            server.terminate()
            server.wait(30)

    base, ann = results
    ratio = ann["requests_per_s"] / base["requests_per_s"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"aiohttp {aiohttp.__version__}")  # fmt: skip
    print(f"{args.hashes} infohashes published in {publish_s:.2f} s "
          f"({args.hashes / publish_s:.0f} publishes/s); {args.clients} concurrent clients, "
          f"{args.duration:g} s per phase")  # fmt: skip
    print(f"{'phase':<20}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'failures':>10}")
    for r in results:
        print(f"{r['name']:<20}{r['requests_per_s']:>10.0f}{r['p50_ms']:>10.2f}"
              f"{r['p99_ms']:>10.2f}{r['failures']:>10}")  # fmt: skip
    print(f"ratio announce/healthz: {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps({
            "clients": args.clients, "hashes": args.hashes, "duration_s": args.duration,
            "publish_s": publish_s, "results": results, "ratio": ratio,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
