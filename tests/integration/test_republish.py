"""Publishing again after a registration the registry refused: the retry reuses what this host
stored only when it is what the retry asks for."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pdist.formats.torrent import read_torrent
from tests.conftest import make_version_folder, small_state_dict
from tests.integration.harness import Node, Tracker

pytestmark = pytest.mark.integration

NAME = "org/model"


def registered(tracker: Tracker) -> list[str]:
    with urllib.request.urlopen(f"{tracker.url}/v1/models/{NAME}/versions", timeout=10) as r:
        return sorted(v["version"] for v in json.load(r)["versions"])


def stored(host: Node) -> list[str]:
    listing = host.run("ls", "--json")
    assert listing.returncode == 0, listing.stderr
    return sorted(v["ref"] for v in json.loads(listing.stdout)["versions"])


def test_a_retry_without_version_reuses_the_version_the_registry_refused(
    nodes: Callable[..., Node], tracker: Tracker, publish_token: str, tmp_path: Path
) -> None:
    src = make_version_folder(tmp_path / "src", small_state_dict(1))
    host = nodes("publisher")  # no token yet: the registry refuses the first publish
    refused = host.run("publish", str(src), "--name", NAME, "--no-seed")
    assert refused.returncode == 1 and "token" in refused.stderr, refused.stderr
    assert stored(host) == [f"{NAME}@v1"]
    host.env["P2PDIST_TOKEN"] = publish_token
    retried = host.run("publish", str(src), "--name", NAME, "--no-seed")
    assert retried.returncode == 0, retried.stderr
    assert f"{NAME}@v1" in retried.stdout
    assert registered(tracker) == ["v1"] and stored(host) == [f"{NAME}@v1"]
    # other files next: a new number, after everything the store or the registry has
    other = make_version_folder(tmp_path / "other", small_state_dict(2))
    nxt = host.run("publish", str(other), "--name", NAME, "--no-seed")
    assert nxt.returncode == 0, nxt.stderr
    assert registered(tracker) == ["v1", "v2"]


def test_a_retry_with_other_options_is_refused_not_published_as_stored(
    nodes: Callable[..., Node], tracker: Tracker, tmp_path: Path
) -> None:
    host = nodes("publisher", publisher=True)
    v1 = make_version_folder(tmp_path / "v1", small_state_dict(1))
    first = host.run("publish", str(v1), "--name", NAME, "--version", "v1", "--no-seed")
    assert first.returncode == 0, first.stderr
    v2 = make_version_folder(tmp_path / "v2", small_state_dict(2))
    args = ("publish", str(v2), "--name", NAME, "--version", "v2", "--no-seed")
    wrong = host.run(*args, "--private")  # the model is public: the registry refuses
    assert wrong.returncode == 1 and "private" in wrong.stderr, wrong.stderr
    assert registered(tracker) == ["v1"]
    # the stored v2 is private; publishing it as public must not register that torrent
    retried = host.run(*args)
    assert retried.returncode == 1, retried.stdout
    message = retried.stderr.strip()
    assert message.count("\n") == 0 and "Traceback" not in message
    assert "private True (asked: False)" in message and f"p2pdist rm {NAME}@v2" in message
    assert registered(tracker) == ["v1"]
    removed = host.run("rm", f"{NAME}@v2")
    assert removed.returncode == 0, removed.stderr
    again = host.run(*args)
    assert again.returncode == 0, again.stderr
    url = f"{tracker.url}/v1/models/{NAME}/versions/v2/torrent?kind=full"
    with urllib.request.urlopen(url, timeout=10) as r:
        assert read_torrent(r.read()).private is False


def test_a_refused_version_overtaken_by_a_newer_one_is_not_reused(
    nodes: Callable[..., Node], tracker: Tracker, publish_token: str, tmp_path: Path
) -> None:
    """v2 refused and kept in the store, v3 published after it: publishing v2's folder again
    must not register v2 after v3 (the registry's latest would go back)."""
    host = nodes("publisher", publisher=True)
    folders = [make_version_folder(tmp_path / f"f{i}", small_state_dict(i)) for i in (1, 2, 3)]
    assert host.run("publish", str(folders[0]), "--name", NAME, "--no-seed").returncode == 0
    host.env.pop("P2PDIST_TOKEN")
    assert host.run("publish", str(folders[1]), "--name", NAME, "--no-seed").returncode == 1
    host.env["P2PDIST_TOKEN"] = publish_token
    third = host.run("publish", str(folders[2]), "--name", NAME, "--no-seed")
    assert third.returncode == 0 and f"{NAME}@v3" in third.stdout, third.stderr
    again = host.run("publish", str(folders[1]), "--name", NAME, "--no-seed")
    assert again.returncode == 0 and f"{NAME}@v4" in again.stdout, again.stderr
    assert registered(tracker) == ["v1", "v3", "v4"]


def test_an_identical_republish_through_another_spelling_of_the_tracker_is_a_no_op(
    nodes: Callable[..., Node], tracker: Tracker, tmp_path: Path
) -> None:
    host = nodes("publisher", publisher=True)
    src = make_version_folder(tmp_path / "src", small_state_dict(1))
    args = ("publish", str(src), "--name", NAME, "--version", "v1", "--no-seed")
    assert host.run(*args).returncode == 0
    other = tracker.url.replace("127.0.0.1", "localhost")
    again = host.run(*args, "--tracker", other)
    assert again.returncode == 0, again.stderr
    assert registered(tracker) == ["v1"]
