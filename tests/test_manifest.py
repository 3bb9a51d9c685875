from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.errors import FormatError, IntegrityError, SignatureError, UnsafePathError
from p2pdist.formats.digest import hash_bytes, hash_file
from p2pdist.formats.manifest import (
    FileEntry,
    Manifest,
    TorrentRef,
    canonical_json,
    describe_files,
    list_files,
    safe_relpath,
)

from .conftest import make_version_folder, small_state_dict


@pytest.fixture
def manifest(tmp_path: Path, signing_key: Ed25519PrivateKey) -> Manifest:
    folder = make_version_folder(tmp_path / "v1", small_state_dict(), max_shard_size=1024)
    return Manifest(
        name="org/model",
        version="v1",
        files=describe_files(folder, list_files(folder)),
        torrent=TorrentRef(v1="a" * 40),
        metadata={"step": "100"},
    ).signed(signing_key)


def test_canonical_bytes_are_sorted_compact_and_round_trip(manifest: Manifest) -> None:
    data = manifest.to_bytes()
    obj = json.loads(data)
    assert data == canonical_json(obj)
    assert b" " not in data.replace(b'"created"', b"")
    assert list(obj) == sorted(obj)
    assert Manifest.from_bytes(data) == manifest
    manifest.verify_signature()


def test_blake3_of_large_file_matches_in_memory_hash(tmp_path: Path) -> None:
    data = bytes(range(256)) * 20_000  # > 1 MiB: the mmap, multi-threaded path
    (tmp_path / "big").write_bytes(data)
    assert hash_file(tmp_path / "big") == hash_bytes(data)


def test_tampered_manifest_fails_signature(manifest: Manifest) -> None:
    obj = json.loads(manifest.to_bytes())
    obj["files"][0]["size"] += 1
    tampered = Manifest.from_json(obj)
    with pytest.raises(SignatureError, match="altered after signing"):
        tampered.verify_signature()


def test_untrusted_key_is_refused(manifest: Manifest) -> None:
    other = Ed25519PrivateKey.generate()
    resigned = manifest.signed(other)
    resigned.verify_signature()
    with pytest.raises(SignatureError, match="trusted key"):
        resigned.verify_signature(trusted_key=manifest.public_key)


def test_unsigned_manifest_is_refused(manifest: Manifest) -> None:
    with pytest.raises(SignatureError, match="not signed"):
        replace(manifest, signature=None).verify_signature()


def test_file_whose_blake3_differs_names_file_and_both_hashes(
    tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    folder = make_version_folder(tmp_path / "v1", small_state_dict())
    m = Manifest(name="m", version="v1", files=describe_files(folder, list_files(folder))).signed(
        signing_key
    )
    target = folder / "model.safetensors"
    raw = bytearray(target.read_bytes())
    raw[-1] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError) as info:
        m.verify_files(folder)
    err = info.value
    assert err.path == "model.safetensors"
    assert err.expected == m.file("model.safetensors").blake3
    assert err.actual == hash_file(target)
    assert err.expected in str(err) and err.actual in str(err)


def test_truncated_file_is_reported(tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    folder = make_version_folder(tmp_path / "v1", small_state_dict())
    m = Manifest(name="m", version="v1", files=describe_files(folder, list_files(folder)))
    target = folder / "model.safetensors"
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(IntegrityError, match="truncated"):
        m.verify_files(folder)


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a\\b", "C:x", "", "a/.", "a/"]
)
def test_unsafe_paths(path: str) -> None:
    with pytest.raises(UnsafePathError):
        safe_relpath(path)


@pytest.mark.parametrize("path", ["/abs/model.safetensors", "../model.safetensors"])
def test_manifest_with_unsafe_path_is_rejected(manifest: Manifest, path: str) -> None:
    obj = json.loads(manifest.to_bytes())
    obj["files"][0]["path"] = path
    with pytest.raises(UnsafePathError):
        Manifest.from_json(obj)


def test_unknown_format_version(manifest: Manifest) -> None:
    obj = json.loads(manifest.to_bytes())
    obj["format"] = 2
    with pytest.raises(FormatError, match="unknown manifest format 2"):
        Manifest.from_json(obj)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda o: o.pop("files"), "missing"),
        (lambda o: o.update(extra=1), "unexpected"),
        (lambda o: o.update(version="latest"), "invalid version"),
        (lambda o: o["files"][0].update(blake3="zz"), "invalid blake3"),
        (lambda o: o["files"][0].update(size=-1), "invalid size"),
        (lambda o: o.update(delta={"files": []}), "delta without a parent"),
        (lambda o: o["files"].append(dict(o["files"][0])), "duplicate"),
        (lambda o: o.update(signature="00"), "invalid signature"),
    ],
)
def test_malformed_manifests(manifest: Manifest, mutate, match: str) -> None:  # type: ignore[no-untyped-def]
    obj = json.loads(manifest.to_bytes())
    mutate(obj)
    with pytest.raises(FormatError, match=match):
        Manifest.from_json(obj)


def test_not_json() -> None:
    with pytest.raises(FormatError, match="not valid UTF-8 JSON"):
        Manifest.from_bytes(b"\xff{")


def test_parent_and_delta_files_round_trip(signing_key: Ed25519PrivateKey) -> None:
    entry = FileEntry("model.safetensors", 10, "b" * 64)
    m = Manifest(
        name="m", version="v2", parent="v1", files=(entry,),
        delta_files=(FileEntry("delta/delta.json", 3, "c" * 64),),
        torrent=TorrentRef(v1="a" * 40, v2="d" * 64), delta_torrent=TorrentRef(v1="e" * 40),
    ).signed(signing_key)  # fmt: skip
    back = Manifest.from_bytes(m.to_bytes())
    assert back == m
    assert back.delta_size == 3 and back.total_size == 10
