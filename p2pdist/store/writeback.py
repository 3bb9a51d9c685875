"""Writing a download's bytes to disk while it runs, not all at its commit.

A commit fsyncs every blob before the version is visible (a crash must not leave a version
whose files are holes). Without help the kernel keeps a download's pages dirty until then:
below ``vm.dirty_background_ratio`` (10% of RAM) it starts no writeback for 30 s, so a
multi-GB download ends with seconds of disk writes in which nothing else happens, and hosts
sharing a disk (a test bed, a node running several consumers) wait for each other's.
``Writeback`` fdatasyncs the files that changed, every ``interval`` seconds, in a thread of
its own, so the disk works alongside the network and the commit finds little left to write
(bench/cluster.py; BENCHMARKS.md, "Cluster").
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_datasync = getattr(os, "fdatasync", os.fsync)  # macOS has only fsync

DEFAULT_INTERVAL = 1.0
"""Seconds between passes (``P2PDIST_WRITEBACK``; 0 turns it off)."""


class Writeback:
    """While entered, flush the regular files under ``folder`` that changed since the last
    pass. Errors are ignored: this only moves work earlier, the commit's fsync still decides."""

    def __init__(self, folder: Path, interval: float = DEFAULT_INTERVAL) -> None:
        self.folder = folder
        self.interval = interval
        self.passes = 0
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="p2pdist-writeback", daemon=True)

    def __enter__(self) -> Writeback:
        if self.interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush_changed()
            except Exception:  # never the download's problem; the commit's fsync decides
                log.debug("writeback pass over %s failed", self.folder, exc_info=True)

    def flush_changed(self) -> list[Path]:
        """One pass: fdatasync each file whose size, blocks or mtime moved; the files synced."""
        synced = []
        for root, _dirs, files in os.walk(self.folder):
            for name in files:
                path = Path(root) / name
                try:
                    st = path.lstat()
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    mark = (st.st_size, st.st_blocks, st.st_mtime_ns)
                    if self._seen.get(str(path)) == mark:
                        continue
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                    try:
                        _datasync(fd)
                    finally:
                        os.close(fd)
                except OSError as e:  # removed or renamed under us: the download moved on
                    log.debug("writeback of %s skipped: %s", path, e)
                    continue
                self._seen[str(path)] = mark
                synced.append(path)
        self.passes += 1
        return synced


__all__ = ["DEFAULT_INTERVAL", "Writeback"]
