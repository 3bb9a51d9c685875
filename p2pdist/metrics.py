"""Prometheus text for p2pdist's processes: histograms, process metrics, a node's transfers,
and a small loopback exporter for processes that have no HTTP server of their own.

The tracker renders its own ``/metrics`` (tracker/status.py) with the pieces here; ``p2pdist
seed`` and ``p2pdist fetch --follow`` (long-running node processes) serve ``NodeMetrics``
with ``serve_metrics`` when given ``--metrics-port``, on 127.0.0.1 unless told otherwise,
since the numbers (which models a host fetches) are nobody else's business by default.

No per-version label anywhere here: a node counts bytes, peers, versions and failures in
totals, so a host that follows a model for a year still exports the same few series.
Format: https://prometheus.io/docs/instrumenting/exposition_formats/ (text 0.0.4).
"""

from __future__ import annotations

import bisect
import os
import resource
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
"""Seconds: from an announce answered in 100 µs to a publish that hashes for seconds."""
FETCH_BUCKETS: tuple[float, ...] = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

_STARTED = time.time()


def label_value(value: str) -> str:
    """A label value escaped for the text format."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def family(
    out: list[str], name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]
) -> None:
    """Append one metric family (HELP, TYPE, then ``name{labels} value`` lines) to ``out``."""
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
    out.extend(f"{name}{labels} {number(value)}" for labels, value in samples)


def number(value: float) -> str:
    """A sample value in full: integers without a point, other floats as Python's repr
    (``:g`` would write a byte count of 267223040 as 2.67223e+08)."""
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class Histogram:
    """Cumulative buckets, a sum and a count; ``observe`` is a bisect and two additions, cheap
    enough for the announce path. Not locked: each owner observes from one thread (the
    tracker's event loop), and a scrape that reads mid-update is off by one sample at most."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def samples(self, name: str, labels: str = "") -> list[str]:
        """The ``_bucket``/``_sum``/``_count`` lines; ``labels`` like ``route="x"`` (no braces)."""
        sep = "," if labels else ""
        lines = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {running}')
        braces = f"{{{labels}}}" if labels else ""
        lines.append(f"{name}_sum{braces} {self.total:.6f}")
        lines.append(f"{name}_count{braces} {self.count}")
        return lines


def histogram_family(
    out: list[str], name: str, help_text: str, series: Iterable[tuple[str, Histogram]]
) -> None:
    """Append a histogram family: one histogram per label set (``'route="x"'``, or ``""``)."""
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} histogram")
    for labels, histogram in series:
        out.extend(histogram.samples(name, labels))


def process_metrics(out: list[str]) -> None:
    """The standard process families (names as Prometheus' client libraries write them):
    resident memory, open and maximum file descriptors, CPU seconds, start time."""
    cpu = os.times()
    family(out, "process_cpu_seconds_total", "counter", "User and system CPU time spent.",
           [("", cpu.user + cpu.system)])  # fmt: skip
    family(out, "process_resident_memory_bytes", "gauge", "Resident memory size.",
           [("", _rss())])  # fmt: skip
    fds = _open_fds()
    if fds is not None:
        family(out, "process_open_fds", "gauge", "Open file descriptors.", [("", fds)])
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        family(out, "process_max_fds", "gauge", "Limit on open file descriptors.", [("", soft)])
    family(out, "process_start_time_seconds", "gauge",
           "When p2pdist started in this process, in seconds since the epoch.",
           [("", _STARTED)])  # fmt: skip


def _rss() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux: the peak is the best there is
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024


def _open_fds() -> int | None:
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder)) - 1  # less the descriptor listdir itself opened
        except OSError:
            continue
    return None


class NodeMetrics:
    """A node's transfers (``p2pdist seed``, ``fetch --follow``), read when scraped.

    Bytes, hash failures, torrents and peers come from the process's libtorrent session
    (``Swarm.totals``, which keeps the counts of torrents that left it, so the exported
    counters never go down). Fetches are counted by ``record_fetch`` (the CLI calls it for
    every version it fetched).
    """

    def __init__(self, swarm: Callable[[], Any | None]) -> None:
        self._swarm = swarm
        self._lock = threading.Lock()
        self.fetches: dict[str, int] = {}
        self.fetch_failures = 0
        self.fetch_seconds = Histogram(FETCH_BUCKETS)
        self.fetched_from_peers = 0
        self.fetched_from_web_seeds = 0

    def record_fetch(self, result: Any) -> None:
        """Count one finished fetch (a ``FetchResult``): its plan kind, bytes and time."""
        with self._lock:
            kind = str(result.plan.kind)
            self.fetches[kind] = self.fetches.get(kind, 0) + 1
            self.fetch_seconds.observe(float(result.seconds))
            self.fetched_from_peers += int(result.bytes_from_peers)
            self.fetched_from_web_seeds += int(result.bytes_from_web_seeds)

    def record_fetch_failure(self) -> None:
        with self._lock:
            self.fetch_failures += 1

    def render(self) -> str:
        swarm = self._swarm()
        t = swarm.totals() if swarm is not None else None
        up, down, failures = (t.uploaded, t.downloaded, t.hash_failures) if t else (0, 0, 0)
        peers, torrents, seeding = (t.peers, t.torrents, t.seeding) if t else (0, 0, 0)
        with self._lock:
            out: list[str] = []
            p = "p2pdist_node_"
            family(out, p + "uploaded_bytes_total", "counter",
                   "Payload bytes sent to peers.", [("", up)])  # fmt: skip
            family(out, p + "downloaded_bytes_total", "counter",
                   "Payload bytes received from peers and web seeds.", [("", down)])  # fmt: skip
            family(out, p + "hash_failures_total", "counter",
                   "Pieces that failed their hash check (a corrupt or lying peer).",
                   [("", failures)])  # fmt: skip
            family(out, p + "peers", "gauge", "Peers connected now, over all torrents.",
                   [("", peers)])  # fmt: skip
            family(out, p + "torrents", "gauge", "Torrents in the session (full and delta).",
                   [("", torrents)])  # fmt: skip
            family(out, p + "torrents_seeding", "gauge",
                   "Torrents served whole to peers: the versions (and deltas) this node serves.",
                   [("", seeding)])  # fmt: skip
            family(out, p + "fetches_total", "counter", "Versions fetched, by plan.",
                   [(f'{{plan="{label_value(k)}"}}', n) for k, n in sorted(self.fetches.items())])  # fmt: skip
            family(out, p + "fetch_failures_total", "counter", "Fetches that failed.",
                   [("", self.fetch_failures)])  # fmt: skip
            family(out, p + "fetched_bytes_total", "counter",
                   "Bytes of fetched versions, by source.",
                   [('{source="peers"}', self.fetched_from_peers),
                    ('{source="web_seeds"}', self.fetched_from_web_seeds)])  # fmt: skip
            histogram_family(out, p + "fetch_seconds", "Time of one fetch, start to verified.",
                             [("", self.fetch_seconds)])  # fmt: skip
        process_metrics(out)
        return "\n".join(out) + "\n"


class MetricsServer:
    """``GET /metrics`` on ``host:port`` from a thread, answering ``render()``; ``close()`` stops."""

    def __init__(self, render: Callable[[], str], host: str = "127.0.0.1", port: int = 0) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                body = render().encode()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a scrape every 15 s is not news

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="p2pdist-metrics", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def serve_node_metrics(host: str, port: int) -> tuple[MetricsServer, NodeMetrics]:
    """Serve this process's ``NodeMetrics`` (its swarm, its fetches) on ``host:port``; return
    the server and the metrics, which the caller feeds with ``record_fetch``."""
    from p2pdist.swarm.session import existing_swarm

    node = NodeMetrics(existing_swarm)
    return MetricsServer(node.render, host, port), node


__all__ = [
    "CONTENT_TYPE",
    "FETCH_BUCKETS",
    "LATENCY_BUCKETS",
    "Histogram",
    "MetricsServer",
    "NodeMetrics",
    "family",
    "histogram_family",
    "label_value",
    "number",
    "process_metrics",
    "serve_node_metrics",
]
