"""Who a peer is (tracker/forwarded.py): the connection's address, or a trusted proxy's word.

Announces come from distinct 127.0.0.x addresses (all of 127/8 is loopback), so a peer's
own address, a forged one and the proxy's 127.0.0.1 can be told apart in the peer lists.
Both paths are driven: HTTP/1.1 announces the front answers, HTTP/1.0 ones it hands to
aiohttp.
"""

from __future__ import annotations

import socket
from ipaddress import ip_network
from pathlib import Path

import pytest
from multidict import CIMultiDict

from p2pdist.errors import ConfigError
from p2pdist.formats.bencode import bdecode
from p2pdist.tracker import TrackerSettings
from p2pdist.tracker.forwarded import address_from_head, client_address, request_address
from tests.edge_world import Served, connect_from, serving
from tests.tracker_world import announce_query, peer_id, publish_directly

PROXY = [ip_network("127.0.0.1/32")]


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "real_ip", "expected"),
    [
        ("127.0.0.5", "127.0.0.99", None, "127.0.0.5"),  # not a proxy: headers ignored
        ("127.0.0.5", None, "127.0.0.99", "127.0.0.5"),
        ("127.0.0.1", "127.0.0.7", None, "127.0.0.7"),  # the proxy says who
        ("127.0.0.1", None, "127.0.0.7", "127.0.0.7"),
        ("127.0.0.1", "127.0.0.99, 127.0.0.7", None, "127.0.0.7"),  # forged entry on the left
        ("127.0.0.1", "127.0.0.7, 127.0.0.1", None, "127.0.0.7"),  # proxies skipped
        ("127.0.0.1", "127.0.0.1", None, "127.0.0.1"),
        ("127.0.0.1", "junk, 127.0.0.7", None, "127.0.0.7"),
        ("127.0.0.1", "127.0.0.7, junk", "127.0.0.8", "127.0.0.1"),  # junk: only the proxy is sure
        ("127.0.0.1", "[::1]:555", None, "::1"),
        ("127.0.0.1", "127.0.0.7:555", None, "127.0.0.7"),
        ("127.0.0.1", None, None, "127.0.0.1"),
        ("::ffff:127.0.0.1", "127.0.0.7", None, "127.0.0.7"),
    ],
)
def test_client_address(
    peer: str, forwarded_for: str | None, real_ip: str | None, expected: str
) -> None:
    assert client_address(peer, forwarded_for, real_ip, PROXY) == expected


def test_no_trusted_proxy_means_no_header_is_believed() -> None:
    assert client_address("127.0.0.1", "127.0.0.7", "127.0.0.8", []) == "127.0.0.1"


def test_a_bad_cidr_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not an address or CIDR"):
        TrackerSettings(data_dir=tmp_path, trusted_proxies=("127.0.0.0/33",))


def _announce(
    served: Served, source: str, info_hash: bytes, n: int, *headers: str, version: str = "1.1"
) -> dict[bytes, object]:
    query = announce_query(info_hash, peer_id(n), port=7000 + n)
    head = [f"GET /announce?{query} HTTP/{version}", "Host: 127.0.0.1", *headers]
    with connect_from(source, served.port) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        if version == "1.1":
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    _, _, body = data.partition(b"\r\n\r\n")
    return bdecode(body)


def _addresses(answer: dict[bytes, object]) -> set[tuple[str, int]]:
    blob = answer[b"peers"]
    assert isinstance(blob, bytes)
    return {
        (socket.inet_ntoa(blob[i : i + 4]), int.from_bytes(blob[i + 4 : i + 6], "big"))
        for i in range(0, len(blob), 6)
    }


@pytest.mark.parametrize("version", ["1.1", "1.0"], ids=["front", "aiohttp"])
def test_forwarded_headers_count_only_from_a_trusted_proxy(tmp_path: Path, version: str) -> None:
    data = tmp_path / "tracker"
    info_hash = publish_directly(data, "acme/public")
    settings = TrackerSettings(data_dir=data, interval=60, trusted_proxies=("127.0.0.1/32",))
    with serving(settings) as served:
        # a spoofing client: its own address is recorded, not the one it forwards
        _announce(
            served, "127.0.0.5", info_hash, 5, "X-Forwarded-For: 127.0.0.99",
            "X-Real-IP: 127.0.0.98", version=version,
        )  # fmt: skip
        # the trusted proxy speaks for its clients, by either header
        _announce(served, "127.0.0.1", info_hash, 6, "X-Forwarded-For: 127.0.0.6", version=version)
        _announce(served, "127.0.0.1", info_hash, 7, "X-Real-IP: 127.0.0.7", version=version)
        seen = _addresses(_announce(served, "127.0.0.9", info_hash, 9, version=version))
    assert seen == {("127.0.0.5", 7005), ("127.0.0.6", 7006), ("127.0.0.7", 7007)}


def test_without_trusted_proxies_the_proxy_is_every_peer(tmp_path: Path) -> None:
    data = tmp_path / "tracker"
    info_hash = publish_directly(data, "acme/public")
    with serving(TrackerSettings(data_dir=data, interval=60)) as served:
        _announce(served, "127.0.0.1", info_hash, 6, "X-Forwarded-For: 127.0.0.6")
        seen = _addresses(_announce(served, "127.0.0.9", info_hash, 9))
    assert seen == {("127.0.0.1", 7006)}


def test_both_paths_take_the_last_x_real_ip_a_client_cannot_put_first() -> None:
    """A proxy adds its X-Real-IP after any the client sent: the front's raw head and the
    aiohttp path must both read the last one."""
    head = b"\r\nX-Real-IP: 127.0.0.66\r\nX-Real-IP: 127.0.0.9\r\n"
    assert address_from_head("127.0.0.1", head, PROXY) == "127.0.0.9"

    class Request:
        remote = "127.0.0.1"
        headers = CIMultiDict([("X-Real-IP", "127.0.0.66"), ("X-Real-IP", "127.0.0.9")])

    assert request_address(Request(), PROXY) == "127.0.0.9"  # type: ignore[arg-type]
