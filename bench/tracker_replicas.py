"""Tracker replicas under load: 2 trackers on PostgreSQL + Redis vs 1 tracker in-process.

Run through ``bench/tracker.py --replicas`` (same wrk script, same peers and swarms). Needs
wrk, PostgreSQL and redis-server (Debian packages; the servers are started here in a
temporary folder, as in the tests). For each set-up:

- ``--hashes`` versions are published (through the first replica);
- the same wrk load is sent as two wrk processes of ``--connections/2`` connections and one
  thread each, one per replica (for the single tracker: both at it), first a warm-up of
  ``started`` for every (peer, swarm), then the measured re-announces;
- reported: announces/s (the sum of the two), p50 and p99 (the worse of the two), refusals.

On a 2-core machine two tracker processes, redis-server and two wrk processes share two
cores, so the replica figure is bounded by CPU, not by the design; the ratio says what one
Redis round trip (one Lua script) per announce costs against the in-process store when both
set-ups get the same cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tracker import _free_port, _lua_script, _publish, _wait_port, _wrk_cmd, _wrk_result

ROOT = Path(__file__).resolve().parent.parent


def _wrk_pair(ports: list[int], script: Path, hash_file: Path, mode: str,
              args: argparse.Namespace, duration: float) -> dict[str, Any]:  # fmt: skip
    """Two wrk processes at once, one per port; summed rate, worse latencies."""
    per = max(1, args.connections // 2)
    procs = [
        subprocess.Popen(
            _wrk_cmd(f"http://127.0.0.1:{p}/announce", script, hash_file, mode, 1, per, duration),
            stdout=subprocess.PIPE,
            text=True,
        )
        for p in ports
    ]
    results = [_wrk_result(mode, proc.communicate(timeout=duration + 120)[0]) for proc in procs]
    return {
        "requests_per_s": sum(r["requests_per_s"] for r in results),
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "refusals": sum(r["refusals"] for r in results),
        "errors": sum(r["socket_errors"] + r["non2xx"] for r in results),
        "peers_per_answer": sum(r["peers_per_answer"] for r in results) / len(results),
    }


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_s() -> float:
    """CPU seconds all cores spent not idle, since boot (every process on the machine)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _setup(label: str, tmp: Path, backends: list[str], replicas: int, script: Path,
           args: argparse.Namespace, warmup: float, redis_pid: int | None) -> dict[str, Any]:  # fmt: skip
    tracker = [sys.executable, "-m", "p2pdist.tracker"]
    data = [tmp / f"{label}-{i}" for i in range(replicas)]
    token = subprocess.run(
        [*tracker, "token", "--data", str(data[0]), *backends[:2]],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    ports = [_free_port() for _ in range(replicas)]
    servers = [
        subprocess.Popen(
            [*tracker, "serve", "--port", str(port), "--data", str(d), *backends],
            stdout=subprocess.DEVNULL,
        )
        for port, d in zip(ports, data, strict=True)
    ]
    try:
        for port, server in zip(ports, servers, strict=True):
            _wait_port(port, server, f"{label} tracker")
        hashes = _publish(f"http://127.0.0.1:{ports[0]}", token, args.hashes)
        hash_file = tmp / f"{label}-hashes.txt"
        hash_file.write_text("".join(h.hex() + "\n" for h in hashes))
        time.sleep(1.5)  # the other replica's poll of the registry picks the versions up
        targets = ports if replicas == 2 else ports * 2
        _wrk_pair(targets, script, hash_file, "warm", args, warmup)
        pids = [s.pid for s in servers]
        before = ([_cpu_s(p) for p in pids], _cpu_s(redis_pid) if redis_pid else 0.0,
                  _machine_busy_s(), time.monotonic())  # fmt: skip
        result = _wrk_pair(targets, script, hash_file, "steady", args, args.duration)
        wall = time.monotonic() - before[3]
        result["cpu"] = {
            "trackers": sum(_cpu_s(p) for p in pids) - sum(before[0]),
            "redis": (_cpu_s(redis_pid) - before[1]) if redis_pid else 0.0,
            "machine": _machine_busy_s() - before[2],
            "wall": wall,
        }
        return result
    finally:
        for server in servers:
            server.terminate()
            server.wait(30)


def replica_bench(args: argparse.Namespace) -> float:
    sys.path.insert(0, str(ROOT))
    from tests.backends import PostgresServer, RedisServer

    with tempfile.TemporaryDirectory(prefix="p2pdist-bench-replicas-") as tmp_name:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o755)
        script = tmp / "announce.lua"
        script.write_text(_lua_script())
        (tmp / "pg").mkdir()
        (tmp / "redis").mkdir()
        pg = PostgresServer(tmp / "pg")
        redis = RedisServer(tmp / "redis")
        try:
            single = _setup("single", tmp, [], 1, script, args, args.warmup, None)
            shared = [
                "--db", f"{pg.base_url}/postgres", "--peers", redis.url,
            ]  # fmt: skip
            # the replicas' warm-up runs longer, so that about as many (peer, swarm) pairs have
            # joined (same swarm sizes, same answers) at their slower rate
            assert redis._proc is not None
            replicated = _setup(
                "replicas", tmp, shared, 2, script, args, round(args.warmup * 2.5), redis._proc.pid
            )
        finally:
            redis.close()
            pg.close()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores (shared with other work), "
          f"Python {platform.python_version()}; 2 x wrk -t1 -c{max(1, args.connections // 2)} "
          f"-d{args.duration:g}s after a {args.warmup:g} s warm-up; {args.hashes} versions")  # fmt: skip
    print(f"{'set-up':<34}{'ann/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'peers/ans':>10}"
          f"{'refused':>9}{'errors':>8}")  # fmt: skip
    for label, r in (("1 tracker, SQLite + in-process", single),
                     ("2 replicas, PostgreSQL + Redis", replicated)):  # fmt: skip
        print(f"{label:<34}{r['requests_per_s']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
              f"{r['peers_per_answer']:>10.1f}{r['refusals']:>9}{r['errors']:>8}")  # fmt: skip
    ratio = replicated["requests_per_s"] / single["requests_per_s"]
    print(f"ratio 2 replicas on Redis / 1 in-process: {ratio:.2f}")
    print("where the 2 cores went during the measured pass (CPU seconds per wall second):")
    for label, r in (("1 tracker", single), ("2 replicas", replicated)):
        c = r["cpu"]
        rest = c["machine"] - c["trackers"] - c["redis"]
        n = r["requests_per_s"] * c["wall"]
        print(f"  {label:<11} trackers {c['trackers'] / c['wall']:.2f}  redis-server "
              f"{c['redis'] / c['wall']:.2f}  wrk + everything else {rest / c['wall']:.2f}  "
              f"(tracker CPU per announce {1e6 * c['trackers'] / n:.0f} us)")  # fmt: skip
    return ratio
