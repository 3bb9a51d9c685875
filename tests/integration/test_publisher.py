"""CheckpointPublisher against a real tracker process: non-blocking, numbered, deltas, retention.

The publisher runs in this process with its own Swarm (passed as ``swarm=``), so the tests can
look at what it seeds; the tracker is a subprocess (``tests/integration/harness.py``). "Does
not block" is shown by ordering, never by timing: the worker is held inside its first step
(writing the shards) on an Event the test controls, and ``publish()`` must have returned, with
its Future not done, while the worker is held there.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.client import RegistryClient
from p2pdist.errors import NotFoundError, P2PDistError, TrackerError
from p2pdist.formats.manifest import Manifest, describe_files, list_files
from p2pdist.formats.shards import load_state_dict, save_state_dict
from p2pdist.publishing import PublishedVersion
from p2pdist.swarm.session import Swarm
from p2pdist.trainer import publisher as publisher_module
from p2pdist.trainer.publisher import CheckpointPublisher
from tests.conftest import free_port
from tests.integration.harness import Tracker

pytestmark = pytest.mark.integration

NAME = "org/model"
WAIT = 60.0
"""Seconds a test waits for something that takes well under one on an idle machine."""


def model_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small mixed-dtype state dict (about 100 kB)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(256, 64, generator=g),
        "layers.0.weight": torch.randn(64, 64, generator=g).to(torch.bfloat16),
        "layers.0.bias": torch.randn(64, generator=g),
        "head.weight": torch.randn(256, 64, generator=g).to(torch.float16),
    }


def train_step(state: dict[str, torch.Tensor], step: int) -> None:
    """An optimizer step, in place: a few rows move, most bytes stay (so deltas are small)."""
    g = torch.Generator().manual_seed(1000 + step)
    for name in ("layers.0.weight", "head.weight"):
        rows = state[name][step % 8 :: 16]
        rows += (1e-2 * torch.randn(rows.shape, generator=g)).to(rows.dtype)
    state["layers.0.bias"][step] += 1.0


def copy_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state.items()}


def assert_same_tensors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name


def seeded(swarm: Swarm, manifest: Manifest) -> list[bool]:
    """Whether the swarm serves the version's full torrent and (if any) its delta torrent."""
    refs = [manifest.torrent, manifest.delta_torrent]
    return [swarm.transfer(ref.v1 or ref.v2 or "") is not None for ref in refs if ref is not None]


@pytest.fixture
def swarm() -> Iterator[Swarm]:
    with Swarm(announce_interval_hint=2) as s:
        yield s


@pytest.fixture
def make_publisher(
    p2p_home: Path, tracker: Tracker, publish_token: str, swarm: Swarm
) -> Iterator[Callable[..., CheckpointPublisher]]:
    """``make_publisher(keep=2)``: a CheckpointPublisher on the test's tracker and swarm."""
    made: list[CheckpointPublisher] = []

    def make(**kwargs: Any) -> CheckpointPublisher:
        options: dict[str, Any] = {
            "tracker": tracker.url,
            "token": publish_token,
            "home": p2p_home,
            "swarm": swarm,
        }
        publisher = CheckpointPublisher(NAME, **{**options, **kwargs})
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        with contextlib.suppress(P2PDistError, TimeoutError):
            publisher.close()


def test_publish_returns_at_once_and_publishes_the_weights_of_that_moment(
    make_publisher: Callable[..., CheckpointPublisher], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller pays only for the CPU snapshot; training on afterwards changes nothing."""
    entered, release = threading.Event(), threading.Event()
    caller = threading.current_thread()
    real_save = publisher_module.save_state_dict

    def held_save(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is caller:
            raise AssertionError("publish() wrote the shards on the caller's thread")
        entered.set()
        assert release.wait(WAIT), "the test never released the worker"
        return real_save(*args, **kwargs)

    monkeypatch.setattr(publisher_module, "save_state_dict", held_save)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(128, 32), torch.nn.Linear(32, 32))
    at_publish = copy_of(model.state_dict())
    publisher = make_publisher()
    try:
        future = publisher.publish(model)
        # publish() has returned while the worker cannot have finished: it is held below.
        assert not future.done()
        assert entered.wait(WAIT), future.exception() if future.done() else "worker never started"
        assert not future.done()
        with torch.no_grad():  # training goes on, in place, while the version is written
            for p in model.parameters():
                p.add_(1.0)
    finally:
        release.set()
    published = future.result(timeout=WAIT)
    assert published.manifest.version == "v1"
    assert_same_tensors(load_state_dict(published.snapshot), at_publish)
    assert not torch.equal(model.state_dict()["1.weight"], at_publish["1.weight"])
    client = RegistryClient(publisher.tracker)
    assert client.manifest_bytes(NAME, "v1") == published.manifest.to_bytes()
    publisher.store.verify(NAME, "v1")


def test_publish_waits_once_max_pending_publishes_are_in_flight(
    make_publisher: Callable[..., CheckpointPublisher], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loop publishing faster than versions are built holds max_pending copies, not one
    per call: the next publish() waits for a slot."""
    release, real_save = threading.Event(), publisher_module.save_state_dict

    def held_save(*args: Any, **kwargs: Any) -> Any:
        assert release.wait(WAIT), "the test never released the worker"
        return real_save(*args, **kwargs)

    monkeypatch.setattr(publisher_module, "save_state_dict", held_save)
    publisher = make_publisher(max_pending=2)
    states = [model_state(seed) for seed in range(3)]
    try:
        queued = [publisher.publish(states[0]), publisher.publish(states[1])]  # at once
        third: list[Any] = []
        caller = threading.Thread(target=lambda: third.append(publisher.publish(states[2])))
        caller.start()
        caller.join(1.0)
        assert caller.is_alive() and third == []  # waiting for a slot
    finally:
        release.set()
    caller.join(WAIT)
    assert [f.result(timeout=WAIT).manifest.version for f in [*queued, *third]] == [
        "v1", "v2", "v3"
    ]  # fmt: skip


def test_versions_number_themselves_and_later_ones_are_deltas(
    make_publisher: Callable[..., CheckpointPublisher], swarm: Swarm
) -> None:
    publisher = make_publisher(keep=5)
    state = model_state()
    expected = []
    for step in range(3):
        publisher.publish(state)  # snapshots now; the next step changes state in place
        expected.append(copy_of(state))
        train_step(state, step)
    published = publisher.wait(timeout=WAIT)
    manifests = [p.manifest for p in published]
    assert [m.version for m in manifests] == ["v1", "v2", "v3"]
    assert [m.parent for m in manifests] == [None, "v1", "v2"]
    assert manifests[0].delta_files == () and manifests[0].delta_torrent is None
    for m in manifests[1:]:
        assert m.delta_files and m.delta_torrent is not None
        assert 0 < m.delta_size < m.total_size // 4  # a few rows moved: a small delta
    for p, state_then in zip(published, expected, strict=True):
        assert_same_tensors(load_state_dict(p.snapshot), state_then)
        assert all(seeded(swarm, p.manifest))
    listed = RegistryClient(publisher.tracker).list_versions(NAME)
    assert [(v["version"], v["parent"]) for v in listed] == [
        ("v1", None),
        ("v2", "v1"),
        ("v3", "v2"),
    ]
    assert publisher.wait() == []  # nothing left pending


def test_retention_keeps_the_newest_versions_seeded_and_frees_the_rest(
    make_publisher: Callable[..., CheckpointPublisher], swarm: Swarm
) -> None:
    publisher = make_publisher(keep=2)
    state = model_state()
    for step in range(4):
        publisher.publish(state)
        train_step(state, step)
    published = publisher.wait(timeout=WAIT)
    old, kept = published[:2], published[2:]
    assert [p.manifest.version for p in kept] == ["v3", "v4"]
    store = publisher.store
    assert [m.version for m in store.versions(NAME)] == ["v3", "v4"]
    assert [p.manifest.version for p in publisher.published] == ["v3", "v4"]
    for p in old:
        assert not any(seeded(swarm, p.manifest)), p.ref
    for p in kept:
        assert seeded(swarm, p.manifest) == [True, True], p.ref  # full and delta
        store.verify(NAME, p.manifest.version)
    referenced = store.referenced_blobs()
    dropped = {f.blake3 for p in old for f in (*p.manifest.files, *p.manifest.delta_files)}
    dropped -= referenced
    assert dropped  # the old versions had blobs of their own...
    assert not any(store.blob_path(b).exists() for b in dropped)  # ...and gc freed them
    assert all(store.blob_path(b).is_file() for b in referenced)
    # The registry keeps every version (they are immutable); only this host stopped serving.
    listed = RegistryClient(publisher.tracker).list_versions(NAME)
    assert [v["version"] for v in listed] == ["v1", "v2", "v3", "v4"]


def test_tracker_down_fails_the_futures_not_the_caller(p2p_home: Path, swarm: Swarm) -> None:
    """No tracker: publish() still returns; each Future, and one wait() each, raise its
    TrackerError."""
    down = f"http://127.0.0.1:{free_port()}"
    publisher = CheckpointPublisher(NAME, tracker=down, token="t", home=p2p_home, swarm=swarm)
    try:
        futures = [publisher.publish(model_state(0)), publisher.publish(model_state(1))]
        with pytest.raises(TrackerError, match="not reachable") as raised:
            publisher.wait(timeout=WAIT)
        assert isinstance(raised.value, P2PDistError)
        assert all(f.done() for f in futures)  # wait() waited for all before raising
        for f in futures:
            error = f.exception()
            assert isinstance(error, TrackerError) and down in str(error)
            assert any(NAME in note for note in getattr(error, "__notes__", []))
        with pytest.raises(TrackerError) as second:  # each failure is raised once
            publisher.wait(timeout=WAIT)
        assert {raised.value, second.value} == {f.exception() for f in futures}
        assert publisher.wait() == []
        assert publisher.store.versions(NAME) == []
        assert publisher.published == []
    finally:
        with contextlib.suppress(P2PDistError):
            publisher.close()


def test_wait_raises_each_failure_once_even_after_a_timeout(
    p2p_home: Path, swarm: Swarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait() that times out must not swallow the failures already in: each failure is
    raised by exactly one later wait()."""
    down = f"http://127.0.0.1:{free_port()}"
    publisher = CheckpointPublisher(NAME, tracker=down, token="t", home=p2p_home, swarm=swarm)
    release, real_save = threading.Event(), publisher_module.save_state_dict

    def held_save(*args: Any, **kwargs: Any) -> Any:
        release.wait(WAIT)  # the second publish is still building when wait() times out
        return real_save(*args, **kwargs)

    try:
        first = publisher.publish(model_state(0))
        assert isinstance(first.exception(timeout=WAIT), TrackerError)
        monkeypatch.setattr(publisher_module, "save_state_dict", held_save)
        publisher.publish(model_state(1), "v7")
        with pytest.raises(TimeoutError):
            publisher.wait(timeout=0.3)
        release.set()
        raised = []
        for _ in range(2):
            with pytest.raises(TrackerError) as failure:
                publisher.wait(timeout=WAIT)
            raised.append(failure.value)
        assert raised[0] is first.exception() and raised[1] is not raised[0]
        assert publisher.wait(timeout=WAIT) == []
    finally:
        release.set()
        with contextlib.suppress(P2PDistError):
            publisher.close()


def test_a_failed_publish_never_removes_a_version_stored_before_it(
    make_publisher: Callable[..., CheckpointPublisher], tracker: Tracker
) -> None:
    """A restarted run publishes step100 again while the registry is down: the publish fails,
    and the step100 that an earlier run stored, registered and seeds stays."""
    state = model_state()
    make_publisher().publish(state, "step100").result(timeout=WAIT)
    tracker.stop(signal.SIGKILL)
    restarted = make_publisher()
    with pytest.raises(TrackerError):
        restarted.publish(state, "step100").result(timeout=WAIT)
    assert restarted.store.has(NAME, "step100")
    tracker.start()
    assert [v["version"] for v in RegistryClient(tracker.url).list_versions(NAME)] == ["step100"]


def test_failed_publish_leaves_nothing_and_the_next_one_takes_its_number(
    make_publisher: Callable[..., CheckpointPublisher], tracker: Tracker, swarm: Swarm
) -> None:
    """The tracker dies after v1: that publish fails cleanly; after a restart v2 follows v1."""
    publisher = make_publisher()
    states = [model_state()]
    for step in range(2):
        states.append(copy_of(states[-1]))
        train_step(states[-1], step)
    first = publisher.publish(states[0]).result(timeout=WAIT)
    tracker.stop(signal.SIGKILL)
    failed = publisher.publish(states[1])
    with pytest.raises(TrackerError) as raised:
        failed.result(timeout=WAIT)
    # The unregistered build is gone from the store and from the swarm.
    assert [m.version for m in publisher.store.versions(NAME)] == ["v1"]
    assert seeded(swarm, first.manifest) == [True]
    tracker.start()
    second: PublishedVersion = publisher.publish(states[2]).result(timeout=WAIT)
    assert (second.manifest.version, second.manifest.parent) == ("v2", "v1")
    assert second.manifest.delta_files
    assert_same_tensors(load_state_dict(second.snapshot), states[2])
    assert all(seeded(swarm, second.manifest))
    listed = RegistryClient(tracker.url).list_versions(NAME)
    assert [v["version"] for v in listed] == ["v1", "v2"]
    assert f"while publishing {NAME}@v2" in getattr(raised.value, "__notes__", [])
    with pytest.raises(TrackerError):  # wait() still reports the failure it has not shown
        publisher.wait(timeout=WAIT)
    assert publisher.wait() == []


def test_a_version_a_killed_run_stored_but_never_registered_is_retained_away(
    make_publisher: Callable[..., CheckpointPublisher], tmp_path: Path
) -> None:
    """A run killed between storing v2 and registering it: the restarted run numbers past
    v2, builds on the registered v1, and its retention window drops v2 like any other."""
    state = model_state()
    first_run = make_publisher(keep=2)
    first_run.publish(state).result(timeout=WAIT)
    first_run.close()
    train_step(state, 0)
    leftover = tmp_path / "leftover"
    save_state_dict(state, leftover)
    manifest = Manifest(name=NAME, version="v2", parent="v1",
                        files=describe_files(leftover, list_files(leftover)))  # fmt: skip
    first_run.store.add_version(manifest.signed(Ed25519PrivateKey.generate()), leftover)
    second_run = make_publisher(keep=2)
    for step in (1, 2):
        train_step(state, step)
        published = second_run.publish(state).result(timeout=WAIT)
    assert [m.version for m in second_run.store.versions(NAME)] == ["v3", "v4"]
    assert second_run.store.manifest(NAME, "v3").parent == "v1"
    assert published.manifest.parent == "v3"


def test_a_registry_that_lost_the_parent_costs_one_publish_not_all(
    make_publisher: Callable[..., CheckpointPublisher], tracker: Tracker
) -> None:
    """The tracker comes back without its database: the publish whose parent it no longer
    knows fails, and the next one is a full version it accepts."""
    publisher = make_publisher()
    state = model_state()
    publisher.publish(state).result(timeout=WAIT)
    tracker.stop()
    shutil.rmtree(tracker.data_dir)
    tracker.start()
    publisher.token = tracker.token("org")
    train_step(state, 0)
    with pytest.raises(NotFoundError, match="parent version v1 is not published"):
        publisher.publish(state).result(timeout=WAIT)
    train_step(state, 1)
    recovered = publisher.publish(state).result(timeout=WAIT)
    assert recovered.manifest.parent is None and not recovered.manifest.delta_files
    listed = RegistryClient(tracker.url).list_versions(NAME)
    assert [v["version"] for v in listed] == [recovered.manifest.version]
    with pytest.raises(NotFoundError):  # the failure is still reported once by wait()
        publisher.wait(timeout=WAIT)


def test_the_with_blocks_own_error_is_not_replaced_by_a_publish_failure(
    p2p_home: Path, swarm: Swarm
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(KeyError, match="the training loop's"):
        with CheckpointPublisher(NAME, tracker=down, token="t", home=p2p_home, swarm=swarm) as pub:
            assert isinstance(pub.publish(model_state()).exception(timeout=WAIT), TrackerError)
            raise KeyError("the training loop's own error")


def test_a_restarted_run_continues_with_a_delta_and_retains_the_earlier_versions(
    make_publisher: Callable[..., CheckpointPublisher], swarm: Swarm
) -> None:
    """A new publisher on the same store (a restarted training process) picks up where the
    last one stopped: the next number, a delta against the last version, one retention window."""
    state = model_state()
    first_run = make_publisher(keep=2)
    for step in range(2):
        first_run.publish(state)
        train_step(state, step)
    first_run.close()
    before = {m.version: m for m in first_run.store.versions(NAME)}
    assert sorted(before) == ["v1", "v2"]

    second_run = make_publisher(keep=2)
    published = second_run.publish(state).result(timeout=WAIT)
    manifest = published.manifest
    assert (manifest.version, manifest.parent) == ("v3", "v2")
    assert manifest.delta_files and manifest.delta_torrent is not None
    assert 0 < manifest.delta_size < manifest.total_size // 4
    assert_same_tensors(load_state_dict(published.snapshot), state)
    # keep=2 across both runs: v1 (the earlier run's oldest) is gone, v2 and v3 stay.
    assert [m.version for m in second_run.store.versions(NAME)] == ["v2", "v3"]
    second_run.store.verify(NAME, "v2")


def test_a_script_that_ends_without_waiting_still_publishes_what_it_queued(
    p2p_home: Path, tracker: Tracker, publish_token: str, tmp_path: Path
) -> None:
    """The README's two lines, then the end of the script: the queued version is published
    (a publish left to run after the interpreter's pools shut down failed, unseen)."""
    script = tmp_path / "train.py"
    script.write_text(
        "import torch\n"
        "from p2pdist.trainer import CheckpointPublisher\n"
        f"publisher = CheckpointPublisher({NAME!r}, tracker={tracker.url!r}, "
        f"token={publish_token!r}, home={str(p2p_home)!r}, seed=False)\n"
        "publisher.publish({'w': torch.arange(4096, dtype=torch.float32)})\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    versions = RegistryClient(tracker.url).list_versions(NAME)
    assert [v["version"] for v in versions] == ["v1"]


def test_a_forked_child_of_a_publishing_process_exits(p2p_home: Path, tmp_path: Path) -> None:
    """The child of a fork has the parent's publishers but not their worker threads: the
    exit-time wait for pending publishes is the parent's business, never the child's."""
    script = tmp_path / "fork.py"
    script.write_text(
        "import os, socket, sys, time, torch\n"
        "from p2pdist.trainer import CheckpointPublisher\n"
        "silent = socket.socket(); silent.bind(('127.0.0.1', 0)); silent.listen(16)\n"
        "url = f'http://127.0.0.1:{silent.getsockname()[1]}'  # accepts, never answers\n"
        f"publisher = CheckpointPublisher({NAME!r}, tracker=url, token='t', "
        f"home={str(p2p_home)!r}, seed=False)\n"
        "publisher.publish({'w': torch.zeros(16)})\n"
        "time.sleep(0.5)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    sys.exit(0)\n"
        "deadline = time.monotonic() + 30\n"
        "while time.monotonic() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0):\n"
        "    time.sleep(0.1)\n"
        "hung = time.monotonic() >= deadline\n"
        "if hung:\n"
        "    os.kill(pid, 9)\n"
        "print('child hung' if hung else 'child exited', flush=True)\n"
        "os._exit(0)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == "child exited", done.stdout + done.stderr


def test_tied_weights_are_written_once_and_the_version_loads_with_from_pretrained(
    make_publisher: Callable[..., CheckpointPublisher], tmp_path: Path
) -> None:
    """A GPT-2 with tied lm_head: the version holds what save_pretrained writes, no more."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    config = transformers.GPT2Config(vocab_size=512, n_positions=32, n_embd=64, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(tmp_path / "hf")
    hf_names = set(load_state_dict(tmp_path / "hf"))
    publisher = make_publisher(side_files={"config.json": config.to_dict()})
    published = publisher.publish(model).result(timeout=WAIT)
    assert len(repr(published)) < 300 and "org/model@v1" in repr(published)

    stored = load_state_dict(published.snapshot)
    assert set(stored) == hf_names and "lm_head.weight" not in stored
    weights = (published.snapshot / "model.safetensors").stat().st_size
    assert weights <= (tmp_path / "hf" / "model.safetensors").stat().st_size + 4096
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(published.snapshot).eval()
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.transformer.wte.weight.data_ptr()
