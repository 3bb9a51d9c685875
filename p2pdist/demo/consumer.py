"""One inference host of ``p2pdist demo``: follow ``@latest``, load each version, evaluate it.

Run as ``python -m p2pdist.demo.consumer NAME`` with P2PDIST_HOME, P2PDIST_CONFIG_DIR,
P2PDIST_TRACKER and P2PDIST_LISTEN set by the demo. It prints one JSON object per line on
stdout (``ready``, then one ``version`` event per version) and stops when stdin says ``quit``
(or closes), seeding what it has until then.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch

from p2pdist.follower import Update, follow


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main(name: str) -> int:
    from p2pdist.trainer import lm

    torch.set_num_threads(1)
    corpus = lm.load_corpus()

    def on_update(update: Update) -> None:
        started = time.monotonic()
        config = lm.LMConfig.from_json_dict(json.loads((update.path / "config.json").read_text()))
        state = update.load(device="cpu")
        model = lm.model_from_state_dict(state, config)
        ppl = lm.perplexity(model, corpus, config=config)
        r = update.result
        _emit(
            "version",
            version=update.version,
            plan=r.plan.kind,
            base=r.plan.base,
            bytes_from_peers=r.bytes_from_peers,
            bytes_from_web_seeds=r.bytes_from_web_seeds,
            fetch_seconds=round(r.seconds, 3),
            load_eval_seconds=round(time.monotonic() - started, 3),
            perplexity=ppl,
            received_at=time.time(),
        )

    def on_error(error: BaseException) -> None:
        _emit("error", message=f"{type(error).__name__}: {error}")

    follower = follow(f"{name}@latest", on_update, seed=True, poll_seconds=10.0, on_error=on_error)
    _emit("ready")
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
    follower.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
