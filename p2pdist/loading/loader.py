"""Verified loading: one call and the weights are on the device, proven to be what was signed.

``load(ref, device=...)`` resolves a reference in the store (fetching it when absent),
checks the manifest's signature, maps every shard (``mmap``, never read whole into Python
memory), and hands out tensors only after their file hashed to the signed blake3:

- CPU: the tensors are views on a private (copy-on-write) mapping of each shard, like
  ``safetensors.torch.load_file`` and ``torch.load(mmap=True)``; verification is one blake3
  pass over that same mapping, which also brings the pages into memory for the tensors.
  ``copy=True`` gives tensors that own their memory instead (one more pass over the bytes,
  with the hash overlapped). Why zero-copy is the default: docs/LOADING.md.
- CUDA: each shard streams through two pinned staging buffers (host copy of chunk k+1 while
  the DMA of chunk k runs on a side stream), while another thread hashes the same mapping.
  The device tensors are returned after the stream finished and every hash matched.

``load_into(module, ref)`` (fit.py) checks names and shapes from the headers alone and, in
strict mode, refuses before touching the module. ``open(ref)`` (lazy.py) is the lazy form:
one file is verified the first time one of its tensors is asked for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from p2pdist.errors import NotFoundError, TrackerError
from p2pdist.formats.header import TensorSpec
from p2pdist.formats.manifest import MANIFEST_FILENAME, Manifest
from p2pdist.loading.staging import (
    StagedCopier,
    parse_device,
    parse_dtype,
    plan_chunks,
    shared_copier,
)
from p2pdist.ref import parse_ref
from p2pdist.store.cache import Store
from p2pdist.store.records import RECORDS_DIR
from p2pdist.store.verified import (
    TORCH_DTYPES,
    CopyHasher,
    MappedShard,
    VerifiedRecords,
    VerifyPolicy,
    check_policy,
    check_signature,
    open_shards,
    raise_header_errors,
)

log = logging.getLogger(__name__)

_CONVERTIBLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _empty_like_spec(spec: TensorSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh tensor for ``spec`` on ``device`` and its flat uint8 view."""
    raw = torch.empty(spec.nbytes, dtype=torch.uint8, device=device)
    return raw.view(TORCH_DTYPES[spec.dtype]).view(spec.shape), raw


def convert_dtype(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is None or tensor.dtype == dtype or tensor.dtype not in _CONVERTIBLE:
        return tensor
    return tensor.to(dtype)


# -- the core -------------------------------------------------------------------------------
def load_folder(
    folder: str | Path,
    manifest: Manifest,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    verify: VerifyPolicy = "always",
    store: Store | None = None,
    copy: bool = False,
    names: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Load the tensors of a version folder, verified against its signed ``manifest``.

    ``dtype`` converts floating-point tensors (fp16, bf16, fp32, fp64) only; integer, bool
    and fp8 tensors keep their dtype. ``verify="once"`` records and trusts file identities
    under ``store`` (without a store it hashes every time). ``copy`` (CPU only) returns
    tensors that own their memory instead of views on the mapping. ``names`` restricts the
    result (every file is still verified whole: a hash covers a file).
    """
    dev = parse_device(device)
    dtype = parse_dtype(dtype)
    policy = check_policy(verify)
    check_signature(manifest)
    records = VerifiedRecords(store.root / RECORDS_DIR) if store is not None else None
    shards = open_shards(Path(folder), manifest)
    raise_header_errors(shards, policy, records)
    wanted = None if names is None else set(names)
    if dev.type == "cpu" and not copy:
        for shard in shards:
            shard.verify(policy, records)
        return {
            spec.name: convert_dtype(shard.tensor(spec), dtype)
            for shard in shards
            for spec in shard.header.tensors
            if wanted is None or spec.name in wanted
        }
    return load_copied(shards, dev, dtype, policy, records, wanted)


def load_copied(
    shards: Sequence[MappedShard],
    dev: torch.device,
    dtype: torch.dtype | None,
    policy: VerifyPolicy,
    records: VerifiedRecords | None,
    wanted: set[str] | None,
    copier: StagedCopier | None = None,
) -> dict[str, torch.Tensor]:
    """Copy to ``dev`` while a thread hashes what the copy read; hand out after both finish.

    The hash is of the copied bytes themselves (CopyHasher), so a file written to while it
    is copied fails its check rather than yield a copy of bytes that were never hashed. CUDA
    goes through the staged copier (``copier`` lets the tests drive it on the CPU).
    """
    out: dict[str, torch.Tensor] = {}
    if copier is None and dev.type == "cuda":
        copier = shared_copier(dev)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="p2pdist-verify") as pool:
        for shard in shards:
            known = shard.verified or shard.trusted(policy, records)  # a lazy reader's 2nd read
            hasher = None if known else CopyHasher(shard, pool)
            if copier is not None:
                with copier.lock:
                    out.update(_stage_shard(copier, shard, dev, wanted, hasher))
                    copier.finish()
            else:
                for spec in shard.header.tensors:  # in file order
                    if wanted is None or spec.name in wanted:
                        tensor, raw = _empty_like_spec(spec, dev)
                        raw.copy_(shard.base[spec.start : spec.end])
                        if hasher is not None:
                            hasher.copied(spec.start, raw)
                        out[spec.name] = tensor
            if hasher is not None:
                hasher.finish(policy, records)  # IntegrityError: nothing is handed out
            else:
                shard.verified = True
    return {name: convert_dtype(t, dtype) for name, t in out.items()}


def _stage_shard(
    copier: StagedCopier,
    shard: MappedShard,
    dev: torch.device,
    wanted: set[str] | None,
    hasher: CopyHasher | None,
) -> dict[str, torch.Tensor]:
    specs = [s for s in shard.header.tensors if wanted is None or s.name in wanted]
    out: dict[str, torch.Tensor] = {}
    raws: list[torch.Tensor] = []
    for spec in specs:
        tensor, raw = _empty_like_spec(spec, dev)
        out[spec.name] = tensor
        raws.append(raw)
    # Each run of adjacent wanted tensors is one contiguous range of the file.
    run: list[int] = []
    for i, spec in enumerate(specs):
        if run and specs[run[-1]].end != spec.start:
            _stage_run(copier, shard, specs, raws, run, hasher)
            run = []
        run.append(i)
    if run:
        _stage_run(copier, shard, specs, raws, run, hasher)
    return out


def _stage_run(
    copier: StagedCopier,
    shard: MappedShard,
    specs: Sequence[TensorSpec],
    raws: Sequence[torch.Tensor],
    run: Sequence[int],
    hasher: CopyHasher | None,
) -> None:
    chunks = plan_chunks([(specs[i].start, specs[i].end) for i in run], copier.chunk_bytes)
    copier.copy(
        shard.base, chunks, [raws[i] for i in run], None if hasher is None else hasher.copied
    )


# -- references -----------------------------------------------------------------------------
def resolve(
    ref: str,
    *,
    home: str | Path | None = None,
    fetch: bool = True,
    tracker: str | None = None,
    token: str | None = None,
) -> tuple[Path, Manifest, Store]:
    """The version folder, manifest and store for ``ref``; fetches when asked and needed.

    A concrete version already stored is used with no network at all. ``latest`` asks the
    network (through fetch, with ``tracker`` and ``token``) when ``fetch`` is true, and falls
    back to the newest stored version when fetch is off or the tracker cannot be reached.
    A version fetched in part (``--include``) without all its weight files is refused,
    naming the files it lacks.
    """
    mref = parse_ref(ref)
    store = Store(home)
    if not mref.is_latest and store.has(mref.name, mref.version):
        return (
            store.snapshot(mref.name, mref.version),
            _whole_weights(store, store.manifest(mref.name, mref.version)),
            store,
        )
    stored_latest = store.latest(mref.name) if mref.is_latest else None
    if not fetch:
        if stored_latest is not None:
            snapshot = store.snapshot(mref.name, stored_latest.version)
            return snapshot, _whole_weights(store, stored_latest), store
        raise NotFoundError(
            f"{mref} is not in the store at {store.root}; fetch it first with "
            f"`p2pdist fetch {mref}`, or call load(..., fetch=True)"
        )
    from p2pdist.fetcher import fetch as fetch_version

    try:
        path = Path(fetch_version(str(mref), home=store.root, tracker=tracker, token=token))
    except TrackerError as e:
        if stored_latest is None:
            raise
        log.warning("%s; using the newest stored version %s", e, stored_latest.version)
        snapshot = store.snapshot(mref.name, stored_latest.version)
        return snapshot, _whole_weights(store, stored_latest), store
    for candidate in (path.parent / MANIFEST_FILENAME, path / MANIFEST_FILENAME):
        if candidate.is_file():
            return path, _whole_weights(store, Manifest.read(candidate)), store
    raise NotFoundError(f"{path}: fetched, but no {MANIFEST_FILENAME} beside it")


def _whole_weights(store: Store, manifest: Manifest) -> Manifest:
    """``manifest``, unless the store holds only part of the version and some of its
    weight files (``.safetensors``) are among the parts it lacks: then a NotFoundError."""
    ref = f"{manifest.name}@{manifest.version}"
    if not store.has(manifest.name, manifest.version):
        return manifest
    held = store.held_files(manifest.name, manifest.version)
    missing = [
        f.path for f in manifest.files if f.path not in held and f.path.endswith(".safetensors")
    ]
    if missing:
        shown = ", ".join(missing[:4]) + (
            f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        )
        raise NotFoundError(
            f"{ref} was fetched in part (--include/--exclude) and lacks {shown}; fetch the rest "
            f"with `p2pdist fetch {ref}`"
        )
    return manifest


def seed_in_background(store: Store, manifest: Manifest, folder: Path) -> threading.Thread:
    """Start seeding the version from this process, off the caller's path."""

    def run() -> None:
        try:
            torrent = store.torrent(manifest.name, manifest.version)
            if torrent is None:
                log.warning(
                    "%s@%s has no torrent in the store; not seeding it",
                    manifest.name,
                    manifest.version,
                )
                return
            from p2pdist.swarm.seeder import seed_version

            seed_version(store, manifest.name, manifest.version)
        except Exception as e:  # seeding is a courtesy: never fail the load for it
            log.warning("cannot seed %s@%s: %s", manifest.name, manifest.version, e)

    thread = threading.Thread(target=run, name="p2pdist-seed", daemon=True)
    thread.start()
    return thread


def load(
    ref: str,
    *,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    verify: VerifyPolicy = "always",
    seed: bool = False,
    home: str | Path | None = None,
    fetch: bool = True,
    copy: bool = False,
    tracker: str | None = None,
    token: str | None = None,
) -> dict[str, torch.Tensor]:
    """Every tensor of ``ref`` on ``device``, verified against the signed manifest.

    ``seed=True`` keeps serving the version to other hosts from a background thread, started
    after the tensors are handed over. See ``load_folder`` for ``dtype``, ``verify``, ``copy``;
    ``tracker`` and ``token`` are those of ``fetch`` (default: the configured ones).
    """
    dev = parse_device(device)
    dtype = parse_dtype(dtype)
    check_policy(verify)
    folder, manifest, store = resolve(ref, home=home, fetch=fetch, tracker=tracker, token=token)
    tensors = load_folder(
        folder, manifest, device=dev, dtype=dtype, verify=verify, store=store, copy=copy
    )
    if seed:
        seed_in_background(store, manifest, folder)
    return tensors


# -- into a module --------------------------------------------------------------------------


__all__ = [
    "load",
    "load_folder",
    "resolve",
]
