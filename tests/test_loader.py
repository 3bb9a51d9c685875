"""Verified loading: CPU paths end to end, the staged (CUDA) pipeline driven on the CPU, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.torch import load_file

from p2pdist.errors import (
    ConfigError,
    FormatError,
    IntegrityError,
    NotFoundError,
    P2PDistError,
    SignatureError,
)
from p2pdist.formats.keys import TrustStore, public_key_of
from p2pdist.formats.manifest import Manifest, canonical_json
from p2pdist.formats.shards import read_header, shard_files
from p2pdist.loading import fit, lazy, loader
from p2pdist.loading.staging import StagedCopier
from p2pdist.store import records, verified
from p2pdist.store.cache import Store

from .conftest import make_version_folder, sign_folder, small_state_dict

REF = "org/model@v1"


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Byte-exact equality (works for fp8 and bool, which torch.equal does not all cover)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def add(home: Path, folder: Path, key: Ed25519PrivateKey, version: str = "v1") -> Manifest:
    manifest = sign_folder(folder, key, version=version)
    Store(home).add_version(manifest, folder)
    return manifest


@pytest.fixture
def sharded_version(p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey) -> Path:
    """org/model@v1 in three shards plus an index; returns its snapshot folder."""
    g = torch.Generator().manual_seed(1)
    sd = {f"block.{i}.weight": torch.randn(64, 64, generator=g) for i in range(6)}
    sd["head.bias"] = torch.randn(7, generator=g).to(torch.bfloat16)
    folder = make_version_folder(tmp_path / "sharded", sd, max_shard_size=40_000)
    add(p2p_home, folder, signing_key)
    snap = Store(p2p_home).snapshot("org/model", "v1")
    assert len(shard_files(snap)) == 3
    return snap


def blob_of(snap: Path, name: str) -> Path:
    return (snap / name).resolve()


def flip_last_tensor_byte(path: Path) -> None:
    """Change one byte of tensor data in place (size kept): what a bad disk or a user does."""
    header = read_header(path)
    last = max(header.tensors, key=lambda t: t.end)
    with path.open("r+b") as f:
        f.seek(last.end - 1)
        byte = f.read(1)
        f.seek(last.end - 1)
        f.write(bytes([byte[0] ^ 0xFF]))


# -- loading ----------------------------------------------------------------------------------
@pytest.mark.parametrize("copy", [False, True])
def test_load_matches_safetensors_every_dtype(
    p2p_home: Path, stored_version: Manifest, copy: bool
) -> None:
    expected = load_file(Store(p2p_home).snapshot("org/model", "v1") / "model.safetensors")
    tensors = loader.load(REF, fetch=False, copy=copy)
    assert set(tensors) == set(small_state_dict()) == set(expected)
    for name, tensor in tensors.items():
        assert tensor.device.type == "cpu"
        assert same(tensor, expected[name]), name
        assert same(tensor, small_state_dict()[name]), name


@pytest.mark.parametrize("copy", [False, True])
def test_the_newer_safetensors_dtypes_load(
    p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey, copy: bool
) -> None:
    """Files that safetensors' save_file writes for complex64 and the other fp8 kinds."""
    g = torch.Generator().manual_seed(5)
    raw = torch.randint(0, 255, (64,), generator=g, dtype=torch.uint8)
    state = {
        "c64": torch.randn(8, 4, generator=g, dtype=torch.complex64),
        "e4m3fnuz": raw.view(torch.float8_e4m3fnuz),
        "e5m2fnuz": raw.view(torch.float8_e5m2fnuz),
        "e8m0": raw.view(torch.float8_e8m0fnu),
    }
    add(p2p_home, make_version_folder(tmp_path / "newer", state), signing_key)
    got = loader.load(REF, fetch=False, copy=copy)
    for name, tensor in state.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name].view(torch.uint8), tensor.view(torch.uint8)), name


def test_sharded_version_loads_whole_and_by_folder(sharded_version: Path, p2p_home: Path) -> None:
    expected: dict[str, torch.Tensor] = {}
    for f in shard_files(sharded_version):
        expected.update(load_file(sharded_version / f))
    manifest = Store(p2p_home).manifest("org/model", "v1")
    for tensors in (
        loader.load(REF, fetch=False),
        loader.load_folder(sharded_version, manifest, copy=True),
    ):
        assert set(tensors) == set(expected)
        assert all(same(tensors[n], expected[n]) for n in expected)


def test_zero_copy_tensors_are_private_copy_on_write(
    p2p_home: Path, stored_version: Manifest
) -> None:
    tensors = loader.load(REF, fetch=False)
    tensors["embed.weight"].add_(1.0)  # writable, and the write must not reach the blob
    Store(p2p_home).verify("org/model", "v1")
    assert same(loader.load(REF, fetch=False)["embed.weight"], small_state_dict()["embed.weight"])


def test_copied_tensors_do_not_follow_later_changes_to_the_file(
    p2p_home: Path, stored_version: Manifest
) -> None:
    tensors = loader.load(REF, fetch=False, copy=True)
    flip_last_tensor_byte(blob_of(Store(p2p_home).snapshot("org/model", "v1"), "model.safetensors"))
    for name, tensor in small_state_dict().items():
        assert same(tensors[name], tensor), name


def test_dtype_converts_floating_point_only(p2p_home: Path, stored_version: Manifest) -> None:
    tensors = loader.load(REF, fetch=False, dtype=torch.float16)
    assert tensors["embed.weight"].dtype == torch.float16
    assert tensors["layer.0.weight"].dtype == torch.float16
    assert tensors["layer.1.weight"].dtype == torch.float8_e4m3fn
    assert tensors["counts"].dtype == torch.int64
    assert tensors["mask"].dtype == torch.bool
    assert torch.equal(tensors["embed.weight"], small_state_dict()["embed.weight"].half())


def test_latest_without_fetch_is_the_newest_stored_version(
    p2p_home: Path, tmp_path: Path, stored_version: Manifest, signing_key: Ed25519PrivateKey
) -> None:
    v2 = {"only.weight": torch.ones(3)}
    add(p2p_home, make_version_folder(tmp_path / "v2", v2), signing_key, version="v2")
    assert set(loader.load("org/model", fetch=False)) == {"only.weight"}
    assert set(loader.load("org/model@latest", fetch=False)) == {"only.weight"}


def test_missing_version_without_fetch_says_to_fetch(
    p2p_home: Path, stored_version: Manifest
) -> None:
    with pytest.raises(NotFoundError, match=r"p2pdist fetch org/model@v9"):
        loader.load("org/model@v9", fetch=False)
    with pytest.raises(NotFoundError, match="fetch"):
        loader.load("org/other", fetch=False)


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("copy", [False, True])
def test_file_changed_after_store_is_refused_naming_it(
    sharded_version: Path, p2p_home: Path, copy: bool
) -> None:
    name = shard_files(sharded_version)[1]
    flip_last_tensor_byte(blob_of(sharded_version, name))
    with pytest.raises(IntegrityError, match=name) as info:
        loader.load(REF, fetch=False, copy=copy)
    assert info.value.path == name
    assert info.value.expected == Store(p2p_home).manifest("org/model", "v1").file(name).blake3


def test_truncated_file_is_refused(p2p_home: Path, stored_version: Manifest) -> None:
    blob = blob_of(Store(p2p_home).snapshot("org/model", "v1"), "model.safetensors")
    os.truncate(blob, blob.stat().st_size - 10)
    with pytest.raises(IntegrityError, match=r"model\.safetensors: .*bytes on disk"):
        loader.load(REF, fetch=False)


def offsets_past_end() -> bytes:
    """A safetensors file whose one tensor claims 16 bytes where the data section has 8."""
    header = b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
    return len(header).to_bytes(8, "little") + header + bytes(8)


def test_header_with_offsets_past_the_end_is_a_format_error(
    p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(offsets_past_end())
    add(p2p_home, folder, signing_key)  # a publisher signed a broken file
    with pytest.raises(FormatError, match="outside the 8-byte data section"):
        loader.load(REF, fetch=False)
    with pytest.raises(FormatError, match="outside the 8-byte data section"):
        lazy.open(REF, fetch=False)


def test_bad_header_that_also_fails_its_hash_is_an_integrity_error(
    p2p_home: Path, stored_version: Manifest
) -> None:
    blob = blob_of(Store(p2p_home).snapshot("org/model", "v1"), "model.safetensors")
    data = bytearray(blob.read_bytes())
    data[8] = ord("X")  # the header is no longer JSON, and the hash no longer matches
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.safetensors: blake3"):
        loader.load(REF, fetch=False)


@pytest.mark.parametrize(
    ("device", "error", "match"),
    [
        ("cuda:99", NotFoundError, "does not exist"),
        ("tpu", ConfigError, "not a device name"),
        ("meta", ConfigError, "'cpu' or 'cuda"),
    ],
)
def test_device_that_does_not_exist(
    p2p_home: Path, stored_version: Manifest, device: str, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        loader.load(REF, fetch=False, device=device)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message on a machine without CUDA"
)
def test_cuda_without_a_gpu_says_so(p2p_home: Path, stored_version: Manifest) -> None:
    with pytest.raises(NotFoundError, match="no CUDA device"):
        loader.load(REF, fetch=False, device="cuda")


def test_dtype_by_name_and_a_wrong_one(p2p_home: Path, stored_version: Manifest) -> None:
    by_name = loader.load(REF, fetch=False, dtype="float16")
    by_dtype = loader.load(REF, fetch=False, dtype=torch.float16)
    assert by_name.keys() == by_dtype.keys()
    for name, tensor in by_dtype.items():
        assert by_name[name].dtype == tensor.dtype and torch.equal(by_name[name], tensor)
    assert any(t.dtype == torch.float16 for t in by_name.values())
    with lazy.open(REF, fetch=False, dtype="torch.bfloat16") as reader:
        assert reader.dtype == torch.bfloat16
    for wrong in ("float17", "cuda", 3):
        with pytest.raises(ConfigError, match="is not a torch dtype"):
            loader.load(REF, fetch=False, dtype=wrong)  # type: ignore[arg-type]


def test_unknown_verify_policy(p2p_home: Path, stored_version: Manifest) -> None:
    with pytest.raises(ConfigError, match="always"):
        loader.load(REF, fetch=False, verify="never")  # type: ignore[arg-type]


def test_untrusted_key_and_altered_manifest_are_refused(
    p2p_home: Path, stored_version: Manifest
) -> None:
    trust = TrustStore()
    trust.trust("org/model", public_key_of(Ed25519PrivateKey.generate()))
    with pytest.raises(SignatureError, match="trusted key"):
        loader.load(REF, fetch=False)
    trust.trust("org/model", stored_version.public_key or "")
    assert loader.load(REF, fetch=False)
    mpath = Store(p2p_home).version_dir("org/model", "v1") / "p2pdist.json"
    obj = json.loads(mpath.read_bytes())
    obj["created"] = "2001-01-01T00:00:00Z"
    mpath.write_bytes(canonical_json(obj))
    with pytest.raises(SignatureError, match="altered after signing"):
        loader.load(REF, fetch=False)


def test_tampered_index_file_is_refused(sharded_version: Path) -> None:
    blob = blob_of(sharded_version, "model.safetensors.index.json")
    blob.write_text(blob.read_text().replace("head.bias", "head.bia_"))
    with pytest.raises(IntegrityError, match=r"model\.safetensors\.index\.json"):
        loader.load(REF, fetch=False)


# -- verify once ------------------------------------------------------------------------------
def test_verify_once_records_then_skips_and_still_sees_a_write(
    p2p_home: Path, stored_version: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(records, "RACY_WINDOW_NS", 0)  # the file was written a moment ago
    calls: list[int] = []
    real = verified.hash_buffer
    monkeypatch.setattr(verified, "hash_buffer", lambda data: calls.append(1) or real(data))
    loader.load(REF, fetch=False, verify="once")
    assert len(calls) == 1
    assert list((p2p_home / "verified").iterdir())
    loader.load(REF, fetch=False, verify="once")
    assert len(calls) == 1  # identity unchanged: trusted
    loader.load(REF, fetch=False)
    assert len(calls) == 2  # "always" ignores the record
    flip_last_tensor_byte(blob_of(Store(p2p_home).snapshot("org/model", "v1"), "model.safetensors"))
    with pytest.raises(IntegrityError, match=r"model\.safetensors"):
        loader.load(REF, fetch=False, verify="once")


def test_a_lazy_once_reader_sees_a_write_made_after_it_opened(
    p2p_home: Path, stored_version: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """open() maps the file and verifies at the first read: a record of the file as it was
    must not vouch for what was written in between."""
    monkeypatch.setattr(records, "RACY_WINDOW_NS", 0)
    loader.load(REF, fetch=False, verify="once")  # recorded
    blob = blob_of(Store(p2p_home).snapshot("org/model", "v1"), "model.safetensors")
    with lazy.open(REF, fetch=False, verify="once") as reader:
        flip_last_tensor_byte(blob)
        with pytest.raises(IntegrityError, match=r"model\.safetensors: blake3"):
            reader.load()


@pytest.mark.parametrize("verify", ["always", "once"])
def test_a_file_cut_short_under_a_lazy_reader_is_an_integrity_error(
    sharded_version: Path, verify: str
) -> None:
    """Hashing a mapping past the end of a truncated file would kill the process (SIGBUS)."""
    first = shard_files(sharded_version)[0]
    with lazy.open(REF, fetch=False, verify=verify) as reader:  # type: ignore[arg-type]
        os.truncate(blob_of(sharded_version, first), 100)
        with pytest.raises(IntegrityError, match=f"{first}: 100 bytes on disk"):
            reader.load()


def test_a_shard_deleted_with_its_index_is_missing_not_skipped(sharded_version: Path) -> None:
    """Which files a version has comes from the signed manifest, not from the folder."""
    last = shard_files(sharded_version)[-1]
    (sharded_version / "model.safetensors.index.json").unlink()
    (sharded_version / last).unlink()
    with pytest.raises(NotFoundError, match=r"index\.json: missing"):
        loader.load(REF, fetch=False)


@pytest.mark.parametrize("staged", [False, True])
def test_a_copy_is_of_the_bytes_that_were_hashed(
    p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey, staged: bool
) -> None:
    """A file rewritten while it is copied: every load either fails its check or returns
    exactly the signed tensors, never a copy of bytes that were not hashed (when the hash
    read the mapping apart from the copy, 15 of 60 such loads returned wrong tensors)."""
    g = torch.Generator().manual_seed(3)
    state = {f"w{i}": torch.randn(256, 1024, generator=g) for i in range(4)}
    add(p2p_home, make_version_folder(tmp_path / "big", state), signing_key)
    blob = blob_of(Store(p2p_home).snapshot("org/model", "v1"), "model.safetensors")
    spec = read_header(blob).by_name()["w2"]
    stop = threading.Event()

    def flicker() -> None:  # one word of w2, back and forth, as fast as it goes
        with blob.open("r+b") as f:
            while not stop.is_set():
                for word in (b"\0\0\x80\x7f", (state["w2"][0, 0].numpy().tobytes())):
                    f.seek(spec.start)
                    f.write(word)
                    f.flush()

    writer = threading.Thread(target=flicker)
    writer.start()
    outcomes = {"refused": 0, "exact": 0}
    try:
        for _ in range(30):
            try:
                if staged:
                    folder = Store(p2p_home).snapshot("org/model", "v1")
                    manifest = Store(p2p_home).manifest("org/model", "v1")
                    shards = verified.open_shards(folder, manifest)
                    copier = StagedCopier(torch.device("cpu"), chunk_bytes=1 << 18)
                    got = loader.load_copied(shards, torch.device("cpu"), None, "always",
                                              None, None, copier)  # fmt: skip
                else:
                    got = loader.load(REF, fetch=False, copy=True)
            except IntegrityError:
                outcomes["refused"] += 1
                continue
            for name, tensor in state.items():
                assert torch.equal(got[name], tensor), f"a wrong copy of {name}, unrefused"
            outcomes["exact"] += 1
    finally:
        stop.set()
        writer.join()
    assert sum(outcomes.values()) == 30


def test_a_lazy_copying_reader_hashes_each_file_once(
    sharded_version: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading tensors one by one with copy=True: one hash per file, not one per read."""
    made: list[str] = []

    class Counting(verified.CopyHasher):
        def __init__(self, shard: verified.MappedShard, pool: Any) -> None:
            made.append(shard.entry.path)
            super().__init__(shard, pool)

    monkeypatch.setattr(loader, "CopyHasher", Counting)
    with lazy.open(REF, fetch=False, copy=True) as reader:
        for name in reader.keys():
            assert reader[name].is_contiguous()
    assert sorted(made) == sorted(shard_files(sharded_version))


def test_verify_once_does_not_record_a_racy_identity(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    identity = verified.FileIdentity.from_stat(path.stat())
    records = verified.VerifiedRecords(tmp_path / "verified")
    assert identity.is_racy()
    assert not records.record("a" * 64, identity)
    assert not records.matches("a" * 64, identity)
    old = verified.FileIdentity(1, 2, 3, 1_000_000_001, 1_000_000_001)
    assert not old.is_racy()
    assert records.record("a" * 64, old) and records.matches("a" * 64, old)
    assert not records.matches("a" * 64, verified.FileIdentity(1, 2, 3, 1_000_000_001, 5))
    coarse = verified.FileIdentity(1, 2, 3, 10**9, 10**9)  # whole seconds: a coarse clock
    assert coarse.is_racy(now_ns=10**9 + 10**9 // 2)


# -- into a module ----------------------------------------------------------------------------
class Tiny(torch.nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(64, width)
        self.proj = torch.nn.Linear(width, width)
        self.head = torch.nn.Linear(width, 64, bias=False)
        self.head.weight = self.embed.weight  # tied, like GPT-2's lm_head
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))


def tiny_state_dict(seed: int, width: int = 16) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    sd = Tiny(width).state_dict()
    del sd["head.weight"]  # safetensors keeps one copy of a tied tensor
    return {k: v + 1 if v.is_floating_point() else v + 3 for k, v in sd.items()}


def test_load_into_fills_module_with_tied_weights(
    p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    sd = tiny_state_dict(0)
    add(p2p_home, make_version_folder(tmp_path / "m", sd), signing_key)
    module = Tiny()
    report = fit.load_into(module, REF, fetch=False)
    assert report.ok and not report.missing
    assert set(report.loaded) == set(sd)
    for name, tensor in sd.items():
        assert torch.equal(module.state_dict()[name], tensor), name
    assert module.head.weight is module.embed.weight


def test_load_into_strict_mismatch_reports_and_touches_nothing(
    p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    sd = tiny_state_dict(0, width=8)
    del sd["steps"]
    sd["extra.weight"] = torch.ones(2)
    add(p2p_home, make_version_folder(tmp_path / "m", sd), signing_key)
    module = Tiny(width=16)
    before = {k: v.clone() for k, v in module.state_dict().items()}

    def no_bytes(data: object) -> str:
        raise AssertionError("strict mismatch must be found from the headers alone")

    monkeypatch.setattr(verified, "hash_buffer", no_bytes)
    with pytest.raises(fit.StateDictMismatchError) as info:
        fit.load_into(module, REF, fetch=False)
    report = info.value.report
    assert report.missing == ("steps",)
    assert report.unexpected == ("extra.weight",)
    assert {m.name for m in report.mismatched} == {"embed.weight", "proj.weight", "proj.bias"}
    shapes = {m.name: (m.expected, m.found) for m in report.mismatched}
    assert shapes["proj.weight"] == ((16, 16), (8, 8))
    assert "steps" in str(info.value) and "extra.weight" in str(info.value)
    assert isinstance(info.value, FormatError)
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_load_into_non_strict_loads_what_fits(
    p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    sd = tiny_state_dict(0)
    sd["proj.weight"] = torch.ones(3, 3)
    add(p2p_home, make_version_folder(tmp_path / "m", sd), signing_key)
    module = Tiny()
    report = fit.load_into(module, REF, fetch=False, strict=False)
    assert [m.name for m in report.mismatched] == ["proj.weight"]
    assert torch.equal(module.proj.bias, sd["proj.bias"])
    assert not torch.equal(module.proj.weight[:3, :3], torch.ones(3, 3))


# -- lazy -------------------------------------------------------------------------------------
def test_open_verifies_each_file_before_its_first_tensor(sharded_version: Path) -> None:
    files = shard_files(sharded_version)
    headers = {f: read_header(sharded_version / f) for f in files}
    first = headers[files[0]].tensors[0].name
    last_file_tensor = headers[files[2]].tensors[0].name
    flip_last_tensor_byte(blob_of(sharded_version, files[2]))
    with lazy.open(REF, fetch=False) as reader:
        assert len(reader) == 7 and "head.bias" in reader
        assert reader.spec(first).shape == (64, 64)
        assert reader.metadata["format"] == "pt"
        assert reader[first].shape == (64, 64)
        with pytest.raises(IntegrityError, match=files[2]):
            reader.get_tensor(last_file_tensor)
        with pytest.raises(NotFoundError, match="nope"):
            reader["nope"]
    with pytest.raises(P2PDistError, match="reader of org/model@v1 is closed"):
        reader[first]


# -- the staged (CUDA) pipeline, driven on the CPU -----------------------------------------------
@pytest.mark.parametrize("chunk_bytes", [7, 4096, 1 << 20])
def test_staged_copier_on_cpu_reproduces_bytes(
    sharded_version: Path, p2p_home: Path, chunk_bytes: int
) -> None:
    manifest = Store(p2p_home).manifest("org/model", "v1")
    shards = verified.open_shards(sharded_version, manifest)
    copier = StagedCopier(torch.device("cpu"), chunk_bytes=chunk_bytes)
    cpu = torch.device("cpu")
    wanted = {"block.0.weight", "block.2.weight", "block.3.weight", "head.bias"}  # gaps
    for names in (None, wanted):
        out = loader.load_copied(shards, cpu, None, "always", None, names, copier=copier)
        expected = loader.load_folder(sharded_version, manifest)
        assert set(out) == (set(expected) if names is None else wanted)
        assert all(same(out[n], expected[n]) for n in out)


def test_staged_copier_path_refuses_a_changed_file(sharded_version: Path, p2p_home: Path) -> None:
    manifest = Store(p2p_home).manifest("org/model", "v1")
    flip_last_tensor_byte(blob_of(sharded_version, shard_files(sharded_version)[0]))
    shards = verified.open_shards(sharded_version, manifest)
    copier = StagedCopier(torch.device("cpu"), chunk_bytes=4096)
    with pytest.raises(IntegrityError):
        loader.load_copied(shards, torch.device("cpu"), None, "always", None, None, copier=copier)


# -- seeding ----------------------------------------------------------------------------------
def test_load_without_seed_never_imports_libtorrent(
    p2p_home: Path, stored_version: Manifest
) -> None:
    code = (
        "import sys; from p2pdist.loading import loader; "
        f"t = loader.load({REF!r}, fetch=False); "
        "assert t and 'libtorrent' not in sys.modules and 'p2pdist.swarm.session' not in sys.modules, "
        "sorted(m for m in sys.modules if 'torrent' in m or 'swarm' in m)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
