"""follow(): every version, in order, by delta; through a tracker restart; stopped by bad keys.

A CheckpointPublisher (this process, its own Swarm) publishes to a tracker subprocess; the
follower fetches with a second Swarm into its own store, so every byte crosses the loopback
swarm. "Faster than the follower fetches" is arranged by ordering, not timing: the follower
is held (in its callback, or right after its long-poll answers) on an Event while the test
publishes the later versions, then released.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.client import RegistryClient
from p2pdist.errors import P2PDistError, SignatureError, TrackerError
from p2pdist.fetcher import Fetcher
from p2pdist.follower import Follower, Update, follow
from p2pdist.formats.keys import TrustStore, public_key_of
from p2pdist.formats.torrent import read_torrent
from p2pdist.publishing import PublishedVersion
from p2pdist.store import records
from p2pdist.store.cache import Store
from p2pdist.swarm.session import Swarm
from p2pdist.trainer.publisher import CheckpointPublisher
from tests.integration.harness import Tracker

pytestmark = pytest.mark.integration

NAME = "org/model"
REF = f"{NAME}@latest"
WAIT = 60.0
"""Seconds a test waits for something that takes well under one on an idle machine."""
POLL = 2.0
"""The followers' long-poll (s)."""


def model_states(count: int) -> list[dict[str, torch.Tensor]]:
    """``count`` successive checkpoints of a small model: each moves a few rows of the last."""
    g = torch.Generator().manual_seed(0)
    state = {
        "embed.weight": torch.randn(256, 64, generator=g),
        "layers.0.weight": torch.randn(64, 64, generator=g).to(torch.bfloat16),
        "head.weight": torch.randn(256, 64, generator=g).to(torch.float16),
    }
    states = [state]
    for step in range(1, count):
        state = {k: v.clone() for k, v in state.items()}
        for name in ("layers.0.weight", "head.weight"):
            rows = state[name][step % 8 :: 16]
            rows += (1e-2 * torch.randn(rows.shape, generator=g)).to(rows.dtype)
        states.append(state)
    return states


STATES = model_states(3)


class WatchedClient(RegistryClient):
    """A registry client that shows the test where the follower is, and can hold it.

    ``waiting_after(v)`` is set once the follower asks for a version newer than ``v``;
    ``failed`` once such a request fails; with ``hold`` given, the first long-poll that
    answers a version returns only after ``hold`` is set.
    """

    def __init__(self, url: str, hold: threading.Event | None = None) -> None:
        super().__init__(url)
        self.hold = hold
        self.failed = threading.Event()
        self.errors: list[P2PDistError] = []
        self._waiting: dict[str | None, threading.Event] = {}
        self._lock = threading.Lock()

    def waiting_after(self, version: str | None) -> threading.Event:
        with self._lock:
            return self._waiting.setdefault(version, threading.Event())

    def wait_for_newer(
        self, name: str, after: str | None, wait: float, cancel: threading.Event | None = None
    ) -> str | None:
        self.waiting_after(after).set()
        try:
            newest = super().wait_for_newer(name, after, wait, cancel)
        except P2PDistError as e:
            self.errors.append(e)
            self.failed.set()
            raise
        if newest is not None and self.hold is not None:
            hold, self.hold = self.hold, None
            assert hold.wait(WAIT), "the test never released the follower"
        return newest


@pytest.fixture
def swarms() -> Iterator[tuple[Swarm, Swarm]]:
    """The publisher's swarm and the follower's."""
    with Swarm(announce_interval_hint=2) as publisher, Swarm(announce_interval_hint=2) as follower:
        yield publisher, follower


@pytest.fixture
def publisher(
    tmp_path: Path,
    p2p_home: Path,
    tracker: Tracker,
    publish_token: str,
    swarms: tuple[Swarm, Swarm],
) -> Iterator[CheckpointPublisher]:
    pub = CheckpointPublisher(
        NAME,
        tracker=tracker.url,
        token=publish_token,
        home=tmp_path / "publisher-home",
        keep=5,
        swarm=swarms[0],
    )
    yield pub
    with contextlib.suppress(P2PDistError, TimeoutError):
        pub.close()


@pytest.fixture
def follower_home(tmp_path: Path) -> Path:
    return tmp_path / "follower-home"


def make_fetcher(
    tmp_path: Path,
    home: Path,
    client: RegistryClient,
    swarm: Swarm,
    trust: TrustStore | None = None,
    stall_timeout: float = 30,
) -> Fetcher:
    return Fetcher(
        home=home,
        client=client,
        swarm=swarm,
        trust=trust or TrustStore(tmp_path / "follower-config"),
        stall_timeout=stall_timeout,
    )


@contextlib.contextmanager
def following(follower: Follower, *releases: threading.Event) -> Iterator[Follower]:
    """Stop the follower (and release anything holding it) however the test ends."""
    try:
        yield follower
    finally:
        for event in releases:
            event.set()
        follower.stop()
        follower.join(WAIT)


def check_updates(
    updates: list[Update], published: list[PublishedVersion], home: Path, plans: list[str]
) -> None:
    """Each update is the published version, verified in the follower's store, by ``plans``."""
    assert [u.version for u in updates] == [p.manifest.version for p in published]
    assert [u.result.plan.kind for u in updates] == plans
    store = Store(home)
    for update, pub, state in zip(updates, published, STATES[: len(updates)], strict=True):
        assert update.result.manifest.to_bytes() == pub.manifest.to_bytes()
        if update.result.plan.kind == "delta":
            # Straight from the version before: one delta, nothing skipped.
            assert update.result.plan.base == pub.manifest.parent
            assert [m.version for m in update.result.plan.chain] == [update.version]
            assert update.result.bytes_from_peers < pub.manifest.total_size // 4
        store.verify(NAME, update.version)
        loaded = update.load()
        assert sorted(loaded) == sorted(state)
        assert all(torch.equal(loaded[k], state[k]) for k in state), update.ref


class HeldAtFirst:
    """An ``on_update`` that holds the follower inside its first update until ``release`` is
    set (so later versions come out while it is busy) and sets ``done`` at version ``last``."""

    def __init__(self, last: str) -> None:
        self.last = last
        self.updates: list[Update] = []
        self.busy, self.release, self.done = threading.Event(), threading.Event(), threading.Event()

    def __call__(self, update: Update) -> None:
        self.updates.append(update)
        if len(self.updates) == 1:
            self.busy.set()
            assert self.release.wait(WAIT)
        if update.version == self.last:
            self.done.set()


def test_follow_delivers_the_current_latest_then_every_later_version_in_order(
    publisher: CheckpointPublisher,
    tracker: Tracker,
    swarms: tuple[Swarm, Swarm],
    follower_home: Path,
) -> None:
    """v1 exists when following starts; v2 and v3 come while the follower is busy with v1."""
    v1 = publisher.publish(STATES[0]).result(timeout=WAIT)
    held = HeldAtFirst("v3")
    errors: list[BaseException] = []

    follower = follow(
        REF,
        held,
        home=follower_home,
        tracker=tracker.url,
        swarm=swarms[1],
        poll_seconds=POLL,
        on_error=errors.append,
    )
    with following(follower, held.release):
        assert held.busy.wait(WAIT), follower.error
        later = [publisher.publish(STATES[1]), publisher.publish(STATES[2])]
        published = [v1, *(f.result(timeout=WAIT) for f in later)]
        held.release.set()
        assert held.done.wait(WAIT), follower.error
    check_updates(held.updates, published, follower_home, ["full", "delta", "delta"])
    assert follower.updates == 3 and follower.current == "v3"
    assert errors == [] and follower.error is None


def test_follow_from_before_the_first_version_gets_them_all(
    tmp_path: Path,
    publisher: CheckpointPublisher,
    tracker: Tracker,
    swarms: tuple[Swarm, Swarm],
    follower_home: Path,
) -> None:
    """No version yet when following starts; v1..v3 all land before the follower looks."""
    hold = threading.Event()
    client = WatchedClient(tracker.url, hold=hold)
    updates: list[Update] = []
    done = threading.Event()

    def on_update(update: Update) -> None:
        updates.append(update)
        if len(updates) == 3:
            done.set()

    follower = Follower(
        REF,
        on_update,
        fetcher=make_fetcher(tmp_path, follower_home, client, swarms[1]),
        poll_seconds=POLL,
    )
    with following(follower.start(), hold):
        assert client.waiting_after(None).wait(WAIT), follower.error
        # The follower waits for a first version; the first answer is held until all three
        # are out, so it wakes to find three versions it has never seen.
        published = [publisher.publish(s) for s in STATES]
        published_now = publisher.wait(timeout=WAIT)
        assert [f.result() for f in published] == published_now
        hold.set()
        assert done.wait(WAIT), follower.error
    check_updates(updates, published_now, follower_home, ["full", "delta", "delta"])
    assert follower.error is None


def test_a_follower_behind_retention_skips_what_nobody_seeds_any_more(
    tmp_path: Path,
    publisher: CheckpointPublisher,
    tracker: Tracker,
    swarms: tuple[Swarm, Swarm],
    follower_home: Path,
) -> None:
    """Busy with v1 while v2..v4 come out, with the publisher keeping 2: v2 is gone from every
    swarm when the follower gets to it, so it goes on with v3 and v4 instead of waiting."""
    publisher.keep = 2
    states = model_states(4)
    v1 = publisher.publish(states[0]).result(timeout=WAIT)
    held = HeldAtFirst("v4")

    client = RegistryClient(tracker.url)
    fetcher = make_fetcher(tmp_path, follower_home, client, swarms[1], stall_timeout=3)
    follower = Follower(REF, held, fetcher=fetcher, poll_seconds=POLL)
    with following(follower.start(), held.release):
        assert held.busy.wait(WAIT), follower.error
        later = [publisher.publish(s).result(timeout=WAIT) for s in states[1:]]
        assert not publisher.store.has(NAME, "v2")  # retention dropped it, and unseeded it
        held.release.set()
        assert held.done.wait(WAIT), follower.error
    assert [u.version for u in held.updates] == ["v1", "v3", "v4"]
    assert held.updates[0].result.manifest.to_bytes() == v1.manifest.to_bytes()
    assert held.updates[-1].result.manifest.to_bytes() == later[-1].manifest.to_bytes()
    assert follower.error is None


def test_a_follower_skips_a_version_withdrawn_while_it_was_behind(
    tmp_path: Path,
    publisher: CheckpointPublisher,
    tracker: Tracker,
    swarms: tuple[Swarm, Swarm],
    follower_home: Path,
) -> None:
    """Busy with v1 while v2 and v3 come out and v2 is yanked: the follower goes on to v3
    (before, it asked for v2 by name, was refused, and stopped for good)."""
    from p2pdist.formats.keys import load_signing_key
    from p2pdist.formats.statement import Statement

    states = model_states(3)
    publisher.publish(states[0]).result(timeout=WAIT)
    held = HeldAtFirst("v3")

    client = RegistryClient(tracker.url)
    fetcher = make_fetcher(tmp_path, follower_home, client, swarms[1])
    follower = Follower(REF, held, fetcher=fetcher, poll_seconds=POLL)
    with following(follower.start(), held.release):
        assert held.busy.wait(WAIT), follower.error
        for state in states[1:]:
            publisher.publish(state).result(timeout=WAIT)
        yank = Statement("yank", NAME, {"version": "v2", "reason": "NaNs"})
        RegistryClient(tracker.url, publisher.token).post_statement(
            NAME, yank.signed(load_signing_key()).to_bytes()
        )
        held.release.set()
        assert held.done.wait(WAIT), follower.error
    assert [u.version for u in held.updates] == ["v1", "v3"]
    assert follower.error is None


def test_a_follower_with_keep_holds_only_the_newest_versions(
    tmp_path: Path,
    publisher: CheckpointPublisher,
    tracker: Tracker,
    swarms: tuple[Swarm, Swarm],
    follower_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An inference host's disk stays bounded: with keep=2, older versions leave the store
    (and the swarm) as new ones arrive, and each new one is still a delta."""
    publisher.publish(STATES[0]).result(timeout=WAIT)
    updates: list[Update] = []
    done = threading.Event()

    def on_update(update: Update) -> None:
        updates.append(update)
        if update.version == "v3":
            done.set()

    fetcher = make_fetcher(tmp_path, follower_home, RegistryClient(tracker.url), swarms[1])
    follower = Follower(REF, on_update, fetcher=fetcher, poll_seconds=POLL, keep=2)
    with following(follower.start()):
        later = [publisher.publish(s).result(timeout=WAIT) for s in STATES[1:]]
        assert done.wait(WAIT), follower.error
    assert [u.version for u in updates] == ["v1", "v2", "v3"]
    assert [u.result.plan.kind for u in updates] == ["full", "delta", "delta"]
    assert [m.version for m in Store(follower_home).versions(NAME)] == ["v2", "v3"]
    Store(follower_home).verify(NAME, "v3")
    assert updates[-1].result.manifest.to_bytes() == later[-1].manifest.to_bytes()
    monkeypatch.setattr(records, "RACY_WINDOW_NS", 0)  # the files were written a moment ago
    updates[-1].load(verify="once")  # recorded in the follower's store: not hashed again
    assert any((follower_home / records.RECORDS_DIR).rglob("*"))

    def seeded(version: str) -> bool:
        torrent = publisher.store.torrent(NAME, version, "full")
        assert torrent is not None
        return swarms[1].transfer(read_torrent(torrent).info_hash) is not None

    assert not seeded("v1") and seeded("v2") and seeded("v3")
    assert follower.error is None


def test_follow_survives_a_tracker_killed_while_it_waits(
    tmp_path: Path,
    publisher: CheckpointPublisher,
    tracker: Tracker,
    swarms: tuple[Swarm, Swarm],
    follower_home: Path,
) -> None:
    v1 = publisher.publish(STATES[0]).result(timeout=WAIT)
    client = WatchedClient(tracker.url)
    updates: queue.Queue[Update] = queue.Queue()
    follower = Follower(
        REF,
        updates.put,
        fetcher=make_fetcher(tmp_path, follower_home, client, swarms[1]),
        poll_seconds=POLL,
    )
    with following(follower.start()):
        first = updates.get(timeout=WAIT)
        assert client.waiting_after("v1").wait(WAIT), follower.error
        tracker.stop(signal.SIGKILL)
        # Its long-poll breaks (or its next request is refused): a TrackerError, retried.
        assert client.failed.wait(WAIT)
        assert isinstance(client.errors[0], TrackerError)
        assert follower.running and follower.error is None
        tracker.start()  # same port, same data dir: v1 is still there
        v2 = publisher.publish(STATES[1]).result(timeout=WAIT)
        second = updates.get(timeout=WAIT)
        assert follower.running and follower.error is None
    check_updates([first, second], [v1, v2], follower_home, ["full", "delta"])


def test_a_manifest_signed_by_another_key_stops_the_follower(
    tmp_path: Path,
    publisher: CheckpointPublisher,
    tracker: Tracker,
    swarms: tuple[Swarm, Swarm],
    follower_home: Path,
) -> None:
    """Not transient: the follower ends with ``error`` set and ``on_error`` called, once."""
    publisher.publish(STATES[0]).result(timeout=WAIT)
    trust = TrustStore(tmp_path / "follower-config")
    trust.trust(NAME, public_key_of(Ed25519PrivateKey.generate()))  # someone else's key
    updates: list[Update] = []
    errors: list[BaseException] = []
    follower = Follower(
        REF,
        updates.append,
        fetcher=make_fetcher(
            tmp_path, follower_home, RegistryClient(tracker.url), swarms[1], trust
        ),
        poll_seconds=POLL,
        on_error=errors.append,
    )
    with following(follower.start()):
        follower.join(WAIT)
        assert not follower.running, "the follower keeps retrying a key it must refuse"
    assert isinstance(follower.error, SignatureError)
    assert "pinned key" in str(follower.error)
    assert errors == [follower.error]
    assert updates == [] and follower.updates == 0
    assert Store(follower_home).versions(NAME) == []  # refused before any download


@pytest.mark.parametrize("poll", [POLL, 60.0])
def test_stop_ends_a_waiting_follower(
    tmp_path: Path, tracker: Tracker, swarms: tuple[Swarm, Swarm], follower_home: Path, poll: float
) -> None:
    """A follower of a model nobody publishes waits quietly, and stop() ends it at once, in
    the middle of a long-poll too (with 60 s polls, waiting for the poll to answer would
    leave it running past the join below)."""
    client = WatchedClient(tracker.url)
    follower = Follower(
        REF,
        lambda update: None,
        fetcher=make_fetcher(tmp_path, follower_home, client, swarms[1]),
        poll_seconds=poll,
    ).start()
    assert client.waiting_after(None).wait(WAIT)
    threading.Event().wait(0.5)  # inside the registry's wait
    assert follower.running
    follower.stop()
    follower.join(WAIT / 2)
    assert not follower.running and follower.error is None and client.errors == []
