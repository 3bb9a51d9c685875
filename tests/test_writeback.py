"""A running download is written to disk as it arrives (store/writeback.py), not all at
the commit: files that changed are fdatasynced, unchanged ones are left alone, and the
fetcher runs it around every swarm download."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from p2pdist import config
from p2pdist.errors import ConfigError
from p2pdist.store import writeback
from p2pdist.store.cache import Store
from p2pdist.store.writeback import Writeback
from p2pdist.swarm.seeder import seed_version
from tests.conftest import wait_until
from tests.hostile_registry import NAME, World, loopback_swarm


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths a writeback pass synced (the sync still runs)."""
    calls: list[str] = []
    real = writeback._datasync

    def recording(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(writeback, "_datasync", recording)
    return calls


def test_a_pass_syncs_the_files_that_changed_and_only_those(
    tmp_path: Path, synced: list[str]
) -> None:
    (tmp_path / "sub").mkdir()
    a, b = tmp_path / "a.safetensors", tmp_path / "sub" / "b.safetensors"
    a.write_bytes(b"x" * 5000)
    b.write_bytes(b"y" * 5000)
    (tmp_path / "link").symlink_to(a)
    flusher = Writeback(tmp_path)

    assert sorted(flusher.flush_changed()) == [a, b]
    assert flusher.flush_changed() == []  # nothing moved since
    with a.open("r+b") as f:
        f.seek(1 << 20)
        f.write(b"z")  # grows (as libtorrent's writes into a preallocated file add blocks)
    assert flusher.flush_changed() == [a]
    assert sorted(synced) == sorted(str(f.resolve()) for f in (a, b, a))


def test_a_file_removed_during_a_pass_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "gone").write_bytes(b"1")
    (tmp_path / "kept").write_bytes(b"2")
    real_open = os.open

    def vanishing(path: Any, flags: int, *args: Any) -> int:
        if str(path).endswith("gone"):
            os.unlink(path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(writeback.os, "open", vanishing)
    assert Writeback(tmp_path).flush_changed() == [tmp_path / "kept"]


def test_a_pass_that_fails_does_not_stop_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f").write_bytes(b"1")
    failures = []

    def broken(fd: int) -> None:
        failures.append(fd)
        raise RuntimeError("a filesystem that cannot sync")

    monkeypatch.setattr(writeback, "_datasync", broken)
    with Writeback(tmp_path, interval=0.01) as flusher:
        wait_until(lambda: len(failures) >= 2, "two failed passes")
        assert flusher._thread.is_alive()


def test_the_thread_passes_while_entered_and_stops_at_exit(tmp_path: Path) -> None:
    with Writeback(tmp_path, interval=0.01) as flusher:
        wait_until(lambda: flusher.passes >= 2, "two writeback passes")
    done = flusher.passes
    assert not flusher._thread.is_alive()
    assert flusher.passes == done
    with Writeback(tmp_path, interval=0) as off:
        pass
    assert off.passes == 0 and not off._thread.is_alive()


def test_the_interval_comes_from_the_environment_or_the_config_file(
    p2p_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert config.writeback_interval() == 1.0
    monkeypatch.setenv("P2PDIST_WRITEBACK", "0")
    assert config.writeback_interval() == 0.0
    for bad in ("soon", "inf", "nan"):
        monkeypatch.setenv("P2PDIST_WRITEBACK", bad)
        with pytest.raises(ConfigError, match=f"writeback interval '{bad}' must be a number"):
            config.writeback_interval()
    config_file = p2p_home.parent / "writeback.toml"
    config_file.write_text("writeback = 2.5\n")
    monkeypatch.setenv("P2PDIST_CONFIG", str(config_file))
    monkeypatch.setenv("P2PDIST_WRITEBACK", "0.5")
    assert config.writeback_interval() == 0.5  # the environment over the file
    monkeypatch.delenv("P2PDIST_WRITEBACK")
    assert config.writeback_interval() == 2.5
    config_file.write_text("writeback = [1]\n")
    with pytest.raises(ConfigError, match=r"writeback interval \[1\] must be a number"):
        config.writeback_interval()


def test_a_fetch_writes_its_download_back_while_it_runs(
    swarm_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every swarm download of a fetch runs inside a Writeback over its partial folder, whose
    thread passes while it runs (what a pass syncs: the tests above)."""
    seen: list[tuple[Path, float, int]] = []

    class Recording(Writeback):
        def __exit__(self, *exc: object) -> None:
            super().__exit__(*exc)
            seen.append((self.folder, self.interval, self.passes))

    monkeypatch.setattr("p2pdist.fetcher.Writeback", Recording)
    monkeypatch.setenv("P2PDIST_WRITEBACK", "0.005")
    manifest = swarm_world.publish()
    with loopback_swarm() as seeder, loopback_swarm() as swarm:
        seed_version(Store(swarm_world.publisher_home), NAME, "v1", swarm=seeder)
        fetcher = swarm_world.consumer(swarm=swarm, stall_timeout=30)
        fetcher.fetch(f"{NAME}@v1")
    store = Store(swarm_world.consumer_home)
    assert store.has(NAME, "v1")
    assert manifest.torrent is not None
    info_hash = manifest.torrent.v1 or manifest.torrent.v2 or ""
    assert [(folder, interval) for folder, interval, _ in seen] == [
        (store.partial_dir(info_hash), 0.005)
    ]
    assert seen[0][2] >= 1  # passes made during the download
