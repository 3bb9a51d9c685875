"""The CLI as a user meets it: real subprocesses, exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.formats.keys import public_key_of
from p2pdist.formats.manifest import Manifest, describe_files, list_files
from p2pdist.store.cache import Store

from .conftest import make_version_folder, small_state_dict


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2pdist.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_help_lists_commands(p2p_home: Path) -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("keygen", "ls", "info", "verify", "gc", "publish", "fetch", "seed", "trust"):
        assert command in result.stdout


def test_keygen_then_refuses_to_overwrite(p2p_home: Path) -> None:
    first = run("keygen")
    assert first.returncode == 0, first.stderr
    assert "Public key:" in first.stdout
    again = run("keygen")
    assert again.returncode == 1
    assert again.stderr.strip().count("\n") == 0
    assert "already exists" in again.stderr and "Traceback" not in again.stderr


def test_ls_info_verify_on_a_stored_version(p2p_home: Path, stored_version: Manifest) -> None:
    listing = run("ls", "--json")
    assert listing.returncode == 0, listing.stderr
    refs = [v["ref"] for v in json.loads(listing.stdout)["versions"]]
    assert refs == ["org/model@v1"]
    info = run("info", "org/model@latest", "--json")
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["full_bytes"] == stored_version.total_size
    assert data["delta_bytes"] is None
    assert len(data["files"]) == len(stored_version.files)
    human = run("info", "org/model@v1")
    assert "publisher key" in human.stdout
    ok = run("verify", "org/model@v1")
    assert ok.returncode == 0 and ok.stdout.startswith("OK org/model@v1")


def test_verify_reports_a_tampered_file_in_one_line(
    p2p_home: Path, stored_version: Manifest
) -> None:
    store = Store(p2p_home)
    blob = store.blob_path(stored_version.file("model.safetensors").blake3)
    raw = bytearray(blob.read_bytes())
    raw[-1] ^= 1
    blob.write_bytes(bytes(raw))
    result = run("verify", "org/model@v1")
    assert result.returncode == 1
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith("Error: org/model@v1 in the store is damaged (model.safetensors: blake3")
    assert line.endswith("remove it with `p2pdist rm org/model@v1` and fetch it again")


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("info", "Bad Ref@@"), 1, "name@v3"),
        (("info", "org/model@v7"), 1, "p2pdist fetch org/model@v7"),
        (("verify", "nothing@latest"), 1, "no version of nothing"),
        (("trust", "m", "zz"), 1, "public key"),
        (("info",), 2, "Missing argument"),
        (("frobnicate",), 2, "No such command"),
        (("fetch", "org/model@latest", "--full", "--follow"), 2, "--full: for one fetch"),
        (("fetch", "org/model@latest", "--out", "x", "--follow"), 2, "--out: for one fetch"),
        (("fetch", "org/model@v3", "--follow"), 2, "follows name@latest, not org/model@v3"),
        (("fetch", "org/model@v3", "--keep", "2"), 2, "--keep applies to --follow"),
        (("fetch", "org/model@v3", "--seed", "--include", "*.json"), 2, "--seed serves whole"),
        (("fetch", "org/model@latest", "--follow", "--include", "*.json"), 2, "--include: for one"),
        (("fetch", "org/model@latest", "--follow", "--keep", "0"), 2, "0 is not in the range"),
        (
            ("publish", ".", "--name", "Org/F!", "--no-seed"),
            1,
            "Error: invalid model name 'Org/F!'",
        ),
        (
            ("publish", ".", "--name", "org/f", "--web-seed", "notaurl", "--no-seed"),
            1,
            "web seed 'notaurl' is not an http(s) URL",
        ),
    ],
)
def test_errors_are_one_line_with_exit_codes(
    p2p_home: Path, args: tuple[str, ...], code: int, needle: str
) -> None:
    result = run(*args)
    assert result.returncode == code, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_gc_reports_freed_blobs(p2p_home: Path, stored_version: Manifest) -> None:
    store = Store(p2p_home)
    (store.blobs_dir / ("e" * 64)).write_bytes(b"x" * 2048)
    result = run("gc")
    assert result.returncode == 0
    assert (
        "Removed 1 unreferenced blobs and 0 stale" in result.stdout
        and "2.0 KiB freed" in result.stdout
    )
    assert run("verify", "org/model@v1").returncode == 0


def test_fetch_with_tracker_down_is_a_clear_error(p2p_home: Path) -> None:
    from .conftest import free_port

    result = run("fetch", "org/model@v1", "--tracker", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "not reachable" in result.stderr and "p2pdist tracker serve" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_stored_version_is_fetched_without_the_tracker_unless_it_is_damaged(
    p2p_home: Path, stored_version: Manifest
) -> None:
    from .conftest import free_port

    down = ("--tracker", f"http://127.0.0.1:{free_port()}")
    stored = run("fetch", "org/model@v1", *down, "--json")
    assert stored.returncode == 0, stored.stderr
    assert json.loads(stored.stdout)["plan"] == "local"
    assert "registry cannot be reached; org/model@v1 is served from the store" in stored.stderr
    latest = run("fetch", "org/model@latest", *down)  # which version is latest: the registry's
    assert latest.returncode == 1 and "not reachable" in latest.stderr
    other_key = public_key_of(Ed25519PrivateKey.generate())
    assert run("trust", "org/model", other_key).returncode == 0
    untrusted = run("fetch", "org/model@v1", *down)  # offline, the pinned key still rules
    assert untrusted.returncode == 1 and "not the pinned key" in untrusted.stderr
    assert run("trust", "org/model", stored_version.public_key or "").returncode == 0
    snapshot = Store(p2p_home).snapshot("org/model", "v1")
    shard = next(snapshot.glob("*.safetensors"))
    blob = shard.resolve()
    good = blob.read_bytes()
    blob.write_bytes(good[:-4] + bytes(b ^ 0xFF for b in good[-4:]))  # a stray write
    rewritten = run("fetch", "org/model@v1", *down)
    assert rewritten.returncode == 1, rewritten.stdout
    assert (
        f"({shard.name}: blake3" in rewritten.stderr
        and "p2pdist rm org/model@v1" in rewritten.stderr
    )
    blob.write_bytes(good)
    assert run("fetch", "org/model@v1", *down).returncode == 0
    blob.unlink()  # its blob is gone
    damaged = run("fetch", "org/model@v1", *down)
    assert damaged.returncode == 1 and "Traceback" not in damaged.stderr
    message = damaged.stderr.strip().splitlines()[-1]
    assert f"{shard.name}: missing" in message and "`p2pdist rm org/model@v1`" in message
    assert run("verify", "org/model@v1").stderr.strip() == message


def test_os_errors_are_one_line_too(p2p_home: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the config dir should be")
    result = run("keygen", env={"P2PDIST_CONFIG_DIR": str(blocker)})
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_rm_wants_the_version_said(p2p_home: Path, stored_version: Manifest) -> None:
    bare = run("rm", "org/model")  # elsewhere a bare name means @latest; removing, say it
    assert bare.returncode == 2 and "say which version of org/model" in bare.stderr
    assert "(stored: v1)" in bare.stderr
    nothing = run("rm", "other/model@latest")
    assert nothing.returncode == 1 and "other/model@latest is not in the store" in nothing.stderr
    assert "fetch" not in nothing.stderr
    missing = run("rm", "org/model@v9")
    assert missing.returncode == 1 and "org/model@v9 is not in the store" in missing.stderr
    assert "fetch" not in missing.stderr
    assert run("info", "org/model@v1").returncode == 0  # nothing was removed
    latest = run("rm", "org/model@latest")
    assert latest.returncode == 0 and "Removed org/model@v1" in latest.stdout


def test_gc_keeps_the_newest_versions_and_removes_idle_partial_downloads(
    p2p_home: Path, stored_version: Manifest, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    store = Store(p2p_home)
    for number in (2, 3):
        folder = make_version_folder(tmp_path / f"v{number}", small_state_dict(number))
        manifest = Manifest(name="org/model", version=f"v{number}", parent="v1",
                            files=describe_files(folder, list_files(folder))).signed(signing_key)  # fmt: skip
        store.add_version(manifest, folder)
    partial = store.partial_dir("a" * 40)
    partial.mkdir(parents=True)
    (partial / "shard.bin").write_bytes(b"x" * 8192)
    listing = run("ls")
    assert "1 partial download(s)" in listing.stdout, listing.stdout
    as_json = json.loads(run("ls", "--json").stdout)
    assert as_json["partial_downloads"]["count"] == 1
    assert [v["delta_stored"] for v in as_json["versions"]] == [False, False, False]
    assert run("gc", "--partial-age", "600").returncode == 0
    assert partial.exists()  # written a moment ago: maybe a running download
    idle = time.time() - 3600
    for path in (partial / "shard.bin", partial):
        os.utime(path, (idle, idle))
    result = run("gc", "--keep", "1", "--partial-age", "600")
    assert result.returncode == 0, result.stderr
    assert "Removed org/model@v1" in result.stdout and "Removed org/model@v2" in result.stdout
    assert [m.version for m in store.versions("org/model")] == ["v3"]
    assert not partial.exists()


def test_rm_then_gc_frees_the_version(p2p_home: Path, stored_version: Manifest) -> None:
    assert run("rm", "org/model@v1").returncode == 0
    assert run("info", "org/model@v1").returncode == 1
    result = run("gc")
    assert f"Removed {len(stored_version.files)} unreferenced blobs" in result.stdout
