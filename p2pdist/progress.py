"""Progress display for transfers: a rich bar with bytes, rate, peers and ETA on stderr.

Library code takes a plain ``on_progress`` callback; this module is where the CLI makes one.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


@contextmanager
def progress_bar(enabled: bool = True) -> Iterator[Callable[[str, Any], None]]:
    """Yield ``update(label, swarm_progress)``; each label gets its own bar. No-op when disabled."""
    if not enabled:
        yield lambda label, p: None
        return
    console = Console(file=sys.stderr)
    bars = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[peers]} peers"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    tasks: dict[str, Any] = {}

    def update(label: str, p: Any) -> None:
        if not tasks:
            bars.start()  # only once there is something to show: errors stay one line
        if label not in tasks:
            tasks[label] = bars.add_task(label, total=p.total, peers=0)
        bars.update(tasks[label], completed=p.done, total=p.total, peers=p.peers)

    try:
        yield update
    finally:
        if tasks:
            bars.stop()
