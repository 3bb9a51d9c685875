"""``tracker serve -v`` logs one line per request (tracker/access.py), on both paths.

Announces answered by the raw front never reach aiohttp's access log; before this, ``-v``
("log every request") logged nothing at all.
"""

from __future__ import annotations

from pathlib import Path

from p2pdist.client import passkey_for
from tests.edge_world import ServiceTracker, connect_from, http_get
from tests.tracker_world import announce_query, make_token, peer_id, publish_directly


def test_verbose_logs_one_line_per_request_without_credentials(tmp_path: Path) -> None:
    data = tmp_path / "tracker"
    public = publish_directly(data, "acme/public")
    private = publish_directly(data, "acme/secret", private=True)
    passkey = passkey_for(make_token(data, "acme", publish=False))
    tracker = ServiceTracker(data, "-v", "--trusted-proxy", "127.0.0.1/32")
    try:
        tracker.start()
        with connect_from("127.0.0.2", tracker.port) as c:
            http_get(c, f"/announce?{announce_query(public, peer_id(2), port=7002)}")
            http_get(c, f"/announce/{passkey}?{announce_query(private, peer_id(3), port=7003)}")
            http_get(c, "/announce?info_hash=short")
            http_get(c, "/healthz")
        with connect_from("127.0.0.1", tracker.port) as proxy:
            http_get(proxy, "/healthz", "X-Forwarded-For: 127.0.0.7")
        code, out = tracker.stop()
    finally:
        tracker.close()
    assert code == 0, out
    lines = [line for line in out.splitlines() if "p2pdist.tracker.access" in line]
    assert len(lines) == 5, out
    assert "127.0.0.2 GET /announce 200" in lines[0]
    assert "127.0.0.2 GET /announce/<passkey> 200" in lines[1]
    assert "refused: info_hash must be 20 bytes" in lines[2]
    assert "127.0.0.2 GET /healthz 200" in lines[3]
    assert "127.0.0.7 GET /healthz 200" in lines[4]  # the client behind the trusted proxy
    assert passkey not in out and "info_hash=" not in out
