"""A host without torch: the tracker, publish (full and delta), seed, fetch (full and by
delta), ls and verify all work; loading, the trainer and the demo say which extra to
install.

Every process here starts with a ``sitecustomize`` on its path that makes ``import torch``
fail exactly as on a host where torch is not installed, and writes down every attempt. So a
module on these paths that imports torch, even lazily or inside ``try``, shows up in the log,
and the test fails: this checks the import graph of the real commands, not a list of files.
A fresh virtual environment without torch is the same check, slower (docs/DEPLOY.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.integration.harness import Node, Tracker

pytestmark = pytest.mark.integration

BLOCKER = '''
import os, sys, traceback

class _NoTorch:
    """Behave like an install without torch; note who asked."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            with open(os.environ["P2PDIST_TEST_TORCH_LOG"], "a") as log:
                log.write(" ".join(sys.argv) + ": " + name + "\\n")
                log.write("".join(traceback.format_stack(limit=12)) + "\\n")
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoTorch())
'''


@pytest.fixture
def no_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every subprocess started from here on (tracker, nodes) runs without torch; the path
    of the log of import attempts is yielded."""
    site = tmp_path / "no-torch-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    log = tmp_path / "torch-imports.log"
    log.touch()
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), old])))
    monkeypatch.setenv("P2PDIST_TEST_TORCH_LOG", str(log))
    yield log


def numpy_version(folder: Path, seed: int) -> Path:
    """A one-shard version folder written without torch (safetensors' numpy API)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 256)).astype(np.float32)
    if seed:
        w = w + np.float32(1e-3) * np.random.default_rng(seed).standard_normal(w.shape, np.float32)
    folder.mkdir(parents=True)
    save_file({"w": w, "b": np.arange(256, dtype=np.float16)}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text('{"model_type": "test"}\n')
    return folder


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_core_install_is_torch_free() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    core = [d.split(";")[0].strip().lower() for d in project["project"]["dependencies"]]
    assert not [d for d in core if d.startswith("torch")], core
    assert project["project"]["optional-dependencies"]["torch"] == ["torch"]


def test_blocker_really_hides_torch(no_torch: Path) -> None:
    """The hook works: torch is not importable in the children, and the attempt is logged."""
    out = subprocess.run(
        [sys.executable, "-c", "import torch"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert "No module named 'torch'" in out.stderr
    assert ": torch" in no_torch.read_text()


def test_tracker_publish_seed_fetch_without_torch(tmp_path: Path, no_torch: Path) -> None:
    tracker = Tracker(tmp_path / "tracker-data")
    nodes: list[Node] = []
    try:
        tracker.start()
        token = tracker.token("org")
        publisher = Node(tmp_path / "publisher", tracker, token)
        consumer = Node(tmp_path / "consumer", tracker, None)
        nodes += [publisher, consumer]
        v1 = numpy_version(tmp_path / "v1", seed=0)
        v2 = numpy_version(tmp_path / "v2", seed=1)
        ok(publisher.run("publish", str(v1), "--name", "org/m", "--version", "v1", "--no-seed"))
        ok(publisher.run("publish", str(v2), "--name", "org/m", "--version", "v2",
                         "--parent", "v1", "--no-seed"))  # fmt: skip
        publisher.start_seeding("seed")

        first = consumer.fetch_json("org/m@v1")
        second = consumer.fetch_json("org/m@latest")
        assert second["ref"] == "org/m@v2" and second["plan"] == "delta", second
        fetched = Path(second["path"])
        assert (fetched / "model.safetensors").read_bytes() == (
            v2 / "model.safetensors"
        ).read_bytes()
        assert Path(first["path"]).is_dir()
        listing = ok(consumer.run("ls", "--json")).stdout
        assert {v["ref"] for v in json.loads(listing)["versions"]} == {"org/m@v1", "org/m@v2"}
        ok(consumer.run("verify", "org/m@v2"))
        assert no_torch.read_text() == "", no_torch.read_text()

        # What needs torch says so in one line, with the command that fixes it.
        load = subprocess.run(
            [sys.executable, "-c", "import p2pdist; p2pdist.load('org/m@v2')"],
            capture_output=True, text=True, env=consumer.env, timeout=60,
        )  # fmt: skip
        assert load.returncode == 1
        assert "MissingDependencyError" in load.stderr
        assert "torch is needed: pip install 'p2pdist[torch]'" in load.stderr
        demo = consumer.run("demo")
        assert demo.returncode == 1
        assert demo.stderr.startswith("Error: p2pdist demo: torch is needed: pip install")
        assert demo.stderr.count("\n") == 1, demo.stderr
    finally:
        for node in nodes:
            node.close()
        tracker.close()
