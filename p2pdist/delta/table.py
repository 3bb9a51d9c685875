"""The delta's table of contents as values: segments, where their bases lie, and the index.

``codec`` computes on buffers; this module checks and builds the JSON that says which
segments make up each rebuilt file (a delta file's ``__metadata__``) and which files make up
the version (``delta.json``). Every field is checked before it is trusted: a delta comes from
the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from p2pdist.delta.codec import (
    FORMAT_NAME,
    FORMAT_VERSION,
    INDEX_FILE,
    MAX_SEGMENT,
    OPS,
    PLANE_CODECS,
    WORD_TYPES,
    check_context,
    version_problem,
)
from p2pdist.errors import FormatError
from p2pdist.formats import jsonio
from p2pdist.formats.manifest import FileEntry, canonical_json, safe_relpath


@dataclass(frozen=True)
class BaseRef:
    """Where a segment's base lies: ``offset`` bytes into tensor ``tensor`` of parent ``file``."""

    file: str
    tensor: str
    offset: int


_KEYS = {
    "copy": {"size", "op", "base", "tensor"},
    "raw": {"size", "op", "word", "planes", "tensor"},
    "ans": {"size", "op", "word", "base", "context", "payload", "tensor"},
}


@dataclass(frozen=True)
class Segment:
    """``size`` bytes of a target file: a copy of its base, raw planes, or an ans payload."""

    size: int
    op: str
    word: int = 1
    base: BaseRef | None = None
    payloads: tuple[tuple[str, str | None], ...] = ()
    """(codec, payload tensor name or None): one per byte plane (raw), one ``ans`` (ans)."""
    context: tuple[int, int, int] | None = None
    tensor: str | None = None
    """The target tensor this segment belongs to (informative)."""

    @property
    def is_copy(self) -> bool:
        return self.op == "copy"

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"size": self.size, "op": self.op, "tensor": self.tensor}
        if self.op != "copy":
            obj["word"] = self.word
        if self.base is not None:
            b = self.base
            obj["base"] = {"file": b.file, "tensor": b.tensor, "offset": b.offset}
        if self.op == "raw":
            obj["planes"] = [
                {"codec": c} if p is None else {"codec": c, "payload": p} for c, p in self.payloads
            ]
        elif self.op == "ans":
            obj["context"] = None if self.context is None else list(self.context)
            obj["payload"] = self.payloads[0][1]
        return obj

    @classmethod
    def from_json(cls, obj: Any, *, where: str) -> Segment:
        op = obj.get("op") if isinstance(obj, dict) else None
        if op not in _KEYS:
            raise FormatError(f"{where}: unknown segment op {op!r} (known: {', '.join(OPS)})")
        if set(obj) != _KEYS[op]:
            raise FormatError(f"{where}: an {op} segment has exactly {sorted(_KEYS[op])}")
        size, word = obj["size"], obj.get("word", 1)
        if not _is_count(size) or size == 0:
            raise FormatError(f"{where}: invalid segment size {size!r}")
        if isinstance(word, bool) or not isinstance(word, int) or word not in WORD_TYPES:
            raise FormatError(f"{where}: word size {word!r} is not 1, 2, 4 or 8")
        if size % word:
            raise FormatError(f"{where}: size {size} is not a multiple of word {word}")
        if op != "copy" and size > MAX_SEGMENT:
            raise FormatError(f"{where}: segment of {size} bytes (limit {MAX_SEGMENT})")
        tensor = obj["tensor"]
        if tensor is not None and not isinstance(tensor, str):
            raise FormatError(f"{where}: invalid tensor name {tensor!r}")
        ref = None if op == "raw" else _base_ref(obj["base"], where)
        if op == "copy":
            return cls(size, op, base=ref, tensor=tensor)
        if op == "ans":
            context = obj["context"]
            if context is not None:
                context = check_context(context, word)
            payload = obj["payload"]
            if not isinstance(payload, str):
                raise FormatError(f"{where}: an ans segment needs a payload name")
            return cls(size, op, word, ref, (("ans", payload),), context, tensor)
        planes = obj["planes"]
        if not isinstance(planes, list) or len(planes) != word:
            raise FormatError(f"{where}: need {word} planes")
        parsed: list[tuple[str, str | None]] = []
        for p in planes:
            codec = p.get("codec") if isinstance(p, dict) else None
            if codec not in PLANE_CODECS:
                raise FormatError(f"{where}: invalid plane {p!r}")
            if codec == "zero":
                if set(p) != {"codec"}:
                    raise FormatError(f"{where}: a zero plane has no payload")
                parsed.append((codec, None))
            else:
                if set(p) != {"codec", "payload"} or not isinstance(p["payload"], str):
                    raise FormatError(f"{where}: a {codec} plane needs a payload name")
                parsed.append((codec, p["payload"]))
        return cls(size, op, word, None, tuple(parsed), None, tensor)


def _base_ref(base: Any, where: str) -> BaseRef:
    if not (
        isinstance(base, dict)
        and set(base) == {"file", "tensor", "offset"}
        and isinstance(base["tensor"], str)
        and _is_count(base["offset"])
    ):
        raise FormatError(f"{where}: invalid base {base!r}")
    return BaseRef(safe_relpath(base["file"]), base["tensor"], base["offset"])


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --------------------------------------------------------------------------- the index


@dataclass(frozen=True)
class DeltaTarget:
    """A file of the new version and how the delta rebuilds it: ``copy`` xor ``delta``."""

    path: str
    size: int
    blake3: str
    copy: str | None = None
    delta: str | None = None

    @property
    def entry(self) -> FileEntry:
        return FileEntry(self.path, self.size, self.blake3)

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.entry.to_json()
        if self.copy is not None:
            obj["copy"] = self.copy
        else:
            obj["delta"] = self.delta
        return obj


@dataclass(frozen=True)
class DeltaIndex:
    """The content of ``delta.json``: which parent it applies to, and how to rebuild each file."""

    parent_files: tuple[FileEntry, ...]
    files: tuple[DeltaTarget, ...]

    @property
    def delta_files(self) -> list[str]:
        """Every file of the delta folder, ``delta.json`` first."""
        return [INDEX_FILE, *sorted(t.delta for t in self.files if t.delta is not None)]

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "parent_files": [e.to_json() for e in self.parent_files],
                "files": [t.to_json() for t in self.files],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = INDEX_FILE) -> DeltaIndex:
        obj = jsonio.loads(data, what=source)
        if not isinstance(obj, dict) or obj.get("format") != FORMAT_NAME:
            raise FormatError(f"{source}: not a p2pdist delta index")
        version = obj.get("version")
        if version != FORMAT_VERSION:
            raise FormatError(f"{source}: {version_problem(version)}")
        if set(obj) != {"format", "version", "parent_files", "files"}:
            raise FormatError(f"{source}: unexpected fields {sorted(obj)}")
        parents = obj["parent_files"]
        if not isinstance(parents, list):
            raise FormatError(f"{source}: parent_files must be a list")
        parent_files = tuple(FileEntry.from_json(p, where=source) for p in parents)
        files = obj["files"]
        if not isinstance(files, list):
            raise FormatError(f"{source}: files must be a list")
        targets = []
        parent_paths = {p.path for p in parent_files}
        for f in files:
            if not isinstance(f, dict):
                raise FormatError(f"{source}: file entry is not an object")
            how = set(f) - {"path", "size", "blake3"}
            if how not in ({"copy"}, {"delta"}):
                raise FormatError(f"{source}: file entry needs exactly one of copy and delta")
            entry = FileEntry.from_json(
                {k: f.get(k) for k in ("path", "size", "blake3")}, where=source
            )
            (how_key,) = how
            if not isinstance(f[how_key], str):
                raise FormatError(
                    f"{source}: {entry.path}: {how_key} must be a relative path, not {f[how_key]!r}"
                )
            copy, delta = f.get("copy"), f.get("delta")
            if copy is not None and safe_relpath(copy) not in parent_paths:
                raise FormatError(
                    f"{source}: {entry.path} copies {copy!r}, not a listed parent file"
                )
            if delta is not None and (safe_relpath(delta) == INDEX_FILE):
                raise FormatError(f"{source}: {entry.path} names the index as its delta file")
            targets.append(DeltaTarget(entry.path, entry.size, entry.blake3, copy, delta))
        paths = [t.path for t in targets]
        deltas = [t.delta for t in targets if t.delta is not None]
        if len(set(paths)) != len(paths) or len(set(deltas)) != len(deltas):
            raise FormatError(f"{source}: duplicate file or delta file")
        if len({p.path for p in parent_files}) != len(parent_files):
            raise FormatError(f"{source}: duplicate parent file")
        return cls(parent_files, tuple(targets))


__all__ = [
    "BaseRef",
    "DeltaIndex",
    "DeltaTarget",
    "Segment",
]
