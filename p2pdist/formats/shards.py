"""Sharded safetensors in Hugging Face layout, and a strict reader of safetensors headers.

A version folder is exactly what ``save_pretrained`` writes: ``model.safetensors``, or
``model-0000k-of-0000N.safetensors`` plus ``model.safetensors.index.json`` when the state
dict is larger than the maximum shard size. So ``safetensors.safe_open`` and
``transformers`` read a fetched version with no p2pdist code.

Writing and reading tensors needs torch (``p2pdist[torch]``), imported when called; the
names, the index and the headers do not, so the fetch and publish paths use them without it.

The header reader distrusts every length (as safetensors itself does): the header size, each
dtype and shape, and each offset are checked against the file before anything is allocated.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pdist.errors import FormatError, NotFoundError
from p2pdist.extras import require_torch
from p2pdist.formats import jsonio
from p2pdist.formats.header import (  # re-exported: the header format is part of this module's surface
    SafetensorsHeader,
    TensorSpec,
    read_header,
)

if TYPE_CHECKING:
    import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_SIZE = 5 * 1000**3


def shard_filename(index: int, count: int) -> str:
    """Hugging Face's shard name: ``model-00001-of-00003.safetensors`` (1-based)."""
    return f"model-{index:05d}-of-{count:05d}.safetensors"


def _plan_shards(tensors: Mapping[str, torch.Tensor], max_shard_size: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    current = 0
    for name in tensors:
        size = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and current + size > max_shard_size:
            shards.append([])
            current = 0
        shards[-1].append(name)
        current += size
    return shards


def _prepare(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detach, move to CPU, make contiguous, and un-share storages (safetensors refuses sharing)."""
    th = require_torch("writing a state dict")
    prepared: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, tensor in state_dict.items():
        if not isinstance(name, str) or not isinstance(tensor, th.Tensor):
            raise FormatError(f"state dict entry {name!r} is not a str -> torch.Tensor pair")
        t = tensor.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), int(t.storage_offset())) if t.numel() else None
        if key is not None and key in seen:
            t = t.clone()
        elif key is not None:
            seen.add(key)
        prepared[name] = t
    return prepared


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    folder: str | Path,
    *,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    metadata: Mapping[str, str] | None = None,
) -> list[str]:
    """Write ``state_dict`` into ``folder`` in Hugging Face layout; return the files written.

    Tensors keep their names, dtypes and shapes byte for byte. Above ``max_shard_size`` the
    tensors are split across numbered shards (in insertion order) with an index file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _prepare(state_dict)
    from safetensors.torch import save_file

    meta = {"format": "pt", **(metadata or {})}
    groups = _plan_shards(tensors, max_shard_size)
    if len(groups) == 1:
        save_file({n: tensors[n] for n in groups[0]}, str(folder / SINGLE_FILE), metadata=meta)
        return [SINGLE_FILE]
    written: list[str] = []
    weight_map: dict[str, str] = {}
    total = 0
    for i, names in enumerate(groups, start=1):
        filename = shard_filename(i, len(groups))
        save_file({n: tensors[n] for n in names}, str(folder / filename), metadata=meta)
        written.append(filename)
        for n in names:
            weight_map[n] = filename
            total += tensors[n].numel() * tensors[n].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    written.append(INDEX_FILE)
    return written


def index_shard_names(data: bytes, *, source: str) -> list[str]:
    """The shard files an index file's ``weight_map`` names, sorted (FormatError if invalid)."""
    index = jsonio.loads(data, what=f"{source}: index file")
    try:
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise FormatError(f"{source}: invalid index file ({e})") from None
    values = list(weight_map.values())
    for n in values:
        if not isinstance(n, str) or "/" in n or "\\" in n or n.startswith("."):
            raise FormatError(f"{source}: invalid shard name {n!r}")
    return sorted(set(values))


def shard_files(folder: str | Path) -> list[str]:
    """The safetensors files of a version folder, in shard order (relative names)."""
    folder = Path(folder)
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        return index_shard_names(index_path.read_bytes(), source=str(index_path))
    if (folder / SINGLE_FILE).is_file():
        return [SINGLE_FILE]
    found = sorted(p.name for p in folder.glob("*.safetensors"))
    if not found:
        raise NotFoundError(f"{folder}: no safetensors files found")
    return found


class ShardedReader:
    """Lazy, name-addressed access to the tensors of a version folder (memory-mapped).

    Every shard's header is validated before first use; a tensor is read only when asked for.
    """

    def __init__(self, folder: str | Path, *, device: str = "cpu") -> None:
        self.folder = Path(folder)
        self.device = device
        self._location: dict[str, str] = {}
        self.headers: dict[str, SafetensorsHeader] = {}
        for filename in shard_files(self.folder):
            header = read_header(self.folder / filename)
            self.headers[filename] = header
            for spec in header.tensors:
                if spec.name in self._location:
                    raise FormatError(
                        f"{self.folder}: tensor {spec.name!r} appears in both "
                        f"{self._location[spec.name]} and {filename}"
                    )
                self._location[spec.name] = filename
        self._handles: dict[str, Any] = {}

    def keys(self) -> list[str]:
        return sorted(self._location)

    def __contains__(self, name: object) -> bool:
        return name in self._location

    def __len__(self) -> int:
        return len(self._location)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def spec(self, name: str) -> TensorSpec:
        return self.headers[self._file_of(name)].by_name()[name]

    def _file_of(self, name: str) -> str:
        try:
            return self._location[name]
        except KeyError:
            raise NotFoundError(f"{self.folder}: no tensor named {name!r}") from None

    def get_tensor(self, name: str) -> torch.Tensor:
        filename = self._file_of(name)
        handle = self._handles.get(filename)
        if handle is None:
            require_torch("reading tensors")
            from safetensors import safe_open

            handle = safe_open(str(self.folder / filename), framework="pt", device=self.device)
            self._handles[filename] = handle
        tensor: torch.Tensor = handle.get_tensor(name)
        return tensor

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.get_tensor(name)

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> ShardedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Read every tensor of a version folder into a dict (CPU)."""
    with ShardedReader(folder) as reader:
        return {name: reader.get_tensor(name) for name in reader.keys()}
