"""Lazy verified access: ``open(ref)`` maps a version and hashes one file the first time one
of its tensors is asked for, so a program that needs a few tensors of a large model pays for
those files only. Same guarantees as ``load``: no tensor is handed out before its file
matched the signed blake3.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import torch

from p2pdist.errors import NotFoundError, P2PDistError
from p2pdist.formats.header import TensorSpec
from p2pdist.formats.manifest import Manifest
from p2pdist.loading.loader import convert_dtype, load_copied, resolve, seed_in_background
from p2pdist.loading.staging import (
    parse_device,
    parse_dtype,
)
from p2pdist.store.cache import Store
from p2pdist.store.records import RECORDS_DIR
from p2pdist.store.verified import (
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


class VerifiedReader:
    """Lazy, per-tensor access to a version; each file is verified before its first tensor.

    A context manager; ``keys()``, ``spec(name)``, ``metadata``, ``reader[name]``, and
    ``load(names)`` for many tensors at once through the same path as ``load``.
    """

    def __init__(
        self,
        folder: str | Path,
        manifest: Manifest,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        verify: VerifyPolicy = "always",
        store: Store | None = None,
        copy: bool = False,
    ) -> None:
        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype)
        self.policy = check_policy(verify)
        self.copy = copy
        self.folder = Path(folder)
        self.manifest = manifest
        check_signature(manifest)
        self.records = VerifiedRecords(store.root / RECORDS_DIR) if store is not None else None
        self._closed = False
        self._shards = open_shards(self.folder, manifest)
        raise_header_errors(self._shards, self.policy, self.records)
        self._where: dict[str, tuple[MappedShard, TensorSpec]] = {
            spec.name: (shard, spec) for shard in self._shards for spec in shard.header.tensors
        }

    def keys(self) -> list[str]:
        return list(self._where)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    @property
    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` of the shards, merged (unverified until a tensor is read)."""
        merged: dict[str, str] = {}
        for shard in self._shards:
            merged.update(shard.header.metadata)
        return merged

    def spec(self, name: str) -> TensorSpec:
        return self._lookup(name)[1]

    def _lookup(self, name: str) -> tuple[MappedShard, TensorSpec]:
        try:
            return self._where[name]
        except KeyError:
            if self._closed:
                raise P2PDistError(
                    f"the reader of {self.manifest.name}@{self.manifest.version} is closed; "
                    "open the version again"
                ) from None
            raise NotFoundError(
                f"{self.manifest.name}@{self.manifest.version}: no tensor {name!r}"
            ) from None

    def get_tensor(self, name: str) -> torch.Tensor:
        return self.load([name])[name]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.get_tensor(name)

    def load(self, names: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """The named tensors (all by default), each file verified first."""
        wanted = set(self._where) if names is None else set(names)
        for name in wanted:
            self._lookup(name)
        shards = [s for s in self._shards if any(t.name in wanted for t in s.header.tensors)]
        if self.device.type == "cpu" and not self.copy:
            for shard in shards:
                shard.verify(self.policy, self.records)
            return {
                spec.name: convert_dtype(shard.tensor(spec), self.dtype)
                for shard in shards
                for spec in shard.header.tensors
                if spec.name in wanted
            }
        return load_copied(shards, self.device, self.dtype, self.policy, self.records, wanted)

    def close(self) -> None:
        """Drop the mappings (tensors already handed out keep theirs alive)."""
        self._shards = []
        self._where = {}
        self._closed = True

    def __enter__(self) -> VerifiedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(
    ref: str, *, home: str | Path | None = None, fetch: bool = True, **kwargs: Any
) -> VerifiedReader:
    """A lazy reader of ``ref`` (see VerifiedReader); keywords as for ``load``."""
    seed = kwargs.pop("seed", False)
    if "device" in kwargs:
        kwargs["device"] = parse_device(kwargs["device"])
    if "dtype" in kwargs:
        kwargs["dtype"] = parse_dtype(kwargs["dtype"])
    check_policy(kwargs.get("verify", "always"))
    where = {k: kwargs.pop(k, None) for k in ("tracker", "token")}
    folder, manifest, store = resolve(ref, home=home, fetch=fetch, **where)
    reader = VerifiedReader(folder, manifest, store=store, **kwargs)
    if seed:
        seed_in_background(store, manifest, folder)
    return reader


__all__ = ["VerifiedReader", "open"]
