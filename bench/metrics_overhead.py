"""What the announce latency histogram costs: in-process announces/s with and without it.

``answer_announce`` (tracker/announce.py) is wrapped by ``_timed("announce")``, which observes
each answer's time in a histogram for /metrics; ``answer_announce.__wrapped__`` is the same
function without it. Both answer the same re-announces (1,000 peers in 20 known swarms, full
validation, compact peer lists) in alternating rounds in one process, so machine load hits
both alike; the best round of each is compared (the ratio is the number to read; a shared
machine moves the absolute figures and the median rounds by tens of percent).

    PYTHONPATH=. .venv/bin/python bench/metrics_overhead.py [--rounds 30] [--announces 5000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from p2pdist.tracker.announce import answer_announce
from p2pdist.tracker.db import TrackedHash
from p2pdist.tracker.state import TrackerSettings, TrackerState
from tests.tracker_world import announce_query, peer_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--announces", type=int, default=5_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state = TrackerState(TrackerSettings(data_dir=Path(tmp)))
        hashes = [bytes([i]) * 20 for i in range(1, 21)]
        state.track(
            [TrackedHash(h, "acme/m", f"v{i}", "full", False) for i, h in enumerate(hashes)]
        )
        queries = [
            announce_query(hashes[n % 20], peer_id(n), 10_000 + n, n % 3, event=None, numwant="50")
            for n in range(1000)
        ]
        variants = {"untimed": answer_announce.__wrapped__, "timed": answer_announce}
        for q in queries:  # everyone joins once first
            answer_announce(state, q, None, "127.0.0.1")
        rates: dict[str, list[float]] = {k: [] for k in variants}
        for r in range(args.rounds):
            order = list(variants.items())
            for name, fn in order if r % 2 else order[::-1]:  # alternate which goes first
                started = time.perf_counter()
                for i in range(args.announces):
                    fn(state, queries[i % 1000], None, "127.0.0.1")
                rates[name].append(args.announces / (time.perf_counter() - started))
    # The best round of each: on a shared machine the rest measure the neighbours too.
    timed, untimed = max(rates["timed"]), max(rates["untimed"])
    spread = statistics.median(rates["untimed"]) / untimed
    print(f"announces/s, best of {args.rounds} rounds of {args.announces} "
          f"(median round at {spread:.2f} of the best: machine noise):")  # fmt: skip
    print(f"  without the histogram {untimed:10.0f}")
    print(f"  with the histogram    {timed:10.0f}")
    print(f"  ratio with/without    {timed / untimed:10.3f}")
    print(f"  added per announce    {1e6 / timed - 1e6 / untimed:10.2f} µs")


if __name__ == "__main__":
    main()
