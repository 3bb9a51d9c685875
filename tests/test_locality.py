"""The tracker's locality policy: across sites only gateways cross; one site is untouched."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from p2pdist.errors import ConfigError
from p2pdist.formats.bencode import bdecode
from p2pdist.tracker import TrackerSettings, create_app
from p2pdist.tracker.locality import GATEWAYS, prefer_site, site_of
from tests.tracker_world import announce_query, peer_id, publish_directly


def entry(address: str, port: int = 6881) -> bytes:
    return ipaddress.ip_address(address).packed + port.to_bytes(2, "big")


def entries(blob: bytes, size: int = 6) -> list[bytes]:
    return [blob[i : i + size] for i in range(0, len(blob), size)]


def test_one_site_is_handed_out_unchanged() -> None:
    others = b"".join(entry(f"10.0.0.{i}") for i in range(2, 9))
    assert prefer_site(entry("10.0.0.1"), others, 6) == others


def test_only_gateways_cross_between_two_sites() -> None:
    seed = entry("10.1.0.10")
    site_b = [entry(f"10.2.0.{i}") for i in range(10, 18)]
    swarm = [seed, *site_b]

    def handed(me: bytes) -> list[bytes]:
        return entries(prefer_site(me, b"".join(e for e in swarm if e != me), 6))

    to_seed = handed(seed)
    assert len(to_seed) == GATEWAYS and all(site_of(e) == site_of(site_b[0]) for e in to_seed)
    crossing = [me for me in site_b if seed in handed(me)]
    assert sorted(crossing) == sorted(to_seed)  # both sides agree on who the gateways are
    for me in site_b:
        got = handed(me)
        assert all(e in got for e in site_b if e != me)  # every local peer, always
        assert got[: len(site_b) - 1] == [e for e in site_b if e != me]  # local first


def test_ipv6_sites_are_64_bit_prefixes() -> None:
    me = ipaddress.ip_address("fd00:1::5").packed + b"\x1a\xe1"
    near = ipaddress.ip_address("fd00:1::6").packed + b"\x1a\xe1"
    far = ipaddress.ip_address("fd00:2::6").packed + b"\x1a\xe1"
    got = prefer_site(me, far + near, 18)
    assert got[:18] == near


@pytest.mark.parametrize("accept_ip_from", [(), ("127.0.0.0/8",), ("10.0.0.0/8",)])
async def test_an_announced_address_is_honoured_only_from_accepted_networks(
    aiohttp_client: Any, tmp_path: Path, accept_ip_from: tuple[str, ...]
) -> None:
    data = tmp_path / "tracker"
    info_hash = publish_directly(data, "acme/public", "v1")
    settings = TrackerSettings(data_dir=data, interval=60, accept_ip_from=accept_ip_from)
    client = await aiohttp_client(create_app(settings))

    async def announce(n: int, **extra: str) -> dict[bytes, Any]:
        query = announce_query(info_hash, peer_id(n), port=7000 + n, **extra)
        r = await client.get(f"/announce?{query}")
        return bdecode(await r.read())

    await announce(1, ip="127.0.0.9")  # a private address: dial me there
    await announce(2, ip="0.0.0.0")  # nobody's address: never taken
    seen = await announce(3)
    honoured = accept_ip_from == ("127.0.0.0/8",)  # the client (127.0.0.1) is in it
    assert sorted(entries(seen[b"peers"])) == sorted(
        [entry("127.0.0.9" if honoured else "127.0.0.1", 7001), entry("127.0.0.1", 7002)]
    )


def test_a_bad_accept_ip_from_network_is_one_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--accept-ip-from 'nope' is not an address or CIDR"):
        TrackerSettings(data_dir=tmp_path, accept_ip_from=("nope",))
