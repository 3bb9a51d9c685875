"""Publishing checkpoints from inside a training loop without blocking it.

``CheckpointPublisher.publish(model)`` takes a CPU snapshot of the weights (the only part
that runs on the training thread: no disk, no network), then a background worker numbers the
version, writes the shards, encodes the delta against the previous version, signs, registers
and seeds. Versions number themselves (v1, v2, …) unless given; the last ``keep`` versions stay
in the store and seeded, older ones are dropped so a long run does not fill the disk.

A training run that restarts (a new process, the same store) carries on where the last one
stopped: its first version is a delta against the newest version of the model that is both in
the store and registered, and retention counts those earlier versions too.

A publish that fails (tracker down, disk full) fails its Future with one P2PDistError and
leaves nothing behind: its unregistered build is removed from the store (never a version that
was there before it) and its number is taken again by the next publish, whose parent is the
last version that did get published. ``publish()`` holds at most ``max_pending`` snapshots:
beyond that it waits for a publish to finish. A script that ends without ``wait()``,
``close()`` or a ``with`` block still publishes what it queued: the interpreter finishes
pending publishes before it exits (a failure is then logged, as nothing can raise).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import re
import threading
import weakref
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from p2pdist import config
from p2pdist.client import RegistryClient
from p2pdist.errors import NotFoundError, P2PDistError, StoreError
from p2pdist.formats.shards import DEFAULT_MAX_SHARD_SIZE, save_state_dict
from p2pdist.publishing import PublishedVersion, next_version, publish
from p2pdist.ref import validate_version
from p2pdist.store.cache import Store

log = logging.getLogger(__name__)

_NUMBERED = re.compile(r"v(\d+)")


def cpu_snapshot(weights: torch.nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state dict (or a state dict) that training cannot change.

    Tensors that share storage (tied weights: GPT-2's ``lm_head.weight`` is
    ``transformer.wte.weight``) are kept once, under the name ``save_pretrained`` keeps
    (the module's ``_tied_weights_keys`` are the ones dropped): safetensors' own
    ``_remove_duplicate_names`` chooses, as its ``save_model`` does. ``from_pretrained`` and
    ``load_into`` tie them again on load.
    """
    state = dict(weights.state_dict() if isinstance(weights, torch.nn.Module) else weights)
    for name in _shared_duplicates(state, _tied_keys(weights)):
        del state[name]
    return {name: t.detach().to("cpu", copy=True) for name, t in state.items()}


def _tied_keys(weights: object) -> list[str]:
    """The names transformers drops when saving a tied model (a dict in v5, a list before)."""
    tied = getattr(weights, "_tied_weights_keys", None) or ()
    return [k for k in tied if isinstance(k, str)]


def _shared_duplicates(state: Mapping[str, torch.Tensor], discard: list[str]) -> list[str]:
    """The names to drop so that each shared storage is written once; none when the sharing
    is partial (views of a larger tensor), which safetensors cannot express: those are then
    written as copies."""
    from safetensors.torch import _remove_duplicate_names

    tensors = {
        n: t for n, t in state.items() if isinstance(t, torch.Tensor) and t.device.type != "meta"
    }
    try:
        groups = _remove_duplicate_names(tensors, discard_names=discard)
    except RuntimeError:  # no name covers the whole storage
        return []
    return [name for names in groups.values() for name in names]


class CheckpointPublisher:
    """Publishes successive versions of one model from a training process.

    Args:
        name: model name (``name`` or ``org/name``).
        tracker, token, home: as for ``p2pdist publish`` (flags > environment > config).
        keep: how many of the newest versions stay in the store and seeded.
        side_files: extra files written next to the shards in every version (e.g. config.json).
        delta: publish each version as a delta against the previous one.
        seed, private: as for ``p2pdist publish``.
        swarm: the Swarm that seeds the versions (default: the process's swarm).
        max_pending: publishes queued or running at most; ``publish()`` waits beyond that.
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
        swarm: Any = None,
        max_pending: int = 4,
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be at least 1")
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
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
        self.swarm = swarm
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="p2pdist-publish")
        self._pending: list[Future[PublishedVersion]] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_pending)
        self._last_version: str | None = None
        self._next_number: int | None = None
        self._resumed = False
        self._earlier: list[str] = []
        """Versions an earlier run left in the store, oldest first."""
        self.published: list[PublishedVersion] = []
        self._closed = False
        _open_publishers.add(self)

    def _resume(self) -> None:
        """Pick up what an earlier run of this model left in the store, once, on the worker.

        The newest stored and registered version becomes the parent of the first publish,
        and every stored version joins the retention window (one left unregistered by a run
        killed while publishing, too: nothing else would ever drop it). While the registry
        cannot be reached nothing is picked up (the publish then fails with the registry's
        error) and the next publish tries again.
        """
        if self._resumed:
            return
        try:
            registered = {
                v["version"]
                for v in RegistryClient(self.tracker, self.token).list_versions(self.name)
            }
        except NotFoundError:  # never published: nothing to carry on from
            registered = set()
        except P2PDistError:  # tried again by the next publish
            return
        self._resumed = True
        stored = [m.version for m in self.store.versions(self.name)]
        # All of them count for retention, also one an earlier run stored but was killed
        # before registering (kept forever otherwise); only a registered one is a parent.
        self._earlier = stored
        registered_stored = [v for v in stored if v in registered]
        if registered_stored and self._last_version is None:
            self._last_version = registered_stored[-1]

    def _allocate_version(self) -> str:
        """The next ``v<n>``: counted here, first derived from the registry and the store.

        Runs on the worker (it may ask the registry), so publishes are numbered in order.
        """
        if self._next_number is None:
            client = RegistryClient(self.tracker, self.token)
            try:
                known = [v["version"] for v in client.list_versions(self.name)]
            except NotFoundError:
                known = []
            known += [m.version for m in self.store.versions(self.name)]
            self._next_number = int(next_version(known)[1:])
        return f"v{self._next_number}"

    def publish(
        self,
        weights: torch.nn.Module | Mapping[str, torch.Tensor],
        version: str | None = None,
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> Future[PublishedVersion]:
        """Snapshot ``weights`` now and publish them in the background; returns a Future.

        Only the CPU copy happens on the caller's thread (no disk, no network; an explicit
        ``version`` is checked for syntax). Publishing errors surface, as P2PDistErrors, from
        the Future and from ``wait()``. With ``max_pending`` publishes already queued or
        running, it first waits for one of them to finish: a loop that publishes faster than
        versions can be built holds that many CPU copies, not one per call.
        """
        if version is not None:
            validate_version(version)
        self._slots.acquire()
        try:
            snapshot = cpu_snapshot(weights)
            future = self._pool.submit(self._publish, snapshot, version, dict(metadata or {}))
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        with self._lock:
            self._pending.append(future)
        return future

    def _publish(
        self, snapshot: dict[str, torch.Tensor], version: str | None, metadata: dict[str, str]
    ) -> PublishedVersion:
        """The worker's part of one publish: number, build, register, seed, then retain."""
        ours = False  # whether this publish put the version in the store (what to undo)
        try:
            self._resume()
            version = version or self._allocate_version()
            ours = not self.store.has(self.name, version)
            try:
                published = self._publish_version(snapshot, version, metadata)
            except OSError as e:  # not one of ours (a StoreError is handled below)
                if isinstance(e, P2PDistError):
                    raise
                raise StoreError(
                    f"{self.name}@{version}: cannot write the checkpoint ({e}); "
                    f"free space or check the store at {self.store.root}"
                ) from e
        except P2PDistError as e:
            _add_note(e, f"while publishing {self.name}@{version or '<next version>'}")
            if isinstance(e, NotFoundError) and "parent version" in str(e):
                # The registry lost the parent (a tracker restored without its database):
                # the next publish is a full version rather than failing the same way.
                self._last_version = None
            if version is not None and ours:  # never one stored before (a restarted run's)
                self._forget_failed(version)
            raise
        self._last_version = version
        match = _NUMBERED.fullmatch(version)
        if match is not None and self._next_number is not None:
            self._next_number = max(self._next_number, int(match.group(1)) + 1)
        self.published.append(published)
        self._retain()
        return published

    def _publish_version(
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
            snapshot.clear()  # the shards hold the bytes now; free the copy early
            return publish(
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
                swarm=self.swarm,
            )

    def _forget_failed(self, version: str) -> None:
        """Undo a failed publish so the next one can reuse its number and build cleanly.

        A version the registry does not list (or cannot be asked about) is unseeded and
        removed from the store: left there, it would block its number (the next publish would
        meet other bytes under the same name) and never be dropped by retention.
        """
        self._next_number = None  # derive it again from the registry and the store
        try:
            if not self.store.has(self.name, version):
                return
            try:
                client = RegistryClient(self.tracker, self.token)
                listed = {v["version"] for v in client.list_versions(self.name)}
            except P2PDistError:
                listed = set()
            if version in listed:
                return
            if self.seed:
                from p2pdist.swarm.seeder import unseed_version

                unseed_version(self.store, self.name, version, swarm=self.swarm)
            self.store.remove(self.name, version)
        except (P2PDistError, OSError) as e:  # the original failure is the one to report
            log.warning("cannot clean up the failed publish of %s@%s: %s", self.name, version, e)

    def _retain(self) -> None:
        """Drop versions older than the newest ``keep`` (this run's and an earlier run's)."""
        excess = len(self._earlier) + len(self.published) - self.keep
        if excess <= 0:
            return
        from p2pdist.swarm.seeder import unseed_version

        earlier_stale, self._earlier = self._earlier[:excess], self._earlier[excess:]
        excess -= len(earlier_stale)
        stale, self.published = self.published[:excess], self.published[excess:]
        for version in [*earlier_stale, *(p.manifest.version for p in stale)]:
            if not self.store.has(self.name, version):  # removed by hand meanwhile
                continue
            if self.seed:
                unseed_version(self.store, self.name, version, swarm=self.swarm)
            self.store.remove(self.name, version)
        self.store.gc()

    def wait(self, timeout: float | None = None) -> list[PublishedVersion]:
        """Block until every publish so far has finished; raise the first failure not raised yet.

        Each failure is raised by exactly one ``wait()``: the others stay pending for the next
        call, and so does every failure when ``timeout`` (the bound of the whole wait) runs
        out first, with TimeoutError. Returns the versions published since the last call.
        """
        with self._lock:
            pending = list(self._pending)
        done, not_done = concurrent.futures.wait(pending, timeout)
        failed = [f for f in pending if f in done and f.exception() is not None]
        report = failed[0] if failed and not not_done else None
        with self._lock:  # drop what is settled: successes, and the failure raised now
            self._pending = [
                f for f in self._pending if f not in done or (f in failed and f is not report)
            ]
        if not_done:
            raise TimeoutError(
                f"{len(not_done)} publish(es) of {self.name} still running after {timeout:g} s"
            )
        if report is not None:
            raise report.exception()  # type: ignore[misc]
        return [f.result() for f in pending]

    def close(self) -> None:
        """Finish pending publishes and stop the worker (seeding continues while the process lives)."""
        self._closed = True
        try:
            self.wait()
        finally:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> CheckpointPublisher:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # the with-block's own exception is the one to see; a publish failure is logged
            self.close()
        except P2PDistError as e:
            log.error("while closing the publisher of %s: %s", self.name, e)


_open_publishers: weakref.WeakSet[CheckpointPublisher] = weakref.WeakSet()


def _finish_at_exit() -> None:
    """Finish the publishes still pending when the interpreter exits, instead of dropping them.

    It runs among the interpreter's thread-shutdown hooks, before the one of concurrent.futures
    (hooks run newest first, and that module registered at import): after it, the pools a
    publish uses internally refuse work, so a publish left for later would fail, unseen. A
    publisher closed by its owner is left alone (its failures were theirs to collect); Ctrl-C
    gives up what has not started (what runs ends at its own network timeouts).
    """
    publishers = [p for p in list(_open_publishers) if not p._closed]
    for i, publisher in enumerate(publishers):
        try:
            for _ in range(len(publisher._pending) + 1):
                try:
                    publisher.wait()
                    break
                except Exception as e:  # nothing can raise at exit: say it, go on
                    log.error("publishing %s failed: %s", publisher.name, e)
        except KeyboardInterrupt:
            for left_behind in publishers[i:]:
                with left_behind._lock:
                    left = sum(not f.done() for f in left_behind._pending)
                if left:
                    log.error("interrupted: %d publish(es) of %s not finished", left,
                              left_behind.name)  # fmt: skip
                left_behind._pool.shutdown(wait=False, cancel_futures=True)
            return
        publisher._pool.shutdown(wait=True)


# The hook API concurrent.futures itself uses; atexit's hooks would run too late (above).
threading._register_atexit(_finish_at_exit)  # type: ignore[attr-defined]
# A forked child has the publishers but not their workers: waiting there would never end.
os.register_at_fork(after_in_child=_open_publishers.clear)

__all__ = ["CheckpointPublisher", "cpu_snapshot"]


def _add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)`` where Python has it (3.11+); on 3.10 the note is dropped."""
    add_note = getattr(error, "add_note", None)
    if add_note is not None:
        add_note(note)
