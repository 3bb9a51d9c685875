"""publish, seed and fetch between real hosts: network namespaces, each its own address and
capped link (tests/netbed.py), each running the p2pdist CLI in its own environment."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import make_version_folder
from tests.integration.harness import wait_for_line
from tests.netbed import Bed, Host, flat_lan, mbit, nat_site, skip_reason, wait_until

_why = skip_reason()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(_why is not None, reason=_why or ""),
]

NAME = "org/model"


def model(root: Path, seed: int = 0, mib: int = 4) -> Path:
    """A model folder of about ``mib`` MiB of float32 weights."""
    g = torch.Generator().manual_seed(seed)
    rows = mib * 2**20 // (4 * 256)
    state = {"embed.weight": torch.randn(rows, 256, generator=g), "bias": torch.randn(256)}
    return make_version_folder(root, state)


def updated(folder: Path, dest: Path, seed: int) -> Path:
    """``folder``'s model a few steps later: a small change to one tensor."""
    from safetensors.torch import load_file

    state = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(shard))
    g = torch.Generator().manual_seed(seed)
    state["bias"] = state["bias"] + torch.randn(256, generator=g)
    return make_version_folder(dest, state)


def publisher(bed: Bed, host: Host) -> Host:
    host.env["P2PDIST_TOKEN"] = bed.tracker_token("org")
    return host


def publish(host: Host, folder: Path, version: str, *extra: str) -> None:
    done = host.run("publish", str(folder), "--name", NAME, "--version", version, "--no-seed",
                    *extra)  # fmt: skip
    assert done.returncode == 0, done.stderr


def start_seed(host: Host, *extra: str) -> subprocess.Popen[str]:
    proc = host.start("seed", "--status-every", "1", *extra)
    wait_for_line(proc, "Seeding", 60)
    return proc


def start_fetch(host: Host, ref: str, *extra: str) -> subprocess.Popen[str]:
    return host.start("fetch", ref, "--json", *extra)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out)


def same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def test_publish_on_the_tracker_host_seed_and_fetch_on_three_hosts(workdir: Path) -> None:
    """The publisher publishes through 127.0.0.1 on the tracker's own host (so the torrents
    announce there); `seed --tracker <LAN address>` must announce where consumers look."""
    with flat_lan(workdir, ["c1", "c2", "c3"], cap_bps=mbit(200), tracker_bind="0.0.0.0") as bed:
        pub = publisher(bed, bed.hosts["tracker"])
        pub.env["P2PDIST_TRACKER"] = "http://127.0.0.1:6969"
        src = model(workdir / "src")
        publish(pub, src, "v1")
        start_seed(pub, "--tracker", bed.tracker_url)
        fetches = [start_fetch(bed.hosts[c], f"{NAME}@v1") for c in ("c1", "c2", "c3")]
        for proc in fetches:
            result = finish(proc)
            assert result["plan"] == "full" and result["bytes_from_peers"] >= result["full_bytes"]
            same_files(src, Path(result["path"]))


def test_seed_daemon_follows_the_store_and_stops_on_sigterm(workdir: Path) -> None:
    with flat_lan(workdir, ["pub", "c1"], cap_bps=mbit(200)) as bed:
        pub, c1 = publisher(bed, bed.hosts["pub"]), bed.hosts["c1"]
        seed = start_seed(pub)  # an empty store: it waits for versions
        src1 = model(workdir / "v1")
        publish(pub, src1, "v1")  # --no-seed, while `seed` runs
        first = c1.fetch_json(f"{NAME}@v1", "--stall-timeout", "60")
        same_files(src1, Path(first["path"]))
        src2 = updated(src1, workdir / "v2", 1)
        publish(pub, src2, "v2", "--parent", "v1")
        second = c1.fetch_json(f"{NAME}@v2", "--stall-timeout", "60")
        assert second["plan"] == "delta" and second["fallback"] is None
        same_files(src2, Path(second["path"]))
        assert pub.run("rm", f"{NAME}@v1").returncode == 0
        wait_for_line(seed, f"Stopped seeding {NAME}@v1", 30)
        wait_for_line(seed, "seeding 1 versions", 30)  # the periodic status line
        seed.send_signal(signal.SIGTERM)
        _, err = seed.communicate(timeout=30)
        assert seed.returncode == 0, err
        assert "stopped on SIGTERM" in err


def test_no_seeder_fails_fast_naming_the_cause(workdir: Path) -> None:
    with flat_lan(workdir, ["pub", "c1"]) as bed:
        pub, c1 = publisher(bed, bed.hosts["pub"]), bed.hosts["c1"]
        publish(pub, model(workdir / "v1"), "v1")
        # the stall timeout is far longer than the test's own timeout: only the fast path passes
        done = c1.run("fetch", f"{NAME}@v1", "--stall-timeout", "600", timeout=90)
        assert done.returncode == 1
        last = done.stderr.strip().splitlines()[-1]
        assert f"no host is seeding {NAME}@v1" in last and "p2pdist seed" in last


def test_a_damaged_blob_is_named_by_the_seed_and_not_served(workdir: Path) -> None:
    with flat_lan(workdir, ["pub", "c1"]) as bed:
        pub, c1 = publisher(bed, bed.hosts["pub"]), bed.hosts["c1"]
        src = model(workdir / "v1")
        publish(pub, src, "v1")
        snapshot = pub.root / "store" / "models" / "org--model" / "v1" / "snapshot"
        shard = next(snapshot.glob("*.safetensors")).resolve()
        with open(shard, "r+b") as f:
            f.seek(1 << 20)
            f.write(b"\xff" * 64)
        seed = start_seed(pub)
        done = c1.run("fetch", f"{NAME}@v1", "--stall-timeout", "5", timeout=90)
        assert done.returncode == 1
        assert "held by no connected peer" in done.stderr.strip().splitlines()[-1]
        line = wait_for_line(seed, "DAMAGED", 30)
        assert shard.name in line or "model" in line
        assert f"p2pdist rm {NAME}@v1" in line


def test_a_consumer_killed_mid_swarm_resumes(workdir: Path) -> None:
    with flat_lan(workdir, ["pub", "c1"], cap_bps=mbit(16)) as bed:
        pub, c1 = publisher(bed, bed.hosts["pub"]), bed.hosts["c1"]
        src = model(workdir / "v1", mib=12)
        publish(pub, src, "v1")
        start_seed(pub)
        fetch = start_fetch(c1, f"{NAME}@v1")
        resume, partial = c1.root / "store" / "resume", c1.root / "store" / "partial"

        def resumable() -> bool:  # resume data alone is written before the first piece
            written = sum(f.stat().st_blocks * 512 for f in partial.rglob("*") if f.is_file())
            return resume.is_dir() and any(resume.iterdir()) and written >= 2 << 20

        wait_until(resumable, 60, "resume data and 2 MiB on disk")
        fetch.send_signal(signal.SIGKILL)
        fetch.communicate(timeout=30)
        result = c1.fetch_json(f"{NAME}@v1")
        assert result["bytes_from_peers"] < result["full_bytes"]  # only the rest came again
        same_files(src, Path(result["path"]))


def test_two_consumers_behind_nat_complete_from_one_public_seed(workdir: Path) -> None:
    with nat_site(workdir, ["pub"], ["n1", "n2"], cap_bps=mbit(200)) as bed:
        pub = publisher(bed, bed.hosts["pub"])
        src = model(workdir / "v1")
        publish(pub, src, "v1")
        start_seed(pub)
        fetches = [start_fetch(bed.hosts[n], f"{NAME}@v1") for n in ("n1", "n2")]
        for proc in fetches:
            same_files(src, Path(finish(proc)["path"]))


def test_the_swarm_survives_a_tracker_restart(workdir: Path) -> None:
    with flat_lan(workdir, ["pub", "c1", "c2"], cap_bps=mbit(16)) as bed:
        pub, c1, c2 = publisher(bed, bed.hosts["pub"]), bed.hosts["c1"], bed.hosts["c2"]
        src = model(workdir / "v1", mib=8)
        publish(pub, src, "v1")
        start_seed(pub)
        first = start_fetch(c1, f"{NAME}@v1")
        resume = c1.root / "store" / "resume"
        wait_until(lambda: resume.is_dir() and any(resume.iterdir()), 60, "c1 downloading")
        bed.stop_tracker()  # its swarm state (who seeds what) is gone with it
        bed.restart_tracker()
        # a consumer that starts now finds the seed only once the seed has announced again
        second = c2.fetch_json(f"{NAME}@v1", "--stall-timeout", "60")
        same_files(src, Path(second["path"]))
        same_files(src, Path(finish(first)["path"]))


def test_the_swarm_goes_on_when_the_publisher_leaves(workdir: Path) -> None:
    with flat_lan(workdir, ["pub", "c1", "c2"], cap_bps=mbit(200)) as bed:
        pub, c1, c2 = publisher(bed, bed.hosts["pub"]), bed.hosts["c1"], bed.hosts["c2"]
        src = model(workdir / "v1")
        publish(pub, src, "v1")
        seed = start_seed(pub)
        keeper = c1.start("fetch", f"{NAME}@v1", "--seed")
        wait_for_line(keeper, "Seeding", 120)  # one full copy is out, and c1 serves it
        seed.send_signal(signal.SIGTERM)
        seed.communicate(timeout=30)
        result = c2.fetch_json(f"{NAME}@v1", "--stall-timeout", "60")
        same_files(src, Path(result["path"]))
        keeper.send_signal(signal.SIGTERM)  # `fetch --seed` stops as cleanly as `seed`
        _, err = keeper.communicate(timeout=30)
        assert keeper.returncode == 0 and "Stopped seeding." in err


def test_a_bed_removes_what_a_killed_bed_left(workdir: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer runs: the owner of a bed killed before cleanup
    left = f"p2pbed-{gone.pid}-host"
    subprocess.run(["ip", "netns", "add", left], check=True)
    try:
        with flat_lan(workdir, []) as bed:
            listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
            assert left not in listed.stdout
            mine = list(bed.namespaces)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
        assert not any(ns in listed.stdout for ns in mine)  # and it removed its own
    finally:
        subprocess.run(["ip", "netns", "del", left], capture_output=True)
