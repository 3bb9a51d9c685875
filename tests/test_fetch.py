"""Fetch's local parts (the swarm paths are in tests/integration): copying a stored version
out to a user folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from p2pdist.errors import IntegrityError
from p2pdist.fetcher import _copy_out
from p2pdist.formats.manifest import Manifest, TorrentRef
from p2pdist.store.cache import Store


def test_copy_out_leaves_the_folders_other_files_alone(
    p2p_home: Path, stored_version: Manifest, tmp_path: Path
) -> None:
    out = tmp_path / "project"
    (out / "src").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    (out / "src" / "train.py").write_text("print(1)")
    snapshot = Store(p2p_home).snapshot("org/model", "v1")
    assert _copy_out(snapshot, stored_version, out) == out
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "src" / "train.py").read_text() == "print(1)"
    for entry in stored_version.files:
        assert (out / entry.path).read_bytes() == (snapshot / entry.path).read_bytes()
    assert not list(out.rglob("*.incomplete"))


def test_copy_out_refuses_a_stored_file_damaged_since_it_was_verified(
    p2p_home: Path, stored_version: Manifest, tmp_path: Path
) -> None:
    snapshot = Store(p2p_home).snapshot("org/model", "v1")
    shard = next(e for e in stored_version.files if e.path.endswith(".safetensors"))
    blob = (snapshot / shard.path).resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(IntegrityError, match=r"stored copy of org/model@v1 is damaged.*p2pdist rm"):
        _copy_out(snapshot, stored_version, out)
    assert not (out / shard.path).exists()
    assert not list(out.rglob("*.incomplete"))


def test_a_fetch_that_cannot_fit_is_refused_before_it_fills_the_disk(
    p2p_home: Path, stored_version: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download of more than the free space would fill the disk for every other process
    and then fail; it is refused up front. Bytes a partial download already holds count as
    available (resuming it needs no new space for them)."""
    import shutil

    from p2pdist.errors import StoreError
    from p2pdist.fetcher import Fetcher
    from p2pdist.swarm.plan import FetchPlan

    fetcher = Fetcher(home=p2p_home, tracker="http://127.0.0.1:9")
    size = stored_version.total_size
    target = dataclasses.replace(stored_version, torrent=TorrentRef("c" * 40, None))
    plan = FetchPlan("full", target, size, size)
    usage = shutil.disk_usage(p2p_home)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=size - 1))
    with pytest.raises(StoreError, match=f"needs {size:,} bytes .* and {size - 1:,} are free"):
        fetcher._check_space(plan)
    other = fetcher.store.partial_dir("b" * 40)  # another download's partial: not this one's
    other.mkdir(parents=True)
    (other / "piece").write_bytes(b"x" * 4096)
    with pytest.raises(StoreError, match="are free"):
        fetcher._check_space(plan)
    own = fetcher.store.partial_dir("c" * 40)
    own.mkdir(parents=True)
    (own / "piece").write_bytes(b"x" * 4096)  # this fetch resumes: the rest is already here
    fetcher._check_space(plan)


def test_a_fetch_result_has_a_short_repr(stored_version: Manifest, p2p_home: Path) -> None:
    from p2pdist.fetcher import FetchResult
    from p2pdist.swarm.plan import FetchPlan

    size = stored_version.total_size
    plan = FetchPlan("full", stored_version, size, size)
    result = FetchResult(stored_version, p2p_home, plan, size, 0, 0, 1.25, True)
    assert repr(result) == f"FetchResult(org/model@v1, full, path={str(p2p_home)!r}, 1.2 s)"
