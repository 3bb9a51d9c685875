from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.torch import load_file

from p2pdist.errors import ConflictError, IntegrityError, NotFoundError
from p2pdist.formats.manifest import Manifest, describe_files, list_files
from p2pdist.store.cache import Store

from .conftest import make_version_folder, sign_folder, small_state_dict


def test_add_version_links_blobs_and_reads_back(p2p_home: Path, stored_version: Manifest) -> None:
    store = Store(p2p_home)
    snap = store.snapshot("org/model", "v1")
    assert (snap / "model.safetensors").is_symlink()
    assert set(load_file(snap / "model.safetensors")) == set(small_state_dict())
    assert store.manifest("org/model", "v1") == stored_version
    assert store.models() == ["org/model"]
    assert [m.version for m in store.versions("org/model")] == ["v1"]
    store.verify("org/model", "v1")


def test_identical_files_across_versions_stored_once(
    p2p_home: Path, tmp_path: Path, stored_version: Manifest, signing_key: Ed25519PrivateKey
) -> None:
    store = Store(p2p_home)
    before = len(list(store.blobs_dir.iterdir()))
    folder = make_version_folder(tmp_path / "v2", small_state_dict())
    store.add_version(sign_folder(folder, signing_key, version="v2"), folder)
    assert len(list(store.blobs_dir.iterdir())) == before


def test_adding_same_version_is_idempotent_other_bytes_conflict(
    p2p_home: Path, tmp_path: Path, stored_version: Manifest, signing_key: Ed25519PrivateKey
) -> None:
    store = Store(p2p_home)
    folder = make_version_folder(tmp_path / "src", small_state_dict())
    store.add_version(stored_version, folder)  # same manifest: no-op
    other = make_version_folder(tmp_path / "other", small_state_dict(seed=1))
    with pytest.raises(ConflictError, match="immutable"):
        store.add_version(sign_folder(other, signing_key), other)


def test_add_refuses_files_that_do_not_match(
    p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    folder = make_version_folder(tmp_path / "src", small_state_dict())
    manifest = sign_folder(folder, signing_key)
    (folder / "config.json").write_text("{}")
    store = Store(p2p_home)
    with pytest.raises(IntegrityError, match=r"config\.json"):
        store.add_version(manifest, folder)
    assert not store.has("org/model", "v1")
    assert list(store.staging_root.iterdir()) == []


def test_missing_version_says_how_to_fetch(p2p_home: Path) -> None:
    with pytest.raises(NotFoundError, match="p2pdist fetch org/model@v9"):
        Store(p2p_home).snapshot("org/model", "v9")


def test_verify_detects_blob_changed_on_disk(p2p_home: Path, stored_version: Manifest) -> None:
    store = Store(p2p_home)
    entry = stored_version.file("config.json")
    store.blob_path(entry.blake3).write_text('{"model_type": "evil"}\n')
    with pytest.raises(IntegrityError, match=r"config\.json"):
        store.verify("org/model", "v1")


def test_gc_removes_only_unreferenced_blobs(p2p_home: Path, stored_version: Manifest) -> None:
    store = Store(p2p_home)
    (store.blobs_dir / ("f" * 64)).write_bytes(b"orphan")
    report = store.gc()
    assert report.removed_blobs == 1 and report.freed_bytes == 6
    store.verify("org/model", "v1")
    store.remove("org/model", "v1")
    assert store.gc().removed_blobs == len(stored_version.files)
    assert list(store.blobs_dir.iterdir()) == []


_KILLED_ADD = r"""
import os, sys
from pathlib import Path
from p2pdist.store import cache as store_mod
from p2pdist.formats.manifest import Manifest, describe_files, list_files
real_rename = os.rename
def dying_rename(src, dst):
    if Path(dst).name == "v2":
        os._exit(9)  # killed between staging and commit
    return real_rename(src, dst)
store_mod.os.rename = dying_rename
s = store_mod.Store(sys.argv[1])
s.add_version(Manifest.read(sys.argv[2]), sys.argv[3])
"""


def test_interrupted_add_leaves_old_snapshot_and_is_cleaned(
    p2p_home: Path, tmp_path: Path, stored_version: Manifest, signing_key: Ed25519PrivateKey
) -> None:
    folder = make_version_folder(tmp_path / "v2", small_state_dict(seed=2))
    manifest = sign_folder(folder, signing_key, version="v2")
    manifest.write(tmp_path / "v2.json")
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_ADD, str(p2p_home), str(tmp_path / "v2.json"), str(folder)],
        env={**os.environ},
    )
    assert proc.returncode == 9
    store_root = Path(p2p_home)
    assert any((store_root / "staging").iterdir())  # the dead process left its staging behind
    store = Store(p2p_home)  # opening the store cleans it
    assert list(store.staging_root.iterdir()) == []
    assert not store.has("org/model", "v2")
    store.verify("org/model", "v1")
    store.add_version(manifest, folder)  # and the next run succeeds
    store.verify("org/model", "v2")


_CONCURRENT_ADD = r"""
import sys
from p2pdist.store.cache import Store
from p2pdist.formats.manifest import Manifest, describe_files, list_files
Store(sys.argv[1]).add_version(Manifest.read(sys.argv[2]), sys.argv[3])
"""


def test_two_processes_adding_same_version(
    p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    folder = make_version_folder(tmp_path / "v1", small_state_dict(), max_shard_size=512)
    manifest = sign_folder(folder, signing_key)
    manifest.write(tmp_path / "m.json")
    args = [
        sys.executable,
        "-c",
        _CONCURRENT_ADD,
        str(p2p_home),
        str(tmp_path / "m.json"),
        str(folder),
    ]
    procs = [subprocess.Popen(args) for _ in range(3)]
    assert [p.wait() for p in procs] == [0, 0, 0]
    Store(p2p_home).verify("org/model", "v1")


_FULL_DISK_ADD = r"""
import resource, signal, sys
from p2pdist.errors import StoreError
from p2pdist.formats.manifest import Manifest, describe_files, list_files
from p2pdist.store.cache import Store
store = Store(sys.argv[1])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    store.add_version(Manifest.read(sys.argv[2]), sys.argv[3])
except StoreError as e:
    print(f"StoreError: {e}")
    sys.exit(3)
"""


def test_write_failure_is_a_store_error_and_loses_nothing(
    p2p_home: Path, tmp_path: Path, stored_version: Manifest, signing_key: Ed25519PrivateKey
) -> None:
    folder = make_version_folder(tmp_path / "v2", small_state_dict(seed=3))
    manifest = sign_folder(folder, signing_key, version="v2")
    manifest.write(tmp_path / "v2.json")
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _FULL_DISK_ADD,
            str(p2p_home),
            str(tmp_path / "v2.json"),
            str(folder),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.startswith("StoreError: cannot add org/model@v2")
    store = Store(p2p_home)
    assert not store.has("org/model", "v2")
    store.verify("org/model", "v1")
    assert not [b for b in store.blobs_dir.iterdir() if b.name.endswith(".incomplete")]
    store.add_version(manifest, folder)  # with room again, the same add succeeds
    store.verify("org/model", "v2")


def test_a_file_that_changed_after_hashing_is_never_stored_under_the_old_hash(
    p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    folder = make_version_folder(tmp_path / "src", small_state_dict())
    manifest = sign_folder(folder, signing_key)
    (folder / "config.json").write_text('{"model_type": "changed"}\n')  # after describe_files
    store = Store(p2p_home)
    with pytest.raises(IntegrityError, match="changed while it was being added"):
        store.add_version(manifest, folder, verified=True)  # the caller's hashes are stale
    assert not store.has("org/model", "v1")
    assert not (store.blobs_dir / manifest.file("config.json").blake3).exists()


def test_gc_frees_abandoned_partial_downloads_but_not_recent_ones(p2p_home: Path) -> None:
    store = Store(p2p_home)
    for name, age in (("a" * 40, 2 * 86400), ("b" * 40, 10)):
        folder = store.partial_dir(name)
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"x" * 8192)
        store.resume_path(name).write_bytes(b"d")
        old = time.time() - age
        os.utime(folder / "model.safetensors", (old, old))
        os.utime(folder, (old, old))
    store.gc()
    assert not store.partial_dir("a" * 40).exists() and not store.resume_path("a" * 40).exists()
    assert store.partial_dir("b" * 40).exists() and store.resume_path("b" * 40).exists()


def test_versions_of_one_second_are_ordered_by_lineage_then_number(
    p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    """``created`` has one-second resolution: a trainer publishing several versions a second
    must still find its newest as ``latest`` (v10 after v9, a child after its parent)."""
    folder = make_version_folder(tmp_path / "src", small_state_dict())
    files = describe_files(folder, list_files(folder))
    store = Store(p2p_home)
    second = "2026-11-28T12:00:00Z"
    lineage = [("v8", None), ("v9", "v8"), ("v10", "v9"), ("v11", "v10"), ("prev", None),
               ("next", "prev")]  # fmt: skip
    for version, parent in reversed(lineage):
        manifest = Manifest(name="org/model", version=version, parent=parent, created=second,
                            files=files).signed(signing_key)  # fmt: skip
        store.add_version(manifest, folder)
    order = [m.version for m in store.versions("org/model")]
    assert order.index("prev") < order.index("next")
    assert [v for v in order if v.startswith("v")] == ["v8", "v9", "v10", "v11"]
    earlier = Manifest(name="org/model", version="v99", created="2026-11-28T11:59:59Z",
                       files=files).signed(signing_key)  # fmt: skip
    store.add_version(earlier, folder)
    assert store.versions("org/model")[0].version == "v99"  # the clock comes first
    assert store.latest("org/model").version == "v11"
    # v2 descends from v1, v3 from nothing stored: v3, the highest number, is the newest
    # (a child came after every version with fewer stored ancestors, and v2 was latest)
    for version, parent in (("v3", None), ("v2", "v1"), ("v1", None)):
        manifest = Manifest(name="org/other", version=version, parent=parent, created=second,
                            files=files).signed(signing_key)  # fmt: skip
        store.add_version(manifest, folder)
    assert [m.version for m in store.versions("org/other")] == ["v1", "v2", "v3"]


def test_a_damaged_blob_is_replaced_when_its_bytes_are_added_again(
    p2p_home: Path, stored_version: Manifest, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    """Bit rot in a blob shared by two versions: removing one and adding (or fetching) it
    again from good bytes repairs the blob for both, instead of linking the damaged one."""
    store = Store(p2p_home)
    folder = make_version_folder(tmp_path / "again", small_state_dict())
    second = sign_folder(folder, signing_key, version="v2")
    store.add_version(second, folder)
    entry = next(e for e in stored_version.files if e.path.endswith(".safetensors"))
    blob = store.blob_path(entry.blake3)
    blob.chmod(0o644)
    with open(blob, "r+b") as f:  # same size, other bytes
        f.seek(-1, 2)
        last = f.read(1)[0]
        f.seek(-1, 2)
        f.write(bytes([last ^ 1]))
    assert blob.stat().st_size == entry.size
    with pytest.raises(IntegrityError):
        store.verify("org/model", "v1")
    store.remove("org/model", "v1")
    store.add_version(stored_version, folder)
    store.verify("org/model", "v1")
    store.verify("org/model", "v2")


def test_gc_never_removes_the_partial_of_a_running_download(p2p_home: Path) -> None:
    """A download can be idle for longer than any age (a slow swarm, a long check of a big
    resumed file): while a process holds it, gc leaves its partial alone."""
    store = Store(p2p_home)
    partial = store.partial_dir("d" * 40)
    partial.mkdir(parents=True)
    (partial / "piece").write_bytes(b"x" * 4096)
    idle = time.time() - 7200
    for path in (partial / "piece", partial):
        os.utime(path, (idle, idle))
    with store.downloading("d" * 40):
        store.gc(partial_max_age=60)
        assert partial.exists()
    store.gc(partial_max_age=60)
    assert not partial.exists()


def test_a_staged_hard_link_to_a_blob_is_not_hashed_twice(
    p2p_home: Path,
    stored_version: Manifest,
    tmp_path: Path,
    signing_key: Ed25519PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fetched delta stages a file it kept unchanged as a hard link to the parent's blob,
    hashed as it was rebuilt: committing it (move) links the blob without a second read. A
    folder added without ``move`` is someone else's, so its blob is hashed before sharing."""
    import p2pdist.store.cache as cache

    store = Store(p2p_home)
    entry = next(e for e in stored_version.files if e.path.endswith(".safetensors"))
    blob = store.blob_path(entry.blake3)
    hashed: list[Path] = []
    real_hash = cache.hash_file

    def counting(path: str | Path) -> str:
        hashed.append(Path(path))
        return real_hash(path)

    monkeypatch.setattr(cache, "hash_file", counting)
    for version, move in (("v2", True), ("v3", False)):
        staged = make_version_folder(tmp_path / version, small_state_dict())
        (staged / entry.path).unlink()
        os.link(blob, staged / entry.path)
        hashed.clear()
        store.add_version(
            sign_folder(staged, signing_key, version=version), staged, move=move, verified=True
        )
        assert (store.snapshot("org/model", version) / entry.path).resolve() == blob
        assert (blob in hashed) is not move, (version, hashed)
        store.verify("org/model", version)
