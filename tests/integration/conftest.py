"""Fixtures for integration tests: a running tracker and a factory of p2pdist nodes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Node, Tracker


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[Tracker]:
    t = Tracker(tmp_path / "tracker-data")
    t.start()  # stops what it started if it fails
    try:
        yield t
    finally:
        t.close()


@pytest.fixture
def publish_token(tracker: Tracker) -> str:
    return tracker.token("org")


@pytest.fixture
def nodes(tmp_path: Path, tracker: Tracker, publish_token: str) -> Iterator[Callable[..., Node]]:
    """``nodes("name", publisher=True)`` makes a host; all are stopped after the test."""
    made: list[Node] = []

    def make(name: str, *, publisher: bool = False, **env: str) -> Node:
        node = Node(tmp_path / name, tracker, publish_token if publisher else None, **env)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()
