"""Several tracker URLs: the registry client fails over, torrents carry one tier per URL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist import config
from p2pdist.client import RegistryClient
from p2pdist.errors import ConfigError, TrackerError
from p2pdist.fetcher import _rewritten
from p2pdist.formats.bencode import infohashes
from p2pdist.formats.torrent import read_torrent
from p2pdist.tracker import TrackerSettings
from tests.conftest import free_port
from tests.tracker_world import make_token, make_version, running_tracker

MODEL = "acme/llm"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path / "tracker"
    with running_tracker(TrackerSettings(data_dir=data_dir)) as url:
        yield url, data_dir


def test_tracker_urls_are_a_comma_separated_list(
    p2p_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2PDIST_TRACKER", "http://127.0.0.1:1/, http://127.0.0.2:2")
    assert config.tracker_urls() == ["http://127.0.0.1:1", "http://127.0.0.2:2"]
    assert config.tracker_url() == "http://127.0.0.1:1,http://127.0.0.2:2"
    monkeypatch.setenv("P2PDIST_TRACKER", "http://127.0.0.1:1,ftp://127.0.0.1")
    with pytest.raises(ConfigError, match="must start with http"):
        config.tracker_urls()


def test_the_client_fails_over_to_the_next_url_and_stays_there(live: tuple[str, Path]) -> None:
    url, data_dir = live
    dead = f"http://127.0.0.1:{free_port()}"
    token = make_token(data_dir, "acme")
    client = RegistryClient(f"{dead},{url}", token)
    v1 = make_version(Ed25519PrivateKey.generate(), MODEL, "v1")
    assert client.publish(v1.manifest_bytes, v1.torrent, v1.delta_torrent)["created"] is True
    assert client.base_url == url  # the live one answered; later requests start there
    assert client.latest(MODEL) == "v1"
    assert client.announce_urls() == [f"{dead}/announce", f"{url}/announce"]


def test_the_last_failure_is_raised_when_no_url_answers() -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    with pytest.raises(TrackerError, match=f"tracker at {dead[1]} is not reachable"):
        RegistryClient(dead).list_models()


def test_a_torrent_announces_to_every_tracker_url() -> None:
    v1 = make_version(Ed25519PrivateKey.generate(), MODEL, "v1")
    urls = ["http://127.0.0.1:1/announce", "http://127.0.0.2:2/announce"]
    rewritten = _rewritten(v1.torrent, urls, ())
    assert infohashes(rewritten) == infohashes(v1.torrent)  # the info dict is untouched
    assert read_torrent(rewritten).announce == tuple(urls)
