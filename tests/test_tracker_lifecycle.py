"""Registry lifecycle: yank, movable tags, key rotation, pin reset, token list and revoke.

The storage rules run against every registry backend (the parametrised ``registry`` fixture
of test_tracker_storage); the commands run as a user meets them: `p2pdist` subprocesses
against a real tracker in a thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from p2pdist.client import RegistryClient
from p2pdist.errors import ConflictError, FormatError, NotFoundError, SignatureError
from p2pdist.fetcher import Fetcher
from p2pdist.formats.keys import public_key_of
from p2pdist.formats.statement import Statement
from p2pdist.ref import parse_ref
from p2pdist.tracker import TrackerSettings
from p2pdist.tracker.registry_store import RegistryStore
from tests.test_tracker_storage import new_version, registry  # noqa: F401 (a fixture)
from tests.tracker_world import make_token, make_version, running_tracker

MODEL = "acme/llm"


# -- the rules, on every backend ------------------------------------------------------------
def test_yank_leaves_latest_and_tags_move_by_signed_statements(
    registry: RegistryStore,  # noqa: F811
) -> None:
    key = Ed25519PrivateKey.generate()
    for v, parent in (("v1", None), ("v2", "v1"), ("v3", "v2")):
        registry.publish(new_version(key, MODEL, v, parent=parent))
    registry.apply_statement(
        Statement("tag", MODEL, {"tag": "stable", "version": "v2"}).signed(key)
    )
    old_tag = Statement("tag", MODEL, {"tag": "stable", "version": "v1"}).signed(key)
    registry.apply_statement(
        Statement("tag", MODEL, {"tag": "stable", "version": "v3"}).signed(key)
    )
    assert registry.tags(MODEL) == {"stable": "v3"}
    with pytest.raises(ConflictError, match="newer statement"):
        registry.apply_statement(old_tag)  # replayed: cannot move the tag back
    with pytest.raises(ConflictError, match="stable is a tag"):  # model@stable stays the tag
        registry.publish(new_version(key, MODEL, "stable", parent="v3"))
    registry.apply_statement(
        Statement("yank", MODEL, {"version": "v3", "reason": "bad tokenizer"}).signed(key)
    )
    info = registry.model(MODEL)
    assert info is not None and info.latest == "v2" and info.versions == 3
    assert registry.yanked(MODEL) == {"v3": "bad tokenizer"}
    assert registry.tags(MODEL) == {}  # a tag never points at a withdrawn version
    with pytest.raises(ConflictError, match="newer statement"):
        registry.apply_statement(old_tag)  # nor does the yank let an old statement back in
    with pytest.raises(ConflictError, match="withdrawn"):
        registry.apply_statement(
            Statement("tag", MODEL, {"tag": "stable", "version": "v3"}).signed(key)
        )
    with pytest.raises(ConflictError, match="is a version"):
        registry.apply_statement(
            Statement("tag", MODEL, {"tag": "v1", "version": "v2"}).signed(key)
        )
    with pytest.raises(SignatureError, match="pinned"):
        registry.apply_statement(
            Statement("yank", MODEL, {"version": "v2"}).signed(Ed25519PrivateKey.generate())
        )
    assert [a[2] for a in registry.audit(MODEL)] == ["tag", "tag", "yank"]


def test_rotation_signed_by_the_old_key_and_the_operators_pin_reset(
    registry: RegistryStore,  # noqa: F811
) -> None:
    old, new, third = (Ed25519PrivateKey.generate() for _ in range(3))
    registry.publish(new_version(old, MODEL, "v1"))
    with pytest.raises(SignatureError):  # the new key cannot sign its own promotion
        registry.apply_statement(
            Statement("rotate-key", MODEL, {"new_key": public_key_of(new)}).signed(new)
        )
    registry.apply_statement(
        Statement("rotate-key", MODEL, {"new_key": public_key_of(new)}).signed(old)
    )
    registry.publish(new_version(new, MODEL, "v2", parent="v1"))
    with pytest.raises(SignatureError, match="pinned"):
        registry.publish(new_version(old, MODEL, "v3", parent="v2"))
    assert registry.reset_pin(MODEL, "publisher lost the key") == public_key_of(new)
    registry.publish(new_version(third, MODEL, "v3", parent="v2"))  # pins the third key
    info = registry.model(MODEL)
    assert info is not None and info.public_key == public_key_of(third)
    trail = registry.audit(MODEL)
    assert [a[2] for a in trail] == ["rotate-key", "reset-pin", "pinned"]
    assert "publisher lost the key" in trail[1][3]


# -- as a user meets it -----------------------------------------------------------------------
@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path / "tracker"
    with running_tracker(TrackerSettings(data_dir=data_dir)) as url:
        yield url, data_dir


def key_file(path: Path, key: Ed25519PrivateKey) -> Path:
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return path


def p2pdist(url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "P2PDIST_TRACKER": url, "P2PDIST_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "p2pdist.cli", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def test_yank_and_tag_commands(world: tuple[str, Path], tmp_path: Path) -> None:
    url, data_dir = world
    token = make_token(data_dir, "acme")
    key = Ed25519PrivateKey.generate()
    pem = key_file(tmp_path / "key.pem", key)
    client = RegistryClient(url, token)
    for v, parent in (("v1", None), ("v2", "v1")):
        made = make_version(key, MODEL, v, parent=parent)
        client.publish(made.manifest_bytes, made.torrent, made.delta_torrent)

    tagged = p2pdist(url, token, "tag", f"{MODEL}@v1", "stable", "--key", str(pem))
    assert tagged.returncode == 0, tagged.stderr
    fetcher = Fetcher(client=RegistryClient(url))
    assert fetcher.resolve(parse_ref(f"{MODEL}@stable")).version == "v1"

    yanked = p2pdist(url, token, "yank", f"{MODEL}@v2", "--reason", "NaNs in layer 3",
                     "--key", str(pem))  # fmt: skip
    assert yanked.returncode == 0, yanked.stderr
    reader = RegistryClient(url)
    assert reader.latest(MODEL) == "v1"
    assert reader.wait_for_newer(MODEL, "v1", wait=0.2) is None  # followers stay on v1
    with pytest.raises(NotFoundError, match=r"withdrawn by its publisher: NaNs in layer 3"):
        fetcher.resolve(parse_ref(f"{MODEL}@v2"))
    versions = {v["version"]: v for v in reader.list_versions(MODEL)}
    assert versions["v2"]["yanked"] == "NaNs in layer 3" and "yanked" not in versions["v1"]

    other = key_file(tmp_path / "other.pem", Ed25519PrivateKey.generate())
    refused = p2pdist(url, token, "yank", f"{MODEL}@v1", "--key", str(other))
    assert refused.returncode == 1 and "pinned" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    reader_token = make_token(data_dir, "acme", publish=False)
    refused = p2pdist(url, reader_token, "yank", f"{MODEL}@v1", "--key", str(pem))
    assert refused.returncode == 1 and "cannot publish" in refused.stderr


def test_rotate_key_and_reset_pin_commands(world: tuple[str, Path], tmp_path: Path) -> None:
    url, data_dir = world
    token = make_token(data_dir, "acme")
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    client = RegistryClient(url, token)
    v1 = make_version(old, MODEL, "v1")
    client.publish(v1.manifest_bytes, v1.torrent, v1.delta_torrent)
    rotated = p2pdist(url, token, "rotate-key", MODEL, "--new-key",
                      str(key_file(tmp_path / "new.pem", new)),
                      "--key", str(key_file(tmp_path / "old.pem", old)))  # fmt: skip
    assert rotated.returncode == 0, rotated.stderr
    assert f"p2pdist trust {MODEL} {public_key_of(new)}" in rotated.stdout
    v2 = make_version(new, MODEL, "v2", parent="v1")
    assert client.publish(v2.manifest_bytes, v2.torrent, v2.delta_torrent)["created"]

    tracker = [sys.executable, "-m", "p2pdist.tracker"]
    reset = subprocess.run(
        [*tracker, "reset-pin", MODEL, "--reason", "key lost", "--data", str(data_dir)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert reset.returncode == 0, reset.stderr
    v3 = make_version(Ed25519PrivateKey.generate(), MODEL, "v3", parent="v2")
    assert client.publish(v3.manifest_bytes, v3.torrent, v3.delta_torrent)["created"]
    trail = subprocess.run(
        [*tracker, "audit", MODEL, "--data", str(data_dir)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert [line.split()[2] for line in trail.splitlines()] == ["rotate-key", "reset-pin", "pinned"]


def test_token_list_and_revoke(tmp_path: Path) -> None:
    data_dir = tmp_path / "tracker"
    with running_tracker(TrackerSettings(data_dir=data_dir, grant_cache=0.5)) as url:
        revoke_and_see_it_refused(url, data_dir)


def revoke_and_see_it_refused(url: str, data_dir: Path) -> None:
    tracker = [sys.executable, "-m", "p2pdist.tracker", "token", "--data", str(data_dir)]
    secret = make_token(data_dir, "acme", publish=False)
    client = RegistryClient(url, secret)
    assert client.list_models() == []  # the running tracker now holds its grant in cache
    listed = subprocess.run([*tracker, "--list"], capture_output=True, text=True, check=True)
    assert secret not in listed.stdout and "read on acme" in listed.stdout
    token_id = listed.stdout.splitlines()[1].split()[0]
    revoked = subprocess.run(
        [*tracker, "--revoke", token_id], capture_output=True, text=True, check=True
    )
    assert f"revoked token {token_id}" in revoked.stdout
    assert (
        "no tokens"
        in subprocess.run([*tracker, "--list"], capture_output=True, text=True, check=True).stderr
    )
    # the running tracker stops honouring it once its cached grant expires
    deadline = time.monotonic() + 30
    while True:
        try:
            client.list_models()
        except Exception as e:  # AuthError once the cache let go
            assert "not recognised" in str(e)
            break
        assert time.monotonic() < deadline, "the revoked token still works"
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("kind", "fields", "change", "message"),
    [
        ("tag", {"tag": "stable", "version": "v1"}, {"signed_at": "9999-01-01T00:00:00.000000Z"},
         "lies in the future"),
        ("tag", {"tag": "stable", "version": "v1"}, {"signed_at": "yesterday"}, "UTC time"),
        ("yank", {"version": "v1", "reason": "ok\x1b[2J"}, {}, "one line"),
        ("rotate-key", {"new_key": "AB" * 32}, {}, "lowercase hex"),
    ],
)  # fmt: skip
def test_statements_are_refused_when_their_fields_would_mislead(
    kind: str, fields: dict[str, str], change: dict[str, str], message: str
) -> None:
    """A statement dated far ahead would block every later one of its subject; control
    characters in a reason reach consumers' terminals; an uppercase key never matches the
    pin it sets."""
    signed = json.loads(
        Statement(kind, MODEL, fields).signed(Ed25519PrivateKey.generate()).to_bytes()
    )
    with pytest.raises(FormatError, match=message):
        Statement.from_json({**signed, **change})
