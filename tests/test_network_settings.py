"""Network settings (issue 14): TCP unless uTP is asked for, a fixed port, both caps, an
announced address; each from the environment, checked, and reaching the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pdist import config
from p2pdist.errors import ConfigError
from p2pdist.swarm.seeder import with_hints
from p2pdist.swarm.session import Swarm
from p2pdist.swarm.settings import session_settings

from .conftest import free_port


def _settings(**overrides: object) -> dict[str, object]:
    kwargs: dict[str, object] = dict(
        listen_interface="0.0.0.0", port=0, upload_rate_limit=0, download_rate_limit=0,
        announce_interval_hint=None, utp=False, ssrf_mitigation=True, extra_settings=None,
    )  # fmt: skip
    kwargs.update(overrides)
    return session_settings(**kwargs)  # type: ignore[arg-type]


def test_tcp_only_unless_utp_is_asked_for(p2p_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    off = _settings()  # on every interface, not only loopback
    assert off["enable_outgoing_utp"] is False and off["enable_incoming_utp"] is False
    assert config.utp() is False
    monkeypatch.setenv("P2PDIST_UTP", "1")
    assert config.utp() is True
    on = _settings(utp=config.utp())
    assert on["enable_outgoing_utp"] is True and on["enable_incoming_utp"] is True


def test_port_and_caps_reach_the_session(p2p_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("P2PDIST_PORT", str(port))
    monkeypatch.setenv("P2PDIST_DOWNLOAD_LIMIT", "3000000")
    assert config.listen_port() == port and config.download_rate_limit() == 3_000_000
    settings = _settings(port=config.listen_port(), download_rate_limit=3_000_000)
    assert settings["listen_interfaces"].endswith(f":{port}")
    assert settings["download_rate_limit"] == 3_000_000
    assert settings["ignore_limits_on_local_network"] is False  # a cap holds on a LAN too
    with Swarm(port=port) as swarm:
        assert swarm.listen_port == port


@pytest.mark.parametrize(
    ("name", "value", "reader", "message"),
    [
        ("P2PDIST_PORT", "70000", config.listen_port, "at most 65535"),
        ("P2PDIST_PORT", "http", config.listen_port, "listen port 'http'"),
        ("P2PDIST_DOWNLOAD_LIMIT", "fast", config.download_rate_limit, "download limit 'fast'"),
        ("P2PDIST_ANNOUNCE_ADDRESS", "not-an-address", config.announce_address, "IP address"),
    ],
)
def test_a_bad_network_setting_is_one_config_error(
    p2p_home: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, reader, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        reader()


def test_the_announced_address_rides_on_the_announce_url(
    p2p_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "http://127.0.0.1:6969/announce"
    assert with_hints(url) == url
    monkeypatch.setenv("P2PDIST_ANNOUNCE_ADDRESS", "127.0.0.7")
    assert with_hints(url) == f"{url}?ip=127.0.0.7"
    monkeypatch.setenv("P2PDIST_ANNOUNCE_ADDRESS", "::1")
    assert with_hints(url + "?x=1") == f"{url}?x=1&ip=%3A%3A1"


@pytest.mark.parametrize(("upload_cap", "queue"), [(0, 128), (4_000_000, 32), (10**9, 2000)])
def test_peers_queue_a_bounded_number_of_requests_at_us_capped_or_not(
    p2p_home: Path, upload_cap: int, queue: int
) -> None:
    """libtorrent's 2000 queued blocks per peer made a seed send pieces twice on real links
    (BENCHMARKS.md, "Cluster"): the queue is bounded with or without an upload cap, pieces
    are spread over peers block by block, and we ask a peer for 1 s of its rate, not 3."""
    settings = session_settings(
        listen_interface="127.0.0.1", port=0, upload_rate_limit=upload_cap,
        download_rate_limit=0, announce_interval_hint=None, utp=False,
        ssrf_mitigation=True, extra_settings=None,
    )  # fmt: skip
    assert settings["max_allowed_in_request_queue"] == queue
    assert settings["whole_pieces_threshold"] == 0
    assert settings["request_queue_time"] == 1


def test_libtorrent_overrides_reach_the_process_swarm(
    p2p_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``P2PDIST_LIBTORRENT`` (or the config file's ``[p2pdist.libtorrent]``) tunes settings
    p2pdist has no flag for, over p2pdist's own choices."""
    from p2pdist.swarm.seeder import process_swarm
    from p2pdist.swarm.session import existing_swarm

    assert config.libtorrent_settings() == {}
    config_file = p2p_home.parent / "lt.toml"
    config_file.write_text("[p2pdist.libtorrent]\nunchoke_slots_limit = 12\n")
    monkeypatch.setenv("P2PDIST_CONFIG", str(config_file))
    assert config.libtorrent_settings() == {"unchoke_slots_limit": 12}
    monkeypatch.setenv("P2PDIST_LIBTORRENT", '{"max_allowed_in_request_queue": 32}')
    monkeypatch.setenv("P2PDIST_LISTEN", "127.0.0.1")
    leaked = existing_swarm()
    if leaked is not None:  # started by an earlier test: this one needs a new swarm
        leaked.close()
    swarm = process_swarm()
    try:
        applied = swarm._session.get_settings()
        assert applied["max_allowed_in_request_queue"] == 32  # p2pdist's own value is 128
        assert applied["request_queue_time"] == 1  # p2pdist's own, kept beside the override
        monkeypatch.setenv("P2PDIST_LIBTORRENT", "{broken")  # read once, at the start
        assert process_swarm() is swarm
    finally:
        swarm.close()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[1, 2]", "must be an object of libtorrent settings"),
        ("{bad json", "P2PDIST_LIBTORRENT is not JSON"),
        ('{"unchoke_slots": 4}', "'unchoke_slots' is not a libtorrent setting"),
        ('{"unchoke_slots_limit": "4"}', "unchoke_slots_limit takes int, not '4'"),
        ('{"unchoke_slots_limit": true}', "unchoke_slots_limit takes int, not True"),
        ('{"enable_dht": {"on": 1}}', "enable_dht must be an integer, a boolean or a string"),
        ('{"unchoke_slots_limit": 1.5}', "must be an integer, a boolean or a string"),
        ('{"unchoke_slots_limit": 4294967301}', "unchoke_slots_limit = 4294967301 is out of range"),
        ('{"alert_mask": 0}', "alert_mask is p2pdist's own: the swarm's progress"),
        ('{"listen_interfaces": "0.0.0.0:1"}', "is p2pdist's own: use P2PDIST_LISTEN"),
    ],
)
def test_a_bad_libtorrent_override_is_one_config_error(
    p2p_home: Path, monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    from p2pdist.swarm.settings import checked_overrides

    monkeypatch.setenv("P2PDIST_LIBTORRENT", value)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        checked_overrides(config.libtorrent_settings())
