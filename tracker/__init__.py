"""The p2pdist tracker: a BitTorrent tracker and a model registry on one port.

Run it with ``p2pdist tracker serve --data DIR`` (or ``python -m p2pdist.tracker serve``);
several replicas share one registry and one swarm with ``--db postgresql://…`` and
``--peers redis://…`` (``registry_store.py``, ``peers.py``):
announces and scrapes are answered by a raw HTTP/1.1 front below aiohttp (``front.py``), every
other request by the aiohttp application of ``create_app``, on the same port. Make tokens
with ``p2pdist tracker token --data DIR [--namespace NS] [--read-only]``.

HTTP contract (the client is ``p2pdist.client.RegistryClient``):

BitTorrent (bencoded answers, refusals as ``failure reason`` with HTTP 200)
    GET  /announce[/<passkey>]       BEP 3, compact peers (BEP 23), ``peers6`` (BEP 7)
    GET  /scrape[/<passkey>]         BEP 48 (at least one info_hash; no full scrape)

Registry (JSON; refusals ``{"error": "<one line>", "type": "<ErrorName>"}`` with
400, 401, 403, 404, 409 or 413). ``{name}`` is ``name`` or ``org/name``.
    POST /v1/models/{name}/versions/{version}
         body {"manifest": {...}, "torrent": "<base64>", "delta_torrent": "<base64>"|null,
               "private": false}, header ``Authorization: Bearer <token>``;
         201 created, 200 identical re-publish, 409 other bytes.
    GET  /v1/models                              {"models": [{name, private, latest, versions}]}
    GET  /v1/models/{name}/versions              {"versions": [{version, parent, created,
                                                   published, size, delta_size, seeders,
                                                   leechers, delta_seeders, delta_leechers}]}
    GET  /v1/models/{name}/latest[?after=V&wait=S]  {"version": V}; with wait (<= 60 s) it
                                                   long-polls, 204 when nothing newer came
    GET  /v1/models/{name}/versions/{version}/manifest           the canonical manifest bytes
    GET  /v1/models/{name}/versions/{version}/torrent?kind=full|delta   application/x-bittorrent

    POST /v1/models/{name}/statements            a publisher-signed yank, tag or rotate-key
                                                   (``p2pdist.formats.statement``)
    GET  /v1/models/{name}/resolve/{ref}          {"version": V} for a version, tag or latest;
                                                   410 for a withdrawn version, with the reason
    GET  /v1/models/{name}/tags                   {"tags": {tag: version}}

Status: ``GET /healthz``, ``GET /metrics`` (Prometheus text), ``GET /`` (HTML).

Private models: reads need a bearer token with read right on the namespace (the org, or
the bare name); announces go to ``/announce/<passkey>`` with ``passkey_for(token)``. Without
read access a private model answers exactly as a missing one (404; announces get the
unknown-info_hash refusal); a private ``.torrent`` is served with the reader's own passkey.

As a service: ``--tls-cert/--tls-key`` (https on the one port), ``--trusted-proxy CIDR``
(forwarded client addresses believed from those proxies only: ``forwarded.py``), connection
limits and idle timeouts on both paths (``front.py``), ``-v`` request log (``access.py``).
"""

from __future__ import annotations

from p2pdist.tracker.app import create_app
from p2pdist.tracker.state import STATE, TrackerSettings, TrackerState

__all__ = ["STATE", "TrackerSettings", "TrackerState", "create_app"]
