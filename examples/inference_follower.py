"""An inference process that hot-swaps new weights into its running model as they are published.

``p2pdist.follow("org/lm@latest", on_update)`` long-polls the registry; the moment the
trainer (``train_and_publish.py``) registers a version, the follower fetches it from the swarm
(the first in full, every later one as a small lossless delta against the one it has),
verifies every byte against the signed manifest, and calls ``on_update``. Here
``on_update`` builds the model from the version's ``config.json`` the first time (and again
only if the shape changes), and otherwise copies the new tensors into the *same* module
object with ``p2pdist.load_into``: the process, and anything holding the model, keeps
running. It then measures held-out perplexity and compares it with the number the trainer
signed into the manifest: equal means this host runs exactly the weights the trainer had.

The follower keeps seeding what it fetched while it lives, so inference hosts serve each
other and the trainer uploads each byte about once. Run it on as many hosts as you like::

    export P2PDIST_TRACKER=http://127.0.0.1:6969   # no token needed to read public models
    python examples/inference_follower.py --name org/lm --versions 4
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

_print_lock = threading.Lock()


def say(as_json: bool, event: str, text: str, **fields: Any) -> None:
    """One line of output: human text, or one JSON object with ``event`` and ``fields``."""
    line = json.dumps({"event": event, **fields}) if as_json else text
    with _print_lock:
        print(line, flush=True)


class Server:
    """The running model and the lock that a request handler and a weight swap share.

    A real server would take ``lock`` around each forward pass; ``swap`` takes it while the
    tensors are copied, so no request ever sees half of one version and half of another.
    """

    def __init__(self) -> None:
        import torch

        from p2pdist.trainer import lm

        self.lm = lm
        self.corpus = lm.load_corpus()
        self.model: Any = None
        self.version: str | None = None
        self.lock = threading.Lock()
        torch.set_num_threads(1)  # perplexity is bit-identical across processes this way

    def swap(self, update: Any) -> tuple[str, float]:
        """Put ``update``'s weights into service; returns (how, perplexity)."""
        import p2pdist

        lm = self.lm
        config = lm.LMConfig.from_json_dict(json.loads((update.path / "config.json").read_text()))
        with self.lock:
            if self.model is None or self.model.config != config:
                # First version, or a new shape: build the module from config.json.
                self.model = lm.model_from_state_dict(update.load(), config)
                how = "built"
            else:
                # Same shape: copy the new tensors into the existing module, in place.
                p2pdist.load_into(self.model, update.ref)
                how = "swapped in place"
            self.version = update.version
            return how, lm.perplexity(self.model, self.corpus)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="model name to follow, e.g. org/lm")
    p.add_argument(
        "--versions", type=int, default=0, help="exit after N updates (0: run until Ctrl-C)"
    )
    p.add_argument(
        "--timeout", type=float, default=0.0, help="fail if N updates take longer (0: no limit)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    args = p.parse_args(argv)
    if args.versions < 0 or args.timeout < 0:
        p.error("--versions and --timeout must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import p2pdist

    server = Server()
    updates = 0
    done = threading.Event()
    failure: list[BaseException] = []

    def on_update(update: p2pdist.Update) -> None:
        nonlocal updates
        how, ppl = server.swap(update)
        r = update.result
        published = r.manifest.metadata.get("perplexity")
        expected = float(published) if published is not None else None
        fetched = f"delta from {r.plan.base}" if r.plan.kind == "delta" else r.plan.kind
        check = (
            "" if expected is None
            else " = trainer's" if ppl == expected
            else f" != trainer's {expected!r}"
        )  # fmt: skip
        say(args.json, "version",
            f"{update.ref}: {fetched}, {r.bytes_from_peers / 1e6:.3f} MB from peers in "
            f"{r.seconds:.2f} s, verified, {how}; perplexity {ppl:.6f}{check}",
            version=update.version, plan=r.plan.kind, base=r.plan.base, swap=how,
            bytes_from_peers=r.bytes_from_peers, fetch_seconds=round(r.seconds, 3),
            perplexity=ppl, trainer_perplexity=expected)  # fmt: skip
        updates += 1
        if args.versions and updates >= args.versions:
            done.set()

    def on_error(error: BaseException) -> None:
        failure.append(error)
        done.set()

    follower = p2pdist.follow(f"{args.name}@latest", on_update, on_error=on_error)
    say(args.json, "following", f"following {args.name}@latest", name=args.name)
    try:
        finished = done.wait(args.timeout or None)
    except KeyboardInterrupt:
        finished = True
    follower.stop()
    if failure:
        error = failure[0]
        say(args.json, "error", f"error: {type(error).__name__}: {error}", message=str(error))
        return 1
    if not finished:
        say(args.json, "error",
            f"error: {updates} of {args.versions} versions within {args.timeout:g} s",
            message="timeout", updates=updates)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
