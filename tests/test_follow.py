"""The follower's rollback rule, without a swarm (tests/integration/test_follow.py follows real
publishers): a version the registry lists as newer must not be older than the one delivered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.client import RegistryClient
from p2pdist.errors import IntegrityError
from p2pdist.fetcher import Fetcher
from p2pdist.follower import Follower
from p2pdist.formats.keys import TrustStore
from p2pdist.formats.manifest import Manifest, describe_files, list_files

from .conftest import make_version_folder, small_state_dict


def _signed(
    version: str, parent: str | None, created: str, files: tuple, key: Ed25519PrivateKey
) -> Manifest:
    return Manifest(name="org/model", version=version, parent=parent, created=created,
                    files=files).signed(key)  # fmt: skip


@pytest.fixture
def follower(p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey) -> Follower:
    """A follower that has delivered v2 (signed 12:00:00), whose parent v1 is stored."""
    folder = make_version_folder(tmp_path / "src", small_state_dict())
    files = describe_files(folder, list_files(folder))
    fetcher = Fetcher(home=p2p_home, client=RegistryClient("http://127.0.0.1:9"), swarm=object(),
                      trust=TrustStore(tmp_path / "config"))  # fmt: skip
    for version, parent in (("v1", None), ("v2", "v1")):
        created = "2026-11-28T11:00:00Z" if version == "v1" else "2026-11-28T12:00:00Z"
        fetcher.store.add_version(_signed(version, parent, created, files, signing_key), folder)
    follower = Follower("org/model@latest", lambda update: None, fetcher=fetcher)
    follower.current, follower._delivered_created = "v2", "2026-11-28T12:00:00Z"
    return follower


def _offered(created: str) -> SimpleNamespace:
    return SimpleNamespace(manifest=SimpleNamespace(created=created))


def test_an_ancestor_offered_as_newer_is_refused_whatever_its_clock(follower: Follower) -> None:
    with pytest.raises(IntegrityError, match="v1 is an ancestor of v2"):
        follower._refuse_rollback("v1", _offered("2026-11-28T13:00:00Z"))


def test_a_publisher_clock_a_little_behind_is_not_a_rollback(follower: Follower) -> None:
    follower._refuse_rollback("v3", _offered("2026-11-28T11:59:55Z"))  # 5 s behind: allowed
    with pytest.raises(IntegrityError, match=r"older than v2 .* by more than 600 s"):
        follower._refuse_rollback("v3", _offered("2026-11-28T11:00:00Z"))


FOLLOW_WITH_NO_REGISTRY = """
import sys, time
from p2pdist.client import RegistryClient
from p2pdist.fetcher import Fetcher
from p2pdist.follower import Follower
assert "p2pdist.delta" not in sys.modules, "imported before following began"
fetcher = Fetcher(client=RegistryClient("http://127.0.0.1:9"), swarm=object())
follower = Follower("org/model@latest", lambda update: None, fetcher=fetcher).start()
deadline = time.monotonic() + 30
while "p2pdist.delta" not in sys.modules and time.monotonic() < deadline:
    time.sleep(0.01)
follower.stop()
print(follower.updates, "p2pdist.delta" in sys.modules)
"""


def test_a_follower_loads_the_delta_codec_before_any_update(p2p_home: Path) -> None:
    """Updates arrive as deltas: their codec (numpy) is loaded when following starts, here
    with no registry reachable and so no update at all, not between the registry's notice
    of a version and its download (0.55-0.78 s of an RL sync on the bed)."""
    done = subprocess.run(
        [sys.executable, "-c", FOLLOW_WITH_NO_REGISTRY], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "True"]
