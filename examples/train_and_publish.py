"""Train a small language model and publish a checkpoint every N steps, without stopping.

The training side of p2pdist in about a hundred lines: a byte-level LM (``LMConfig.preset
("tiny")``) trains on the shipped corpus, and every ``--every`` steps
``p2pdist.trainer.CheckpointPublisher`` snapshots the weights and, in a background thread,
writes the shards, encodes a lossless delta against the previous version, signs, registers
and seeds. Versions number themselves (v1, v2, ...); ``config.json`` travels with every
version so a consumer can rebuild the model with no code of ours; the held-out perplexity
the trainer measured goes into the signed manifest's metadata, so a consumer can prove it
loaded exactly these weights (see ``inference_follower.py``).

Run against a tracker (see examples/README.md)::

    export P2PDIST_TRACKER=http://127.0.0.1:6969 P2PDIST_TOKEN=...   # a token for "org"
    python examples/train_and_publish.py --name org/lm --steps 200 --every 50 --seed-seconds 600

``--wait-for-hosts K`` adds backpressure, as reinforcement-learning weight sync wants it:
after each publish, training resumes only once K other hosts seed that version (the
tracker's scrape counts them), so no consumer falls more than one version behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import Future
from typing import Any

_print_lock = threading.Lock()


def say(as_json: bool, event: str, text: str, **fields: Any) -> None:
    """One line of output: human text, or one JSON object with ``event`` and ``fields``."""
    line = json.dumps({"event": event, **fields}) if as_json else text
    with _print_lock:
        print(line, flush=True)


def complete_count(tracker: str, info_hash_hex: str, timeout: float = 10.0) -> int:
    """How many peers the tracker counts as complete (seeding) for one v1 infohash (BEP 48)."""
    from p2pdist.formats.bencode import bdecode

    info_hash = bytes.fromhex(info_hash_hex)
    query = "info_hash=" + urllib.parse.quote_from_bytes(info_hash, safe="")
    with urllib.request.urlopen(f"{tracker.rstrip('/')}/scrape?{query}", timeout=timeout) as r:
        answer = bdecode(r.read())
    files = answer.get(b"files", {}) if isinstance(answer, dict) else {}
    return int(files.get(info_hash, {}).get(b"complete", 0))


def wait_for_hosts(tracker: str, info_hash_hex: str, hosts: int, timeout: float) -> int:
    """Block until ``hosts`` peers besides this one seed the torrent; returns the count seen.

    The count is the tracker's: a host that has just fetched the version can show twice for
    up to two announce intervals (its finished download and its seeding each announced), so
    for K > 1 this is a lower bound on readiness, not a head count. Raises TimeoutError
    after ``timeout`` seconds, naming how many were seen.
    """
    deadline = time.monotonic() + timeout
    while True:
        others = complete_count(tracker, info_hash_hex) - 1  # minus this origin
        if others >= hosts:
            return others
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {max(others, 0)} of {hosts} hosts seed {info_hash_hex} after {timeout:g} s"
            )
        time.sleep(0.25)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="model name, e.g. org/lm (the token's namespace)")
    p.add_argument("--steps", type=int, default=200, help="training steps in all")
    p.add_argument("--every", type=int, default=50, help="publish a checkpoint every N steps")
    p.add_argument("--keep", type=int, default=3, help="newest versions kept and seeded")
    p.add_argument(
        "--seed-seconds", type=float, default=0.0, help="keep seeding this long after the last"
    )
    p.add_argument("--preset", default="tiny", help="LMConfig preset (tiny, bench)")
    p.add_argument("--seed", type=int, default=0, help="weight-init and batch seed")
    p.add_argument(
        "--wait-for-hosts",
        type=int,
        default=0,
        metavar="K",
        help="after each publish, pause training until K other hosts seed the version",
    )
    p.add_argument(
        "--wait-timeout", type=float, default=300.0, help="give up waiting for hosts after this"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    args = p.parse_args(argv)
    if args.steps < 1 or args.every < 1 or args.keep < 1 or args.wait_for_hosts < 0:
        p.error("--steps, --every and --keep must be >= 1, --wait-for-hosts >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from p2pdist.errors import P2PDistError
    from p2pdist.trainer import lm
    from p2pdist.trainer.publisher import CheckpointPublisher

    torch.manual_seed(args.seed)
    corpus = lm.load_corpus()
    config = lm.LMConfig.preset(args.preset)
    model = lm.build_model(config, seed=args.seed)
    trainer = lm.Trainer(model, corpus, seed=args.seed, threads=1)
    try:
        publisher = CheckpointPublisher(
            args.name, keep=args.keep, side_files={"config.json": config.to_json_dict()}
        )
    except P2PDistError as e:  # no tracker configured, typically
        say(args.json, "error", f"error: {type(e).__name__}: {e}", message=str(e))
        return 1
    say(args.json, "start",
        f"training {args.name} ({config.num_params() / 1e6:.2f} M parameters) for {args.steps} "
        f"steps, publishing every {args.every} to {publisher.tracker}",
        name=args.name, steps=args.steps, every=args.every, tracker=publisher.tracker)  # fmt: skip

    def report(step: int, loss: float, ppl: float) -> Any:
        """A done-callback that prints what one publish produced (runs on the worker thread)."""

        def done(future: Future[Any]) -> None:
            if future.exception() is not None:
                say(args.json, "error", f"publish at step {step} failed: {future.exception()}",
                    step=step, message=str(future.exception()))  # fmt: skip
                return
            m = future.result().manifest
            delta = m.delta_size if m.parent else None
            how = f"delta {delta / 1e6:.3f} MB from {m.parent}" if delta is not None else "full"
            say(args.json, "published",
                f"published {m.name}@{m.version} at step {step}: loss {loss:.4f}, perplexity "
                f"{ppl:.6f}; {m.total_size / 1e6:.3f} MB, {how}; seeding",
                version=m.version, step=step, loss=loss, perplexity=ppl,
                full_bytes=m.total_size, delta_bytes=delta, parent=m.parent)  # fmt: skip

        return done

    try:
        while trainer.steps < args.steps:
            loss = trainer.step(min(args.every, args.steps - trainer.steps))
            # Perplexity of exactly the weights the publisher snapshots next: the consumer
            # recomputes it from what it fetched and must get the same number.
            ppl = lm.perplexity(model, corpus, config=config)
            future = publisher.publish(
                model, metadata={"step": str(trainer.steps), "perplexity": repr(ppl)}
            )
            future.add_done_callback(report(trainer.steps, loss, ppl))
            if args.wait_for_hosts:
                published = future.result()
                torrent = published.manifest.torrent
                assert torrent is not None and torrent.v1 is not None
                hosts = wait_for_hosts(
                    publisher.tracker, torrent.v1, args.wait_for_hosts, args.wait_timeout
                )
                say(args.json, "hosts", f"{hosts} hosts seed {published.ref}; training on",
                    version=published.manifest.version, hosts=hosts)  # fmt: skip
        publisher.wait()
    except (P2PDistError, TimeoutError, OSError) as e:
        say(args.json, "error", f"error: {type(e).__name__}: {e}", message=str(e))
        with contextlib.suppress(Exception):  # the failure was just reported
            publisher.close()
        return 1
    last = publisher.published[-1].ref
    if args.seed_seconds > 0:
        say(args.json, "seeding",
            f"seeding the newest {args.keep} versions (up to {last}) for "
            f"{args.seed_seconds:g} s; Ctrl-C stops",
            seconds=args.seed_seconds, last=last)  # fmt: skip
        try:
            time.sleep(args.seed_seconds)
        except KeyboardInterrupt:
            pass
    publisher.close()
    say(args.json, "done", f"done: {trainer.steps} steps, newest {last}", last=last)
    return 0


if __name__ == "__main__":
    sys.exit(main())
