"""``python -m p2pdist.tracker serve|token ...``: the tracker's CLI without the main one."""

from __future__ import annotations

from p2pdist.tracker.cli import tracker_group

if __name__ == "__main__":
    tracker_group(prog_name="python -m p2pdist.tracker")
