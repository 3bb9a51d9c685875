"""Text as byte tokens, and the corpus the small LM trains on, split into train and held-out.

The shipped corpus is Python standard-library docstrings (trainer/data/corpus.txt.xz, PSF
licence; see ORIGIN.md there), dealt into blocks so that both splits come from the whole
text.
"""

from __future__ import annotations

import gzip
import lzma
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from p2pdist.errors import ConfigError, FormatError

CORPUS_FILE = "corpus.txt.xz"
HELDOUT_EVERY = 20
"""One block in this many goes to the held-out split (5 %)."""
SPLIT_BLOCK = 4096
"""Size in bytes of the blocks the corpus is dealt into train / held-out."""


def encode(text: str) -> torch.Tensor:
    """Byte tokens of a text: its UTF-8 bytes as a uint8 tensor."""
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)


def decode(tokens: torch.Tensor | Iterable[int]) -> str:
    """The text of byte tokens; bytes that are not valid UTF-8 become U+FFFD."""
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.tolist()
    return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")


@dataclass(frozen=True, eq=False)
class Corpus:
    """Token streams (uint8, one byte per token) for training and for held-out evaluation."""

    train: torch.Tensor
    heldout: torch.Tensor

    @classmethod
    def from_bytes(
        cls, data: bytes, *, heldout_every: int = HELDOUT_EVERY, block: int = SPLIT_BLOCK
    ) -> Corpus:
        """Deal ``data`` into blocks; every ``heldout_every``-th block (from the first) is held out.

        Interleaving keeps both splits drawn from the whole text rather than from its first
        and last modules.
        """
        if heldout_every < 2 or block < 1:
            raise ConfigError("Corpus.from_bytes: need heldout_every >= 2 and block >= 1")
        train, heldout = bytearray(), bytearray()
        for i, start in enumerate(range(0, len(data), block)):
            (heldout if i % heldout_every == 0 else train).extend(data[start : start + block])
        return cls(
            train=torch.frombuffer(train, dtype=torch.uint8) if train else _empty(),
            heldout=torch.frombuffer(heldout, dtype=torch.uint8) if heldout else _empty(),
        )


def _empty() -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8)


def default_corpus_path() -> Path:
    """The corpus shipped in the package (trainer/data/corpus.txt.xz; see ORIGIN.md there)."""
    return Path(str(resources.files("p2pdist.trainer").joinpath("data").joinpath(CORPUS_FILE)))


def load_corpus(path: str | Path | None = None) -> Corpus:
    """Read a corpus file (plain, ``.gz`` or ``.xz``) and split it deterministically.

    With no path, the shipped corpus. Raises FormatError if the compressed file is corrupt.
    """
    path = default_corpus_path() if path is None else Path(path)
    raw = path.read_bytes()
    try:
        if path.suffix == ".xz":
            raw = lzma.decompress(raw)
        elif path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (lzma.LZMAError, OSError, EOFError) as exc:
        raise FormatError(f"{path}: not a valid {path.suffix} file ({exc})") from exc
    return Corpus.from_bytes(raw)


__all__ = ["Corpus", "decode", "default_corpus_path", "encode", "load_corpus"]
