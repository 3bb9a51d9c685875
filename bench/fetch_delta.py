"""Delta fetch benchmark (issue 5): bytes moved and time of a delta fetch vs a full fetch.

The real product path, one process per host on 127.0.0.1 (tests/integration/harness.py):
a tracker subprocess; a publisher host that runs ``p2pdist publish`` of v1 (seeding), then
``p2pdist publish`` of v2 with ``--parent v1`` (seeding); consumer A fetches v1 (full), then
v2 (plan ``delta``: the delta torrent, rebuilt against v1 and verified); consumer B, a fresh
host, fetches v2 (plan ``full``). Bytes are ``bytes_from_peers`` of ``p2pdist fetch --json``,
seconds are both the fetch's own ``seconds`` and the wall time of the ``p2pdist fetch``
command (process start, imports and the tracker round trips included). Only the publisher
seeds v2: consumers fetch without ``--seed`` and exit.

The checkpoints are real: p2pdist.trainer.lm (preset ``bench``, 43 M parameters, by default)
trained with AdamW, v1 after --k steps and v2 --gap steps later, saved as fp32 and as bf16.
Each (dtype, cap) row runs with the publisher's upload capped by ``P2PDIST_UPLOAD_LIMIT`` at
each --cap-mb value (0 = uncapped), so the time difference reflects bandwidth. Run from the
repository root::

    .venv/bin/python bench/fetch_delta.py --preset bench --k 20 --gap 10 --cap-mb 0 20 \
        --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pdist.formats.manifest import list_files
from p2pdist.formats.shards import save_state_dict
from p2pdist.trainer import lm
from tests.integration.harness import Node, Tracker

NAME = "org/bench-model"


def checkpoints(
    root: Path, preset: str, k: int, gap: int, seed: int
) -> dict[str, tuple[Path, Path]]:
    """Train; save v1 (after k steps) and v2 (k+gap) as fp32 and bf16 model folders."""
    config = lm.LMConfig.preset(preset, seq_len=128)
    model = lm.build_model(config, seed=seed)
    trainer = lm.Trainer(model, lm.load_corpus(), lr=1e-4, batch_size=4, seed=seed)
    t0 = time.perf_counter()
    trainer.step(k)
    at_k = trainer.state_dict()
    trainer.step(gap)
    at_kg = trainer.state_dict()
    print(
        f"model: preset {preset}, {config.num_params() / 1e6:.1f} M parameters; "
        f"trained {k}+{gap} AdamW steps in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    pairs = {}
    for tag, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        folders = []
        for label, sd in (("v1", at_k), ("v2", at_kg)):
            folder = root / f"{tag}-{label}"
            folder.mkdir(parents=True)
            save_state_dict({n: t.to(dtype) for n, t in sd.items()}, folder)
            (folder / "config.json").write_text(json.dumps({"model_type": "p2pdist-lm"}) + "\n")
            folders.append(folder)
        pairs[tag] = (folders[0], folders[1])
    return pairs


def timed_fetch(node: Node, ref: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = node.fetch_json(ref, "--no-origin", timeout=900)
    out["wall_s"] = time.perf_counter() - t0
    return out


def run_pair(root: Path, v1: Path, v2: Path, cap: int, settle: float) -> dict[str, Any]:
    """One tracker, one publisher (capped at `cap` bytes/s, 0 = none), consumers A and B."""
    tracker = Tracker(root / "tracker")
    tracker.start()
    nodes: list[Node] = []
    try:
        token = tracker.token("org")
        env = {"P2PDIST_UPLOAD_LIMIT": str(cap)} if cap else {}
        publisher = Node(root / "publisher", tracker, token, **env)
        a = Node(root / "consumer-a", tracker, None)
        b = Node(root / "consumer-b", tracker, None)
        nodes += [publisher, a, b]
        p1 = publisher.start_seeding("publish", str(v1), "--name", NAME, "--version", "v1")
        first = timed_fetch(a, f"{NAME}@v1")
        assert first["plan"] == "full", first
        p1.kill()
        p1.communicate(timeout=30)
        publisher.start_seeding(
            "publish", str(v2), "--name", NAME, "--version", "v2", "--parent", "v1"
        )
        info = json.loads(publisher.run("info", f"{NAME}@v2", "--json").stdout)
        # Let the publisher's announces of both v2 torrents (full and delta) reach the
        # tracker, so neither fetch waits for a re-announce (the first one would otherwise).
        time.sleep(settle)
        delta = timed_fetch(a, f"{NAME}@v2")
        assert delta["plan"] == "delta" and delta["base"] == "v1", delta
        full = timed_fetch(b, f"{NAME}@v2")
        assert full["plan"] == "full", full
        for node in (a, b):
            check = node.run("verify", f"{NAME}@v2")
            assert check.returncode == 0, check.stderr
        return {
            "full_bytes": info["full_bytes"],
            "delta_bytes": info["delta_bytes"],
            "v1_fetch": first,
            "delta_fetch": delta,
            "full_fetch": full,
        }
    finally:
        for node in nodes:
            node.close()
        tracker.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="bench", help="p2pdist.trainer.lm preset")
    parser.add_argument("--k", type=int, default=20, help="AdamW steps before v1")
    parser.add_argument("--gap", type=int, default=10, help="AdamW steps from v1 to v2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cap-mb", type=float, nargs="+", default=[0, 20], help="publisher upload caps, MB/s"
    )
    parser.add_argument(
        "--settle", type=float, default=3.0, help="seconds between publishing v2 and fetching"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 2)
    rows = []
    with tempfile.TemporaryDirectory(prefix="p2pdist-bench-fetch-delta-") as tmp:
        root = Path(tmp)
        pairs = checkpoints(root / "ckpt", args.preset, args.k, args.gap, args.seed)
        print(f"{os.cpu_count()} CPUs, {platform.platform()}; all hosts on 127.0.0.1")
        print(
            f"{'dtype':<5} {'cap MB/s':>8} {'full MB':>8} {'delta MB':>9} {'moved d/f':>9} "
            f"{'delta s':>8} {'full s':>7} {'time d/f':>8} {'delta wall':>10} {'full wall':>9} "
            f"{'wall d/f':>8}"
        )
        for tag, (v1, v2) in pairs.items():
            for cap_mb in args.cap_mb:
                cap = int(cap_mb * 1_000_000)
                work = root / f"run-{tag}-{cap}"
                got = run_pair(work, v1, v2, cap, args.settle)
                d, f = got["delta_fetch"], got["full_fetch"]
                row = {
                    "dtype": tag,
                    "cap_bytes_s": cap,
                    "files": len(list_files(v2)),
                    **got,
                    "moved_ratio": d["bytes_from_peers"] / f["bytes_from_peers"],
                    "time_ratio": d["seconds"] / f["seconds"],
                    "wall_ratio": d["wall_s"] / f["wall_s"],
                }
                rows.append(row)
                print(
                    f"{tag:<5} {cap_mb if cap else 'none':>8} "
                    f"{f['bytes_from_peers'] / 1e6:8.1f} {d['bytes_from_peers'] / 1e6:9.1f} "
                    f"{row['moved_ratio']:9.3f} {d['seconds']:8.2f} {f['seconds']:7.2f} "
                    f"{row['time_ratio']:8.3f} {d['wall_s']:10.2f} {f['wall_s']:9.2f} "
                    f"{row['wall_ratio']:8.3f}",
                    flush=True,
                )
    if args.json:
        meta = {
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "preset": args.preset,
            "k": args.k,
            "gap": args.gap,
            "lr": 1e-4,
            "batch_size": 4,
        }
        args.json.write_text(
            json.dumps({"bench": "fetch_delta", "meta": meta, "rows": rows}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
