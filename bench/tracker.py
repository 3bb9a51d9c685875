"""Tracker benchmark: announces/s and latency under wrk, against opentracker in the same run.

Needs two Debian packages (not needed by the tests, so not in ``make system-deps``):
``apt-get install wrk opentracker``. Without either, the script says so and exits 0.

What it does, for our tracker (``python -m p2pdist.tracker serve``) and then for opentracker
(the C reference tracker, Debian's build, whitelist mode) on other ports of 127.0.0.1:

1. setup: ``--hashes`` versions (default 1,000) are published to our tracker through its
   registry API (signed manifests, real torrents), so every announce passes every check
   (registry lookup, full validation); opentracker gets the same infohashes as its whitelist.
2. load: wrk (a separate C process) with a Lua script that announces for 10,000 peers
   (peer id ``-WK0001-<n>``, port 10000+n, every third one a seeder) each in 5 of the swarms,
   50 peers per swarm, ``compact=1&numwant=50``: a warm-up pass sends ``event=started`` for
   every (peer, swarm), then the measured pass sends plain re-announces; same threads,
   connections and duration for both trackers. Reported: announces/s, p50, p99, mean peers per
   answer, refusals; and the ratio ours/opentracker. Our announces are answered by the raw
   front (``tracker/front.py``); two more rows of ours under the same load show what it saves:
   the same re-announces with a ``Content-Length: 0`` header, which the front hands to aiohttp
   (aiohttp's announce path, as before the front), and ``/healthz`` (aiohttp's empty handler:
   the floor of any request through aiohttp).
3. paced: "p99 at 1,000 announces/s". wrk2 is not in Debian, so a Python load generator in a
   separate process (``--paced-worker``, uvloop when importable) sends announces on a fixed
   schedule over ``--paced-connections`` keep-alive connections and measures each latency from
   the time the request was due (open loop: a stalled server is not hidden by a waiting
   client).
4. churn: peers come and go: wrk sends ``started`` for fresh (ip:port, swarm) pairs and
   ``stopped`` for each of them about a thousand requests later, in ``--churn-rounds`` rounds;
   the server's RSS (``/proc/PID/status`` VmRSS) and, for ours, the peers gauge of /metrics,
   before and after each round show whether memory stays bounded.

Server and load generator share the machine's cores; on a 2-core machine the absolute figures
are a floor, and the ratio is the number to compare. Run benches one at a time (other CPU-heavy
work skews both sides).

    .venv/bin/python bench/tracker.py [--duration 10] [--connections 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PEERS = 10_000
SWARMS_PER_PEER = 5

# The wrk script. Arguments after ``--``: mode (warm|steady|aiohttp|churn|healthz), hash file,
# threads. Mode aiohttp is steady with a header that makes our front hand the request to aiohttp.
# Pair k (0 <= k < PEERS*SWARMS_PER_PEER) is peer k // 5 in swarm k % hashes; thread t sends the
# pairs k = t (mod threads), so one pair's events come from one thread, in order.
WRK_LUA = r"""
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local mode, hashes, order, pos, ring, ringpos, nthreads
failures = 0
peer_bytes = 0
bodies = 0

local function pct(hex)
  return (hex:gsub("..", function(b) return "%" .. b end))
end

function init(args)
  mode = args[1]
  nthreads = tonumber(args[3])
  hashes = {}
  for line in io.lines(args[2]) do
    if #line == 40 then table.insert(hashes, pct(line)) end
  end
  order = {}
  for k = id, PAIRS - 1, nthreads do table.insert(order, k) end
  math.randomseed(1234 + id)
  for i = #order, 2, -1 do
    local j = math.random(i)
    order[i], order[j] = order[j], order[i]
  end
  pos = 0
  ring = {}
  ringpos = 0
end

local function announce(h, pid, port, left, event)
  local path = "/announce?info_hash=" .. hashes[h + 1] .. "&peer_id=" .. pid ..
    "&port=" .. port .. "&uploaded=0&downloaded=0&left=" .. left ..
    "&compact=1&numwant=50"
  if event ~= "" then path = path .. "&event=" .. event end
  -- an empty body: wrk sends Content-Length: 0, which the front hands to aiohttp
  if mode == "aiohttp" then return wrk.format("GET", path, {}, "") end
  return wrk.format("GET", path)
end

function request()
  if mode == "healthz" then return wrk.format("GET", "/healthz") end
  if mode == "churn" then
    -- slot i alternates: started for a fresh peer, then (RING requests later) its stopped
    ringpos = ringpos % RING + 1
    local held = ring[ringpos]
    if held then
      ring[ringpos] = nil
      return announce(held[1], held[2], held[3], 1048576, "stopped")
    end
    local h = math.random(#hashes) - 1
    local port = 20000 + id + nthreads * math.random(0, math.floor(45000 / nthreads))
    local pid = string.format("-WC0001-%012d", math.random(0, 999999999))
    ring[ringpos] = {h, pid, port}
    return announce(h, pid, port, 1048576, "started")
  end
  pos = pos % #order + 1
  local k = order[pos]
  local p = math.floor(k / SWARMS)
  local left = 1048576
  if p % 3 == 0 then left = 0 end
  local event = ""
  if mode == "warm" then event = "started" end
  return announce(k % #hashes, string.format("-WK0001-%012d", p), 10000 + p, left, event)
end

function response(status, headers, body)
  if status ~= 200 or body:find("failure reason", 1, true) then
    failures = failures + 1
  end
  local n = body:match("5:peers(%d+):")
  if n then
    peer_bytes = peer_bytes + tonumber(n)
    bodies = bodies + 1
  end
end

function done(summary, latency, requests)
  local f, pb, b = 0, 0, 0
  for _, t in ipairs(threads) do
    f = f + t:get("failures")
    pb = pb + t:get("peer_bytes")
    b = b + t:get("bodies")
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"failures":%d,"peer_bytes":%d,' ..
    '"bodies":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    f, pb, b))
end
"""


def _lua_script() -> str:
    return f"PAIRS = {PEERS * SWARMS_PER_PEER}\nSWARMS = {SWARMS_PER_PEER}\nRING = 1024\n" + WRK_LUA


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[Any], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on port {port} within {timeout:g} s")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _peers_gauge(url: str) -> int:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r"^p2pdist_tracker_peers (\S+)$", text, re.M)
    return int(float(m.group(1))) if m else -1


def _publish(url: str, token: str, count: int) -> list[bytes]:
    """Publish ``count`` single-file signed versions; return their 20-byte v1 infohashes."""
    from p2pdist.client import RegistryClient
    from p2pdist.formats.bencode import bencode, infohashes
    from p2pdist.formats.manifest import FileEntry, Manifest, TorrentRef

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


def _wrk_cmd(url: str, script: Path, hash_file: Path, mode: str, threads: int,
             connections: int, duration: float) -> list[str]:  # fmt: skip
    return [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s",
        "-s", str(script), url, "--", mode, str(hash_file), str(threads),
    ]  # fmt: skip


def _wrk(
    url: str, script: Path, hash_file: Path, mode: str, args: argparse.Namespace, duration: float
) -> dict[str, Any]:
    cmd = _wrk_cmd(url, script, hash_file, mode, args.threads, args.connections, duration)
    return _wrk_result(mode, subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def _wrk_result(mode: str, out: str) -> dict[str, Any]:
    line = next((x for x in out.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise SystemExit(f"wrk printed no result:\n{out}")
    r: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
    seconds = r["duration_us"] / 1e6
    return {
        "mode": mode,
        "requests": r["requests"],
        "requests_per_s": r["requests"] / seconds,
        "p50_ms": r["p50_us"] / 1000,
        "p90_ms": r["p90_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "refusals": r["failures"],
        "socket_errors": r["socket_errors"],
        "non2xx": r["non2xx"],
        "peers_per_answer": r["peer_bytes"] / 6 / r["bodies"] if r["bodies"] else 0.0,
    }


# -- the paced load generator (runs as a separate process: --paced-worker) --------------------


def _steady_paths(hashes: list[str], count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    pct = ["".join(f"%{hex_[i : i + 2]}" for i in range(0, 40, 2)) for hex_ in hashes]
    out = []
    for _ in range(count):
        k = rng.randrange(PEERS * SWARMS_PER_PEER)
        p = k // SWARMS_PER_PEER
        left = 0 if p % 3 == 0 else 1048576
        path = (
            f"/announce?info_hash={pct[k % len(pct)]}&peer_id=-WK0001-{p:012d}&port={10000 + p}"
            f"&uploaded=0&downloaded=0&left={left}&compact=1&numwant=50"
        )
        out.append(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    return out


async def _paced(port: int, requests: list[bytes], rate: float, connections: int) -> dict[str, Any]:
    clock = time.perf_counter  # uvloop's loop.time() ticks in whole ms
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    latencies: list[float] = []
    failures = 0

    async def connection() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (item := await queue.get()) is not None:
            due, request = item
            for attempt in range(2):
                try:
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    break
                except (asyncio.IncompleteReadError, ConnectionError):
                    # opentracker closes every connection after one answer (no keep-alive):
                    # reconnect and send again (the latency counts from the due time)
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    if attempt:
                        raise
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            body = await reader.readexactly(int(m.group(1))) if m else b""
            latencies.append(clock() - due)
            if reader.at_eof() or b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if not head.startswith(b"HTTP/1.1 200") or b"failure reason" in body:
                failures += 1
        writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    start = clock() + 0.2
    sent = 0
    while sent < len(requests):
        now = clock()
        due_count = min(len(requests), int((now - start) * rate) + 1) if now >= start else 0
        while sent < due_count:
            queue.put_nowait((start + sent / rate, requests[sent]))
            sent += 1
        await asyncio.sleep(min(0.001, max(0.0, start + sent / rate - clock())))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = clock() - start
    latencies.sort()
    n = len(latencies)
    return {
        "target_per_s": rate,
        "requests": n,
        "achieved_per_s": n / elapsed,
        "p50_ms": latencies[n // 2] * 1000,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1000,
        "max_ms": latencies[-1] * 1000,
        "refusals": failures,
    }


def _paced_worker(argv: list[str]) -> None:
    port, hash_file, rate, duration, connections = argv
    hashes = [x for x in Path(hash_file).read_text().split() if len(x) == 40]
    requests = _steady_paths(hashes, int(float(rate) * float(duration)), seed=7)
    main = _paced(int(port), requests, float(rate), int(connections))
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(main)
    else:
        result = uvloop.run(main)
    print(json.dumps(result))


def _run_paced(port: int, hash_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--paced-worker", str(port), str(hash_file),
           str(args.rate), str(args.duration), str(args.paced_connections)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# -- the run ------------------------------------------------------------------------------------


def _measure(
    name: str, port: int, pid: int, script: Path, hash_file: Path, args: argparse.Namespace,
    peers_gauge: Any = None,
) -> dict[str, Any]:  # fmt: skip
    url = f"http://127.0.0.1:{port}/announce"
    out: dict[str, Any] = {"name": name}
    _wrk(url, script, hash_file, "warm", args, args.warmup)
    out["load"] = _wrk(url, script, hash_file, "steady", args, args.duration)
    if name == "p2pdist":
        out["aiohttp"] = _wrk(url, script, hash_file, "aiohttp", args, args.duration)
        out["healthz"] = _wrk(url, script, hash_file, "healthz", args, args.duration)
    out["paced"] = _run_paced(port, hash_file, args)
    churn = [
        {"round": 0, "rss_kib": _rss_kib(pid), "peers": peers_gauge() if peers_gauge else None}
    ]
    for i in range(args.churn_rounds):
        r = _wrk(url, script, hash_file, "churn", args, args.churn_duration)
        churn.append({
            "round": i + 1, "rss_kib": _rss_kib(pid),
            "peers": peers_gauge() if peers_gauge else None,
            "announces": r["requests"], "requests_per_s": r["requests_per_s"],
            "refusals": r["refusals"],
        })  # fmt: skip
    out["churn"] = churn
    return out


def _print(results: list[dict[str, Any]], args: argparse.Namespace, publish_s: float) -> float:
    ours, ot = results
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; wrk -t{args.threads} -c{args.connections} "
          f"-d{args.duration:g}s (after a {args.warmup:g} s warm-up of 'started')")  # fmt: skip
    print(f"{args.hashes} versions published in {publish_s:.2f} s; {PEERS} peers x "
          f"{SWARMS_PER_PEER} swarms ({PEERS * SWARMS_PER_PEER // args.hashes} peers per "
          "swarm), compact=1, numwant=50")  # fmt: skip
    print(f"{'load':<22}{'ann/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'peers/ans':>10}"
          f"{'refused':>9}{'errors':>8}")  # fmt: skip
    rows = [("p2pdist /announce", ours["load"]), ("opentracker /announce", ot["load"]),
            ("p2pdist via aiohttp", ours["aiohttp"]), ("p2pdist /healthz", ours["healthz"])]  # fmt: skip
    for label, r in rows:
        print(f"{label:<22}{r['requests_per_s']:>9.0f}{r['p50_ms']:>9.2f}{r['p90_ms']:>9.2f}"
              f"{r['p99_ms']:>9.2f}{r['peers_per_answer']:>10.1f}{r['refusals']:>9}"
              f"{r['socket_errors'] + r['non2xx']:>8}")  # fmt: skip
    ratio = ours["load"]["requests_per_s"] / ot["load"]["requests_per_s"]
    print(f"ratio p2pdist/opentracker: {ratio:.2f} (goal >= 0.5)")
    print(f"paced at {args.rate:g}/s over {args.paced_connections} connections, {args.duration:g} s "
          "(latency from the due time):")  # fmt: skip
    for r in results:
        p = r["paced"]
        print(
            f"  {r['name']:<12} achieved {p['achieved_per_s']:7.0f}/s  p50 {p['p50_ms']:6.2f} ms"
            f"  p99 {p['p99_ms']:6.2f} ms  max {p['max_ms']:7.2f} ms  refused {p['refusals']}"
        )
    print(f"churn: {args.churn_rounds} rounds of {args.churn_duration:g} s, started + stopped for "
          "fresh peers; server RSS after each round:")  # fmt: skip
    for r in results:
        cells = []
        for c in r["churn"]:
            peers = f" ({c['peers']} peers)" if c["peers"] is not None else ""
            ann = f", {c['announces']} ann" if "announces" in c else ""
            cells.append(f"{c['rss_kib'] / 1024:.1f} MiB{peers}{ann}")
        print(f"  {r['name']:<12} " + " -> ".join(cells))
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hashes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=6.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--paced-connections", type=int, default=50)
    parser.add_argument("--churn-rounds", type=int, default=3)
    parser.add_argument("--churn-duration", type=float, default=8.0)
    parser.add_argument("--json", type=Path, default=None)
    if len(sys.argv) > 1 and sys.argv[1] == "--paced-worker":
        _paced_worker(sys.argv[2:])
        return
    parser.add_argument("--replicas", action="store_true",
                        help="Only the replica set-up: 2 trackers on PostgreSQL + Redis vs 1 "
                        "in-process (bench/tracker_replicas.py).")  # fmt: skip
    args = parser.parse_args()
    if args.replicas:
        from tracker_replicas import replica_bench  # bench/ is this script's folder

        replica_bench(args)
        return
    missing = [tool for tool in ("wrk", "opentracker") if shutil.which(tool) is None]
    if missing:
        print(f"skipped: {' and '.join(missing)} not installed "
              f"(apt-get install {' '.join(missing)})")  # fmt: skip
        return

    with tempfile.TemporaryDirectory(prefix="p2pdist-bench-tracker-") as tmp:
        tmp_path = Path(tmp)
        script = tmp_path / "announce.lua"
        script.write_text(_lua_script())
        data = tmp_path / "data"
        token = subprocess.run(
            [sys.executable, "-m", "p2pdist.tracker", "token", "--data", str(data)],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [sys.executable, "-m", "p2pdist.tracker", "serve", "--port", str(port),
             "--data", str(data)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        # opentracker chroots into its folder and drops to `nobody`: the folder must be readable.
        ot_dir = tmp_path / "opentracker"
        ot_dir.mkdir()
        os.chmod(tmp_path, 0o755)
        os.chmod(ot_dir, 0o755)
        ot_port = _free_port()
        ot: subprocess.Popen[Any] | None = None
        try:
            _wait_port(port, server, "p2pdist tracker")
            t0 = time.perf_counter()
            hashes = _publish(url, token, args.hashes)
            publish_s = time.perf_counter() - t0
            hash_file = tmp_path / "hashes.txt"
            hash_file.write_text("".join(h.hex() + "\n" for h in hashes))
            (ot_dir / "whitelist.txt").write_text(hash_file.read_text())
            ot = subprocess.Popen(
                ["opentracker", "-i", "127.0.0.1", "-p", str(ot_port), "-d", str(ot_dir),
                 "-w", "whitelist.txt"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            _wait_port(ot_port, ot, "opentracker")
            time.sleep(1.0)  # opentracker loads its whitelist in a thread
            results = [
                _measure(
                    "p2pdist",
                    port,
                    server.pid,
                    script,
                    hash_file,
                    args,
                    peers_gauge=lambda: _peers_gauge(url),
                ),
                _measure("opentracker", ot_port, ot.pid, script, hash_file, args),
            ]
        finally:
            server.terminate()
            server.wait(30)
            if ot is not None:
                ot.terminate()
                ot.wait(30)

    ratio = _print(results, args, publish_s)
    if args.json:
        args.json.write_text(json.dumps({
            "hashes": args.hashes, "peers": PEERS, "swarms_per_peer": SWARMS_PER_PEER,
            "threads": args.threads, "connections": args.connections,
            "duration_s": args.duration, "warmup_s": args.warmup, "publish_s": publish_s,
            "results": results, "ratio": ratio,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
