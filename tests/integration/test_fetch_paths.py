"""The fetch paths beyond the happy one: HTTP origin only, origin forbidden, a killed fetch
that resumes, and a standard BitTorrent client (aria2) joining a p2pdist swarm."""

from __future__ import annotations

import os
import shutil
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import libtorrent as lt
import pytest
import torch

from tests.conftest import free_port, make_version_folder
from tests.integration.harness import Node, Tracker, run_aria2

pytestmark = pytest.mark.integration

NAME = "org/model"


def big_state(rows: int = 2048) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {f"layers.{i}.weight": torch.randn(rows, 256, generator=g) for i in range(3)}


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError as e:
            if getattr(e, "code", None) == 404:  # the server answers: it is up
                return
            time.sleep(0.2)
    raise AssertionError(f"{url} did not come up")


def same_tree(src: Path, out: Path) -> None:
    for f in src.iterdir():
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name


def test_fetch_from_http_origin_alone_and_no_origin_fails_clearly(
    nodes: Callable[..., Node], tmp_path: Path
) -> None:
    src = make_version_folder(tmp_path / "src", big_state(512))
    publisher = nodes("publisher", publisher=True)
    port = free_port()
    origin_url = f"http://127.0.0.1:{port}/"
    published = publisher.run(
        "publish",
        str(src),
        "--name",
        NAME,
        "--version",
        "v1",
        "--web-seed",
        origin_url,
        "--no-seed",
    )
    assert published.returncode == 0, published.stderr
    publisher.start("origin", "--host", "127.0.0.1", "--port", str(port))
    wait_http(origin_url + "nothing/here")

    no_origin = nodes("strict").run("fetch", f"{NAME}@v1", "--no-origin", "--stall-timeout", "3")
    assert no_origin.returncode == 1
    assert "stalled" in no_origin.stderr and "0 web seed(s)" in no_origin.stderr
    assert "Traceback" not in no_origin.stderr

    result = nodes("consumer").fetch_json(f"{NAME}@v1", "--out", str(tmp_path / "out"))
    assert result["bytes_from_web_seeds"] >= result["full_bytes"]
    assert result["bytes_from_peers"] == 0
    same_tree(src, tmp_path / "out")


def _resume_fraction(resume_dir: Path) -> float:
    """The fraction of pieces the fetch's resume file says it has (0 when there is none yet)."""
    for path in resume_dir.glob("*.resume"):
        try:
            have = lt.read_resume_data(path.read_bytes()).have_pieces
        except RuntimeError:  # caught mid-write: the next poll reads it whole
            return 0.0
        return sum(1 for bit in have if bit) / max(1, len(have))
    return 0.0


def test_killed_fetch_resumes_with_far_less_than_the_whole(
    nodes: Callable[..., Node], tmp_path: Path
) -> None:
    src = make_version_folder(tmp_path / "src", big_state(2048))  # ~6 MB
    total = sum(f.stat().st_size for f in src.iterdir())
    slow = nodes("publisher", publisher=True, P2PDIST_UPLOAD_LIMIT=str(1_000_000))
    seeder = slow.start_seeding("publish", str(src), "--name", NAME, "--version", "v1")
    consumer = nodes("consumer")
    fetch = consumer.start("fetch", f"{NAME}@v1", "--json")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _resume_fraction(consumer.home / "resume") < 0.4:
        time.sleep(0.1)
    os.kill(fetch.pid, signal.SIGKILL)
    fetch.communicate(timeout=30)
    had = _resume_fraction(consumer.home / "resume")
    assert 0.3 < had < 1, "the fetch was not killed part-way; slow the seed down"
    seeder.kill()
    seeder.communicate(timeout=30)
    fast = nodes("publisher-again")
    fast.home, fast.env = slow.home, {**slow.env, "P2PDIST_UPLOAD_LIMIT": "0"}
    fast.start_seeding("seed")
    result = consumer.fetch_json(f"{NAME}@v1")
    assert result["plan"] == "full"
    piece = 256 * 1024
    assert result["bytes_from_peers"] <= (1 - had) * total + piece, (had, result)
    same_tree(src, Path(result["path"]))
    assert not any((consumer.home / "partial").iterdir()), "partial download cleaned up"
    assert not any((consumer.home / "resume").iterdir()), "resume data cleaned up"


@pytest.mark.skipif(
    shutil.which("aria2c") is None, reason="aria2c not installed (apt-get install aria2)"
)
def test_aria2_downloads_a_p2pdist_torrent_from_p2pdist_seeds(
    nodes: Callable[..., Node], tracker: Tracker, tmp_path: Path
) -> None:
    src = make_version_folder(tmp_path / "src", big_state(256))
    publisher = nodes("publisher", publisher=True)
    publisher.start_seeding("publish", str(src), "--name", NAME, "--version", "v1")
    torrent = urllib.request.urlopen(
        f"{tracker.url}/v1/models/{NAME}/versions/v1/torrent?kind=full", timeout=10
    ).read()
    (tmp_path / "v1.torrent").write_bytes(torrent)
    out = run_aria2(tmp_path / "v1.torrent", tmp_path / "aria2")
    assert out.returncode == 0, out.stdout + out.stderr
    same_tree(src, tmp_path / "aria2" / "org--model@v1")
