"""Seeding what a store holds (``p2pdist seed``): a damaged version does not stop the rest."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.errors import ConfigError, P2PDistError, StoreError
from p2pdist.formats.manifest import list_files
from p2pdist.formats.torrent import make_torrent
from p2pdist.store.cache import Store
from p2pdist.swarm.seeder import seed_all
from p2pdist.swarm.session import Swarm

from .conftest import make_version_folder, sign_folder, small_state_dict, wait_until


def _add(store: Store, root: Path, key: Ed25519PrivateKey, version: str, seed: int) -> None:
    folder = make_version_folder(root / version, small_state_dict(seed))
    torrent = make_torrent(folder, list_files(folder), name=f"model-{version}")
    store.add_version(sign_folder(folder, key, version=version), folder, torrent=torrent.data)


def test_one_damaged_version_is_skipped_and_the_others_seeded(
    p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    store = Store(p2p_home)
    for number in (1, 2, 3):
        _add(store, tmp_path, signing_key, f"v{number}", number)
    snapshot = store.snapshot("org/model", "v2")
    shard = next(snapshot.glob("*.safetensors")).resolve()
    shard.unlink()  # the blob is gone: v2 cannot be seeded
    skipped: list[tuple[str, P2PDistError]] = []
    with Swarm() as swarm:
        transfers = seed_all(store, swarm=swarm, on_skip=lambda ref, e: skipped.append((ref, e)))
        assert len(transfers) == 2  # v1 and v3, one full torrent each
        assert [ref for ref, _ in skipped] == ["org/model@v2"]
        assert isinstance(skipped[0][1], StoreError)
    for number in (1, 3):
        store.remove("org/model", f"v{number}")
    skipped.clear()
    with Swarm() as swarm, pytest.raises(StoreError, match="cannot seed model-v2"):
        seed_all(store, swarm=swarm, on_skip=lambda ref, e: skipped.append((ref, e)))
    assert skipped == []  # nothing could be seeded: the error itself, said once
    _add(store, tmp_path, signing_key, "v4", 4)
    next(store.snapshot("org/model", "v4").glob("*.safetensors")).resolve().unlink()
    with Swarm() as swarm, pytest.raises(StoreError, match="cannot seed model-v2"):
        seed_all(store, swarm=swarm, on_skip=lambda ref, e: skipped.append((ref, e)))
    assert [ref for ref, _ in skipped] == ["org/model@v4"]  # every failure said, once


def test_a_bad_setting_is_not_blamed_on_a_version(
    p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(p2p_home)
    _add(store, tmp_path, signing_key, "v1", 1)
    monkeypatch.setenv("P2PDIST_UPLOAD_LIMIT", "fast")
    skipped: list[tuple[str, P2PDistError]] = []
    with pytest.raises(ConfigError, match="upload limit 'fast'"):
        seed_all(store, on_skip=lambda ref, e: skipped.append((ref, e)))
    assert skipped == []


def test_the_daemon_picks_up_a_new_version_between_full_passes(
    p2p_home: Path,
    tmp_path: Path,
    signing_key: Ed25519PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``start_new`` serves added versions and leaves removals to the full pass; ``run``
    calls it between full passes (here an hour apart), so a published version is served at
    the daemon's poll, not at its next full pass."""
    import threading

    from p2pdist.swarm import seeder

    store = Store(p2p_home)
    _add(store, tmp_path, signing_key, "v1", 1)
    lines: list[str] = []
    with Swarm() as swarm:
        daemon = seeder.SeedDaemon(store, swarm=swarm, say=lines.append)
        assert daemon.sync() == (1, 0)
        _add(store, tmp_path, signing_key, "v2", 2)
        store.remove("org/model", "v1")
        assert daemon.start_new() == 1
        assert set(daemon.serving) == {("org/model", "v1"), ("org/model", "v2")}
        assert daemon.sync() == (0, 1)  # the removal, at the full pass
        assert set(daemon.serving) == {("org/model", "v2")}

        monkeypatch.setattr(seeder, "RESCAN_INTERVAL", 3600.0)
        stop = threading.Event()
        runner = threading.Thread(target=daemon.run, args=(stop,), kwargs={"poll": 0.01})
        runner.start()
        try:
            _add(store, tmp_path, signing_key, "v3", 3)
            wait_until(lambda: ("org/model", "v3") in daemon.serving, "v3 served", timeout=30)
        finally:
            stop.set()
            runner.join()
    assert lines == ["Stopped seeding org/model@v1: it was removed from the store"]
