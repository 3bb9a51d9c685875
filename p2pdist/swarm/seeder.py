"""Seeding stored versions: the bridge between the store's folders and the swarm.

The swarm knows torrents and folders; the store knows versions. This module hands each
stored version's full torrent (over its snapshot) and delta torrent (over its delta files)
to the process's swarm. ``SeedDaemon`` is ``p2pdist seed``: it follows the store (versions
added by publish, fetch or another process are served within seconds, removed ones dropped),
announces to the configured tracker rather than the URL baked into each torrent, and stops
serving a version whose stored bytes fail their hash check, naming the damaged file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from p2pdist import config
from p2pdist.errors import (
    ConfigError,
    FormatError,
    IntegrityError,
    NotFoundError,
    P2PDistError,
    StoreError,
)
from p2pdist.formats.manifest import MANIFEST_FILENAME
from p2pdist.store.cache import DELTA, SNAPSHOT, Store

log = logging.getLogger(__name__)

ANNOUNCE_INTERVAL_HINT = 5
"""libtorrent's min_announce_interval (s); the tracker's own interval then governs (DESIGN.md)."""


def process_swarm() -> Any:
    """The process's swarm, created on first use with the configured interface, port, limits
    and transports (TCP; uTP only with ``P2PDIST_UTP=1``), and the user's libtorrent
    overrides (``P2PDIST_LIBTORRENT``)."""
    from p2pdist.swarm.session import existing_swarm, get_swarm
    from p2pdist.swarm.settings import checked_overrides

    running = existing_swarm()
    if running is not None:  # its settings were read once, when it started
        return running
    return get_swarm(
        listen_interface=config.listen_interface(),
        port=config.listen_port(),
        upload_rate_limit=config.upload_rate_limit(),
        download_rate_limit=config.download_rate_limit(),
        announce_interval_hint=ANNOUNCE_INTERVAL_HINT,
        utp=config.utp(),
        ssrf_mitigation=config.ssrf_mitigation(),
        extra_settings=checked_overrides(config.libtorrent_settings()),
    )


def with_hints(announce: str) -> str:
    """``announce`` carrying this host's announced address when one is configured (BEP 3
    ``ip=``, which the tracker honours for private-range addresses); libtorrent appends its
    own parameters after it."""
    address = config.announce_address()
    if not address:
        return announce
    return announce + ("&" if "?" in announce else "?") + f"ip={quote(address)}"


def seed_version(
    store: Store,
    name: str,
    version: str,
    *,
    swarm: Any = None,
    announce: Callable[[bool], str] | None = None,
) -> list[Any]:
    """Seed a stored version's full and delta torrents; returns the swarm transfers.

    ``announce(private)`` is the tracker URL to announce to (the configured tracker, with this
    host's passkey for a private model); without it a torrent announces where it was made to.
    """
    swarm = swarm or process_swarm()
    vdir = store.version_dir(name, version)
    transfers = []
    full = store.torrent(name, version, "full")
    if full is not None:
        transfers.append(_seed_once(swarm, full, vdir / SNAPSHOT, announce))
    delta = store.torrent(name, version, "delta")
    if delta is not None and (vdir / DELTA).is_dir():
        transfers.append(_seed_once(swarm, delta, vdir / DELTA, announce))
    return transfers


def _seed_once(
    swarm: Any, torrent: bytes, root: Any, announce: Callable[[bool], str] | None
) -> Any:
    from p2pdist.formats.torrent import read_torrent

    meta = read_torrent(torrent)
    existing = swarm.transfer(meta.info_hash)
    if existing is not None:
        return existing
    trackers = None if announce is None else [announce(meta.private)]
    return swarm.seed(torrent, root, trackers=trackers)


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


RESCAN_INTERVAL = 2.0
"""Seconds between ``SeedDaemon``'s full passes: removed versions, damaged files, trackers."""

NEW_VERSION_POLL = 0.25
"""Seconds between ``SeedDaemon``'s looks for versions added to the store (folder names only).
Followers wait for this after a publish: 8 RL followers held a new version 1.15-1.18 s after
`publish` returned, 1.32-1.69 s when the daemon looked every 2 s (BENCHMARKS.md, "Cluster",
part 4)."""


def stored_refs(store: Store) -> set[tuple[str, str]]:
    """(name, version) of every committed version, from folder names alone (cheap enough to
    ask every few seconds: no manifest is parsed)."""
    found: set[tuple[str, str]] = set()
    try:
        models = list(store.models_dir.iterdir())
    except OSError:
        return found
    for mdir in models:
        if not mdir.is_dir() or "--" not in mdir.name:
            continue
        name = mdir.name.replace("--", "/", 1)
        try:
            versions = list(mdir.iterdir())
        except OSError:
            continue
        for vdir in versions:
            if (vdir / MANIFEST_FILENAME).is_file():
                found.add((name, vdir.name))
    return found


class SeedDaemon:
    """``p2pdist seed``: serve every version of a store and follow the store as it changes.

    ``sync()`` (called every RESCAN_INTERVAL seconds by ``run``) seeds versions that appeared,
    stops those that were removed, and stops serving a version whose stored bytes failed a
    hash check when a peer asked for them, saying which file is damaged and how to repair it.
    Between full passes ``start_new()`` looks only for added versions, more often, so a
    version published beside a running daemon reaches its followers sooner. Each message
    goes to ``say`` as one line.
    """

    def __init__(
        self,
        store: Store,
        *,
        swarm: Any = None,
        announce: Callable[[bool], str] | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.store = store
        self.swarm = swarm or process_swarm()
        self.announce = announce
        self.say = say
        self.serving: dict[tuple[str, str], list[Any]] = {}
        self.damaged: dict[tuple[str, str], list[str]] = {}
        self._failed: set[tuple[str, str]] = set()

    def sync(self) -> tuple[int, int]:
        """Follow the store once; returns (versions started, versions stopped)."""
        present = stored_refs(self.store)
        started = self.start_new(present)
        stopped = 0
        for key in sorted(set(self.serving) - present):
            for transfer in self.serving.pop(key):
                transfer.stop()
            stopped += 1
            self.say(f"Stopped seeding {key[0]}@{key[1]}: it was removed from the store")
        self._failed &= present  # a version removed and stored again is tried again
        for key in [k for k in self.damaged if k not in present]:
            del self.damaged[key]
        for key, transfers in list(self.serving.items()):
            for transfer in transfers:
                transfer.retry_tracker()
            files = [f for t in transfers for f in t.damaged_files()]
            if files:
                self._quarantine(key, transfers, files)
                stopped += 1
        return started, stopped

    def start_new(self, present: set[tuple[str, str]] | None = None) -> int:
        """Seed the versions of the store (or of ``present``) not yet served, damaged or
        failed; returns how many started."""
        if present is None:
            present = stored_refs(self.store)
        started = 0
        for key in sorted(present - set(self.serving) - set(self.damaged) - self._failed):
            name, version = key
            try:
                transfers = seed_version(
                    self.store, name, version, swarm=self.swarm, announce=self.announce
                )
            except (IntegrityError, NotFoundError, FormatError, StoreError, ConfigError) as e:
                if key not in stored_refs(self.store):
                    continue  # removed while it was being added
                self._failed.add(key)
                ref = f"{name}@{version}"
                self.say(f"Not seeding {ref}: {e}; check it with `p2pdist verify {ref}`")
                continue
            if transfers:
                self.serving[key] = transfers
                started += 1
        return started

    def _quarantine(self, key: tuple[str, str], transfers: list[Any], files: list[str]) -> None:
        for transfer in transfers:
            transfer.stop()
        del self.serving[key]
        self.damaged[key] = files
        ref = f"{key[0]}@{key[1]}"
        where = self.store.version_dir(*key)
        self.say(
            f"DAMAGED: {ref}: {', '.join(files)} in {where} failed its hash check; stopped "
            f"serving {ref}. Repair: `p2pdist verify {ref}` names every bad file; then "
            f"`p2pdist rm {ref}` and `p2pdist fetch {ref}` (or publish it again)"
        )

    def status(self) -> str:
        """One line: versions served, peers connected, bytes uploaded."""
        transfers = [t for ts in self.serving.values() for t in ts]
        peers = {p for t in transfers for p in t.peers()}
        up = sum(t.uploaded_bytes() for t in transfers)
        damaged = f", {len(self.damaged)} damaged" if self.damaged else ""
        return (
            f"seeding {len(self.serving)} versions ({len(transfers)} torrents){damaged}, "
            f"{len(peers)} peers, {up / 2**20:.1f} MiB up"
        )

    def run(
        self, stop: Any, *, status_every: float | None = None, poll: float = NEW_VERSION_POLL
    ) -> None:
        """Follow the store until ``stop`` (a threading.Event) is set: a full ``sync()`` every
        RESCAN_INTERVAL seconds, ``start_new()`` every ``poll`` seconds between them; print
        ``status()`` every ``status_every`` seconds when given."""
        import time

        now = time.monotonic()
        next_status, next_sync = now + (status_every or 0), now + RESCAN_INTERVAL
        while not stop.wait(min(poll, RESCAN_INTERVAL)):
            if time.monotonic() >= next_sync:
                self.sync()
                next_sync = time.monotonic() + RESCAN_INTERVAL
            else:
                self.start_new()
            if status_every and time.monotonic() >= next_status:
                self.say(self.status())
                next_status = time.monotonic() + status_every
