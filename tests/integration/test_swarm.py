"""p2pdist.swarm.session: real libtorrent sessions trading real bytes on 127.0.0.1.

Peers find each other by direct connections (`peers=`), so these tests need no tracker.
Every session, server and child process a test starts is stopped by it.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import libtorrent as lt
import pytest
from aiohttp import web

from p2pdist.errors import StoreError, SwarmError
from p2pdist.formats.torrent import TorrentMeta, make_torrent
from p2pdist.swarm.session import Swarm, get_swarm
from p2pdist.swarm.transfer import Progress, TransferResult

pytestmark = pytest.mark.integration

KiB = 1024
MiB = 1024 * KiB
LOCAL = "127.0.0.1"

# A downloader in its own process: prints {"port": N}, optionally reads the peer list from
# stdin, downloads, prints the TransferResult as JSON, then seeds until stdin says stop.
CHILD = r"""
import dataclasses, json, sys
from pathlib import Path
from p2pdist.swarm.session import Swarm
cfg = json.loads(sys.argv[1])
with Swarm() as swarm:
    print(json.dumps({"port": swarm.listen_port}), flush=True)
    peers = json.loads(sys.stdin.readline()) if cfg.get("wait_peers") else cfg["peers"]
    result = swarm.download(
        Path(cfg["torrent"]).read_bytes(),
        Path(cfg["dest"]),
        resume_file=Path(cfg["resume"]) if cfg.get("resume") else None,
        peers=[tuple(p) for p in peers],
        keep_seeding=True,
    )
    print(json.dumps(dataclasses.asdict(result)), flush=True)
    sys.stdin.readline()
"""


def write_model(root: Path, sizes: dict[str, int], seed: int = 1) -> list[str]:
    from tests.conftest import write_random_files

    return write_random_files(root, sizes, seed)


def same_files(meta: TorrentMeta, a: Path, b: Path) -> bool:
    return all((a / rel).read_bytes() == (b / rel).read_bytes() for rel, _ in meta.files)


@pytest.fixture
def model(tmp_path: Path) -> tuple[TorrentMeta, Path]:
    """A 4 MiB model in three files (64 KiB pieces: 64 pieces to trade)."""
    root = tmp_path / "origin" / "v1"
    files = write_model(
        root,
        {
            "model-00001-of-00002.safetensors": 2 * MiB + 333,
            "model-00002-of-00002.safetensors": 2 * MiB - 333 - 1000,
            "config.json": 1000,
        },
    )
    return make_torrent(root, files, name="org-model-v1", piece_size=64 * KiB), root


class AppServer:
    """An aiohttp application on 127.0.0.1 in its own thread and event loop."""

    def __init__(self, make_app: Callable[[], web.Application]) -> None:
        self._make_app = make_app
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    async def _start(self) -> web.AppRunner:
        runner = web.AppRunner(self._make_app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, LOCAL, 0).start()
        self.port = runner.addresses[0][1]
        return runner

    def __enter__(self) -> AppServer:
        self._thread.start()
        self._runner = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _stop(self) -> None:
        server = self._runner.server
        await self._runner.cleanup()
        # A web-seed client may still hold a keep-alive connection: close its transport here,
        # inside the loop, or it is garbage-collected open later (a ResourceWarning, which
        # the suite's filterwarnings=error turns into some later test's failure).
        for handler in list(getattr(server, "connections", None) or ()):
            transport = getattr(handler, "transport", None)
            if transport is not None:
                transport.close()
        await asyncio.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        # A client that connected during shutdown (libtorrent's "stopped" announce) can leave
        # a transport the loop never closed: collect it now, quietly, instead of letting a
        # later test's garbage collection report it as a ResourceWarning.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


class StaticServer(AppServer):
    """aiohttp serving `folder` at /models/<name>/ (Range honoured), counting requests."""

    def __init__(self, name: str, folder: Path, *, delay: float = 0.0) -> None:
        super().__init__(self._app)
        self.requests = 0
        self._name = name
        self._folder = folder
        self._delay = delay

    @property
    def url(self) -> str:
        return f"http://{LOCAL}:{self.port}/models/"

    def _app(self) -> web.Application:
        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            self.requests += 1
            await asyncio.sleep(self._delay)
            return await handler(request)  # type: ignore[no-any-return]

        app = web.Application(middlewares=[count])
        app.router.add_static(f"/models/{self._name}", self._folder)
        return app


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def download_at_once(
    jobs: dict[Any, Callable[[], TransferResult]], timeout: float = 120
) -> dict[Any, TransferResult | BaseException]:
    """Run each download in a thread of its own, all at once; each key's result or exception
    (a key missing if its download was still running after `timeout`)."""
    results: dict[Any, TransferResult | BaseException] = {}

    def run(key: Any, job: Callable[[], TransferResult]) -> None:
        try:
            results[key] = job()
        except BaseException as exc:
            results[key] = exc

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return results


def test_seed_and_one_download(model: tuple[TorrentMeta, Path], tmp_path: Path) -> None:
    meta, root = model
    seen: list[Progress] = []
    with Swarm() as seeder, Swarm() as leecher:
        transfer = seeder.seed(meta.data, root)
        assert transfer.info_hash == meta.info_hash_v1
        result = leecher.download(
            meta.data,
            tmp_path / "dest",
            peers=[(LOCAL, seeder.listen_port)],
            on_progress=seen.append,
        )
        assert isinstance(result, TransferResult)
        assert same_files(meta, root, tmp_path / "dest")
        assert result.total_bytes == meta.total_size
        assert result.bytes_from_peers >= meta.total_size
        assert result.bytes_from_web_seeds == 0 and result.hash_failures == 0
        assert transfer.uploaded_bytes() >= meta.total_size
        assert seen and all(p.total == meta.total_size for p in seen)
        assert leecher.transfer(meta.info_hash) is None  # removed once complete
        transfer.stop()
        assert seeder.transfer(meta.info_hash) is None


def test_seed_and_three_downloaders_trade(model: tuple[TorrentMeta, Path], tmp_path: Path) -> None:
    """With the seed capped, the downloaders must also serve each other."""
    meta, root = model
    with Swarm(upload_rate_limit=2 * MiB) as seeder:
        seeder.seed(meta.data, root)
        swarms = [Swarm() for _ in range(3)]
        try:
            ports = [seeder.listen_port] + [s.listen_port for s in swarms]

            def fetch(i: int) -> TransferResult:
                return swarms[i].download(
                    meta.data,
                    tmp_path / f"dest{i}",
                    peers=[(LOCAL, p) for p in ports if p != swarms[i].listen_port],
                    keep_seeding=True,
                    stall_timeout=30,
                )

            results = download_at_once({i: partial(fetch, i) for i in range(3)})
        finally:
            for s in swarms:
                s.close()
    for i in range(3):
        result = results.get(i)
        assert isinstance(result, TransferResult), result
        assert same_files(meta, root, tmp_path / f"dest{i}")
    shared = sum(r.bytes_uploaded for r in results.values() if isinstance(r, TransferResult))
    assert shared > 0, "the downloaders never served each other"


def test_downloaders_put_their_own_share_of_pieces_first(
    model: tuple[TorrentMeta, Path], tmp_path: Path
) -> None:
    """Three downloaders on three addresses split the pieces by the rank of their address
    (swarm/shares.py): each raises the priority of its own third, and the thirds are disjoint."""
    meta, root = model
    addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    num_pieces = -(-meta.total_size // meta.piece_size)
    seen: dict[int, set[tuple[int, ...]]] = {i: set() for i in range(3)}
    # 4 MiB at 512 KiB/s: 8 s for the three to see each other downloading, on loaded cores
    with Swarm(upload_rate_limit=512 * KiB) as seeder:
        seeder.seed(meta.data, root)
        # (outgoing connections from the address too, as on a host with one address)
        swarms = [
            Swarm(listen_interface=a, extra_settings={"outgoing_interfaces": a}) for a in addresses
        ]
        try:
            endpoints = [(LOCAL, seeder.listen_port)] + [
                (a, s.listen_port) for a, s in zip(addresses, swarms, strict=True)
            ]

            def priorities(i: int) -> None:
                for state in list(swarms[i]._torrents.values()):
                    seen[i].add(tuple(state.handle.get_piece_priorities()))

            def fetch(i: int) -> TransferResult:
                return swarms[i].download(
                    meta.data,
                    tmp_path / f"dest{i}",
                    peers=[e for e in endpoints if e[0] != addresses[i]],
                    on_progress=lambda _: priorities(i),
                    stall_timeout=30,
                )

            results = download_at_once({i: partial(fetch, i) for i in range(3)})
        finally:
            for s in swarms:
                s.close()
    for i in range(3):
        assert isinstance(results.get(i), TransferResult), results.get(i, "still running")
        assert same_files(meta, root, tmp_path / f"dest{i}")
        own_third = tuple(7 if p % 3 == i else 4 for p in range(num_pieces))
        assert own_third in seen[i], f"{addresses[i]} never put its third first: {seen[i]}"


def test_partial_rerun_of_a_cut_short_full_download_fetches_only_its_files(
    model: tuple[TorrentMeta, Path], tmp_path: Path
) -> None:
    """Resume data of a full download carries its share's piece priorities (7 and 4), which
    libtorrent applies over file priorities: a rerun for one file must still fetch only it."""
    meta, root = model
    dest, resume = tmp_path / "dest", tmp_path / "resume.dat"
    cut_short = lt.add_torrent_params()
    cut_short.ti = lt.torrent_info(meta.data)
    cut_short.save_path = str(dest)
    num_pieces = cut_short.ti.num_pieces()
    cut_short.piece_priorities = [7 if p % 2 else 4 for p in range(num_pieces)]
    resume.write_bytes(lt.write_resume_data_buf(cut_short))
    assert lt.read_resume_data(resume.read_bytes()).piece_priorities  # what the rerun reads
    with Swarm() as seeder, Swarm() as leecher:
        seeder.seed(meta.data, root)
        result = leecher.download(
            meta.data,
            dest,
            resume_file=resume,
            peers=[(LOCAL, seeder.listen_port)],
            only_files=["config.json"],
            stall_timeout=30,
        )
    assert (dest / "config.json").read_bytes() == (root / "config.json").read_bytes()
    # config.json's 1,000 bytes lie in at most two pieces; the whole model is 64
    assert result.bytes_from_peers <= 2 * meta.piece_size, result


def test_full_rerun_of_a_cut_short_partial_download_fetches_every_file(
    model: tuple[TorrentMeta, Path], tmp_path: Path
) -> None:
    """Resume data of a partial download carries file priorities 0 for the files it left out;
    a full rerun must fetch them all."""
    meta, root = model
    dest, resume = tmp_path / "dest", tmp_path / "resume.dat"
    cut_short = lt.add_torrent_params()
    cut_short.ti = lt.torrent_info(meta.data)
    cut_short.save_path = str(dest)
    cut_short.file_priorities = [0] * (cut_short.ti.num_files() - 1) + [4]
    resume.write_bytes(lt.write_resume_data_buf(cut_short))
    with Swarm() as seeder, Swarm() as leecher:
        seeder.seed(meta.data, root)
        result = leecher.download(
            meta.data,
            dest,
            resume_file=resume,
            peers=[(LOCAL, seeder.listen_port)],
            stall_timeout=30,
        )
    assert same_files(meta, root, dest)
    assert result.bytes_from_peers >= meta.total_size


@pytest.mark.slow
def test_downloads_in_separate_processes(model: tuple[TorrentMeta, Path], tmp_path: Path) -> None:
    """One seed here, three downloaders in three processes that all dial each other."""
    meta, root = model
    torrent = tmp_path / "m.torrent"
    torrent.write_bytes(meta.data)
    children: list[subprocess.Popen[str]] = []
    with Swarm(upload_rate_limit=2 * MiB) as seeder:
        seeder.seed(meta.data, root)
        try:
            for i in range(3):
                cfg = {"torrent": str(torrent), "dest": str(tmp_path / f"p{i}"), "wait_peers": 1}
                children.append(
                    subprocess.Popen(
                        [sys.executable, "-c", CHILD, json.dumps(cfg)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
            ports = [json.loads(c.stdout.readline())["port"] for c in children]  # type: ignore[union-attr]
            for child, port in zip(children, ports, strict=False):
                others = [[LOCAL, p] for p in [seeder.listen_port, *ports] if p != port]
                child.stdin.write(json.dumps(others) + "\n")  # type: ignore[union-attr]
                child.stdin.flush()  # type: ignore[union-attr]
            results = [json.loads(c.stdout.readline()) for c in children]  # type: ignore[union-attr]
        finally:
            for child in children:
                if child.stdin:
                    child.stdin.close()
            for child in children:
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
                if child.stdout:
                    child.stdout.close()
    assert [c.returncode for c in children] == [0, 0, 0]
    for i, result in enumerate(results):
        assert result["total_bytes"] == meta.total_size
        assert same_files(meta, root, tmp_path / f"p{i}")
    assert sum(r["bytes_uploaded"] for r in results) > 0


def test_download_finishes_from_another_downloader(
    model: tuple[TorrentMeta, Path], tmp_path: Path
) -> None:
    """The seed leaves when the first downloader completes; the second finishes from it."""
    meta, root = model
    with (
        Swarm(upload_rate_limit=4 * MiB) as seeder,
        Swarm() as first,
        Swarm(download_rate_limit=1 * MiB) as second,
    ):
        seed = seeder.seed(meta.data, root)
        out: dict[str, object] = {}

        def slow() -> None:
            try:
                out["second"] = second.download(
                    meta.data,
                    tmp_path / "second",
                    peers=[(LOCAL, seeder.listen_port), (LOCAL, first.listen_port)],
                    on_progress=lambda p: out.__setitem__("progress", p),
                    stall_timeout=30,
                )
            except BaseException as exc:
                out["second"] = exc

        thread = threading.Thread(target=slow)
        thread.start()
        try:
            result = first.download(
                meta.data,
                tmp_path / "first",
                peers=[(LOCAL, seeder.listen_port)],
                keep_seeding=True,
            )
            seed.stop()
            at_stop = out.get("progress")
        finally:
            thread.join(120)
        assert isinstance(out["second"], TransferResult), out["second"]
        assert isinstance(at_stop, Progress) and at_stop.done < meta.total_size
        assert same_files(meta, root, tmp_path / "second")
        kept = first.transfer(meta.info_hash)
        assert kept is not None and result.info_hash == meta.info_hash
        # What the second lacked when the seed left can only have come from the first; the
        # progress sample lags the stop a little, so require part of it, not all.
        assert kept.uploaded_bytes() >= (meta.total_size - at_stop.done) // 2


def test_corrupt_peer_is_survived(model: tuple[TorrentMeta, Path], tmp_path: Path) -> None:
    """A peer that sends bad pieces: they fail the hash check, a good peer fills them in."""
    meta, root = model
    bad_root = tmp_path / "bad"
    shutil.copytree(root, bad_root)
    with Swarm() as bad, Swarm(upload_rate_limit=1 * MiB) as good, Swarm() as leecher:
        liar = bad.seed(meta.data, bad_root, verify_on_start=True)
        wait_for(lambda: getattr(liar.progress(), "state", "") == "seeding", 30, "the check")
        # Corrupt every piece of the big files after the check: libtorrent now serves them
        # as they are on disk (seed mode would re-hash them first and send nothing bad).
        for rel, size in meta.files[1:]:
            with open(bad_root / rel, "r+b") as f:
                for offset in range(100, size, meta.piece_size):
                    f.seek(offset)
                    f.write(b"\xde\xad" * 8)
        good.seed(meta.data, root)
        result = leecher.download(
            meta.data,
            tmp_path / "dest",
            peers=[(LOCAL, bad.listen_port), (LOCAL, good.listen_port)],
            stall_timeout=30,
        )
    assert result.hash_failures > 0
    assert same_files(meta, root, tmp_path / "dest")


def test_seed_mode_over_corrupt_copy_sends_nothing_bad(
    model: tuple[TorrentMeta, Path], tmp_path: Path
) -> None:
    """seed() trusts files lazily: a piece is hashed before its first upload, never sent bad."""
    meta, root = model
    bad_root = tmp_path / "bad"
    for rel, _ in meta.files:
        data = bytearray((root / rel).read_bytes())
        for offset in range(7, len(data), 2 * meta.piece_size):
            data[offset] ^= 0xFF
        (bad_root / rel).parent.mkdir(parents=True, exist_ok=True)
        (bad_root / rel).write_bytes(bytes(data))
    with Swarm() as bad, Swarm(upload_rate_limit=2 * MiB) as good, Swarm() as leecher:
        bad.seed(meta.data, bad_root)
        good.seed(meta.data, root)
        result = leecher.download(
            meta.data,
            tmp_path / "dest",
            peers=[(LOCAL, bad.listen_port), (LOCAL, good.listen_port)],
            stall_timeout=30,
        )
    assert result.hash_failures == 0
    assert same_files(meta, root, tmp_path / "dest")


def resume_pieces(path: Path) -> int:
    try:
        return sum(lt.read_resume_data(path.read_bytes()).have_pieces)
    except (OSError, RuntimeError):
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("keep_resume_file", [True, False])
def test_killed_download_resumes(
    model: tuple[TorrentMeta, Path], tmp_path: Path, keep_resume_file: bool
) -> None:
    """SIGKILL a downloading process mid-way; the next download fetches only the rest.

    With the resume file the have-pieces come from it; without it, from libtorrent's check
    of the partial files already at dest.
    """
    meta, root = model
    torrent = tmp_path / "m.torrent"
    torrent.write_bytes(meta.data)
    dest, resume = tmp_path / "dest", tmp_path / "resume.dat"
    pieces = -(-meta.total_size // meta.piece_size)
    with Swarm(upload_rate_limit=1 * MiB) as slow:
        slow.seed(meta.data, root)
        cfg = {
            "torrent": str(torrent),
            "dest": str(dest),
            "resume": str(resume),
            "peers": [[LOCAL, slow.listen_port]],
        }
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        try:
            wait_for(lambda: resume_pieces(resume) >= pieces * 0.4, 60, "40% in the resume file")
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            if child.stdin:
                child.stdin.close()
    assert child.returncode == -signal.SIGKILL
    had = resume_pieces(resume)
    assert had < pieces, "the child finished before it was killed; slow the seed down"
    if not keep_resume_file:
        resume.unlink()
    with Swarm() as fast, Swarm() as leecher:
        fast.seed(meta.data, root)
        result = leecher.download(
            meta.data, dest, resume_file=resume, peers=[(LOCAL, fast.listen_port)]
        )
    assert same_files(meta, root, dest)
    assert result.bytes_from_peers <= meta.total_size - had * meta.piece_size + meta.piece_size
    assert result.bytes_from_peers <= 0.6 * meta.total_size
    assert not resume.exists()


def test_web_seed_alone_completes(tmp_path: Path) -> None:
    root = tmp_path / "v1"
    files = write_model(root, {"a.safetensors": 1 * MiB + 5, "sub/b.json": 70 * KiB})
    with StaticServer("m", root) as origin:
        meta = make_torrent(root, files, name="m", piece_size=64 * KiB, web_seeds=[origin.url])
        with Swarm() as leecher:
            result = leecher.download(meta.data, tmp_path / "dest", stall_timeout=30)
        assert origin.requests > 0
    assert same_files(meta, root, tmp_path / "dest")
    assert result.bytes_from_web_seeds >= meta.total_size
    assert result.bytes_from_peers == 0


def test_bytes_from_peers_and_from_web_seeds_are_told_apart(tmp_path: Path) -> None:
    """A slow web seed and a slow peer both serve one download: each is credited with what it
    sent. Block alerts tell them apart; they are on only while a web-seeded download runs."""
    root = tmp_path / "v1"
    files = write_model(root, {"a.safetensors": 4 * MiB})
    with (
        StaticServer("m", root, delay=3.0) as origin,
        Swarm(upload_rate_limit=1 * MiB) as seeder,
        Swarm() as leecher,
    ):
        meta = make_torrent(root, files, name="m", piece_size=64 * KiB, web_seeds=[origin.url])
        transfer = seeder.seed(meta.data, root)
        result = leecher.download(
            meta.data, tmp_path / "dest", peers=[(LOCAL, seeder.listen_port)], stall_timeout=30
        )
        sent_by_peer = transfer.uploaded_bytes()
        mask = leecher._session.get_settings()["alert_mask"]
    assert same_files(meta, root, tmp_path / "dest")
    assert result.bytes_from_peers > 0 and result.bytes_from_web_seeds > 0
    assert result.bytes_from_peers + result.bytes_from_web_seeds >= meta.total_size
    # never more than the peer sent (some of which came after the web seed had that piece)
    assert result.bytes_from_peers <= sent_by_peer
    assert not mask & lt.alert.category_t.block_progress_notification  # off again


def test_no_web_seed_no_peer_stalls_with_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "v1"
    files = write_model(root, {"a.safetensors": 256 * KiB})
    with StaticServer("m", root) as origin:
        meta = make_torrent(root, files, name="m", web_seeds=[origin.url])
        started = time.monotonic()
        with Swarm() as leecher, pytest.raises(SwarmError) as err:
            leecher.download(
                meta.data,
                tmp_path / "dest",
                use_web_seeds=False,
                stall_timeout=1.5,
                resume_file=tmp_path / "resume.dat",
            )
        elapsed = time.monotonic() - started
        assert origin.requests == 0
    message = str(err.value)
    assert "stalled" in message and "m" in message
    assert "0 peer(s) and 0 web seed(s)" in message
    assert elapsed < 30
    # Resume data claiming no piece would make the next run skip libtorrent's check of the
    # partial files and download again what a killed run wrote after the last save (seen on
    # the bed: a consumer killed with 2 MiB on disk fetched all 12 MiB again).
    assert not (tmp_path / "resume.dat").exists()


def test_unwritable_file_is_a_store_error(model: tuple[TorrentMeta, Path], tmp_path: Path) -> None:
    meta, root = model
    dest = tmp_path / "dest"
    (dest / meta.files[0][0]).mkdir(parents=True)  # a folder where a file must go
    with Swarm() as seeder, Swarm() as leecher:
        seeder.seed(meta.data, root)
        with pytest.raises(StoreError, match=meta.name):
            leecher.download(meta.data, dest, peers=[(LOCAL, seeder.listen_port)], stall_timeout=30)


def test_seed_refuses_missing_files(model: tuple[TorrentMeta, Path], tmp_path: Path) -> None:
    meta, _root = model
    with Swarm() as seeder, pytest.raises(StoreError, match="cannot seed"):
        seeder.seed(meta.data, tmp_path / "empty")


def test_closed_swarm_refuses_work(model: tuple[TorrentMeta, Path], tmp_path: Path) -> None:
    meta, root = model
    swarm = Swarm()
    port = swarm.listen_port
    assert port > 0
    swarm.close()
    swarm.close()  # idempotent
    with pytest.raises(SwarmError, match="closed"):
        swarm.seed(meta.data, root)


def test_peers_found_through_the_tracker(tmp_path: Path) -> None:
    """No direct dials: a seed and two downloaders meet through p2pdist's own tracker."""
    tracker = pytest.importorskip("p2pdist.tracker")
    settings = tracker.TrackerSettings(
        data_dir=tmp_path / "tracker", interval=2, track_unknown=True
    )
    root = tmp_path / "v1"
    files = write_model(root, {"a.safetensors": 1 * MiB, "b.safetensors": 512 * KiB})
    with AppServer(lambda: tracker.create_app(settings)) as server:
        announce = f"http://{LOCAL}:{server.port}/announce"
        meta = make_torrent(root, files, name="m", piece_size=64 * KiB, announce=[announce])
        with (
            Swarm(announce_interval_hint=2) as seeder,
            Swarm(announce_interval_hint=2) as a,
            Swarm(announce_interval_hint=2) as b,
        ):
            seeder.seed(meta.data, root)
            out = download_at_once(
                {
                    name: partial(swarm.download, meta.data, tmp_path / name, stall_timeout=30)
                    for name, swarm in (("a", a), ("b", b))
                }
            )
    for name in ("a", "b"):
        assert isinstance(out.get(name), TransferResult), out.get(name, "still running")
        assert same_files(meta, root, tmp_path / name)


def test_close_saves_resume_data_and_stops_the_download(
    model: tuple[TorrentMeta, Path], tmp_path: Path
) -> None:
    meta, root = model
    resume = tmp_path / "resume.dat"
    seen: list[Progress] = []
    out: dict[str, object] = {}
    with Swarm(upload_rate_limit=1 * MiB) as slow:
        slow.seed(meta.data, root)
        leecher = Swarm()

        def fetch() -> None:
            try:
                out["result"] = leecher.download(
                    meta.data,
                    tmp_path / "dest",
                    resume_file=resume,
                    peers=[(LOCAL, slow.listen_port)],
                    on_progress=seen.append,
                )
            except BaseException as exc:
                out["result"] = exc

        thread = threading.Thread(target=fetch)
        thread.start()
        try:
            wait_for(lambda: any(p.done > meta.total_size // 4 for p in seen), 30, "a quarter")
        finally:
            leecher.close()
            thread.join(30)
    assert isinstance(out["result"], SwarmError), out["result"]
    assert "closed" in str(out["result"])
    assert 0 < resume_pieces(resume) < -(-meta.total_size // meta.piece_size)


def test_get_swarm_is_one_per_process() -> None:
    first = get_swarm()
    try:
        assert get_swarm(upload_rate_limit=1) is first
        assert first.listen_port > 0
    finally:
        first.close()
    second = get_swarm()
    try:
        assert second is not first
    finally:
        second.close()
