"""p2pdist/metrics.py: the text format, histograms, process metrics, the node counters and
the loopback exporter (a real HTTP server on 127.0.0.1)."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest

from p2pdist.metrics import (
    CONTENT_TYPE,
    Histogram,
    MetricsServer,
    NodeMetrics,
    family,
    number,
    process_metrics,
)
from p2pdist.swarm.session import SwarmTotals

SAMPLE = re.compile(r'^[a-z_:][a-z0-9_:]*(\{([a-z_]+="[^"]*",?)*\})? -?[0-9.e+-]+$')


def well_formed(text: str) -> None:
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or SAMPLE.match(line), line


def test_numbers_are_written_in_full() -> None:
    assert number(267223040) == "267223040"
    assert number(267223040.0) == "267223040"
    assert number(1765093512.25) == "1765093512.25"
    assert number(0.0001) == "0.0001"


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0, 3.0):
        h.observe(v)
    lines = h.samples("x_seconds", 'route="a"')
    assert lines == [
        'x_seconds_bucket{route="a",le="0.1"} 2',
        'x_seconds_bucket{route="a",le="1"} 3',
        'x_seconds_bucket{route="a",le="+Inf"} 5',
        'x_seconds_sum{route="a"} 5.650000',
        'x_seconds_count{route="a"} 5',
    ]
    assert Histogram((1.0,)).samples("y")[-1] == "y_count 0"


def test_process_metrics() -> None:
    out: list[str] = []
    process_metrics(out)
    text = "\n".join(out)
    well_formed(text)
    values = {s.split()[0]: float(s.split()[1]) for s in out if not s.startswith("#")}
    assert values["process_resident_memory_bytes"] > 1e6
    assert values["process_open_fds"] >= 3
    assert values["process_cpu_seconds_total"] > 0
    assert values["process_start_time_seconds"] > 1.6e9


@dataclass
class _Session:
    """The one method NodeMetrics reads of a Swarm (the real one is exercised end to end in
    tests/integration/test_node_metrics.py); here, values a test sets."""

    now: SwarmTotals

    def totals(self) -> SwarmTotals:
        return self.now


def test_node_metrics_render_the_sessions_totals_and_the_fetches() -> None:
    session = _Session(SwarmTotals(150, 10, 1, 3, 4, 2))
    node = NodeMetrics(lambda: session)

    def value(name: str) -> float:
        line = next(s for s in node.render().splitlines() if s.startswith(name + " "))
        return float(line.split()[1])

    assert value("p2pdist_node_uploaded_bytes_total") == 150
    assert value("p2pdist_node_downloaded_bytes_total") == 10
    assert value("p2pdist_node_hash_failures_total") == 1
    assert value("p2pdist_node_peers") == 3
    assert value("p2pdist_node_torrents") == 4
    assert value("p2pdist_node_torrents_seeding") == 2
    node.record_fetch(_Result(_Plan("delta"), 2.0, 1000, 24))
    node.record_fetch_failure()
    text = node.render()
    assert 'p2pdist_node_fetches_total{plan="delta"} 1' in text
    assert 'p2pdist_node_fetched_bytes_total{source="web_seeds"} 24' in text
    assert "p2pdist_node_fetch_failures_total 1" in text
    assert 'p2pdist_node_fetch_seconds_bucket{le="2.5"} 1' in text
    well_formed(text)
    assert "p2pdist_node_uploaded_bytes_total 0" in NodeMetrics(lambda: None).render()


@dataclass
class _Plan:
    kind: str


@dataclass
class _Result:
    plan: _Plan
    seconds: float
    bytes_from_peers: int
    bytes_from_web_seeds: int


def test_exporter_serves_metrics_on_loopback_only_there() -> None:
    server = MetricsServer(lambda: "a_total 1\n")
    try:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url, timeout=10) as r:
            assert r.headers["Content-Type"] == CONTENT_TYPE
            assert r.read() == b"a_total 1\n"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url.replace("/metrics", "/other"), timeout=10)
        assert e.value.code == 404
        e.value.close()
    finally:
        server.close()


def test_family_format() -> None:
    out: list[str] = []
    family(out, "p2pdist_x_total", "counter", "Things.", [('{k="v"}', 3), ("", 1.5)])
    assert out == [
        "# HELP p2pdist_x_total Things.",
        "# TYPE p2pdist_x_total counter",
        'p2pdist_x_total{k="v"} 3',
        "p2pdist_x_total 1.5",
    ]


def test_fetch_takes_a_metrics_port_only_when_it_keeps_running(p2p_home: object) -> None:
    from click.testing import CliRunner

    from p2pdist.cli.app import cli

    result = CliRunner().invoke(cli, ["fetch", "org/m@v1", "--metrics-port", "0"])
    assert result.exit_code == 2
    assert "--metrics-port is for processes that keep running" in result.output
