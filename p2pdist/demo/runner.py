"""``p2pdist demo``: the whole system on one machine, on loopback, in a couple of minutes.

A tracker starts; a small language model trains on the shipped corpus; its checkpoints are
published as v1 (full) and then v2, v3 (lossless deltas) while consumer processes follow
``demo/lm@latest``, load each version and compute held-out perplexity, which must equal the
trainer's. One consumer is paused while v3 ships; then the origin goes offline and the paused
consumer resumes: it can only get v3 from the other consumers. A table of measured bytes, times and perplexities ends the run.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from p2pdist.errors import P2PDistError

MODEL = "demo/lm"
PERPLEXITY_TOLERANCE = 1e-6


class DemoError(P2PDistError):
    """The demo could not complete (a process died, a version never arrived, a mismatch)."""


@dataclass
class Process:
    """A child process whose stdout lines (JSON events or text) arrive on a queue."""

    label: str
    proc: subprocess.Popen[str]
    events: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "text", "text": line}
            self.events.put(event)
        self.events.put({"event": "exit", "code": self.proc.wait()})

    def next(self, kind: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DemoError(f"{self.label}: no {kind!r} event within {timeout:.0f} s")
            try:
                event = self.events.get(timeout=remaining)
            except queue.Empty:
                continue
            if event["event"] == kind:
                return event
            if event["event"] == "error":
                raise DemoError(f"{self.label} failed: {event['message']}")
            if event["event"] == "exit":
                raise DemoError(f"{self.label} exited with code {event['code']}")

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


@dataclass
class VersionRow:
    version: str
    full_bytes: int
    delta_bytes: int | None
    trainer_perplexity: float
    published_at: float
    origin_uploaded: int = 0
    peers_uploaded: int = 0
    arrivals: dict[str, dict[str, Any]] = field(default_factory=dict)


class Demo:
    """Runs the demo in ``root`` (a temporary folder unless given)."""

    def __init__(
        self,
        root: Path,
        *,
        consumers: int = 3,
        steps: int = 40,
        console: Console | None = None,
    ) -> None:
        self.root = root
        self.consumer_count = consumers
        self.steps = steps
        self.console = console or Console(highlight=False)
        self.tracker: subprocess.Popen[str] | None = None
        self.consumers: list[Process] = []
        self.rows: list[VersionRow] = []
        self.started = time.monotonic()

    # -- output ---------------------------------------------------------------------------
    def say(self, who: str, message: str) -> None:
        elapsed = time.monotonic() - self.started
        self.console.print(f"[dim]{elapsed:6.1f}s[/dim] [bold]{who:>10}[/bold]  {message}")

    # -- processes ------------------------------------------------------------------------
    def _env(self, name: str) -> dict[str, str]:
        home = self.root / name
        return {
            **os.environ,
            "P2PDIST_HOME": str(home / "store"),
            "P2PDIST_CONFIG_DIR": str(home / "config"),
            "P2PDIST_TRACKER": self.tracker_url,
            "P2PDIST_LISTEN": "127.0.0.1",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }

    def start_tracker(self) -> None:
        data = self.root / "tracker"
        self.tracker = subprocess.Popen(
            [sys.executable, "-m", "p2pdist.tracker", "serve", "--port", "0",
             "--data", str(data), "--interval", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert self.tracker.stdout is not None
        line = self.tracker.stdout.readline().strip()
        if "listening on" not in line:
            raise DemoError(f"the tracker did not start: {line or self.tracker.stdout.read()}")
        self.tracker_url = line.rsplit(" ", 1)[-1]
        token = subprocess.run(
            [sys.executable, "-m", "p2pdist.tracker", "token", "--data", str(data),
             "--namespace", MODEL.split("/")[0]],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        self.token = token
        self.say(
            "tracker", f"registry + BitTorrent tracker at {self.tracker_url} (SQLite in {data})"
        )

    def start_consumer(self, index: int) -> Process:
        label = f"consumer{index}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "p2pdist.demo.consumer", MODEL],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=self._env(label),
        )  # fmt: skip
        consumer = Process(label, proc)
        self.consumers.append(consumer)
        return consumer

    # -- the story ------------------------------------------------------------------------
    def run(self) -> list[VersionRow]:
        from p2pdist.swarm.seeder import process_swarm
        from p2pdist.trainer import lm
        from p2pdist.trainer.publisher import CheckpointPublisher

        self.start_tracker()
        os.environ.update(
            {k: v for k, v in self._env("trainer").items() if k.startswith("P2PDIST")}
        )
        consumers = [self.start_consumer(i + 1) for i in range(self.consumer_count)]
        busy = consumers[-1]
        import torch

        torch.manual_seed(0)
        corpus = lm.load_corpus()
        config = lm.LMConfig.preset("tiny")
        model = lm.build_model(config, seed=0)
        trainer = lm.Trainer(model, corpus, seed=0, threads=1)
        self.say("trainer", f"{config.num_params() / 1e6:.2f} M-parameter byte-level LM on "
                 f"{_mb(len(corpus.train))} of Python docstrings; "
                 f"held-out perplexity {lm.perplexity(model, corpus, config=config):.2f}")  # fmt: skip
        for c in consumers:
            c.next("ready", 120)
        self.say("consumers", f"{len(consumers)} consumer processes follow {MODEL}@latest")
        publisher = CheckpointPublisher(
            MODEL, token=self.token, keep=3, side_files={"config.json": config.to_json_dict()}
        )
        swarm = process_swarm()
        versions = ("v1", "v2", "v3")
        for version in versions:
            last = version == versions[-1]
            if last:
                # A host that is busy (or down) while the last version ships: it must get it
                # later from the other consumers, because the origin will be gone.
                busy.proc.send_signal(signal.SIGSTOP)
                self.say(busy.label, "pauses (a busy host) while the next version ships")
            loss = trainer.step(self.steps)
            ppl = lm.perplexity(model, corpus, config=config)
            self.say("trainer", f"{trainer.steps} steps, loss {loss:.3f}, perplexity {ppl:.4f}")
            published = publisher.publish(model, version, metadata={"step": str(trainer.steps)})
            m = published.result(timeout=120).manifest
            row = VersionRow(
                version, m.total_size, m.delta_size if m.parent else None, ppl, time.time()
            )
            self.rows.append(row)
            how = (
                f"delta {_mb(m.delta_size)} ({m.delta_size / m.total_size:.0%}) from {m.parent}"
                if m.parent
                else "full"
            )
            self.say(
                "publisher",
                f"{MODEL}@{version}: {_mb(m.total_size)}, {how}; signed, registered, seeding",
            )
            for c in consumers:
                if not (last and c is busy):
                    self._arrival(c, row)
            row.origin_uploaded = _uploaded(swarm, m)
        self.say("publisher", "the origin goes offline: it stops seeding every version")
        from p2pdist.swarm.seeder import unseed_version

        for done in publisher.published:
            unseed_version(publisher.store, MODEL, done.manifest.version)
        busy.proc.send_signal(signal.SIGCONT)
        self.say(busy.label, f"resumes; {MODEL}@{versions[-1]} is now only on the other consumers")
        self._arrival(busy, self.rows[-1])
        for row in self.rows:
            # Every byte a consumer received came from the origin or from another consumer.
            received = sum(a["bytes_from_peers"] for a in row.arrivals.values())
            row.peers_uploaded = max(0, received - row.origin_uploaded)
        return self.rows

    def _arrival(self, consumer: Process, row: VersionRow) -> None:
        event = consumer.next("version", 180)
        if event["version"] != row.version:
            raise DemoError(f"{consumer.label} got {event['version']}, expected {row.version}")
        row.arrivals[consumer.label] = event
        diff = abs(event["perplexity"] - row.trainer_perplexity)
        if diff > PERPLEXITY_TOLERANCE:
            raise DemoError(
                f"{consumer.label}: perplexity of {row.version} is {event['perplexity']!r}, "
                f"the trainer's {row.trainer_perplexity!r}"
            )
        plan = event["plan"] if event["plan"] != "delta" else f"delta from {event['base']}"
        self.say(
            consumer.label,
            f"{row.version} by {plan} in {event['fetch_seconds']:.2f} s: "
            f"{_mb(event['bytes_from_peers'])} from peers, verified, loaded; "
            f"perplexity {event['perplexity']:.4f} = trainer's",
        )

    def table(self) -> Table:
        t = Table(title=f"{MODEL}: what moved (measured)")
        for col in ("version", "full", "delta", "origin uploaded", "peers uploaded",
                    "time to all consumers", "perplexity (all equal)"):  # fmt: skip
            t.add_column(col, justify="right")
        for row in self.rows:
            slowest = max(a["received_at"] for a in row.arrivals.values()) - row.published_at
            t.add_row(
                row.version, _mb(row.full_bytes),
                _mb(row.delta_bytes) if row.delta_bytes is not None else "-",
                _mb(row.origin_uploaded), _mb(row.peers_uploaded),
                f"{slowest:.2f} s ({len(row.arrivals)})", f"{row.trainer_perplexity:.4f}",
            )  # fmt: skip
        return t

    def close(self) -> None:
        for c in self.consumers:
            c.stop()
        if self.tracker is not None and self.tracker.poll() is None:
            self.tracker.terminate()
            try:
                self.tracker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.tracker.kill()


def _uploaded(swarm: Any, manifest: Any) -> int:
    total = 0
    for ref in (manifest.torrent, manifest.delta_torrent):
        transfer = swarm.transfer(ref.v1) if ref is not None and ref.v1 else None
        total += transfer.uploaded_bytes() if transfer is not None else 0
    return total


def _mb(n: int | None) -> str:
    """Sizes in the unit system of every p2pdist display (binary: KiB, MiB, GiB)."""
    from p2pdist.progress import human_bytes

    return "-" if n is None else human_bytes(n)


def run_demo(*, keep: bool = False, steps: int = 40, consumers: int = 3) -> int:
    """Run the demo; returns the process exit code (0 when every check held)."""
    root = Path(tempfile.mkdtemp(prefix="p2pdist-demo-"))
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=110)
    console.print(f"[bold]p2pdist demo[/bold] in {root} (everything on 127.0.0.1)")
    demo = Demo(root, steps=steps, consumers=consumers, console=console)
    saved_env = dict(os.environ)
    try:
        demo.run()
        console.print(demo.table())
        console.print(
            f"Every consumer verified every file against the signed manifest and computed the "
            f"trainer's perplexity to {PERPLEXITY_TOLERANCE:g}; {demo.consumers[-1].label} got "
            f"{MODEL}@{demo.rows[-1].version} with the origin offline, from the other consumers "
            "alone. "
            f"Total {time.monotonic() - demo.started:.0f} s."
        )
        return 0
    finally:
        demo.close()
        os.environ.clear()
        os.environ.update(saved_env)
        if keep:
            console.print(
                f"Kept {root} (tracker/, trainer/, consumer*/ each with store/ and config/)"
            )
        else:
            shutil.rmtree(root, ignore_errors=True)
