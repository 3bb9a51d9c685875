"""A multi-host test bed: Linux network namespaces, one per host, joined by bridges.

Loopback hides what real networks show (DESIGN.md, "The swarm"): every peer shares one
address, uTP is off, nothing is shaped. Here each host is its own network namespace with its
own address on a private test subnet (10.213.0.0/16, used only inside namespaces the bed makes),
its upload and download capped by ``tbf`` qdiscs on both ends of its veth pair (this kernel has
no netem; shaping the switch-side end caps what the host receives), and runs the real
``p2pdist`` CLI with its own HOME, P2PDIST_HOME and config dir.

Nothing is made in the caller's namespace: the switches (bridges) and routers are namespaces
too, veth pairs are created straight into their namespaces. So removing the bed's namespaces
removes everything, and a bed killed before it could clean up is removed by the next one (its
namespaces carry the dead process's id: ``p2pbed-<pid>-<name>``).

Topologies (functions at the bottom): a flat LAN; two sites joined by a router over a thin
link; a site behind NAT (nftables masquerade: its hosts dial out, nobody dials in).

Needs root, ``ip``, ``tc`` and ``nft``; ``skip_reason()`` says why a bed cannot be built here.
Namespaces have no DNS: everything is addressed by IP.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "p2pbed-"
SUBNET = "10.213"
TRACKER_PORT = 6969
REPO = Path(__file__).resolve().parent.parent


def skip_reason() -> str | None:
    """Why a bed cannot be built on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "the network test bed needs root (ip netns, tc, nft)"
    for tool in ("ip", "tc", "nft"):
        if shutil.which(tool) is None:
            return f"the network test bed needs `{tool}` (Debian: iproute2, nftables; `make system-deps`)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make network namespaces here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _sh(*args: str, check: bool = True) -> str:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers() -> list[str]:
    """Remove namespaces (and their processes) of beds whose process is gone."""
    removed = []
    for line in _sh("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(PREFIX):
            continue
        owner = name[len(PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            _delete_namespace(name)
            removed.append(name)
    return removed


def _delete_namespace(ns: str) -> None:
    pids = _sh("ip", "netns", "pids", ns, check=False).split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _sh("ip", "netns", "del", ns, check=False)


def _burst(rate_bps: int) -> int:
    """tbf's bucket: at least 10 ms of the rate (timer granularity), at least 32 KiB."""
    return max(32 * 1024, rate_bps // 8 // 100)


def mbit(rate: float) -> int:
    """``rate`` Mbit/s in bit/s."""
    return int(rate * 1_000_000)


@dataclass
class Host:
    """One host: a namespace with one interface (eth0) and its own p2pdist environment."""

    bed: Bed
    name: str
    ns: str
    addr: str
    root: Path
    env: dict[str, str] = field(default_factory=dict)

    def cmd(self, *args: str) -> list[str]:
        """``args`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *args]

    def p2pdist(self, *args: str) -> list[str]:
        return self.cmd(sys.executable, "-m", "p2pdist.cli", *args)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the p2pdist CLI here and wait for it."""
        return subprocess.run(
            self.p2pdist(*args), capture_output=True, text=True, env=self.env, timeout=timeout
        )

    def start(self, *args: str, log: str | None = None) -> subprocess.Popen[str]:
        """Start the p2pdist CLI here in the background (stopped by the bed's close)."""
        return self.bed.spawn(self, self.p2pdist(*args), log=log)

    def fetch_json(self, *args: str, timeout: float = 120) -> dict[str, Any]:
        done = self.run("fetch", *args, "--json", timeout=timeout)
        if done.returncode != 0:
            raise AssertionError(f"{self.name}: fetch {' '.join(args)} failed: {done.stderr}")
        return json.loads(done.stdout)


class Bed:
    """A set of namespaces, the processes started in them, and their removal.

    Use as a context manager (or call ``close``): every namespace and every process is
    removed on the way out, whatever happened inside.
    """

    def __init__(self, workdir: Path) -> None:
        remove_leftovers()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.id = str(os.getpid())
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []
        self.hosts: dict[str, Host] = {}
        self._ports: dict[str, int] = {}
        self.tracker_url = ""
        self._tracker: tuple[Host, subprocess.Popen[str]] | None = None
        self._bind: str | None = None
        self._tracker_extra: tuple[str, ...] = ()

    def __enter__(self) -> Bed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building -------------------------------------------------------------------------
    def ns(self, name: str) -> str:
        return f"{PREFIX}{self.id}-{name}"

    def _namespace(self, name: str) -> str:
        ns = self.ns(name)
        _delete_namespace(ns)  # a leftover of an earlier bed of this same pid
        _sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        self.ip(ns, "link", "set", "lo", "up")
        return ns

    def ip(self, ns: str, *args: str) -> str:
        return _sh("ip", "-n", ns, *args)

    def nsexec(self, ns: str, *args: str, check: bool = True) -> str:
        return _sh("ip", "netns", "exec", ns, *args, check=check)

    def switch(self, name: str) -> str:
        """A namespace holding one bridge, ``br0``: the LAN segment hosts plug into."""
        ns = self._namespace(name)
        self.ip(ns, "link", "add", "br0", "type", "bridge")
        self.ip(ns, "link", "set", "br0", "up")
        self._ports[ns] = 0
        return ns

    def _plug(self, ns: str, ifname: str, switch: str) -> str:
        """A veth pair: ``ifname`` in ``ns``, a port of ``switch``'s bridge; the port's name."""
        self._ports[switch] += 1
        port = f"p{self._ports[switch]}"
        _sh("ip", "link", "add", ifname, "netns", ns, "type", "veth",
            "peer", "name", port, "netns", switch)  # fmt: skip
        self.ip(switch, "link", "set", port, "master", "br0")
        self.ip(switch, "link", "set", port, "up")
        self.ip(ns, "link", "set", ifname, "up")
        return port

    def shape(self, ns: str, ifname: str, rate_bps: int) -> None:
        """Cap what leaves ``ifname`` in ``ns`` at ``rate_bps`` with a tbf qdisc."""
        self.nsexec(ns, "tc", "qdisc", "replace", "dev", ifname, "root", "tbf",
                    "rate", str(rate_bps), "burst", str(_burst(rate_bps)), "latency", "50ms")  # fmt: skip

    def host(
        self,
        name: str,
        switch: str,
        addr: str,
        *,
        prefix: int = 24,
        gateway: str | None = None,
        up_bps: int | None = None,
        down_bps: int | None = None,
    ) -> Host:
        """A host on ``switch`` at ``addr``; ``up_bps``/``down_bps`` cap its link each way."""
        ns = self._namespace(name)
        port = self._plug(ns, "eth0", switch)
        self.ip(ns, "addr", "add", f"{addr}/{prefix}", "dev", "eth0")
        if gateway:
            self.ip(ns, "route", "add", "default", "via", gateway)
        if up_bps:
            self.shape(ns, "eth0", up_bps)
        if down_bps:
            self.shape(switch, port, down_bps)
        root = self.workdir / name
        root.mkdir(parents=True, exist_ok=True)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("P2PDIST_") and key not in ("http_proxy", "https_proxy",
                                                               "HTTP_PROXY", "HTTPS_PROXY")
        }  # fmt: skip
        env.update(
            HOME=str(root),
            P2PDIST_HOME=str(root / "store"),
            P2PDIST_CONFIG_DIR=str(root / "config"),
            P2PDIST_LISTEN=addr,
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(REPO),
            NO_PROXY="*",
        )
        if self.tracker_url:
            env["P2PDIST_TRACKER"] = self.tracker_url
        h = Host(self, name, ns, addr, root, env)
        self.hosts[name] = h
        return h

    def router(
        self, name: str, legs: Sequence[tuple[str, str, int | None]], *, prefix: int = 24
    ) -> str:
        """A router namespace with one leg per (switch, address, cap bit/s or None).

        A capped leg is shaped both ways (router side and switch side): a thin link.
        """
        ns = self._namespace(name)
        for i, (switch, addr, cap) in enumerate(legs):
            ifname = f"leg{i}"
            port = self._plug(ns, ifname, switch)
            self.ip(ns, "addr", "add", f"{addr}/{prefix}", "dev", ifname)
            if cap:
                self.shape(ns, ifname, cap)
                self.shape(switch, port, cap)
        self.nsexec(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        return ns

    def masquerade(self, router: str, out_if: str, inside: str) -> None:
        """NAT on ``router``: ``inside`` (a subnet) leaves through ``out_if`` masqueraded, and
        nothing from outside reaches ``inside`` unless it answers a connection made from it."""
        rules = f"""
table ip p2pbed_nat {{
  chain postrouting {{ type nat hook postrouting priority 100; ip saddr {inside} oifname "{out_if}" masquerade; }}
  chain filter {{ type filter hook forward priority 0; policy accept;
    ct state established,related accept;
    iifname "{out_if}" ip daddr {inside} drop; }}
}}
"""
        done = subprocess.run(
            ["ip", "netns", "exec", router, "nft", "-f", "-"],
            input=rules, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"nft: {done.stderr.strip()}")

    def link_bytes(self, ns: str, ifname: str) -> tuple[int, int]:
        """(received, sent) bytes of ``ifname`` in ``ns`` (interface counters)."""
        out = self.ip(ns, "-j", "-s", "link", "show", "dev", ifname)
        stats = json.loads(out)[0]["stats64"]
        return int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])

    # -- processes ------------------------------------------------------------------------
    def spawn(
        self, host: Host, argv: list[str], *, log: str | None = None
    ) -> subprocess.Popen[str]:
        """Start ``argv`` (already wrapped for the host's namespace) in its own process group;
        stdout and stderr go to pipes, or to ``<host root>/<log>`` when ``log`` is given."""
        if log:
            out = open(host.root / log, "w")
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, text=True, env=host.env,
                start_new_session=True,
            )  # fmt: skip
            out.close()
        else:
            proc = subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=host.env,
                start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def start_tracker(
        self, host: Host, *, interval: int = 2, bind: str | None = None, extra: Sequence[str] = ()
    ) -> str:
        """Run the tracker on ``host`` (listening on ``bind``, default the host's address);
        every host made afterwards (and those made before) is pointed at it. Returns its URL."""
        url = f"http://{host.addr}:{TRACKER_PORT}"
        data = host.root / "tracker-data"
        proc = self.spawn(
            host,
            host.cmd(sys.executable, "-m", "p2pdist.tracker", "serve", "--host", bind or host.addr,
                     "--port", str(TRACKER_PORT), "--data", str(data),
                     "--interval", str(interval), *extra),
        )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if "listening" not in line:
            proc.kill()
            raise RuntimeError(f"tracker did not start: {line} {proc.communicate()[1]}")
        self._tracker = (host, proc)
        self._bind, self._tracker_extra = bind, tuple(extra)
        self.tracker_url = url
        for h in self.hosts.values():
            h.env["P2PDIST_TRACKER"] = url
        return url

    def stop_tracker(self) -> None:
        assert self._tracker is not None
        _, proc = self._tracker
        proc.terminate()
        proc.communicate(timeout=30)

    def restart_tracker(self, *, interval: int = 2) -> str:
        assert self._tracker is not None
        host, _ = self._tracker
        return self.start_tracker(
            host, interval=interval, bind=self._bind, extra=self._tracker_extra
        )

    def tracker_token(self, namespace: str | None = None) -> str:
        """A registry token (a publisher's with ``namespace``), from the tracker's data."""
        assert self._tracker is not None
        host, _ = self._tracker
        args = ["--namespace", namespace] if namespace else []
        return _sh(sys.executable, "-m", "p2pdist.tracker", "token", *args,
                   "--data", str(host.root / "tracker-data")).strip()  # fmt: skip

    def close(self) -> None:
        """Stop every process and remove every namespace (idempotent)."""
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                proc.communicate(timeout=30)
            except (subprocess.TimeoutExpired, ValueError):
                pass
        self.procs.clear()
        for ns in reversed(self.namespaces):
            _delete_namespace(ns)
        self.namespaces.clear()


# -- topologies -------------------------------------------------------------------------------
@contextmanager
def flat_lan(
    workdir: Path,
    hosts: Sequence[str],
    *,
    cap_bps: int | None = None,
    interval: int = 2,
    tracker_bind: str | None = None,
) -> Iterator[Bed]:
    """One switch; a tracker host (``tracker``, 10.213.0.2, uncapped) and ``hosts`` at
    10.213.0.10 and up, each capped at ``cap_bps`` each way."""
    bed = Bed(workdir)
    try:
        lan = bed.switch("lan")
        tracker = bed.host("tracker", lan, f"{SUBNET}.0.2")
        bed.start_tracker(tracker, interval=interval, bind=tracker_bind)
        for i, name in enumerate(hosts):
            bed.host(name, lan, f"{SUBNET}.0.{10 + i}", up_bps=cap_bps, down_bps=cap_bps)
        yield bed
    finally:
        bed.close()


@contextmanager
def two_sites(
    workdir: Path,
    site_a: Sequence[str],
    site_b: Sequence[str],
    *,
    thin_bps: int = mbit(20),
    cap_bps: int | None = None,
    interval: int = 2,
    tracker_args: Sequence[str] = (),
) -> Iterator[Bed]:
    """Site A (10.213.1.0/24, with the tracker at .2) and site B (10.213.2.0/24) joined by
    router ``rt`` whose leg to B is capped at ``thin_bps`` each way."""
    bed = Bed(workdir)
    try:
        a, b = bed.switch("sa"), bed.switch("sb")
        bed.router("rt", [(a, f"{SUBNET}.1.1", None), (b, f"{SUBNET}.2.1", thin_bps)])
        tracker = bed.host("tracker", a, f"{SUBNET}.1.2", gateway=f"{SUBNET}.1.1")
        bed.start_tracker(tracker, interval=interval, extra=tracker_args)
        for i, name in enumerate(site_a):
            bed.host(name, a, f"{SUBNET}.1.{10 + i}", gateway=f"{SUBNET}.1.1",
                     up_bps=cap_bps, down_bps=cap_bps)  # fmt: skip
        for i, name in enumerate(site_b):
            bed.host(name, b, f"{SUBNET}.2.{10 + i}", gateway=f"{SUBNET}.2.1",
                     up_bps=cap_bps, down_bps=cap_bps)  # fmt: skip
        yield bed
    finally:
        bed.close()


@contextmanager
def nat_site(
    workdir: Path,
    public: Sequence[str],
    natted: Sequence[str],
    *,
    cap_bps: int | None = None,
    interval: int = 2,
) -> Iterator[Bed]:
    """Public hosts and the tracker on 10.213.0.0/24; ``natted`` hosts on 10.213.9.0/24 behind
    router ``nat`` (10.213.0.1 outside), which masquerades them: they dial out, nobody dials in
    (public hosts have no route to 10.213.9.0/24, and the router drops what is not a reply)."""
    bed = Bed(workdir)
    try:
        wan, inside = bed.switch("wan"), bed.switch("in")
        router = bed.router("nat", [(wan, f"{SUBNET}.0.1", None), (inside, f"{SUBNET}.9.1", None)])
        bed.masquerade(router, "leg0", f"{SUBNET}.9.0/24")
        tracker = bed.host("tracker", wan, f"{SUBNET}.0.2")
        bed.start_tracker(tracker, interval=interval)
        for i, name in enumerate(public):
            bed.host(name, wan, f"{SUBNET}.0.{10 + i}", up_bps=cap_bps, down_bps=cap_bps)
        for i, name in enumerate(natted):
            bed.host(name, inside, f"{SUBNET}.9.{10 + i}", gateway=f"{SUBNET}.9.1",
                     up_bps=cap_bps, down_bps=cap_bps)  # fmt: skip
        yield bed
    finally:
        bed.close()


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
