"""What the tracker's network edge costs: announces/s under wrk, plain vs TLS vs proxied.

Rows, each a fresh ``python -m p2pdist.tracker serve`` on 127.0.0.1 with one published
version, loaded by wrk (a separate C process; keep-alive connections re-announcing one
peer, so every request takes the front's full path: parse, checks, peers, answer):

- ``plain``: http, as before this work (the baseline of every ratio);
- ``tls``: the same port with ``--tls-cert/--tls-key`` (a test CA's ECDSA P-256 certificate);
- ``proxied``: http with ``--trusted-proxy 127.0.0.1/32`` and an ``X-Forwarded-For`` header
  on every request (the forwarded address is parsed per request);
- ``before`` (with ``--before-tree DIR``): the same ``plain`` load against the code of another
  checkout, run by this interpreter from ``DIR`` (``git archive <commit> | tar -x -C DIR``,
  then ``p2pdist/tracker`` and ``p2pdist/trainer`` linked to ``../tracker``, ``../trainer``
  and the built ``_ans`` extension copied in), to show what the connection door and the
  address checks cost on the hot path.

Server and wrk share the machine's cores: the ratios are the numbers to compare.

    flock /tmp/p2pdist-bench.lock .venv/bin/python bench/tracker_edge.py \\
        [--duration 8] [--connections 50] [--before-tree /tmp/before]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.edge_world import issue, make_ca
from tests.tracker_world import announce_query, peer_id, publish_directly


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(python: str, data: Path, cwd: Path, *flags: str) -> tuple[subprocess.Popen[str], int]:
    port = _free_port()
    proc = subprocess.Popen(
        [python, "-m", "p2pdist.tracker", "serve", "--port", str(port), "--data", str(data),
         "--interval", "1800", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"{python} in {cwd}: tracker did not start: {line}{proc.stdout.read()}")
    return proc, port


def _wrk(url: str, duration: float, connections: int, threads: int, *headers: str) -> float:
    args = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration:g}s"]
    for header in headers:
        args += ["-H", header]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    if "Non-2xx" in out or "Socket errors" in out:
        print(out, file=sys.stderr)
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before-tree", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk); nothing measured")
        return
    root = Path(tempfile.mkdtemp(prefix="p2pdist-edge-"))
    try:
        data = root / "tracker"
        info_hash = publish_directly(data, "bench/edge")
        ca = make_ca(root / "ca")
        cert = issue(ca, root / "server")
        query = announce_query(info_hash, peer_id(1), port=7001, event=None)
        here = Path(__file__).resolve().parents[1]
        rows: dict[str, tuple[str, Path, tuple[str, ...], str, tuple[str, ...]]] = {
            "plain": (sys.executable, here, (), "http", ()),
            "tls": (
                sys.executable,
                here,
                ("--tls-cert", str(cert.cert_path), "--tls-key", str(cert.key_path)),
                "https",
                (),
            ),
            "proxied": (
                sys.executable,
                here,
                ("--trusted-proxy", "127.0.0.1/32"),
                "http",
                ("X-Forwarded-For: 127.0.0.7",),
            ),
        }
        if args.before_tree:
            rows["before"] = (sys.executable, args.before_tree, (), "http", ())
        results: dict[str, list[float]] = {name: [] for name in rows}
        for _ in range(args.rounds):  # interleaved, so drift hits every row alike
            for name, (python, cwd, flags, scheme, headers) in rows.items():
                proc, port = _serve(python, data, cwd, *flags)
                try:
                    url = f"{scheme}://127.0.0.1:{port}/announce?{query}"
                    _wrk(url, 2, args.connections, args.threads, *headers)  # warm-up
                    rate = _wrk(url, args.duration, args.connections, args.threads, *headers)
                    results[name].append(rate)
                finally:
                    proc.terminate()
                    proc.wait(30)
                time.sleep(0.5)
        best = {name: max(rates) for name, rates in results.items()}
        print(f"announces/s, best of {args.rounds} rounds of {args.duration:g} s, "
              f"{args.connections} keep-alive connections, wrk -t{args.threads}")  # fmt: skip
        for name, rate in best.items():
            print(f"  {name:8} {rate:10.0f}  {rate / best['plain']:.2f}x plain   "
                  f"(rounds: {', '.join(f'{r:.0f}' for r in results[name])})")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps({"results": results, "best": best}, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
