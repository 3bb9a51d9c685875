"""Progress wherever the output goes: lines off a terminal, NDJSON with --json, one unit."""

from __future__ import annotations

import io
import json

from p2pdist.progress import human_bytes, progress_display
from p2pdist.swarm.transfer import Progress


def step(done: int, total: int = 100 << 20, rate: int = 10 << 20) -> Progress:
    left = total - done
    return Progress(done=done, total=total, download_rate=rate, upload_rate=0, peers=3,
                    seeds=1, state="downloading", eta_seconds=left / rate)  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_a_line_every_few_seconds_and_one_at_the_end() -> None:
    out, clock = io.StringIO(), Clock()
    with progress_display("auto", stream=out, interval=5, clock=clock) as update:
        for second in range(11):  # updates every second for 10 s, then the last one
            clock.now = float(second)
            update("org/gpt@v1", step(second * (10 << 20) if second < 10 else 100 << 20))
        clock.now = 30.0
        update("org/gpt@v1", step(100 << 20))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines  # t=0, t=5, t=10 (complete); nothing more once complete
    assert lines[0].startswith("org/gpt@v1: 0 B / 100.0 MiB (0%), 10.0 MiB/s, 3 peers, ETA 10s")
    assert "50.0 MiB / 100.0 MiB (50%)" in lines[1]
    assert "100.0 MiB / 100.0 MiB (100%)" in lines[-1] and "ETA 0s" in lines[-1]


def test_json_mode_writes_ndjson_events() -> None:
    out, clock = io.StringIO(), Clock()
    with progress_display("json", stream=out, clock=clock) as update:
        update("a@v1", step(0))
        clock.now = 2.0
        update("a@v1", step(100 << 20))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["done"] for e in events] == [0, 100 << 20]
    assert events[0] == {
        "event": "progress", "label": "a@v1", "done": 0, "total": 100 << 20,
        "rate": 10 << 20, "peers": 3, "seeds": 1, "eta_seconds": 10.0, "state": "downloading",
    }  # fmt: skip


def test_the_bar_and_the_summaries_use_one_unit_system() -> None:
    from p2pdist.cli.options import human

    out = io.StringIO()
    with progress_display("bar", stream=out) as update:
        update("a@v1", step(50 << 20))
    shown = out.getvalue()
    assert "50.0 MiB / 100.0 MiB" in shown and "10.0 MiB/s" in shown
    assert "MB" not in shown.replace("MiB", "")
    assert human(3 << 30) == human_bytes(3 << 30) == "3.0 GiB"
