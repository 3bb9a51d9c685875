"""Encoding and decoding a delta hold a few segments per worker in memory, not the model: both
sides are mapped, and the anonymous memory a process gains while coding a 256 MB model stays
a fraction of it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from p2pdist import delta
from p2pdist.formats.manifest import describe_files, list_files
from p2pdist.formats.shards import save_state_dict

TENSORS = 64
ROWS = COLS = 1024  # fp32: 4 MiB a tensor, 256 MiB the model
WORKERS = 2
BOUND = 96 << 20
"""Per worker: its scratch (~13 MiB for fp32) and a few 4 MiB segments in flight; far below
the model's 256 MiB, which a codec holding the model (or one side of it) would exceed."""


MEASURE = """
import json, sys, threading, time
from pathlib import Path
from p2pdist import delta
from p2pdist.formats.manifest import describe_files, list_files

def anon():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) * 1024 for l in status if l.startswith("RssAnon:"))

def peak_growth(run):
    base, peak, done = anon(), [0], threading.Event()
    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], anon())
            time.sleep(0.001)
    poller = threading.Thread(target=poll)
    poller.start()
    try:
        run()
    finally:
        done.set()
        poller.join()
    return peak[0] - base

a, b, out, workers = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
expected = describe_files(b, list_files(b))
encode = peak_growth(lambda: delta.encode(a, b, out / "delta", workers=workers))
decode = peak_growth(
    lambda: delta.decode(a, out / "delta", out / "rebuilt", expected=expected, workers=workers)
)
print(json.dumps({"encode": encode, "decode": decode}))
"""


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("memory")
    gen = torch.Generator().manual_seed(3)
    old, new = {}, {}
    for i in range(TENSORS):
        w = torch.randn(ROWS, COLS, generator=gen) * 0.02
        old[f"layer{i}.weight"] = w
        new[f"layer{i}.weight"] = w + torch.randn(ROWS, COLS, generator=gen) * 1e-4
    save_state_dict(old, root / "a", max_shard_size=64 << 20)
    save_state_dict(new, root / "b", max_shard_size=64 << 20)
    return root / "a", root / "b"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_encode_and_decode_hold_segments_not_the_model(
    versions: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = versions
    expected = describe_files(b, list_files(b))
    model_bytes = sum(e.size for e in expected)
    assert model_bytes > 2.5 * BOUND
    # a fresh process: its anonymous memory is the codec's, not this test run's
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, str(a), str(b), str(tmp_path), str(WORKERS)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    growth = json.loads(run.stdout)
    assert delta.delta_size(tmp_path / "delta") < 0.8 * model_bytes  # it coded moves, not copies
    assert describe_files(tmp_path / "rebuilt", list_files(tmp_path / "rebuilt")) == expected
    assert 0 < growth["encode"] < BOUND, f"encode grew by {growth['encode'] >> 20} MiB"
    assert 0 < growth["decode"] < BOUND, f"decode grew by {growth['decode'] >> 20} MiB"


def test_spare_scratch_buffers_are_kept_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Buffers go back for the next segment or encode, but never more bytes than the bound
    (one large segment's buffer would otherwise stay for the life of the process)."""
    from p2pdist.delta import _ans
    from p2pdist.delta import codec as delta_codec

    small = _ans.scratch_size(4096, 2)
    monkeypatch.setattr(delta_codec, "MAX_SPARE_BYTES", 3 * small)
    monkeypatch.setattr(delta_codec, "_spare", [])
    with (
        delta_codec._scratch(4096, 2) as a,
        delta_codec._scratch(4096, 2) as b,
        delta_codec._scratch(4096, 2) as c,
        delta_codec._scratch(4096, 2) as d,
    ):
        assert len({id(x) for x in (a, b, c, d)}) == 4  # one buffer for one user at a time
    assert len(delta_codec._spare) == 3
    with delta_codec._scratch(4096, 2) as again:
        assert any(again is x for x in (a, b, c, d))  # reused, not allocated
    with delta_codec._scratch(1 << 20, 2) as large:
        assert large.size >= _ans.scratch_size(1 << 20, 2) > small
    assert all(buf.size == small for buf in delta_codec._spare)  # the large one was let go
