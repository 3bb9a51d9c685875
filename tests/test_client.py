"""RegistryClient against a real tracker in a thread, a dead port, and servers that lie."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.client import RegistryClient, passkey_for
from p2pdist.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    FormatError,
    NotFoundError,
    SignatureError,
    TrackerError,
)
from p2pdist.tracker import TrackerSettings
from tests.conftest import free_port, wait_until
from tests.tracker_world import make_token, make_version, running_tracker

MODEL = "acme/llm"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path_factory.mktemp("tracker")
    with running_tracker(TrackerSettings(data_dir=data_dir)) as url:
        yield url, data_dir


def test_a_cancelled_long_poll_ends_at_once_and_others_go_on(world: tuple[str, Path]) -> None:
    """cancel_waits() cuts short the long-polls whose event is set, and only those."""
    url, _ = world
    client = RegistryClient(url)
    cancel, other = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def wait(label: str, event: threading.Event) -> None:
        results[label] = client.wait_for_newer("nobody/publishes", None, 60, cancel=event)

    waiters = [threading.Thread(target=wait, args=(n, e)) for n, e in (("a", cancel), ("b", other))]
    for t in waiters:
        t.start()
    while len(client._waits) < 2:  # both connected and registered
        assert all(t.is_alive() for t in waiters)
        threading.Event().wait(0.01)
    threading.Event().wait(0.2)  # both are inside the registry's 60 s wait
    cancel.set()
    client.cancel_waits()
    waiters[0].join(30)
    assert not waiters[0].is_alive() and results["a"] is None
    assert waiters[1].is_alive()  # the other wait is untouched
    other.set()
    client.cancel_waits()
    waiters[1].join(30)
    assert not waiters[1].is_alive() and results["b"] is None and client._waits == {}
    # an event set before the call: no request at all
    assert client.wait_for_newer("nobody/publishes", None, 60, cancel=cancel) is None


def _stalled_listener(full_queue: bool) -> tuple[socket.socket, list[object]]:
    """A port where a connection hangs: in the TCP connect (a full accept queue, whose SYNs
    Linux drops) or, accepted, in the TLS handshake (nothing is ever answered)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0 if full_queue else 8)
    keep: list[object] = []
    if full_queue:
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(listener.getsockname())
            keep.append(s)
        threading.Event().wait(0.2)
        probe = socket.socket()
        probe.settimeout(0.5)
        try:
            probe.connect(listener.getsockname())
            pytest.skip("this kernel does not drop SYNs on a full accept queue")
        except OSError:
            pass
        finally:
            probe.close()
    else:

        def accept_two() -> None:
            with contextlib.suppress(OSError):  # the test closes the listener when done
                for _ in range(2):
                    keep.append(listener.accept())

        threading.Thread(target=accept_two, daemon=True).start()
    keep.append(listener)
    return listener, keep


@pytest.mark.parametrize(("scheme", "full_queue"), [("http", True), ("https", False)])
def test_a_cancel_while_connecting_ends_the_wait_at_once(scheme: str, full_queue: bool) -> None:
    """A long-poll still connecting (its connect timeout is the whole wait, 35 s here) or in
    its TLS handshake ends when cancelled, not when that times out."""
    listener, keep = _stalled_listener(full_queue)
    try:
        client = RegistryClient(f"{scheme}://127.0.0.1:{listener.getsockname()[1]}", timeout=5)
        cancel, result = threading.Event(), []
        waiter = threading.Thread(
            target=lambda: result.append(client.wait_for_newer("m/x", None, 30, cancel=cancel))
        )
        waiter.start()
        # connecting (http: its socket made, the SYN unanswered) or, accepted by the
        # listener, in the TLS handshake (https)
        wait_until(
            lambda: (
                any(c._handle is not None for c in list(client._waits.values()))
                and (full_queue or any(isinstance(k, tuple) for k in keep))
            ),
            "the long-poll connecting",
        )
        cancel.set()
        client.cancel_waits()
        waiter.join(10)
        assert not waiter.is_alive() and result == [None] and client._waits == {}
    finally:
        for item in keep:
            for s in item if isinstance(item, tuple) else (item,):
                if isinstance(s, socket.socket):
                    s.close()


def test_publish_and_read_back(world: tuple[str, Path]) -> None:
    url, data_dir = world
    key = Ed25519PrivateKey.generate()
    token = make_token(data_dir, "acme")
    client = RegistryClient(url, token=token)
    assert client.health()
    v1 = make_version(key, MODEL, "v1")
    v2 = make_version(key, MODEL, "v2", parent="v1")
    assert client.publish(v1.manifest_bytes, v1.torrent, None)["created"] is True
    assert client.publish(v1.manifest_bytes, v1.torrent, None)["created"] is False
    client.publish(v2.manifest_bytes, v2.torrent, v2.delta_torrent)
    anonymous = RegistryClient(url)
    assert {"name": MODEL, "private": False, "latest": "v2", "versions": 2} in (
        anonymous.list_models()
    )
    assert [v["version"] for v in anonymous.list_versions(MODEL)] == ["v1", "v2"]
    assert anonymous.latest(MODEL) == "v2"
    assert anonymous.manifest_bytes(MODEL, "v2") == v2.manifest_bytes
    assert anonymous.torrent(MODEL, "v2") == v2.torrent
    assert anonymous.torrent(MODEL, "v2", kind="delta") == v2.delta_torrent
    assert anonymous.wait_for_newer(MODEL, "v1", wait=5) == "v2"
    assert anonymous.wait_for_newer(MODEL, "v2", wait=0.2) is None
    assert anonymous.wait_for_newer(MODEL, None, wait=0) == "v2"

    other = make_version(key, MODEL, "v1", content=b"different")
    with pytest.raises(ConflictError, match="immutable"):
        client.publish(other.manifest_bytes, other.torrent, None)
    with pytest.raises(AuthError):
        anonymous.publish(other.manifest_bytes, other.torrent, None)
    intruder = make_version(Ed25519PrivateKey.generate(), MODEL, "v3", parent="v2")
    with pytest.raises(SignatureError, match="pinned"):
        client.publish(intruder.manifest_bytes, intruder.torrent, intruder.delta_torrent)
    with pytest.raises(NotFoundError):
        anonymous.manifest_bytes(MODEL, "v9")
    with pytest.raises(NotFoundError):
        anonymous.latest("acme/nothing")
    with pytest.raises(FormatError):
        client.publish(b"not json", b"", None)


def test_private_model_and_announce_urls(world: tuple[str, Path]) -> None:
    url, data_dir = world
    token = make_token(data_dir, "secret")
    client = RegistryClient(url + "/", token=token)
    v1 = make_version(Ed25519PrivateKey.generate(), "secret/m", "v1")
    client.publish(v1.manifest_bytes, v1.torrent, None, private=True)
    assert client.manifest_bytes("secret/m", "v1") == v1.manifest_bytes
    with pytest.raises(
        NotFoundError, match=r"no model secret/m .*without a token"
    ):  # alike not found
        RegistryClient(url).manifest_bytes("secret/m", "v1")
    assert "secret/m" not in [m["name"] for m in RegistryClient(url).list_models()]
    assert client.announce_url() == f"{url}/announce"
    assert client.announce_url(private=True) == f"{url}/announce/{passkey_for(token)}"
    with pytest.raises(ConfigError):
        RegistryClient(url).announce_url(private=True)


def test_down_tracker_is_a_clear_error() -> None:
    client = RegistryClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(TrackerError, match=r"not reachable.*p2pdist tracker serve"):
        client.list_models()
    assert client.health() is False
    with pytest.raises(ConfigError):
        RegistryClient("ftp://example.org")


class _Liar(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html>I am a web server</html>" if self.path == "/v1/models" else b'{"x": 1}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_nonsense_answers_are_tracker_errors() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Liar)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = RegistryClient(f"http://127.0.0.1:{server.server_address[1]}", timeout=5)
        with pytest.raises(TrackerError, match="not valid UTF-8 JSON"):
            client.list_models()
        with pytest.raises(TrackerError, match="without a version"):
            client.latest("acme/llm")
        with pytest.raises(TrackerError, match="bencoded"):
            client.torrent("acme/llm", "v1")
        assert client.health() is False
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_silent_tracker_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = RegistryClient(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.3)
        with pytest.raises(TrackerError, match="not reachable"):
            client.list_models()


def test_errors_lead_with_what_happened_and_unknown_models_get_suggestions(
    world: tuple[str, Path],
) -> None:
    url, data_dir = world
    key = Ed25519PrivateKey.generate()
    client = RegistryClient(url, token=make_token(data_dir, "acme"))
    small = make_version(key, "acme/gpt-small", "v1")
    client.publish(small.manifest_bytes, small.torrent, None)
    anonymous = RegistryClient(url)
    with pytest.raises(NotFoundError) as typo:
        anonymous.latest("acme/gpt-smal")
    assert str(typo.value).startswith("no model acme/gpt-smal in the registry")
    assert "did you mean acme/gpt-small?" in str(typo.value)
    with pytest.raises(NotFoundError, match="did you mean acme/gpt-small"):
        anonymous.manifest_bytes("Acme/GPT-small", "v1")  # names differ by case only
    with pytest.raises(NotFoundError) as missing_version:
        anonymous.manifest_bytes("acme/gpt-small", "v9")
    message = str(missing_version.value)
    assert not message.startswith(("GET", "no model")), message
    assert message.endswith("(GET /v1/models/acme/gpt-small/versions/v9/manifest)")


def test_an_unknown_parent_that_exists_nowhere_is_not_told_to_fetch_it(
    world: tuple[str, Path], p2p_home: Path, tmp_path: Path
) -> None:
    from p2pdist.publishing import publish
    from tests.conftest import make_version_folder, small_state_dict

    url, data_dir = world
    folder = make_version_folder(tmp_path / "src", small_state_dict())
    token = make_token(data_dir, "acme")
    key = Ed25519PrivateKey.generate()
    with pytest.raises(NotFoundError) as nowhere:
        publish(folder, name="acme/parentless", version="v2", parent="v1", tracker=url,
                token=token, key=key, seed=False)  # fmt: skip
    assert "exists neither in the store nor in the registry" in str(nowhere.value)
    assert "fetch" not in str(nowhere.value)


def test_load_takes_the_tracker_and_token_as_fetch_does(
    world: tuple[str, Path], p2p_home: Path
) -> None:
    import p2pdist

    url, data_dir = world
    token = make_token(data_dir, "acme")
    # the configured default tracker is down; this one answers, and says what it knows
    with pytest.raises(NotFoundError, match="no model acme/nothing-here in the registry at"):
        p2pdist.load("acme/nothing-here", tracker=url, token=token)
