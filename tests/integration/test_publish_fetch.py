"""publish -> tracker -> fetch, each host its own process, real swarm on 127.0.0.1."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.torch import load_file

from p2pdist.formats.manifest import Manifest
from tests.conftest import make_version_folder
from tests.integration.harness import Node, Tracker

pytestmark = pytest.mark.integration

NAME = "org/model"


def model_state(seed: int = 0, rows: int = 512) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(rows, 256, generator=g),
        "layers.0.weight": torch.randn(256, 256, generator=g).to(torch.bfloat16),
        "layers.0.bias": torch.randn(256, generator=g),
        "head.weight": torch.randn(rows, 256, generator=g).to(torch.float16),
    }


def updated(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A few optimizer steps later: small changes to some tensors, the embedding frozen."""
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    for name in ("layers.0.weight", "layers.0.bias", "head.weight"):
        t = state[name]
        out[name] = (t.float() + 1e-3 * torch.randn(t.shape, generator=g)).to(t.dtype)
    return out


def two_versions(root: Path) -> tuple[Path, Path]:
    """Folders of v1 and of v2, a few optimizer steps later."""
    v1 = model_state()
    return make_version_folder(root / "v1", v1), make_version_folder(root / "v2", updated(v1, 1))


def assert_same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def test_publish_then_three_consumers_in_parallel(
    nodes: Callable[..., Node], tmp_path: Path
) -> None:
    src = make_version_folder(tmp_path / "src", model_state(), max_shard_size=600_000)
    publisher = nodes("publisher", publisher=True)
    publisher.start_seeding("publish", str(src), "--name", NAME, "--version", "v1")
    consumers = [nodes(f"consumer{i}") for i in range(3)]
    results: dict[int, dict] = {}

    def fetch(i: int) -> None:
        results[i] = consumers[i].fetch_json(f"{NAME}@latest", "--out", str(tmp_path / f"out{i}"))

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert sorted(results) == [0, 1, 2]
    for i, r in results.items():
        assert r["ref"] == f"{NAME}@v1" and r["plan"] == "full"
        assert r["pinned_key"] is True
        assert r["bytes_from_peers"] >= r["full_bytes"] - 1  # everything came over the swarm
        assert_same_files(src, tmp_path / f"out{i}")
        verify = consumers[i].run("verify", f"{NAME}@v1")
        assert verify.returncode == 0, verify.stderr
    shards = sorted(Path(results[0]["path"]).glob("model-*.safetensors"))
    assert len(shards) > 1
    assert torch.equal(load_file(shards[0])["embed.weight"], model_state()["embed.weight"])


def test_delta_fetch_downloads_only_the_delta(nodes: Callable[..., Node], tmp_path: Path) -> None:
    src1, src2 = two_versions(tmp_path)
    publisher = nodes("publisher", publisher=True)
    p1 = publisher.start_seeding("publish", str(src1), "--name", NAME, "--version", "v1")
    consumer = nodes("consumer")
    assert consumer.fetch_json(f"{NAME}@v1")["plan"] == "full"
    p1.kill()
    publisher.start_seeding(
        "publish", str(src2), "--name", NAME, "--version", "v2", "--parent", "v1"
    )
    info = json.loads(publisher.run("info", f"{NAME}@v2", "--json").stdout)
    assert 0 < info["delta_bytes"] < info["full_bytes"] / 2  # the embedding is free
    result = consumer.fetch_json(f"{NAME}@latest")
    assert result["plan"] == "delta" and result["chain"] == ["v2"] and result["base"] == "v1"
    assert result["bytes_from_peers"] <= info["delta_bytes"] + 64 * 1024
    assert_same_files(src2, Path(result["path"]))
    assert consumer.run("verify", f"{NAME}@v2").returncode == 0


def test_a_delta_chain_nobody_seeds_gives_way_to_the_full_download(
    nodes: Callable[..., Node], tmp_path: Path
) -> None:
    """The publisher's retention removed v2 (whose delta leads from v1 to v3): a consumer with
    v1 waits for the chain only until it stalls, then fetches v3 whole; --full skips it."""
    states = [model_state()]
    states += [updated(states[-1], seed) for seed in (1, 2)]
    publisher = nodes("publisher", publisher=True)
    for number, state in enumerate(states, start=1):
        src = make_version_folder(tmp_path / f"v{number}", state)
        parent = () if number == 1 else ("--parent", f"v{number - 1}")
        args = ("publish", str(src), "--name", NAME, "--version", f"v{number}", *parent)
        assert publisher.run(*args, "--no-seed").returncode == 0
    consumer, other = nodes("consumer"), nodes("other")
    seeding = publisher.start_seeding("seed")
    assert consumer.fetch_json(f"{NAME}@v1")["plan"] == "full"
    assert other.fetch_json(f"{NAME}@v1")["plan"] == "full"
    seeding.kill()
    seeding.communicate(timeout=30)
    assert publisher.run("rm", f"{NAME}@v2").returncode == 0
    publisher.start_seeding("seed")  # v1 and v3 (full and delta), not v2
    result = consumer.fetch_json(f"{NAME}@v3", "--stall-timeout", "3")
    assert result["plan"] == "delta" and result["chain"] == ["v2", "v3"]
    fallback = result["fallback"]  # the old seed's entry may or may not have expired yet
    assert "stalled" in fallback or f"no host is seeding {NAME}@v2 (delta)" in fallback
    assert "in full instead" in fallback and result["downloaded"] == "full"
    assert result["bytes_from_peers"] >= result["full_bytes"] - 1
    assert_same_files(tmp_path / "v3", Path(result["path"]))
    forced = other.fetch_json(f"{NAME}@v3", "--full", "--stall-timeout", "30")
    assert forced["plan"] == "full" and forced["fallback"] is None
    assert_same_files(tmp_path / "v3", Path(forced["path"]))


def test_a_damaged_parent_in_the_store_is_named_not_the_delta(
    nodes: Callable[..., Node], tmp_path: Path
) -> None:
    src1, src2 = two_versions(tmp_path)
    publisher = nodes("publisher", publisher=True)
    for src, args in ((src1, ("v1",)), (src2, ("v2", "--parent", "v1"))):
        published = publisher.run("publish", str(src), "--name", NAME, "--version", *args,
                                  "--no-seed")  # fmt: skip
        assert published.returncode == 0, published.stderr
    consumer = nodes("consumer")
    seeding = publisher.start_seeding("seed")
    shard = next(Path(consumer.fetch_json(f"{NAME}@v1")["path"]).glob("*.safetensors"))
    with open(shard, "r+b") as f:  # edited in place: the store's blob changes with it
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    failed = consumer.run("fetch", f"{NAME}@v2")
    assert failed.returncode == 1
    message = failed.stderr.strip().splitlines()[-1]
    assert f"{NAME}@v1 in the store is damaged" in message and f"p2pdist rm {NAME}@v1" in message
    assert consumer.run("rm", f"{NAME}@v1").returncode == 0
    result = consumer.fetch_json(f"{NAME}@v2")
    assert result["plan"] == "full"
    assert_same_files(src2, Path(result["path"]))
    seeding.kill()


def test_consumer_gets_data_only_from_other_consumers(
    nodes: Callable[..., Node], tmp_path: Path
) -> None:
    src = make_version_folder(tmp_path / "src", model_state())
    publisher = nodes("publisher", publisher=True)
    origin = publisher.start_seeding("publish", str(src), "--name", NAME, "--version", "v1")
    first = nodes("first")
    first.start_seeding("fetch", f"{NAME}@v1", "--seed")
    origin.kill()  # the publisher is gone after the first consumer completed
    origin.communicate(timeout=30)
    late = nodes("late")
    result = late.fetch_json(f"{NAME}@v1", "--no-origin")
    assert result["bytes_from_peers"] >= result["full_bytes"] - 1
    assert_same_files(src, Path(result["path"]))


def _tamper(tracker: Tracker, column: str, mutate: Callable[[bytes], bytes]) -> None:
    db = sqlite3.connect(tracker.data_dir / "tracker.sqlite3")
    (value,) = db.execute(f"SELECT {column} FROM versions WHERE model=?", (NAME,)).fetchone()
    db.execute(f"UPDATE versions SET {column}=? WHERE model=?", (mutate(bytes(value)), NAME))
    db.commit()
    db.close()


def test_tampered_registry_is_refused_before_any_download(
    nodes: Callable[..., Node], tracker: Tracker, tmp_path: Path
) -> None:
    src = make_version_folder(tmp_path / "src", model_state())
    other = make_version_folder(tmp_path / "other", model_state(seed=5))
    publisher = nodes("publisher", publisher=True)
    assert (
        publisher.run(
            "publish", str(src), "--name", NAME, "--version", "v1", "--no-seed"
        ).returncode
        == 0
    )
    assert (
        publisher.run(
            "publish", str(other), "--name", "org/other", "--version", "v1", "--no-seed"
        ).returncode
        == 0
    )
    tracker.stop()  # a compromised registry: its database altered behind its back

    def bigger_file(raw: bytes) -> bytes:
        obj = json.loads(raw)
        obj["files"][0]["size"] += 1
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

    _tamper(tracker, "manifest", bigger_file)
    tracker.start()
    consumer = nodes("consumer")
    result = consumer.run("fetch", f"{NAME}@v1")
    assert result.returncode == 1
    assert "signature does not verify" in result.stderr and "Traceback" not in result.stderr
    assert not (consumer.home / "partial").exists() or not any(
        (consumer.home / "partial").iterdir()
    )

    tracker.stop()
    db = sqlite3.connect(tracker.data_dir / "tracker.sqlite3")
    good = Manifest.read(publisher.home / "models" / "org--model" / "v1" / "p2pdist.json")
    (other_torrent,) = db.execute("SELECT torrent FROM versions WHERE model='org/other'").fetchone()
    db.execute(
        "UPDATE versions SET manifest=?, torrent=? WHERE model=?",
        (good.to_bytes(), other_torrent, NAME),
    )
    db.commit()
    db.close()
    tracker.start()
    swapped = consumer.run("fetch", f"{NAME}@v1")
    assert swapped.returncode == 1
    assert "not the one the signed manifest names" in swapped.stderr
    assert not (consumer.home / "partial").exists() or not any(
        (consumer.home / "partial").iterdir()
    )


def test_publisher_key_rotation_is_refused_until_trusted(
    nodes: Callable[..., Node], tracker: Tracker, tmp_path: Path
) -> None:
    src = make_version_folder(tmp_path / "src", model_state())
    publisher = nodes("publisher", publisher=True)
    publisher.start_seeding("publish", str(src), "--name", NAME, "--version", "v1")
    good = Manifest.read(publisher.home / "models" / "org--model" / "v1" / "p2pdist.json")
    rotated = good.signed(Ed25519PrivateKey.generate())  # same files and torrents, another key
    consumer = nodes("consumer")
    assert consumer.run("trust", NAME, good.public_key or "").returncode == 0
    tracker.stop()
    db = sqlite3.connect(tracker.data_dir / "tracker.sqlite3")
    db.execute("UPDATE versions SET manifest=? WHERE model=?", (rotated.to_bytes(), NAME))
    db.commit()
    db.close()
    tracker.start()
    refused = consumer.run("fetch", f"{NAME}@v1")
    assert refused.returncode == 1
    assert f"p2pdist trust {NAME} {rotated.public_key}" in refused.stderr
    assert consumer.run("trust", NAME, rotated.public_key or "").returncode == 0
    accepted = consumer.fetch_json(f"{NAME}@v1")
    assert_same_files(src, Path(accepted["path"]))


def test_fetch_follow_prints_each_version_as_it_arrives(
    nodes: Callable[..., Node], tmp_path: Path
) -> None:
    src1, src2 = two_versions(tmp_path)
    publisher = nodes("publisher", publisher=True)
    first = publisher.start_seeding("publish", str(src1), "--name", NAME, "--version", "v1")
    consumer = nodes("consumer")
    follower = consumer.start("fetch", f"{NAME}@latest", "--follow", "--json")
    assert follower.stdout is not None
    got_v1 = json.loads(follower.stdout.readline())
    assert (got_v1["ref"], got_v1["plan"]) == (f"{NAME}@v1", "full")
    first.kill()
    publisher.start_seeding(
        "publish", str(src2), "--name", NAME, "--version", "v2", "--parent", "v1"
    )
    got_v2 = json.loads(follower.stdout.readline())
    assert (got_v2["ref"], got_v2["plan"], got_v2["base"]) == (f"{NAME}@v2", "delta", "v1")
    assert_same_files(src2, Path(got_v2["path"]))


_LOAD_AND_SEED = r"""
import sys, time
import p2pdist
state = p2pdist.load("org/model@v1", seed=True)   # returns at once; seeding starts behind it
print("loaded", len(state), flush=True)
time.sleep(120)
"""


def test_an_application_that_loads_with_seed_serves_other_hosts(
    nodes: Callable[..., Node], tmp_path: Path
) -> None:
    src = make_version_folder(tmp_path / "src", model_state())
    publisher = nodes("publisher", publisher=True)
    origin = publisher.start_seeding("publish", str(src), "--name", NAME, "--version", "v1")
    app_host = nodes("app")
    assert app_host.fetch_json(f"{NAME}@v1")["plan"] == "full"
    origin.kill()
    origin.communicate(timeout=30)
    app = subprocess.Popen(
        [sys.executable, "-c", _LOAD_AND_SEED],
        stdout=subprocess.PIPE, text=True, env=app_host.env,
    )  # fmt: skip
    app_host.procs.append(app)  # stopped by the fixture
    assert app.stdout is not None
    assert app.stdout.readline().split() == ["loaded", str(len(model_state()))]
    result = nodes("other").fetch_json(f"{NAME}@v1", "--no-origin")
    assert result["bytes_from_peers"] >= result["full_bytes"] - 1
    assert_same_files(src, Path(result["path"]))


def test_private_model_needs_a_read_token_and_announces_with_the_readers_passkey(
    nodes: Callable[..., Node], tracker: Tracker, tmp_path: Path
) -> None:
    src = make_version_folder(tmp_path / "src", model_state())
    loopback_passkeys = {"P2PDIST_SSRF_MITIGATION": "0"}  # /announce/<passkey> on 127.0.0.1
    publisher = nodes("publisher", publisher=True, **loopback_passkeys)
    publisher.start_seeding("publish", str(src), "--name", NAME, "--version", "v1", "--private")

    anonymous = nodes("anonymous", **loopback_passkeys).run("fetch", f"{NAME}@v1")
    assert anonymous.returncode == 1
    assert anonymous.stderr.startswith("Error: ") and "Traceback" not in anonymous.stderr
    assert "token" in anonymous.stderr.lower()
    follower = nodes("follower", P2PDIST_TOKEN="not-a-token", **loopback_passkeys)
    following = follower.run("fetch", f"{NAME}@latest", "--follow", timeout=60)
    assert following.returncode == 1 and "Traceback" not in following.stderr
    said = [line for line in following.stderr.splitlines() if "token" in line.lower()]
    assert len(said) == 1 and said[0].startswith("Error: "), following.stderr  # said once

    reader_token = tracker.token("org", read_only=True)
    reader = nodes("reader", P2PDIST_TOKEN=reader_token, **loopback_passkeys)
    result = reader.fetch_json(f"{NAME}@v1")
    assert result["bytes_from_peers"] >= result["full_bytes"] - 1
    assert_same_files(src, Path(result["path"]))
    denied = reader.run("publish", str(src), "--name", NAME, "--version", "v2", "--no-seed")
    assert denied.returncode == 1 and "Traceback" not in denied.stderr
