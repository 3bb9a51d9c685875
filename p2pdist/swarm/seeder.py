"""Seeding stored versions: the bridge between the store's folders and the swarm.

The swarm knows torrents and folders; the store knows versions. This module hands each
stored version's full torrent (over its snapshot) and delta torrent (over its delta files)
to the process's swarm.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from p2pdist import config
from p2pdist.errors import FormatError, IntegrityError, NotFoundError, P2PDistError, StoreError
from p2pdist.store.cache import DELTA, SNAPSHOT, Store

log = logging.getLogger(__name__)

ANNOUNCE_INTERVAL_HINT = 5
"""libtorrent's min_announce_interval (s); the tracker's own interval then governs (DESIGN.md)."""


def process_swarm() -> Any:
    """The process's swarm, created on first use with the configured interface and limits."""
    from p2pdist.swarm.session import get_swarm

    return get_swarm(
        listen_interface=config.listen_interface(),
        upload_rate_limit=config.upload_rate_limit(),
        announce_interval_hint=ANNOUNCE_INTERVAL_HINT,
        ssrf_mitigation=config.ssrf_mitigation(),
    )


def seed_version(store: Store, name: str, version: str, *, swarm: Any = None) -> list[Any]:
    """Seed a stored version's full and delta torrents; returns the swarm transfers."""
    swarm = swarm or process_swarm()
    vdir = store.version_dir(name, version)
    transfers = []
    full = store.torrent(name, version, "full")
    if full is not None:
        transfers.append(_seed_once(swarm, full, vdir / SNAPSHOT))
    delta = store.torrent(name, version, "delta")
    if delta is not None and (vdir / DELTA).is_dir():
        transfers.append(_seed_once(swarm, delta, vdir / DELTA))
    return transfers


def _seed_once(swarm: Any, torrent: bytes, root: Any) -> Any:
    from p2pdist.formats.torrent import read_torrent

    existing = swarm.transfer(read_torrent(torrent).info_hash)
    return existing if existing is not None else swarm.seed(torrent, root)


def seed_all(
    store: Store,
    *,
    swarm: Any = None,
    on_skip: Callable[[str, P2PDistError], None] | None = None,
) -> list[Any]:
    """Seed every version in the store (``p2pdist seed``).

    A version that cannot be seeded (a file missing, cut short or damaged) is skipped and
    reported to ``on_skip(ref, error)``, so one damaged version does not keep the others from
    being served; when every version fails, the others are reported and the first is raised
    (nothing twice). An error that is not one version's (a bad setting, the session itself)
    is raised at once.
    """
    transfers: list[Any] = []
    failures: list[tuple[str, P2PDistError]] = []
    for name in store.models():
        for manifest in store.versions(name):
            try:
                transfers.extend(seed_version(store, name, manifest.version, swarm=swarm))
            except (IntegrityError, NotFoundError, FormatError, StoreError) as e:
                failures.append((f"{name}@{manifest.version}", e))
    reported = failures[1:] if failures and not transfers else failures
    for ref, error in reported:
        if on_skip is not None:
            on_skip(ref, error)
    if failures and not transfers:
        raise failures[0][1]
    return transfers


def unseed_version(store: Store, name: str, version: str, *, swarm: Any = None) -> None:
    """Stop seeding a version's torrents in this process (if they are seeded)."""
    from p2pdist.formats.torrent import read_torrent
    from p2pdist.swarm.session import existing_swarm

    swarm = swarm or existing_swarm()
    if swarm is None:  # nothing is seeded in this process: do not start a session to say so
        return
    for kind in ("full", "delta"):
        data = store.torrent(name, version, kind) if store.has(name, version) else None
        if data is None:
            continue
        transfer = swarm.transfer(read_torrent(data).info_hash)
        if transfer is not None:
            transfer.stop()
