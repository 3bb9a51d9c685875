"""Tests for p2pdist.trainer.corpus: byte tokens and the shipped corpus's train / held-out split."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest
import torch

from p2pdist.errors import FormatError
from p2pdist.trainer.corpus import Corpus, decode, encode, load_corpus


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return load_corpus()


def test_shipped_corpus_is_text_split_about_one_in_twenty(corpus: Corpus) -> None:
    total = corpus.train.numel() + corpus.heldout.numel()
    assert 1_000_000 < total < 3_000_000
    assert 0.04 < corpus.heldout.numel() / total < 0.06
    assert corpus.train.dtype == torch.uint8
    text = decode(corpus.heldout[:2000])
    assert "\ufffd" not in text[10:-10]
    assert sum(ch.isalpha() or ch.isspace() for ch in text) > 0.8 * len(text)


def test_split_deals_blocks_deterministically() -> None:
    data = bytes(i % 251 for i in range(10 * 7 + 3))
    c = Corpus.from_bytes(data, heldout_every=3, block=7)
    blocks = [data[i : i + 7] for i in range(0, len(data), 7)]
    assert bytes(c.heldout.tolist()) == b"".join(blocks[0::3])
    assert bytes(c.train.tolist()) == b"".join(b for i, b in enumerate(blocks) if i % 3)


def test_corrupt_corpus_file_is_a_format_error(tmp_path: Path) -> None:
    bad = tmp_path / "c.txt.xz"
    bad.write_bytes(lzma.compress(b"hello world" * 100)[:-20])
    with pytest.raises(FormatError, match=r"c\.txt\.xz"):
        load_corpus(bad)


def test_encode_decode_round_trip() -> None:
    text = "Return the value.\n\u00e9\u4e2d"
    tokens = encode(text)
    assert tokens.dtype == torch.uint8 and tokens.numel() == len(text.encode())
    assert decode(tokens) == text
