"""Following ``name@latest``: fetch every new version as it is published, by delta, in order.

This is the weight-sync loop of reinforcement learning and of inference fleets that swap
weights without restarting: the registry's long-poll (``/latest?after=V&wait=S``) wakes the
follower the moment a version is published; the follower fetches each version it has not
seen, oldest first (each one a small delta from the previous), and hands it to a callback.
A tracker that goes away, or a swarm with no peer yet, is waited for with backoff; anything
else (a manifest signed by another key than the pinned one, a delta that does not rebuild,
a callback that raises) stops the follower with ``error`` set and ``on_error`` called.

Where it starts: after ``start_after`` when given; otherwise at the latest version published
when it starts, or, for a model with no version yet, at its first version. Versions published
faster than they are fetched are all delivered, in publish order, except one that nobody seeds
any more when a newer one exists (the publisher's retention dropped it while the follower was
behind): that one is skipped, with a warning. A version the registry lists as newer but that
is an ancestor of the delivered one, or signed well before it, is refused as a rollback.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from p2pdist.errors import (
    ConfigError,
    IntegrityError,
    NotFoundError,
    P2PDistError,
    SwarmError,
    TrackerError,
)
from p2pdist.fetcher import Fetcher, FetchResult
from p2pdist.ref import parse_ref
from p2pdist.store.cache import Store

log = logging.getLogger(__name__)

LONG_POLL_SECONDS = 30.0
MAX_BACKOFF_SECONDS = 10.0
CLOCK_SLACK = timedelta(minutes=10)
"""How far a version's signed creation time may lag the delivered one's (publishers' clocks
differ: a restarted run may sign on another host) before it counts as a rollback."""


@dataclass(frozen=True)
class Update:
    """One new version, fetched and verified: where it is and how it came."""

    name: str
    version: str
    path: Path
    result: FetchResult
    store: Store | None = None
    """The store the version is in: where ``load(verify="once")`` keeps its records."""

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def load(self, **kwargs: Any) -> dict[str, Any]:
        """The version's tensors (``p2pdist.load`` options: device, dtype, verify)."""
        from p2pdist.loading.loader import load_folder

        return load_folder(self.path, self.result.manifest, **{"store": self.store, **kwargs})


class Follower:
    """A background thread that follows one model; ``stop()`` ends it, ``join()`` waits."""

    def __init__(
        self,
        ref: str,
        on_update: Callable[[Update], None],
        *,
        fetcher: Fetcher,
        seed: bool = True,
        poll_seconds: float = LONG_POLL_SECONDS,
        start_after: str | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        keep: int | None = None,
    ) -> None:
        if keep is not None and keep < 1:
            raise ConfigError(f"keep={keep}: keep at least the version being used (keep >= 1)")
        parsed = parse_ref(ref)
        self.name = parsed.name
        self.fetcher = fetcher
        self.on_update = on_update
        self.on_error = on_error
        self.seed = seed
        self.keep = keep
        self.poll_seconds = poll_seconds
        self.current: str | None = start_after
        # With no ``current``: the latest version when following began ("" for none yet).
        self._start: str | None = None
        self.updates = 0
        self._delivered_created: str | None = None
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"p2pdist-follow-{self.name}", daemon=True
        )

    def start(self) -> Follower:
        self._thread.start()
        return self

    def stop(self) -> None:
        """End following now: a long-poll in flight is cut short, a fetch runs to its end."""
        self._stop.set()
        self.fetcher.client.cancel_waits()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def run_forever(self) -> None:
        """Follow in the calling thread until ``stop()`` (or Ctrl-C). An error that ends the
        following is raised here (and kept in ``error``) rather than logged."""
        self._run(log_stop=False)
        if self.error is not None:
            raise self.error

    def _run(self, log_stop: bool = True) -> None:
        # Updates arrive as deltas: load their codec (numpy) while there is nothing to wait
        # for. Imported at the first update it stood between the registry's notice and the
        # download: 0.55-0.78 s of the 1.2-1.7 s from publish to 8 followers on the bed.
        import p2pdist.delta  # noqa: F401

        backoff = 0.5
        while not self._stop.is_set():
            try:
                if self.current is None and self._start is None:
                    self._start = self._latest_now()
                try:
                    newest = self.fetcher.client.wait_for_newer(
                        self.name, self.current, self.poll_seconds, cancel=self._stop
                    )
                except NotFoundError:  # the model is not published yet: keep waiting
                    newest = None
                    self._stop.wait(backoff)
                if newest is not None and newest != self.current:
                    self._catch_up()
                backoff = 0.5
            except (TrackerError, SwarmError) as e:
                # Transient: the tracker restarts, or no peer is up yet. Wait and try again.
                log.warning("follow %s: %s; retrying in %.1f s", self.name, e, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            except Exception as e:  # anything else ends the follower, visibly
                self.error = e
                if log_stop:  # a background thread: nobody else would say it
                    log.error("follow %s stopped: %s", self.name, e)
                if self.on_error is not None:
                    self.on_error(e)
                return

    def _latest_now(self) -> str:
        """The model's latest version now, or "" when it has none (yet)."""
        try:
            versions = self.fetcher.client.list_versions(self.name)
        except NotFoundError:
            return ""
        live = [v for v in versions if "yanked" not in v]  # withdrawn: never a start
        return str(live[-1]["version"]) if live else ""

    def _catch_up(self) -> None:
        """Fetch every version published after ``current``, oldest first.

        With no ``current`` yet, start at the version that was latest when following began,
        or at the first version when the model had none then: the versions published since
        are all new to the caller, however fast they came.
        """
        listed = self.fetcher.client.list_versions(self.name)
        versions = [v["version"] for v in listed]
        withdrawn = {v["version"] for v in listed if "yanked" in v}
        if self.current is not None:
            if self.current not in versions:
                raise NotFoundError(
                    f"{self.name}@{self.current} is not in the registry's list of versions; "
                    "follow from the latest instead (no start_after)"
                )
            pending = versions[versions.index(self.current) + 1 :]
        elif not self._start:
            pending = versions
        elif self._start in versions:
            pending = versions[versions.index(self._start) :]
        else:
            pending = versions[-1:]
        pending = [v for v in pending if v not in withdrawn]  # yanked: followers skip them
        for number, version in enumerate(pending):
            if self._stop.is_set():
                return
            try:
                result = self.fetcher.fetch(f"{self.name}@{version}", seed=self.seed)
            except SwarmError as e:
                if number == len(pending) - 1:
                    raise  # the newest: wait for a peer and try again
                # Nobody seeds it any more (the publisher's retention dropped it while this
                # follower was behind): skip to the newer versions rather than wait forever.
                log.warning("follow %s: skipping %s@%s: %s", self.name, self.name, version, e)
                continue
            self._refuse_rollback(version, result)
            self._delivered_created = result.manifest.created
            self.current = version
            self.updates += 1
            self.on_update(Update(self.name, version, result.path, result, self.fetcher.store))
            self._retain()

    def _retain(self) -> None:
        """With ``keep``, drop the model's stored versions older than the newest ``keep``
        (an inference host's disk would fill otherwise); tensors loaded from a dropped
        version stay valid while they are mapped."""
        if self.keep is None:
            return
        from p2pdist.swarm.seeder import unseed_version

        store = self.fetcher.store
        try:
            stale = [m.version for m in store.versions(self.name)][: -self.keep]
            for version in stale:
                if self.seed:
                    unseed_version(store, self.name, version, swarm=self.fetcher.swarm)
                store.remove(self.name, version)
            if stale:
                store.gc()
        except (P2PDistError, OSError) as e:  # tidying up must not stop the weight sync
            log.warning("follow %s: cannot drop older versions: %s", self.name, e)

    def _refuse_rollback(self, version: str, result: FetchResult) -> None:
        """Refuse a version the registry lists as newer that is older: one the delivered
        version descends from, or one signed well before it. The signed creation times come
        from the publishers' clocks, so a restarted run whose clock is a little behind is
        allowed ``CLOCK_SLACK``."""
        if self.current is None or self._delivered_created is None:
            return
        store = self.fetcher.store
        ancestor: str | None = self.current
        seen: set[str] = set()
        while ancestor is not None and ancestor not in seen and store.has(self.name, ancestor):
            if ancestor == version:
                raise IntegrityError(
                    f"{self.name}@{version} is an ancestor of {self.current}; refusing a "
                    "rollback offered by the registry"
                )
            seen.add(ancestor)
            ancestor = store.manifest(self.name, ancestor).parent
        created = _parse_time(result.manifest.created)
        delivered = _parse_time(self._delivered_created)
        if created is not None and delivered is not None and created < delivered - CLOCK_SLACK:
            raise IntegrityError(
                f"{self.name}@{version} (signed {result.manifest.created}) is older than "
                f"{self.current} (signed {self._delivered_created}) by more than "
                f"{CLOCK_SLACK.total_seconds():g} s; refusing a rollback offered by the registry"
            )


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None


def follow(
    ref: str,
    on_update: Callable[[Update], None],
    *,
    home: str | Path | None = None,
    tracker: str | None = None,
    token: str | None = None,
    seed: bool = True,
    use_web_seeds: bool = True,
    start_after: str | None = None,
    background: bool = True,
    poll_seconds: float = LONG_POLL_SECONDS,
    on_error: Callable[[BaseException], None] | None = None,
    swarm: Any = None,
    keep: int | None = None,
) -> Follower:
    """Watch ``ref``'s model and call ``on_update`` with each new version, in publish order.

    The first call delivers the current latest version (unless ``start_after`` names the
    version the caller already has); each later one arrives as a delta. With ``background``
    (the default) a daemon thread follows and the returned Follower controls it; otherwise
    this call follows until the Follower is stopped from another thread or Ctrl-C, and raises
    the error that ends it, if one does.
    ``swarm`` is the Swarm that downloads and seeds (default: the process's swarm).
    ``keep`` bounds the disk: the model's versions older than the newest ``keep`` are removed
    from the store (and no longer seeded) after each update.
    """
    fetcher = Fetcher(
        home=home, tracker=tracker, token=token, use_web_seeds=use_web_seeds, swarm=swarm
    )
    follower = Follower(
        ref,
        on_update,
        fetcher=fetcher,
        seed=seed,
        poll_seconds=poll_seconds,
        start_after=start_after,
        on_error=on_error,
        keep=keep,
    )
    if background:
        return follower.start()
    try:
        follower.run_forever()
    except KeyboardInterrupt:
        follower.stop()
    return follower
