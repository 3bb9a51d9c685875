"""Progress of transfers, for people and for programs, wherever the output goes.

Library code takes a plain ``on_progress(label, progress)`` callback; this module is where the
CLI makes one, in one of four forms:

- ``bar``: a live bar per transfer (bytes, rate, peers, ETA) on a terminal;
- ``lines``: a plain line every few seconds (and one when a transfer ends) when stderr is a
  file or a pipe (CI logs, ``kubectl logs``), where a bar would print nothing until the end;
- ``json``: one NDJSON event per update on stderr (``--json``), for programs to follow;
- ``off``.

One unit system everywhere, the bar, the lines and the CLI summaries: binary units
(KiB, MiB, GiB; rates in MiB/s), through ``human_bytes``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TextIO

Mode = Literal["auto", "bar", "lines", "json", "off"]

LINE_INTERVAL = 5.0
"""Seconds between two plain lines of one transfer."""
JSON_INTERVAL = 1.0
"""Seconds between two NDJSON events of one transfer."""

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units: ``512 B``, ``1.5 KiB``, ``3.2 GiB``."""
    size = float(n)
    for unit in _UNITS:
        if size < 1024 or unit == _UNITS[-1]:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_rate(n: float) -> str:
    return f"{human_bytes(n)}/s"


def human_eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA ?"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"ETA {seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"ETA {seconds // 60}m{seconds % 60:02d}s"
    return f"ETA {seconds}s"


def progress_line(label: str, p: Any) -> str:
    """One line for a transfer's progress: bytes, share, rate, peers, ETA."""
    share = f" ({p.done / p.total:.0%})" if p.total else ""
    return (
        f"{label}: {human_bytes(p.done)} / {human_bytes(p.total)}{share}, "
        f"{human_rate(p.download_rate)}, {p.peers} peers, {human_eta(p.eta_seconds)}"
    )


def progress_event(label: str, p: Any) -> dict[str, Any]:
    """The NDJSON event for a transfer's progress (bytes, bytes/s, seconds)."""
    return {
        "event": "progress",
        "label": label,
        "done": p.done,
        "total": p.total,
        "rate": p.download_rate,
        "peers": p.peers,
        "seeds": p.seeds,
        "eta_seconds": None if p.eta_seconds is None else round(p.eta_seconds, 1),
        "state": p.state,
    }


class _Throttled:
    """Writes ``render(label, p)`` for a label at most once per ``interval`` seconds, and
    always its first update and the one that completes it."""

    def __init__(
        self,
        render: Callable[[str, Any], str],
        stream: TextIO,
        interval: float,
        clock: Callable[[], float],
    ) -> None:
        self.render, self.stream, self.interval, self.clock = render, stream, interval, clock
        self.last: dict[str, float] = {}
        self.finished: set[str] = set()

    def __call__(self, label: str, p: Any) -> None:
        now = self.clock()
        complete = bool(p.total) and p.done >= p.total
        if label in self.finished:
            return
        if not complete and label in self.last and now - self.last[label] < self.interval:
            return
        self.last[label] = now
        if complete:
            self.finished.add(label)
        self.stream.write(self.render(label, p) + "\n")
        self.stream.flush()


@contextmanager
def progress_display(
    mode: Mode = "auto",
    *,
    stream: TextIO | None = None,
    interval: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Callable[[str, Any], None]]:
    """Yield ``update(label, swarm_progress)`` showing progress in ``mode`` on ``stream``
    (stderr). ``auto`` is a bar on a terminal and plain lines elsewhere."""
    stream = stream if stream is not None else sys.stderr
    if mode == "auto":
        mode = "bar" if stream.isatty() else "lines"
    if mode == "off":
        yield lambda label, p: None
    elif mode == "lines":
        yield _Throttled(progress_line, stream, interval or LINE_INTERVAL, clock)
    elif mode == "json":
        yield _Throttled(
            lambda label, p: json.dumps(progress_event(label, p)),
            stream,
            interval or JSON_INTERVAL,
            clock,
        )
    else:
        with _bar(stream) as update:
            yield update


@contextmanager
def _bar(stream: TextIO) -> Iterator[Callable[[str, Any], None]]:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn

    bars = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[bytes]}"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[peers]} peers"),
        TextColumn("{task.fields[eta]}"),
        console=Console(file=stream),
        transient=False,
    )
    tasks: dict[str, Any] = {}

    def update(label: str, p: Any) -> None:
        if not tasks:
            bars.start()  # only once there is something to show: errors stay one line
        fields = {
            "bytes": f"{human_bytes(p.done)} / {human_bytes(p.total)}",
            "rate": human_rate(p.download_rate),
            "peers": p.peers,
            "eta": human_eta(p.eta_seconds),
        }
        if label not in tasks:
            tasks[label] = bars.add_task(label, total=p.total, **fields)
        bars.update(tasks[label], completed=p.done, total=p.total, **fields)

    try:
        yield update
    finally:
        if tasks:
            bars.stop()


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[str, Any], None]]:
    """The display ``auto`` picks (a bar on a terminal, lines elsewhere); none when disabled."""
    with progress_display("auto" if enabled else "off") as update:
        yield update
