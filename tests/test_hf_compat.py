"""A fetched version folder is what Hugging Face writes and reads (needs `transformers`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.torch import load_file

from p2pdist.formats.shards import shard_files
from p2pdist.loading import fit, loader
from p2pdist.store.cache import Store

from .conftest import sign_folder

transformers = pytest.importorskip(
    "transformers",
    reason="transformers is not installed (optional test dependency: pip install transformers)",
)


@pytest.mark.parametrize("max_shard_size", [None, "100KB"])
def test_gpt2_folder_round_trips_through_the_store(
    p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey, max_shard_size: str | None
) -> None:
    config = transformers.GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    src = tmp_path / "gpt2"
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(src, **kwargs)
    Store(p2p_home).add_version(sign_folder(src, signing_key), src)
    snap = Store(p2p_home).snapshot("org/model", "v1")
    files = shard_files(snap)
    assert (len(files) > 1) == (max_shard_size is not None)

    stored: dict[str, torch.Tensor] = {}
    for f in files:
        stored.update(load_file(snap / f))
    tensors = loader.load("org/model@v1", fetch=False)
    assert set(tensors) == set(stored)
    assert all(torch.equal(tensors[n], stored[n]) for n in stored)

    ids = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        expected = model(ids).logits
        reloaded = transformers.GPT2LMHeadModel.from_pretrained(snap).eval()
        assert torch.equal(reloaded(ids).logits, expected)
        fresh = transformers.GPT2LMHeadModel(config).eval()
        report = fit.load_into(fresh, "org/model@v1", fetch=False)
        assert report.ok, str(report)
        assert torch.equal(fresh(ids).logits, expected)
