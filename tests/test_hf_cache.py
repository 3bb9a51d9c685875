"""Placing stored versions in the Hugging Face hub cache (p2pdist/store/hf_cache.py), read
back by huggingface_hub itself with no network (``local_files_only``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist import config
from p2pdist.errors import NotFoundError
from p2pdist.store import hf_cache
from p2pdist.store.cache import Store

from .conftest import make_version_folder, sign_folder, small_state_dict

hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub is not installed")
from huggingface_hub.errors import LocalEntryNotFoundError  # noqa: E402

NAME = "Org/Model-X"


def add(store: Store, tmp_path: Path, key: Ed25519PrivateKey, version: str, seed: int) -> None:
    folder = make_version_folder(tmp_path / f"src-{version}", small_state_dict(seed))
    store.add_version(sign_folder(folder, key, name=NAME, version=version), folder)


def test_placed_versions_are_what_snapshot_download_finds_offline_and_refs_follow(
    p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    store, cache = Store(p2p_home), tmp_path / "hub"
    add(store, tmp_path, signing_key, "v1", 1)
    add(store, tmp_path, signing_key, "v2", 2)
    with pytest.raises(LocalEntryNotFoundError):
        hub.snapshot_download(NAME, cache_dir=cache, local_files_only=True)

    first = hf_cache.place(store, NAME, "v1", cache=cache)
    assert (first.linked, first.copied) == (first.files, 0)
    found = hub.snapshot_download(NAME, cache_dir=cache, local_files_only=True)
    assert Path(found) == first.snapshot
    weights = hub.hf_hub_download(NAME, "model.safetensors", cache_dir=cache, local_files_only=True)
    stored = store.snapshot(NAME, "v1") / "model.safetensors"
    assert Path(weights).read_bytes() == stored.read_bytes()
    assert os.stat(weights).st_ino == stored.resolve().stat().st_ino  # a link, not a copy

    second = hf_cache.place(store, NAME, "v2", cache=cache)  # as `fetch --follow` does
    assert hub.snapshot_download(NAME, cache_dir=cache, local_files_only=True) == str(
        second.snapshot
    )
    older = hub.snapshot_download(NAME, revision="v1", cache_dir=cache, local_files_only=True)
    assert Path(older) == first.snapshot
    again = hf_cache.place(store, NAME, "v2", cache=cache)  # idempotent, nothing new
    assert (again.linked, again.copied, again.revision) == (0, 0, second.revision)
    assert hf_cache.snapshot_folder(NAME, cache=cache) == second.snapshot

    scan = hub.scan_cache_dir(cache)  # what `hf cache scan` reads: a well-formed repo
    assert not scan.warnings, scan.warnings
    (repo,) = scan.repos
    assert repo.repo_id == NAME
    assert {r.commit_hash for r in repo.revisions} == {first.revision, second.revision}
    assert {ref for r in repo.revisions for ref in r.refs} == {"main", "v1", "v2"}


def test_across_filesystems_the_bytes_are_copied_and_the_placement_says_so(
    p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(p2p_home.parent).st_dev:
        pytest.skip("no second filesystem (/dev/shm) to place the HF cache on")
    store = Store(p2p_home)
    add(store, tmp_path, signing_key, "v1", 1)
    cache = shm / f"p2pdist-test-{os.getpid()}-{tmp_path.name}"
    try:
        placed = hf_cache.place(store, NAME, "v1", cache=cache)
        assert placed.linked == 0 and placed.copied == placed.files
        assert placed.copied_bytes == store.manifest(NAME, "v1").total_size
        assert "another filesystem" in placed.describe()
        found = hub.snapshot_download(NAME, cache_dir=cache, local_files_only=True)
        assert (Path(found) / "config.json").read_bytes() == (
            store.snapshot(NAME, "v1") / "config.json"
        ).read_bytes()
    finally:
        import shutil

        shutil.rmtree(cache, ignore_errors=True)


def test_the_hub_cache_is_found_as_huggingface_hub_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert config.hf_hub_cache() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert config.hf_hub_cache() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "explicit"))
    assert config.hf_hub_cache() == tmp_path / "explicit"
    assert config.hf_hub_cache(tmp_path / "flag") == tmp_path / "flag"


def test_a_repo_id_not_in_the_cache_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="hf download org/absent"):
        hf_cache.snapshot_folder("org/absent", cache=tmp_path)
    assert not hf_cache.in_cache("not a repo id", cache=tmp_path)


def test_a_snapshot_is_published_through_its_links_only_while_they_stay_in_the_repo(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "hub" / "models--org--m"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc").write_text("{}")
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").symlink_to("../../blobs/abc")
    assert hf_cache.links_stay_in_repo(snapshot)
    outside = tmp_path / "secret.txt"
    outside.write_text("not the model's")
    (snapshot / "extra.txt").symlink_to(outside)
    assert not hf_cache.links_stay_in_repo(snapshot)
