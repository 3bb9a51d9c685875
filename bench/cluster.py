"""The swarm benchmark on real hosts (issue 14): network namespaces on the test bed.

Every host is a network namespace with its own address and a link shaped by tbf qdiscs
(tests/netbed.py), running the real `p2pdist` CLI; the tracker runs on its own host. Parts:

1. one consumer, an F-byte version, unshaped veth: `p2pdist fetch` vs aria2c downloading the
   same published .torrent from the same `p2pdist seed`, and vs raw TCP (iperf3) on the link;
2. 1 seed + N consumers, every host capped at the same rate u each way: time from starting
   all fetches to the last one's exit vs the fluid bound F/u * max(1, N/(N+1)), and vs one HTTP
   origin (`p2pdist origin`, same cap) serving the same N hosts with curl; copies the seed
   sent (its interface's transmitted bytes / F, headers included) and the share of its TCP
   segments retransmitted; a timeline: when the seed sent, when each fetch had every byte
   and when it exited;
3. two sites joined by a thin link, the seed at site A, 8 consumers at site B: bytes over the
   thin link (the router's interface counters) / F;
4. RL-style: 8 followers (`fetch --follow`) run while the publisher pushes a new bf16 version
   (a delta); time from `publish` returning to every follower holding it vs delta size / u.

CPU: the machine's busy fraction (/proc/stat) over each timed run, and CPU seconds of the
processes involved. The machine has 2 cores shared with other work: figures are ratios
against baselines measured in the same run. Run as root, one benchmark at a time:

    flock /tmp/p2pdist-bench.lock .venv/bin/python bench/cluster.py --parts 1 2 \
        --size-mib 1024 --swarm-mib 256 --consumers 4 8 --cap-mbit 100 --json cluster.json

``--variant NAME=JSON`` (parts 1, 2 and 4, interleaved, ``--repeats`` times) compares tunings
in one run: libtorrent settings for the seed and for the consumers (``P2PDIST_LIBTORRENT``),
environment variables for every host, the seed's nice value and its command-line options.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.netbed import Bed, Host, flat_lan, mbit, skip_reason, two_sites  # noqa: E402

MiB = 1 << 20
NAME = "org/bench"
Variant = tuple[str, dict[str, Any]]
"""A tuning to compare: its name and {"seed": ..., "consumers": ..., "env": ...}."""


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class CpuMeter:
    """The machine's busy fraction (of all cores) between start and stop.

    It starts with a sync: the pages earlier runs left dirty (aria2c's output, a torn-down
    bed's files) would otherwise be written back during this run. Without it the second
    variant of a pair ran 0.4-1.5 s slower on a 1 GiB fetch, whichever variant it was.
    """

    def __enter__(self) -> CpuMeter:
        os.sync()
        self.start = cpu_times()
        return self

    def __exit__(self, *exc: object) -> None:
        end = cpu_times()
        busy, total = end[0] - self.start[0], end[1] - self.start[1]
        self.busy = busy / total if total else 0.0


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_model(folder: Path, size: int, seed: int = 0, dtype: str = "uint8") -> Path:
    """A model folder of about ``size`` bytes of random weights in 4 shards."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    per = size // 4
    for i in range(4):
        if dtype == "uint8":
            t = torch.randint(0, 256, (per,), generator=g, dtype=torch.uint8)
        else:
            t = torch.randn(per // 2, generator=g).to(torch.bfloat16)
        save_file({f"layer.{i}.weight": t}, str(folder / f"model-{i:05d}-of-00004.safetensors"))
    (folder / "config.json").write_text('{"model_type": "bench"}\n')
    return folder


def nudge(src: Path, dest: Path, fraction: float, seed: int) -> Path:
    """``src`` a training step later: ``fraction`` of the elements of one shard changed."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dest)
    shard = sorted(dest.glob("*.safetensors"))[0]
    state = load_file(str(shard))
    g = torch.Generator().manual_seed(seed)
    for key, t in state.items():
        n = max(1, int(t.numel() * fraction))
        idx = torch.randint(0, t.numel(), (n,), generator=g)
        flat = t.flatten().clone()
        flat[idx] = (flat[idx].float() + 1e-2).to(t.dtype)
        state[key] = flat.view(t.shape)
    save_file(state, str(shard))
    return dest


def publish(host: Host, folder: Path, version: str, *extra: str) -> dict[str, Any]:
    done = host.run("publish", str(folder), "--name", NAME, "--version", version, "--no-seed",
                    "--json", *extra, timeout=900)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"publish failed: {done.stderr}")
    return json.loads(done.stdout)


def start_seed(host: Host, *extra: str) -> subprocess.Popen[str]:
    proc = host.start("seed", "--status-every", "0", *extra, log="seed.log")
    deadline = time.monotonic() + 120
    while "Seeding" not in (host.root / "seed.log").read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((host.root / "seed.log").read_text())
        time.sleep(0.2)
    return proc


def renice(pid: int, nice: int) -> None:
    """Give every thread of ``pid`` the nice value ``nice`` (setpriority on a pid moves only
    its main thread): on the bed a seed shares 2 cores with N consumers, as it would not on a
    host of its own."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.setpriority(os.PRIO_PROCESS, int(task.name), nice)


def publisher(bed: Bed, host: Host) -> Host:
    host.env["P2PDIST_TOKEN"] = bed.tracker_token("org")
    return host


def timed_fetches(
    hosts: list[Host],
    ref: str,
    *extra: str,
    exits: list[float] | None = None,
    all_bytes: list[float | None] | None = None,
) -> tuple[float, list[dict], float]:
    """Start ``fetch ref`` on every host at once; (seconds to the last exit, results, CPU s).
    ``exits`` receives each fetch's seconds from the start to its exit, ``all_bytes`` to its
    progress event saying every byte is in (before verification and commit), in host order."""
    t0 = time.monotonic()
    procs = [h.start("fetch", ref, "--json", *extra) for h in hosts]
    outcome: list[tuple[str, str, int, float, float]] = [("", "", 0, 0.0, 0.0)] * len(procs)
    outcome_bytes: list[float | None] = [None] * len(procs)

    def reap(i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        err_lines = []
        for line in proc.stderr:  # NDJSON progress events, then any error
            err_lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "progress" and event["done"] >= event["total"]:
                outcome_bytes[i] = outcome_bytes[i] or time.monotonic() - t0
        out, err = proc.stdout.read(), "".join(err_lines)
        _, status, usage = os.wait4(proc.pid, 0)  # the CPU it used, which communicate() loses
        proc.returncode = os.waitstatus_to_exitcode(status)
        outcome[i] = (out, err, proc.returncode, usage.ru_utime + usage.ru_stime,
                      time.monotonic() - t0)  # fmt: skip

    reapers = [threading.Thread(target=reap, args=(i, p)) for i, p in enumerate(procs)]
    for r in reapers:
        r.start()
    for r in reapers:
        r.join()
    results, cpu = [], 0.0
    for out, err, code, used, _ in outcome:
        cpu += used
        if code != 0:
            raise RuntimeError(f"fetch failed: {err[-2000:]}")
        results.append(json.loads(out))
    if exits is not None:
        exits[:] = [o[4] for o in outcome]
    if all_bytes is not None:
        all_bytes[:] = outcome_bytes
    return time.monotonic() - t0, results, cpu


class TxSampler:
    """An interface's transmitted bytes sampled every ``every`` seconds while in use."""

    def __init__(self, bed: Bed, ns: str, ifname: str, every: float = 0.25) -> None:
        self.bed, self.ns, self.ifname, self.every = bed, ns, ifname, every
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            self.samples.append(
                (time.monotonic() - t0, self.bed.link_bytes(self.ns, self.ifname)[1])
            )
            self._stop.wait(self.every)

    def __enter__(self) -> TxSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def active(self, rate_bps: int) -> tuple[float, float, float]:
        """(first second the link sent at a tenth of ``rate_bps``, last such second, fraction
        of the time in between it sent at least 80% of the rate)."""
        busy: list[tuple[float, float, float]] = []
        first: float | None = None
        last = 0.0
        for (t0, b0), (t1, b1) in zip(self.samples, self.samples[1:], strict=False):
            rate = (b1 - b0) * 8 / (t1 - t0)
            busy.append((t0, t1, rate))
            if rate >= rate_bps / 10:
                first = t0 if first is None else first
                last = t1
        span = [r for t0, t1, r in busy if first is not None and first <= t0 and t1 <= last]
        full = sum(1 for r in span if r >= 0.8 * rate_bps)
        return first or 0.0, last, full / len(span) if span else 0.0


def iperf(bed: Bed, server: Host, client: Host, seconds: int = 4) -> float:
    """Raw TCP rate server <- client in bytes/s (iperf3)."""
    srv = bed.spawn(server, server.cmd("iperf3", "-s", "-1", "-B", server.addr))
    time.sleep(0.5)
    out = subprocess.run(client.cmd("iperf3", "-c", server.addr, "-t", str(seconds), "-J"),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    srv.wait(timeout=30)
    return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 8


def tcp_segments(bed: Bed, ns: str) -> tuple[int, int]:
    """(segments sent, segments retransmitted) by TCP in namespace ``ns`` so far."""
    rows = [line.split() for line in bed.nsexec(ns, "cat", "/proc/net/snmp").splitlines()]
    names, values = [r for r in rows if r[0] == "Tcp:"][:2]
    counts = dict(zip(names[1:], values[1:], strict=True))
    return int(counts["OutSegs"]), int(counts["RetransSegs"])


def version_dir(host: Host, version: str) -> Path:
    return host.root / "store" / "models" / NAME.replace("/", "--") / version


# -- parts ------------------------------------------------------------------------------------
def apply_variant(tuning: dict[str, Any], seed_host: Host, consumers: list[Host]) -> None:
    """Give each side its libtorrent settings (``P2PDIST_LIBTORRENT``) and every host the
    variant's environment."""
    for side, hosts in (("seed", [seed_host]), ("consumers", consumers)):
        for h in hosts:
            if tuning.get(side):
                h.env["P2PDIST_LIBTORRENT"] = json.dumps(tuning[side])
            h.env.update(tuning.get("env", {}))


def part1(work: Path, size: int, variant: Variant = ("default", {})) -> dict[str, Any]:
    src = write_model(work / "model1", size)
    label, tuning = variant
    bed_dir = work / f"bed1-{label}"
    shutil.rmtree(bed_dir, ignore_errors=True)
    with flat_lan(bed_dir, ["seed", "c1", "aria"]) as bed:
        seed_host = publisher(bed, bed.hosts["seed"])
        c1, aria = bed.hosts["c1"], bed.hosts["aria"]
        apply_variant(tuning, seed_host, [c1])
        tcp = iperf(bed, c1, seed_host)
        publish(seed_host, src, "v1")
        seed = start_seed(seed_host)
        seed_cpu0 = proc_cpu(seed.pid)
        with CpuMeter() as cpu:
            fetch_s, (result,), fetch_cpu = timed_fetches([c1], f"{NAME}@v1")
        seed_cpu_fetch = proc_cpu(seed.pid) - seed_cpu0
        torrent = version_dir(seed_host, "v1") / "full.torrent"
        dest = aria.root / "aria-out"
        seed_cpu0 = proc_cpu(seed.pid)
        with CpuMeter() as cpu_aria:
            t0 = time.monotonic()
            done = subprocess.run(
                aria.cmd("aria2c", "--dir", str(dest), "--seed-time=0", "--enable-dht=false",
                         "--enable-dht6=false", "--bt-enable-lpd=false",
                         "--enable-peer-exchange=false", "--bt-stop-timeout=120",
                         "--summary-interval=0", "--console-log-level=warn",
                         "--file-allocation=none", "--bt-hash-check-seed=false", str(torrent)),
                capture_output=True, text=True, timeout=1800,
            )  # fmt: skip
            aria_s = time.monotonic() - t0
        seed_cpu_aria = proc_cpu(seed.pid) - seed_cpu0
        if done.returncode != 0:
            raise RuntimeError(f"aria2c failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    rate = size / fetch_s
    return {
        "variant": label,
        "size": size,
        "iperf3_Bps": tcp,
        "fetch_s": fetch_s,
        "fetch_Bps": rate,
        "fetch_cpu_s": fetch_cpu,
        "seed_cpu_s_during_fetch": seed_cpu_fetch,
        "machine_busy_fetch": cpu.busy,
        "aria2c_s": aria_s,
        "seed_cpu_s_during_aria2c": seed_cpu_aria,
        "machine_busy_aria2c": cpu_aria.busy,
        "fetch_over_aria2c": fetch_s / aria_s,
        "fetch_over_iperf3_rate": rate / tcp,
        "fetch_result_seconds": result["seconds"],
    }


def part2(
    work: Path,
    size: int,
    n: int,
    cap_bps: int,
    origin: bool,
    variant: Variant = ("default", {}),
) -> dict[str, Any]:
    """``variant`` is (name, {"seed": {...}, "consumers": {...}, "env": {...}, "seed_nice": n}):
    libtorrent settings each side runs with (``P2PDIST_LIBTORRENT``), environment variables
    for every host and the seed's nice value, to compare tunings in one run."""
    src = write_model(work / f"model2-{size}", size, seed=2)
    names = [f"c{i}" for i in range(1, n + 1)]
    label, tuning = variant
    bed_dir = work / f"bed2-{n}-{label}"
    shutil.rmtree(bed_dir, ignore_errors=True)  # a repeat starts from empty stores
    with flat_lan(bed_dir, ["seed", *names], cap_bps=cap_bps) as bed:
        seed_host = publisher(bed, bed.hosts["seed"])
        consumers = [bed.hosts[c] for c in names]
        apply_variant(tuning, seed_host, consumers)
        published = publish(seed_host, src, "v1")
        total = int(published["full_bytes"])
        seed = start_seed(seed_host)
        if tuning.get("seed_nice"):
            renice(seed.pid, int(tuning["seed_nice"]))
        sent0 = bed.link_bytes(seed_host.ns, "eth0")[1]
        segments0 = tcp_segments(bed, seed_host.ns)
        seed_cpu0 = proc_cpu(seed.pid)
        exits: list[float] = []
        all_bytes: list[float | None] = []
        with CpuMeter() as cpu, TxSampler(bed, seed_host.ns, "eth0") as tx:
            swarm_s, _, fetch_cpu = timed_fetches(
                consumers, f"{NAME}@v1", exits=exits, all_bytes=all_bytes
            )
        seed_first, seed_last, seed_full = tx.active(cap_bps)
        copies = (bed.link_bytes(seed_host.ns, "eth0")[1] - sent0) / total
        segments = [b - a for a, b in zip(segments0, tcp_segments(bed, seed_host.ns), strict=True)]
        seed_cpu = proc_cpu(seed.pid) - seed_cpu0
        seed.terminate()
        seed.wait(timeout=60)
        http_s = None
        if origin:
            port = 8000
            bed.spawn(seed_host, seed_host.p2pdist("origin", "--host", seed_host.addr,
                                                   "--port", str(port)), log="origin.log")  # fmt: skip
            time.sleep(3)
            files = sorted(p.name for p in src.iterdir())
            root = f"http://{seed_host.addr}:{port}/{NAME.replace('/', '--')}@v1"
            t0 = time.monotonic()
            procs = []
            for h in consumers:
                out = h.root / "http"
                out.mkdir(exist_ok=True)
                urls = []
                for f in files:
                    urls += [f"{root}/{f}", "-o", str(out / f)]
                procs.append(bed.spawn(h, h.cmd("curl", "-sSf", "--noproxy", "*", *urls)))
            for proc in procs:
                _, err = proc.communicate(timeout=3600)
                if proc.returncode != 0:
                    raise RuntimeError(f"curl failed: {err}")
            http_s = time.monotonic() - t0
    shutil.rmtree(bed_dir, ignore_errors=True)  # N stores of the model
    u = cap_bps / 8
    bound = total / u * max(1.0, n / (n + 1))
    return {
        "variant": label,
        "n": n,
        "size": total,
        "cap_bps": cap_bps,
        "swarm_s": swarm_s,
        "bound_s": bound,
        "swarm_over_bound": swarm_s / bound,
        "seed_copies": copies,
        "seed_retransmitted": segments[1] / max(1, segments[0]),
        "seed_first_s": seed_first,
        "seed_last_s": seed_last,
        "seed_full_rate_fraction": seed_full,
        "exits_s": sorted(exits),
        "all_bytes_s": sorted(t for t in all_bytes if t is not None),
        "fetch_cpu_s": fetch_cpu,
        "seed_cpu_s": seed_cpu,
        "machine_busy": cpu.busy,
        "http_origin_s": http_s,
        "http_over_swarm": (http_s / swarm_s) if http_s else None,
    }


def part3(work: Path, size: int, n: int, thin_bps: int, locality: bool) -> dict[str, Any]:
    src = write_model(work / f"model3-{size}", size, seed=3)
    names = [f"b{i}" for i in range(1, n + 1)]
    args = () if locality else ("--no-locality",)
    with two_sites(work / f"bed3-{locality}", ["seed"], names, thin_bps=thin_bps,
                   tracker_args=args) as bed:  # fmt: skip
        seed_host = publisher(bed, bed.hosts["seed"])
        published = publish(seed_host, src, "v1")
        total = int(published["full_bytes"])
        start_seed(seed_host)
        router = bed.ns("rt")
        before = bed.link_bytes(router, "leg1")[1]
        with CpuMeter() as cpu:
            seconds, _, _ = timed_fetches([bed.hosts[b] for b in names], f"{NAME}@v1")
        crossed = bed.link_bytes(router, "leg1")[1] - before
    return {
        "n": n,
        "locality": locality,
        "size": total,
        "thin_bps": thin_bps,
        "seconds": seconds,
        "thin_link_bytes": crossed,
        "crossings": crossed / total,
        "one_crossing_s": total / (thin_bps / 8),
        "machine_busy": cpu.busy,
    }


REGISTERED = """
import sys, time
from p2pdist.client import RegistryClient
from p2pdist.config import token, tracker_url
client = RegistryClient(tracker_url(None), token(None))
while not any(v["version"] == sys.argv[2] for v in client.list_versions(sys.argv[1])):
    time.sleep(0.02)
print(time.time())
"""
"""Run on the publisher's host: prints the wall-clock time the registry first lists a version
(followers are told then; `publish` returns a little later, after its own clean-up)."""


def part4(
    work: Path,
    size: int,
    n: int,
    cap_bps: int,
    fraction: float,
    variant: Variant = ("default", {}),
) -> dict[str, Any]:
    v1 = write_model(work / f"model4-v1-{size}", size, seed=4, dtype="bf16")
    v2 = work / f"model4-v2-{size}"
    if not v2.exists():
        nudge(v1, v2, fraction, seed=5)
    names = [f"f{i}" for i in range(1, n + 1)]
    label, tuning = variant
    bed_dir = work / f"bed4-{label}"
    shutil.rmtree(bed_dir, ignore_errors=True)
    with flat_lan(bed_dir, ["pub", *names], cap_bps=cap_bps) as bed:
        pub = publisher(bed, bed.hosts["pub"])
        followers = [bed.hosts[f] for f in names]
        apply_variant(tuning, pub, followers)
        publish(pub, v1, "v1")
        start_seed(pub, *tuning.get("seed_args", []))
        for f in followers:
            f.start("fetch", f"{NAME}@latest", "--follow", log="follow.log")
        deadline = time.monotonic() + 900
        while not all((version_dir(f, "v1") / "p2pdist.json").is_file() for f in followers):
            if time.monotonic() > deadline:
                raise RuntimeError("followers never got v1")
            time.sleep(0.2)
        os.sync()  # as CpuMeter does
        watcher = pub.bed.spawn(pub, pub.cmd(sys.executable, "-c", REGISTERED, NAME, "v2"))
        published = publish(pub, v2, "v2", "--parent", "v1")
        t0, wall0 = time.monotonic(), time.time()
        while not all((version_dir(f, "v2") / "p2pdist.json").is_file() for f in followers):
            if time.monotonic() > t0 + 900:
                raise RuntimeError("followers never got v2")
            time.sleep(0.02)
        seconds = time.monotonic() - t0
        out, err = watcher.communicate(timeout=60)
        if watcher.returncode != 0:
            raise RuntimeError(f"registry watcher failed: {err}")
        registered_before = wall0 - float(out.split()[-1])
    shutil.rmtree(bed_dir, ignore_errors=True)
    delta = int(published["delta_bytes"] or 0)
    return {
        "variant": label,
        "n": n,
        "size": size,
        "cap_bps": cap_bps,
        "delta_bytes": delta,
        "seconds": seconds,
        "seconds_after_registered": seconds + registered_before,
        "delta_over_link_s": delta / (cap_bps / 8) if delta else None,
    }


def span(seconds: list[float]) -> str:
    return f"{seconds[0]:.1f}..{seconds[-1]:.1f}" if seconds else "?"


def alternating(variants: list[Variant], repeats: int) -> list[Variant]:
    """Each variant ``repeats`` times, every other round in reverse order: a pair's second
    run can differ from its first for reasons of its own, and then favours neither."""
    return [v for i in range(repeats) for v in (variants if i % 2 == 0 else variants[::-1])]


def parse_variant(text: str) -> Variant:
    name, _, spec = text.partition("=")
    tuning = json.loads(spec or "{}")
    known = {"seed", "consumers", "env", "seed_nice", "seed_args"}
    if not isinstance(tuning, dict) or set(tuning) - known:
        raise SystemExit(
            f'--variant {text!r}: want NAME={{"seed": {{...}}, "consumers": {{...}}, "env": {{...}}}}'
        )
    return name, tuning


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size-mib", type=int, default=1024, help="part 1's version size")
    parser.add_argument("--swarm-mib", type=int, default=256, help="part 2's version size")
    parser.add_argument("--consumers", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--cap-mbit", type=float, default=100)
    parser.add_argument("--no-origin", action="store_true", help="skip part 2's HTTP origin")
    parser.add_argument(
        "--repeats", type=int, default=1, help="part 1, 2 and 4 runs per N and variant"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='part 1, 2 and 4 tuning, interleaved with the others: {"seed": {libtorrent settings}, '
        '"consumers": {...}, "env": {variables for every host}, "seed_nice": -5, "seed_args": '
        '["--poll-every", "2"]}; default: the committed settings only',
    )
    parser.add_argument("--sites-mib", type=int, default=64, help="part 3's version size")
    parser.add_argument("--thin-mbit", type=float, default=20)
    parser.add_argument("--rl-mib", type=int, default=64, help="part 4's version size")
    parser.add_argument("--rl-fraction", type=float, default=0.01)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    why = skip_reason()
    if why:
        raise SystemExit(why)
    out: dict[str, Any] = {"argv": sys.argv[1:], "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="p2pdist-cluster-") as tmp:
        work = Path(tmp)
        variants = [parse_variant(v) for v in args.variant] or [("default", {})]
        if 1 in args.parts:
            out["part1"] = []
            for variant in alternating(variants, args.repeats):
                r = part1(work, args.size_mib * MiB, variant)
                out["part1"].append(r)
                print(
                  f"part 1 [{r['variant']}]: fetch {r['fetch_s']:.1f} s, aria2c {r['aria2c_s']:.1f} s "
                  f"({r['fetch_over_aria2c']:.2f}x), fetch {r['fetch_Bps'] / 1e6:.0f} MB/s = "
                  f"{r['fetch_over_iperf3_rate']:.3f}x iperf3 {r['iperf3_Bps'] / 1e6:.0f} MB/s; "
                  f"machine busy {r['machine_busy_fetch']:.0%} (fetch), "
                  f"{r['machine_busy_aria2c']:.0%} (aria2c)", flush=True)  # fmt: skip
        if 2 in args.parts:
            out["part2"] = []
            for n, variant in (
                (n, v) for n in args.consumers for v in alternating(variants, args.repeats)
            ):
                r = part2(work, args.swarm_mib * MiB, n, mbit(args.cap_mbit), not args.no_origin,
                          variant)  # fmt: skip
                out["part2"].append(r)
                http = f"{r['http_origin_s']:.1f}" if r["http_origin_s"] else "-"
                print(f"part 2 [{r['variant']}]: N={n}: swarm {r['swarm_s']:.1f} s = "
                      f"{r['swarm_over_bound']:.2f}x bound {r['bound_s']:.1f} s; origin {http} s; "
                      f"seed copies {r['seed_copies']:.2f} ({r['seed_retransmitted']:.1%} of its "
                      f"segments retransmitted); busy {r['machine_busy']:.0%}; "
                      f"seed sent from {r['seed_first_s']:.1f} s to {r['seed_last_s']:.1f} s, "
                      f"{r['seed_full_rate_fraction']:.0%} of it at >= 80% of the cap; "
                      f"fetches had every byte at {span(r['all_bytes_s'])} s, "
                      f"exited {r['exits_s'][0]:.1f}.."
                      f"{r['exits_s'][-1]:.1f} s",
                      flush=True)  # fmt: skip
        if 3 in args.parts:
            out["part3"] = []
            for locality in (True, False):
                r = part3(work, args.sites_mib * MiB, 8, mbit(args.thin_mbit), locality)
                out["part3"].append(r)
                print(f"part 3 (locality {'on' if locality else 'off'}): {r['crossings']:.2f} "
                      f"model sizes over the thin link, {r['seconds']:.1f} s (one crossing "
                      f"{r['one_crossing_s']:.1f} s)", flush=True)  # fmt: skip
        if 4 in args.parts:
            out["part4"] = []
            for variant in alternating(variants, args.repeats):
                r = part4(work, args.rl_mib * MiB, 8, mbit(args.cap_mbit), args.rl_fraction,
                          variant)  # fmt: skip
                out["part4"].append(r)
                print(f"part 4 [{r['variant']}]: delta {r['delta_bytes']} B at 8 followers "
                      f"{r['seconds']:.2f} s after publish returned, "
                      f"{r['seconds_after_registered']:.2f} s after the registry listed it "
                      f"(delta/link {r['delta_over_link_s']:.4f} s)", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
