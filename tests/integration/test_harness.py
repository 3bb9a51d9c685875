"""The test harness itself: a tracker that fails to start leaves no process, and the ports
tests choose cannot be taken by the kernel for other connections while a server restarts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.conftest import ephemeral_ports, free_port
from tests.integration.harness import Tracker

pytestmark = pytest.mark.integration


def test_a_tracker_that_fails_to_start_leaves_no_process(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path / "data")
    tracker.url = "http://127.0.0.1:1"  # not what it will say: its start is a failure
    try:
        with pytest.raises(AssertionError, match="p2pdist tracker listening on"):
            tracker.start()
        assert tracker.proc is None
        with socket.socket() as s:  # nothing listens on its port any more
            assert s.connect_ex(("127.0.0.1", tracker.port)) != 0
    finally:
        tracker.close()


def test_free_ports_lie_outside_the_kernels_ephemeral_range() -> None:
    """A port from bind(0) may be given to the next outgoing connection (any test's HTTP
    client or peer), so a tracker killed and restarted on it could find it taken."""
    ephemeral = ephemeral_ports()
    ports = {free_port() for _ in range(20)}
    assert not any(port in ephemeral for port in ports), sorted(ports)
    assert len(ports) > 1  # chosen at random, not a fixed sequence
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free to listen on
