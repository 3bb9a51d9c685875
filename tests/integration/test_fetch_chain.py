"""What a fetch through a delta chain leaves in the store: the version asked for (and the
base it started from), not the versions it passed through, unless ``--keep-chain``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import make_version_folder
from tests.integration.harness import Node
from tests.integration.test_publish_fetch import model_state, updated

pytestmark = pytest.mark.integration

NAME = "org/model"


def test_intermediate_versions_are_dropped_unless_kept_and_ls_shows_what_is_left(
    nodes: Callable[..., Node], tmp_path: Path
) -> None:
    states = [model_state(rows=256)]
    states += [updated(states[-1], seed) for seed in (1, 2, 3)]
    publisher = nodes("publisher", publisher=True)
    for number, state in enumerate(states, start=1):
        src = make_version_folder(tmp_path / f"v{number}", state)
        parent = () if number == 1 else ("--parent", f"v{number - 1}")
        args = ("publish", str(src), "--name", NAME, "--version", f"v{number}", *parent)
        assert publisher.run(*args, "--no-seed").returncode == 0
    publisher.start_seeding("seed")
    lean, keeper = nodes("lean"), nodes("keeper")
    for node in (lean, keeper):
        assert node.fetch_json(f"{NAME}@v1")["plan"] == "full"

    result = lean.fetch_json(f"{NAME}@v4")
    assert result["plan"] == "delta" and result["chain"] == ["v2", "v3", "v4"]
    assert result["dropped"] == ["v2", "v3"]
    listed = json.loads(lean.run("ls", "--json").stdout)["versions"]
    assert [r["ref"] for r in listed] == [f"{NAME}@v1", f"{NAME}@v4"]
    blobs = {p.name for p in (lean.home / "blobs").iterdir()}
    needed = {json.loads(Path(lean.home / "models" / "org--model" / v / "p2pdist.json")
              .read_text())["files"][0]["blake3"] for v in ("v1", "v4")}  # fmt: skip
    assert needed <= blobs
    human = lean.run("fetch", f"{NAME}@v4")
    assert human.returncode == 0, human.stderr
    assert lean.run("verify", f"{NAME}@v4").returncode == 0

    kept = keeper.fetch_json(f"{NAME}@v4", "--keep-chain")
    assert kept["dropped"] == []
    listed = json.loads(keeper.run("ls", "--json").stdout)["versions"]
    assert [r["ref"] for r in listed] == [f"{NAME}@v{n}" for n in (1, 2, 3, 4)]
    lean_bytes = sum(p.stat().st_size for p in (lean.home / "blobs").iterdir())
    keeper_bytes = sum(p.stat().st_size for p in (keeper.home / "blobs").iterdir())
    assert lean_bytes < keeper_bytes
