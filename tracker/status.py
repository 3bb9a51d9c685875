"""What a person or a monitor reads: ``/healthz``, ``/metrics`` (Prometheus) and ``/`` (HTML).

The HTML page and the per-version metrics list public models only (private models are
counted, not named); everything is escaped, since model names come from publishers.

Cardinality is bounded: a series labelled by version exists only while that version's swarm
has peers, and for at most ``MAX_VERSION_SERIES`` of them (the busiest); totals by torrent
kind cover the rest. So a registry of thousands of versions, most of them idle, exports a few
dozen series, and an old version's series goes away when its last peer does. Request latency
is one histogram per route name (announce and scrape timed where they are answered, the rest
by a middleware), and the process families (memory, descriptors, CPU) come from
p2pdist/metrics.py, like the node exporter's.
"""

from __future__ import annotations

import html
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone

from aiohttp import web

from p2pdist.metrics import family as _family
from p2pdist.metrics import histogram_family, label_value, process_metrics
from p2pdist.tracker.db import ModelInfo, VersionInfo
from p2pdist.tracker.peers import SwarmCounts
from p2pdist.tracker.state import STATE, TrackerState


async def healthz(request: web.Request) -> web.Response:
    """``{"status": "ok"}``: the app is serving (the database opened at start-up).

    Deliberately free of I/O, so it measures the cost of aiohttp's request path itself
    (bench/tracker.py uses it as the announce benchmark's baseline).
    """
    state = request.app[STATE]
    return web.json_response({"status": "ok", "swarms": len(state.tracked)})


MAX_VERSION_SERIES = 50
"""At most this many (model, version, kind) label sets in the seeders/leechers families."""
_TIMED_ELSEWHERE = frozenset({"announce", "announce_passkey", "scrape", "scrape_passkey"})


def render_metrics(
    state: TrackerState, models: list[ModelInfo], counts: dict[tuple[str, str, str], SwarmCounts]
) -> str:
    """The Prometheus text exposition (format 0.0.4) of the tracker's counters and swarms."""
    m = state.metrics
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: Sequence[tuple[str, float]]) -> None:
        _family(out, f"p2pdist_tracker_{name}", kind, help_text, samples)

    family(
        "announces_total", "counter", "Announces answered, by event.",
        [(f'{{event="{label_value(e)}"}}', n) for e, n in sorted(m.announces.items())],
    )  # fmt: skip
    family(
        "announce_failures_total", "counter", "Announces and scrapes refused with a failure reason.",
        [("", m.announce_failures)],
    )  # fmt: skip
    family("scrapes_total", "counter", "Scrapes answered.", [("", m.scrapes)])
    family(
        "registry_requests_total", "counter", "Registry (/v1/) requests, by route and status.",
        [
            (f'{{route="{label_value(r)}",status="{s}"}}', n)
            for (r, s), n in sorted(m.registry_requests.items())
        ],
    )  # fmt: skip
    family("errors_total", "counter", "Requests that failed inside the tracker (HTTP 500).",
           [("", m.errors)])  # fmt: skip
    histogram_family(
        out, "p2pdist_tracker_request_seconds",
        "Time to answer a request inside the tracker, by route (announce and scrape: until "
        "the answer is ready; the rest: the aiohttp handler and its middlewares).",
        [(f'route="{label_value(r)}"', h) for r, h in sorted(m.latency.items())],
    )  # fmt: skip
    family("peers", "gauge", "Peers held, over all swarms.", [("", state.peers.total_peers())])
    family("models", "gauge", "Published models.", [("", len(models))])
    family("versions", "gauge", "Published versions.", [("", sum(x.versions for x in models))])
    totals: dict[str, list[int]] = {"full": [0, 0, 0], "delta": [0, 0, 0]}
    for (_, _, kind), c in counts.items():
        row = totals.setdefault(kind, [0, 0, 0])
        row[0] += c.complete
        row[1] += c.incomplete
        row[2] += 1 if c.complete + c.incomplete else 0
    family("seeders_total", "gauge", "Seeders over all versions, by torrent kind.",
           [(f'{{kind="{k}"}}', v[0]) for k, v in sorted(totals.items())])  # fmt: skip
    family("leechers_total", "gauge", "Leechers over all versions, by torrent kind.",
           [(f'{{kind="{k}"}}', v[1]) for k, v in sorted(totals.items())])  # fmt: skip
    family("active_swarms", "gauge", "Versions whose swarm has peers now, by torrent kind.",
           [(f'{{kind="{k}"}}', v[2]) for k, v in sorted(totals.items())])  # fmt: skip
    public = {x.name for x in models if not x.private}
    live = [
        (key, c) for key, c in counts.items() if key[0] in public and c.complete + c.incomplete > 0
    ]
    live.sort(key=lambda item: (-(item[1].complete + item[1].incomplete), item[0]))
    shown = sorted(live[:MAX_VERSION_SERIES])
    seeders, leechers = [], []
    for (model, version, kind), c in shown:
        labels = f'{{model="{label_value(model)}",version="{label_value(version)}",kind="{kind}"}}'
        seeders.append((labels, c.complete))
        leechers.append((labels, c.incomplete))
    family("seeders", "gauge",
           f"Seeders per public version with peers (the {MAX_VERSION_SERIES} busiest) "
           "and torrent kind.", seeders)  # fmt: skip
    family("leechers", "gauge",
           f"Leechers per public version with peers (the {MAX_VERSION_SERIES} busiest) "
           "and torrent kind.", leechers)  # fmt: skip
    family("version_series_omitted", "gauge",
           f"Public versions with peers left out of seeders/leechers (over {MAX_VERSION_SERIES}).",
           [("", len(live) - len(shown))])  # fmt: skip
    process_metrics(out)
    return "\n".join(out) + "\n"


@web.middleware
async def timed(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Observe every aiohttp-served request in its route's latency histogram (announces and
    scrapes are timed where they are answered, whichever path they take)."""
    route = request.match_info.route.name or "unmatched"
    if route in _TIMED_ELSEWHERE:
        return await handler(request)
    started = time.perf_counter()
    try:
        return await handler(request)
    finally:
        request.app[STATE].metrics.latency[route].observe(time.perf_counter() - started)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    models = await state.db_call(lambda db: db.models())
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
                     "<th>leechers</th><th>delta seeders</th><th>delta leechers</th>"
                     "</tr>")  # fmt: skip
        for v in reversed(versions.get(model.name, [])):
            full = counts.get((model.name, v.version, "full"), SwarmCounts())
            delta = counts.get((model.name, v.version, "delta"), SwarmCounts())
            # Full and delta swarms are counted apart, as /v1/.../versions does: a host that
            # serves both is one seeder of each, not two of the version.
            nodelta = "<td class=n>—</td>" * 2
            parts.append(
                f"<tr><td>{e(v.version)}</td><td>{e(v.parent or '—')}</td>"
                f"<td>{e(v.published)}</td><td class=n>{_size(v.size)}</td>"
                f"<td class=n>{_size(v.delta_size) if v.parent else '—'}</td>"
                f"<td class='n{' live' if full.complete else ''}'>{full.complete}</td>"
                f"<td class=n>{full.incomplete}</td>"
                + (
                    f"<td class='n{' live' if delta.complete else ''}'>{delta.complete}</td>"
                    f"<td class=n>{delta.incomplete}</td>"
                    if v.parent
                    else nodelta
                )
                + "</tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)


async def page(request: web.Request) -> web.Response:
    state = request.app[STATE]
    models = await state.db_call(lambda db: db.models())
    versions = {
        m.name: await state.db_call(lambda db, name: db.versions(name), m.name)
        for m in models
        if not m.private
    }
    base_url = f"{request.scheme}://{request.host}"
    text = render_page(
        base_url, models, versions, await state.swarm_counts(), state.peers.total_peers()
    )
    return web.Response(text=text, content_type="text/html", charset="utf-8")


def add_routes(app: web.Application) -> None:
    app.middlewares.insert(0, timed)  # outermost: the time includes the other middlewares
    app.router.add_get("/", page, name="status")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/metrics", metrics, name="metrics")


__all__ = ["MAX_VERSION_SERIES", "add_routes", "render_metrics", "render_page", "timed"]
