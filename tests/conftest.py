"""Shared fixtures: an isolated home/config per test, a signing key, small real state dicts."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.formats.manifest import Manifest, describe_files, list_files
from p2pdist.formats.shards import save_state_dict
from p2pdist.store.cache import Store

if TYPE_CHECKING:
    from tests.hostile_registry import World


@pytest.fixture
def p2p_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private P2PDIST_HOME and config dir for one test; the environment is restored after."""
    home = tmp_path / "home"
    monkeypatch.setenv("P2PDIST_HOME", str(home))
    monkeypatch.setenv("P2PDIST_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("P2PDIST_TRACKER", raising=False)
    monkeypatch.delenv("P2PDIST_TOKEN", raising=False)
    monkeypatch.delenv("P2PDIST_CONFIG", raising=False)
    monkeypatch.delenv("P2PDIST_WRITEBACK", raising=False)
    monkeypatch.delenv("P2PDIST_LIBTORRENT", raising=False)
    yield home


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def small_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with every dtype the format supports, 0-d and empty tensors included."""
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(64, 16, generator=g),
        "layer.0.weight": torch.randn(16, 16, generator=g).to(torch.bfloat16),
        "layer.0.bias": torch.randn(16, generator=g).to(torch.float16),
        "layer.1.weight": torch.randn(8, 16, generator=g).to(torch.float8_e4m3fn),
        "layer.1.scale": torch.tensor(0.5, dtype=torch.float32),
        "quant.int8": torch.randint(-128, 127, (32,), generator=g, dtype=torch.int8),
        "mask": torch.rand(10, generator=g) > 0.5,
        "empty": torch.zeros(0, 4),
        "counts": torch.arange(5, dtype=torch.int64),
    }


def make_version_folder(
    folder: Path, state_dict: dict[str, torch.Tensor], **kwargs: object
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(state_dict, folder, **kwargs)  # type: ignore[arg-type]
    (folder / "config.json").write_text('{"model_type": "test"}\n')
    return folder


def sign_folder(
    folder: Path, key: Ed25519PrivateKey, name: str = "org/model", version: str = "v1"
) -> Manifest:
    return Manifest(
        name=name, version=version, files=describe_files(folder, list_files(folder))
    ).signed(key)


@pytest.fixture
def stored_version(p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey) -> Manifest:
    """org/model@v1 committed into the test's store."""
    folder = make_version_folder(tmp_path / "src", small_state_dict())
    manifest = sign_folder(folder, signing_key)
    Store(p2p_home).add_version(manifest, folder)
    return manifest


@pytest.fixture
def swarm_world(tmp_path: Path, p2p_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A real tracker in this process on loopback (tests/hostile_registry.py ``World``): a
    publish token for ``org``, a small model folder, a publisher's and a consumer's store.
    A process swarm a test starts (``p2pdist.load``, ``p2pdist.fetch``) listens on 127.0.0.1
    and is closed afterwards."""
    from p2pdist.swarm.session import existing_swarm
    from p2pdist.tracker import TrackerSettings
    from tests.hostile_registry import World
    from tests.tracker_world import make_token, running_tracker

    monkeypatch.setenv("P2PDIST_LISTEN", "127.0.0.1")
    data = tmp_path / "tracker"
    data.mkdir()
    token = make_token(data, "org")
    folder = make_version_folder(tmp_path / "src", small_state_dict())
    try:
        with running_tracker(TrackerSettings(data, interval=2)) as url:
            yield World(url, token, data, folder, tmp_path / "publisher", tmp_path / "consumer")
    finally:
        swarm = existing_swarm()
        if swarm is not None:
            swarm.close()


def wait_until(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` (every 10 ms) until it is true; fail naming ``what`` after ``timeout``
    seconds. Tests wait for the state they need this way, never with a fixed sleep: on a slow
    machine a sleep passes without the state having come, and on a fast one it wastes time."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.01)


def ephemeral_ports() -> range:
    """The ports the kernel hands to outgoing connections and to ``bind(port 0)``."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


_PORTS = random.SystemRandom()  # not the seedable module RNG: parallel runs must differ


def free_port() -> int:
    """A loopback TCP port that nothing listens on now, chosen outside the kernel's ephemeral
    range: a port from ``bind(0)`` is one the kernel may give the next outgoing connection
    (a tracker killed and restarted on its port then found it taken); these ports it never
    hands out by itself. Two test processes may still pick the same one (1 in thousands)."""
    ephemeral = ephemeral_ports()
    pool = (
        range(10000, ephemeral.start) if ephemeral.start > 11000 else range(ephemeral.stop, 65536)
    )
    for _ in range(100):
        port = _PORTS.choice(pool)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    with socket.socket() as s:  # a crowded machine: any free port will do
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def has_ipv6_loopback() -> bool:
    """Whether this machine can bind ::1 (containers often have IPv6 off)."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def write_random_files(root: Path, sizes: dict[str, int], seed: int = 0) -> list[str]:
    """Random bytes at root/<path> for each path and size; returns the sorted paths."""
    rng = random.Random(seed)
    for rel, size in sizes.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    return sorted(sizes)


# Real PostgreSQL and Redis servers (session-scoped; skipped with a reason where unavailable).
from tests.backends import postgres_server, postgres_url, redis_server, redis_url  # noqa: E402, F401
