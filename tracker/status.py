"""What a person or a monitor reads: ``/healthz``, ``/metrics`` (Prometheus) and ``/`` (HTML).

The HTML page and the per-version metrics list public models only (private models are
counted, not named); everything is escaped, since model names come from publishers.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone

from aiohttp import web

from p2pdist.tracker.db import Database, ModelInfo, VersionInfo
from p2pdist.tracker.peers import SwarmCounts
from p2pdist.tracker.state import STATE, TrackerState


async def healthz(request: web.Request) -> web.Response:
    """``{"status": "ok"}``: the app is serving (the database opened at start-up).

    Deliberately free of I/O, so it measures the cost of aiohttp's request path itself
    (bench/tracker.py uses it as the announce benchmark's baseline).
    """
    state = request.app[STATE]
    return web.json_response({"status": "ok", "swarms": len(state.tracked)})


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(
    state: TrackerState, models: list[ModelInfo], counts: dict[tuple[str, str, str], SwarmCounts]
) -> str:
    """The Prometheus text exposition (format 0.0.4) of the tracker's counters and swarms."""
    m = state.metrics
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP p2pdist_tracker_{name} {help_text}")
        out.append(f"# TYPE p2pdist_tracker_{name} {kind}")
        out.extend(f"p2pdist_tracker_{name}{labels} {value:g}" for labels, value in samples)

    family(
        "announces_total", "counter", "Announces answered, by event.",
        [(f'{{event="{_label(e)}"}}', n) for e, n in sorted(m.announces.items())],
    )  # fmt: skip
    family(
        "announce_failures_total", "counter", "Announces and scrapes refused with a failure reason.",
        [("", m.announce_failures)],
    )  # fmt: skip
    family("scrapes_total", "counter", "Scrapes answered.", [("", m.scrapes)])
    family(
        "registry_requests_total", "counter", "Registry (/v1/) requests, by route and status.",
        [
            (f'{{route="{_label(r)}",status="{s}"}}', n)
            for (r, s), n in sorted(m.registry_requests.items())
        ],
    )  # fmt: skip
    family("errors_total", "counter", "Requests that failed inside the tracker (HTTP 500).",
           [("", m.errors)])  # fmt: skip
    family("peers", "gauge", "Peers held, over all swarms.", [("", state.peers.total_peers())])
    family("models", "gauge", "Published models.", [("", len(models))])
    family("versions", "gauge", "Published versions.", [("", sum(x.versions for x in models))])
    public = {x.name for x in models if not x.private}
    seeders, leechers = [], []
    for (model, version, kind), c in sorted(counts.items()):
        if model not in public:
            continue
        labels = f'{{model="{_label(model)}",version="{_label(version)}",kind="{kind}"}}'
        seeders.append((labels, c.complete))
        leechers.append((labels, c.incomplete))
    family("seeders", "gauge", "Seeders per public version and torrent kind.", seeders)
    family("leechers", "gauge", "Leechers per public version and torrent kind.", leechers)
    return "\n".join(out) + "\n"


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    models = await state.db_call(Database.models)
    text = render_metrics(state, models, await state.swarm_counts())
    return web.Response(text=text, content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})  # fmt: skip


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#222;padding:0 1rem}
h1{font-size:1.4rem;margin-bottom:.2rem} h2{font-size:1.1rem;margin:1.6rem 0 .4rem}
.sub{color:#666;margin-top:0} table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.3rem .6rem;border-bottom:1px solid #ddd}
th{background:#f4f4f4} table{table-layout:fixed} td.n{text-align:right;font-variant-numeric:tabular-nums}
.live{color:#0a7d32;font-weight:600} .empty{color:#888}
"""


def render_page(
    base_url: str,
    models: list[ModelInfo],
    versions: dict[str, list[VersionInfo]],
    counts: dict[tuple[str, str, str], SwarmCounts],
    peers: int,
) -> str:
    """The status page: one table per public model, newest version first."""
    e = html.escape
    public = [m for m in models if not m.private]
    hidden = len(models) - len(public)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        "<meta name=viewport content='width=device-width,initial-scale=1'>",
        "<meta http-equiv=refresh content=10><title>p2pdist tracker</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>p2pdist tracker</h1>",
        f"<p class=sub>{e(base_url)} · {len(public)} public models"
        + (f" ({hidden} private not shown)" if hidden else "")
        + f" · {peers} peers · {e(now)} · <a href=/metrics>metrics</a></p>",
    ]
    if not public:
        parts.append("<p class=empty>No models published yet. Publish one with "
                     "<code>p2pdist publish DIR --name NAME</code>.</p>")  # fmt: skip
    for model in public:
        parts.append(f"<h2>{e(model.name)}</h2><table><tr><th>version</th><th>parent</th>"
                     "<th>published</th><th>size</th><th>delta</th><th>seeders</th>"
                     "<th>leechers</th></tr>")  # fmt: skip
        for v in reversed(versions.get(model.name, [])):
            full = counts.get((model.name, v.version, "full"), SwarmCounts())
            delta = counts.get((model.name, v.version, "delta"), SwarmCounts())
            seeders = full.complete + delta.complete
            leechers = full.incomplete + delta.incomplete
            parts.append(
                f"<tr><td>{e(v.version)}</td><td>{e(v.parent or '—')}</td>"
                f"<td>{e(v.published)}</td><td class=n>{_size(v.size)}</td>"
                f"<td class=n>{_size(v.delta_size) if v.parent else '—'}</td>"
                f"<td class='n{' live' if seeders else ''}'>{seeders}</td>"
                f"<td class=n>{leechers}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


async def page(request: web.Request) -> web.Response:
    state = request.app[STATE]
    models = await state.db_call(Database.models)
    versions = {
        m.name: await state.db_call(Database.versions, m.name) for m in models if not m.private
    }
    base_url = f"{request.scheme}://{request.host}"
    text = render_page(
        base_url, models, versions, await state.swarm_counts(), state.peers.total_peers()
    )
    return web.Response(text=text, content_type="text/html", charset="utf-8")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", page, name="status")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/metrics", metrics, name="metrics")


__all__ = ["add_routes", "render_metrics", "render_page"]
