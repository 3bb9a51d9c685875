"""Safety paths proven through real fetches (issue 15, "Safety paths the suite does not prove").

Each test goes through a real tracker (in-process, on loopback), real libtorrent sessions
trading real bytes, and the public entry points (``Fetcher.fetch``, ``Follower``,
``p2pdist.load`` / ``load_into`` / ``fetch``). Each was checked to fail with its safety code
removed (the commit that added this module says which line each one guards).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import p2pdist
from p2pdist.client import RegistryClient
from p2pdist.errors import IntegrityError, StoreError
from p2pdist.follower import Follower, Update
from p2pdist.formats.keys import load_signing_key
from p2pdist.formats.manifest import Manifest, TorrentRef, describe_files, list_files
from p2pdist.formats.torrent import make_torrent
from p2pdist.publishing import torrent_name
from p2pdist.store.cache import Store
from p2pdist.swarm.seeder import seed_version
from tests.conftest import make_version_folder, small_state_dict, wait_until
from tests.hostile_registry import LATEST_PATH, NAME, HostileRegistry, World, loopback_swarm

pytestmark = pytest.mark.integration

WAIT = 60.0
"""Seconds a test waits for something that takes a second or two on an idle machine."""


def test_a_registry_offering_an_older_version_as_latest_stops_a_real_follower(
    swarm_world: World, tmp_path: Path
) -> None:
    """The registry lies once the follower has v2: v1 is 'latest' and listed after v2. The
    follower fetches it (it cannot know before the signed manifest is in hand), refuses it as
    a rollback (v1 is v2's parent), stops with that error and never delivers it."""
    swarm_world.publish("v1")
    swarm_world.publish("v2", folder=make_version_folder(tmp_path / "v2", small_state_dict(1)),
                  parent="v1")  # fmt: skip
    delivered: list[str] = []
    with (
        HostileRegistry(swarm_world.tracker) as registry,
        loopback_swarm() as seeder,
        loopback_swarm() as swarm,
    ):
        for version in ("v1", "v2"):
            seed_version(Store(swarm_world.publisher_home), NAME, version, swarm=seeder)
        fetcher = swarm_world.consumer(registry.url, swarm, stall_timeout=30)

        def on_update(update: Update) -> None:
            delivered.append(update.version)
            if update.version == "v2":  # from now on the registry rolls back
                registry.answer(r"/versions$", 200, json.dumps(
                    {"versions": [{"version": "v2"}, {"version": "v1"}]}).encode())  # fmt: skip
                registry.answer(LATEST_PATH, 200, b'{"version": "v1"}')

        follower = Follower(f"{NAME}@latest", on_update, fetcher=fetcher, seed=False,
                            poll_seconds=2, start_after="v1")  # fmt: skip
        follower.start()
        try:
            wait_until(lambda: not follower.running or "v1" in delivered, "the follower's verdict")
        finally:
            follower.stop()
            follower.join(WAIT)
    assert delivered == ["v2"]
    assert isinstance(follower.error, IntegrityError)
    assert "ancestor of v2; refusing a rollback" in str(follower.error)


def test_content_that_passes_the_piece_hashes_but_not_the_signed_blake3_is_not_stored(
    swarm_world: World, tmp_path: Path
) -> None:
    """A signed manifest whose torrent (the infohash it signs) describes other bytes than its
    blake3s: libtorrent's piece checks all pass, and the fetch must still refuse to commit."""
    good = swarm_world.folder
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    shard = bad / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte of tensor data changed
    shard.write_bytes(bytes(data))
    files = list_files(good)
    torrent = make_torrent(bad, files, name=torrent_name(NAME, "v1"),
                           announce=[f"{swarm_world.tracker}/announce"])  # fmt: skip
    manifest = Manifest(
        name=NAME, version="v1", files=describe_files(good, files),
        torrent=TorrentRef(torrent.info_hash_v1, torrent.info_hash_v2),
    ).signed(load_signing_key(create=True))  # fmt: skip
    RegistryClient(swarm_world.tracker, swarm_world.token).publish(
        manifest.to_bytes(), torrent.data, None
    )
    with loopback_swarm() as seeder, loopback_swarm() as swarm:
        seeder.seed(torrent.data, bad)
        with pytest.raises(IntegrityError, match=r"model.safetensors: blake3 .* differs"):
            swarm_world.consumer(swarm=swarm, stall_timeout=30).fetch(f"{NAME}@v1")
    assert not Store(swarm_world.consumer_home).has(NAME, "v1")


def test_a_fetch_that_cannot_fit_is_refused_before_any_download(
    swarm_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk space is checked through a real fetch, before a byte is asked of the swarm."""
    manifest = swarm_world.publish()
    usage = shutil.disk_usage(swarm_world.folder)
    free = manifest.total_size - 1
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=free))
    with loopback_swarm() as seeder, loopback_swarm() as swarm:
        seed_version(Store(swarm_world.publisher_home), NAME, "v1", swarm=seeder)
        with pytest.raises(StoreError, match=f"needs {manifest.total_size:,} bytes"):
            swarm_world.consumer(swarm=swarm, stall_timeout=30).fetch(f"{NAME}@v1")
    store = Store(swarm_world.consumer_home)
    assert not store.has(NAME, "v1")
    partial = store.root / "partial"
    assert not partial.exists() or not any(partial.iterdir())


def test_python_load_and_fetch_fetch_when_not_stored_and_fall_back_when_the_tracker_is_down(
    swarm_world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``p2pdist.fetch``, ``p2pdist.load("org/model@latest")`` and ``load_into`` from Python:
    each fetches what the store lacks; with the tracker down, ``@latest`` is the newest stored
    version (a warning, not an error)."""
    linear = torch.nn.Linear(8, 4)
    v1 = make_version_folder(tmp_path / "lin1", dict(linear.state_dict()))
    v2_state = {k: v + 1 for k, v in linear.state_dict().items()}
    v2 = make_version_folder(tmp_path / "lin2", v2_state)
    swarm_world.publish("v1", folder=v1)
    monkeypatch.setenv("P2PDIST_TRACKER", swarm_world.tracker)
    home = swarm_world.consumer_home
    with loopback_swarm() as seeder:
        seed_version(Store(swarm_world.publisher_home), NAME, "v1", swarm=seeder)
        path = p2pdist.fetch(f"{NAME}@v1", home=home)
        assert (path / "model.safetensors").read_bytes() == (v1 / "model.safetensors").read_bytes()
        swarm_world.publish("v2", folder=v2)
        seed_version(Store(swarm_world.publisher_home), NAME, "v2", swarm=seeder)
        tensors = p2pdist.load(f"{NAME}@latest", home=home)  # v2: not stored, so fetched
        assert torch.equal(tensors["weight"], v2_state["weight"])
        assert Store(home).has(NAME, "v2")
        Store(home).remove(NAME, "v2")
        module = torch.nn.Linear(8, 4)
        p2pdist.load_into(module, f"{NAME}@latest", home=home)  # fetched again
        assert torch.equal(module.weight.detach(), v2_state["weight"])
        Store(home).remove(NAME, "v2")
    monkeypatch.setenv("P2PDIST_TRACKER", "http://127.0.0.1:9")  # nothing listens there
    tensors = p2pdist.load(f"{NAME}@latest", home=home)
    assert torch.equal(tensors["weight"], linear.state_dict()["weight"])  # the newest stored
    module = torch.nn.Linear(8, 4)
    p2pdist.load_into(module, f"{NAME}@latest", home=home)
    assert torch.equal(module.weight.detach(), linear.state_dict()["weight"])


def test_fetch_follow_keep_prunes_older_versions_from_the_store(
    swarm_world: World, tmp_path: Path
) -> None:
    """``p2pdist fetch NAME@latest --follow --keep 1``, the CLI an inference host runs: as v2
    and v3 arrive (by delta), the older versions leave its store."""
    env = {
        **os.environ,
        "P2PDIST_HOME": str(swarm_world.consumer_home),
        "P2PDIST_CONFIG_DIR": str(tmp_path / "follower-config"),
        "P2PDIST_TRACKER": swarm_world.tracker,
        "P2PDIST_LISTEN": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }
    publisher = Store(swarm_world.publisher_home)
    consumer = Store(swarm_world.consumer_home)

    def stored() -> list[str]:
        return [m.version for m in consumer.versions(NAME)]

    swarm_world.publish("v1")
    with loopback_swarm() as seeder:
        seed_version(publisher, NAME, "v1", swarm=seeder)
        follower = subprocess.Popen(
            [sys.executable, "-m", "p2pdist.cli", "fetch", f"{NAME}@latest", "--follow",
             "--keep", "1", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            wait_until(lambda: stored() == ["v1"] or follower.poll() is not None, "v1 fetched")
            for number in (2, 3):
                state = {**small_state_dict(), "counts": torch.arange(5) * number}
                folder = make_version_folder(tmp_path / f"v{number}", state)
                swarm_world.publish(f"v{number}", folder=folder, parent=f"v{number - 1}")
                seed_version(publisher, NAME, f"v{number}", swarm=seeder)
                wait_until(
                    lambda n=number: stored() == [f"v{n}"] or follower.poll() is not None,
                    f"v{number} fetched and the older versions dropped",
                )
            assert follower.poll() is None, follower.communicate(timeout=30)
        finally:
            follower.send_signal(signal.SIGINT)
            try:
                out, err = follower.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                follower.kill()
                out, err = follower.communicate(timeout=30)
    fetched = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [f["ref"] for f in fetched] == [f"{NAME}@v1", f"{NAME}@v2", f"{NAME}@v3"], err
    assert [f["plan"] for f in fetched] == ["full", "delta", "delta"]
    assert stored() == ["v3"]
