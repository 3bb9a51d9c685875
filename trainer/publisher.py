"""Publishing checkpoints from inside a training loop without blocking it.

``CheckpointPublisher.publish(model)`` takes a CPU snapshot of the weights (the only part
that runs on the training thread), then a background worker writes the shards, encodes the
delta against the previous version, signs, registers and seeds. Versions number themselves
(v1, v2, …) unless given; the last ``keep`` versions stay in the store and seeded, older ones
are dropped so a long run does not fill the disk.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from p2pdist import config
from p2pdist.client import RegistryClient
from p2pdist.errors import NotFoundError
from p2pdist.publish import PublishedVersion, next_version, publish
from p2pdist.shards import DEFAULT_MAX_SHARD_SIZE, save_state_dict
from p2pdist.store import Store

log = logging.getLogger(__name__)


def cpu_snapshot(weights: torch.nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state dict (or a state dict) that training cannot change."""
    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    return {name: t.detach().to("cpu", copy=True) for name, t in state.items()}


class CheckpointPublisher:
    """Publishes successive versions of one model from a training process.

    Args:
        name: model name (``name`` or ``org/name``).
        tracker, token, home: as for ``p2pdist publish`` (flags > environment > config).
        keep: how many of the newest versions stay in the store and seeded.
        side_files: extra files written next to the shards in every version (e.g. config.json).
        delta: publish each version as a delta against the previous one.
    """

    def __init__(
        self,
        name: str,
        *,
        tracker: str | None = None,
        token: str | None = None,
        home: str | Path | None = None,
        keep: int = 3,
        side_files: Mapping[str, bytes | str | dict[str, Any]] | None = None,
        max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
        delta: bool = True,
        seed: bool = True,
        private: bool = False,
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.name = name
        self.tracker = config.tracker_url(tracker)
        self.token = config.token(token)
        self.store = Store(config.home(home))
        self.keep = keep
        self.side_files = dict(side_files or {})
        self.max_shard_size = max_shard_size
        self.delta = delta
        self.seed = seed
        self.private = private
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="p2pdist-publish")
        self._pending: list[Future[PublishedVersion]] = []
        self._lock = threading.Lock()
        self._last_version: str | None = None
        self._next_number: int | None = None
        self.published: list[PublishedVersion] = []

    def _allocate_version(self) -> str:
        with self._lock:
            if self._next_number is None:
                client = RegistryClient(self.tracker, self.token)
                try:
                    known = [v["version"] for v in client.list_versions(self.name)]
                except NotFoundError:
                    known = []
                known += [m.version for m in self.store.versions(self.name)]
                self._next_number = int(next_version(known)[1:])
            version = f"v{self._next_number}"
            self._next_number += 1
            return version

    def publish(
        self,
        weights: torch.nn.Module | Mapping[str, torch.Tensor],
        version: str | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> Future[PublishedVersion]:
        """Snapshot ``weights`` now and publish them in the background; returns a Future.

        Only the CPU copy happens on the caller's thread. Publishing errors surface from the
        Future and from ``wait()``.
        """
        snapshot = cpu_snapshot(weights)
        version = version or self._allocate_version()
        future = self._pool.submit(self._publish, snapshot, version, dict(metadata or {}))
        with self._lock:
            self._pending.append(future)
        return future

    def _publish(
        self, snapshot: dict[str, torch.Tensor], version: str, metadata: dict[str, str]
    ) -> PublishedVersion:
        parent = self._last_version if self.delta else None
        if parent is not None and not self.store.has(self.name, parent):
            parent = None
        with self.store.staging() as stage:
            folder = stage / "version"
            save_state_dict(snapshot, folder, max_shard_size=self.max_shard_size)
            for filename, content in self.side_files.items():
                data = (
                    json.dumps(content, indent=2, sort_keys=True).encode() + b"\n"
                    if isinstance(content, dict)
                    else content.encode()
                    if isinstance(content, str)
                    else content
                )
                (folder / filename).write_bytes(data)
            del snapshot
            published = publish(
                folder,
                name=self.name,
                version=version,
                parent=parent,
                home=self.store.root,
                tracker=self.tracker,
                token=self.token,
                private=self.private,
                seed=self.seed,
                metadata=metadata,
            )
        self._last_version = version
        self.published.append(published)
        self._retain()
        return published

    def _retain(self) -> None:
        """Drop versions older than the newest ``keep`` from the swarm and the store."""
        if len(self.published) <= self.keep:
            return
        stale, self.published = self.published[: -self.keep], self.published[-self.keep :]
        from p2pdist.seeder import unseed_version

        for old in stale:
            unseed_version(self.store, old.manifest.name, old.manifest.version)
            self.store.remove(old.manifest.name, old.manifest.version)
        self.store.gc()

    def wait(self, timeout: float | None = None) -> list[PublishedVersion]:
        """Block until every publish so far has finished; re-raise the first failure."""
        with self._lock:
            pending, self._pending = self._pending, []
        return [f.result(timeout=timeout) for f in pending]

    def close(self) -> None:
        """Finish pending publishes and stop the worker (seeding continues while the process lives)."""
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> CheckpointPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["CheckpointPublisher", "cpu_snapshot"]
