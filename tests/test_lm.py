"""Tests for p2pdist.trainer.lm: the byte-level GPT, training and perplexity (the corpus:
tests/test_corpus.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from p2pdist.errors import ConfigError, FormatError
from p2pdist.trainer import lm

# A model small enough that most tests cost milliseconds.
MICRO = lm.LMConfig(d_model=32, n_layer=2, n_head=2, seq_len=32, d_ff=48)


@pytest.fixture(scope="module")
def corpus() -> lm.Corpus:
    return lm.load_corpus()


def test_config_round_trips_through_json() -> None:
    for config in (*lm.PRESETS.values(), MICRO):
        data = json.loads(json.dumps(config.to_json_dict()))
        assert data["model_type"] == "p2pdist-lm"
        assert data["d_model"] == config.d_model
        assert lm.LMConfig.from_json_dict(data) == config


def test_config_rejects_bad_json_and_bad_values() -> None:
    good = MICRO.to_json_dict()
    with pytest.raises(FormatError, match="model_type"):
        lm.LMConfig.from_json_dict({**good, "model_type": "gpt2"})
    with pytest.raises(FormatError, match="n_head"):
        lm.LMConfig.from_json_dict({k: v for k, v in good.items() if k != "n_head"})
    with pytest.raises(ConfigError, match="multiple"):
        lm.LMConfig(d_model=30, n_head=4)
    with pytest.raises(ConfigError, match="vocab_size"):
        lm.LMConfig(vocab_size=100)
    with pytest.raises(ConfigError, match="tiny"):
        lm.LMConfig.preset("huge")


def test_presets_have_the_promised_sizes() -> None:
    tiny = lm.LMConfig.preset("tiny")
    assert sum(p.numel() for p in lm.build_model(tiny).parameters()) == tiny.num_params()
    assert sum(p.numel() for p in lm.build_model(MICRO).parameters()) == MICRO.num_params()
    assert tiny.num_params() < 2_000_000
    assert 25_000_000 <= lm.LMConfig.preset("bench").num_params() <= 100_000_000
    assert lm.LMConfig.preset("tiny", n_layer=2).n_layer == 2
    assert lm.LMConfig.preset("tiny", d_model=64).d_ff == 256
    assert lm.LMConfig.preset("tiny", d_model=64, d_ff=100).d_ff == 100


def test_parameter_names_are_stable_and_hf_like() -> None:
    names = list(lm.build_model(MICRO).state_dict())
    per_block = [
        "ln_1.weight",
        "ln_1.bias",
        "attn.c_attn.weight",
        "attn.c_attn.bias",
        "attn.c_proj.weight",
        "attn.c_proj.bias",
        "ln_2.weight",
        "ln_2.bias",
        "mlp.c_fc.weight",
        "mlp.c_fc.bias",
        "mlp.c_proj.weight",
        "mlp.c_proj.bias",
    ]
    expected = [
        "transformer.wte.weight",
        "transformer.wpe.weight",
        *(f"transformer.h.{i}.{n}" for i in range(MICRO.n_layer) for n in per_block),
        "transformer.ln_f.weight",
        "transformer.ln_f.bias",
        "lm_head.weight",
    ]
    assert names == expected


def test_build_model_is_seeded_and_leaves_global_rng_alone() -> None:
    rng = torch.random.get_rng_state()
    a, b = lm.build_model(MICRO, seed=1), lm.build_model(MICRO, seed=1)
    c = lm.build_model(MICRO, seed=2)
    assert torch.equal(torch.random.get_rng_state(), rng)
    for (name, ta), tb, tc in zip(
        a.state_dict().items(), b.state_dict().values(), c.state_dict().values(), strict=True
    ):
        assert torch.equal(ta, tb), name
        if name.endswith("wte.weight"):
            assert not torch.equal(ta, tc)


def test_state_dict_saves_with_safetensors_and_reloads(tmp_path: Path) -> None:
    model = lm.build_model(MICRO, seed=3)
    sd = lm.state_dict_of(model)
    save_file(sd, tmp_path / "model.safetensors")  # refuses tensors that share storage
    again = lm.model_from_state_dict(load_file(tmp_path / "model.safetensors"), MICRO)
    x = lm.encode("def f(x):\n    return x").long()[None, :]
    assert torch.equal(model(x), again(x))


def test_model_from_state_dict_names_what_does_not_fit() -> None:
    sd = lm.state_dict_of(lm.build_model(MICRO))
    del sd["lm_head.weight"]
    with pytest.raises(FormatError, match=r"missing: lm_head\.weight"):
        lm.model_from_state_dict(sd, MICRO)
    sd = lm.state_dict_of(lm.build_model(MICRO))
    with pytest.raises(FormatError, match="shape"):
        lm.model_from_state_dict(sd, lm.LMConfig(d_model=32, n_layer=2, n_head=2, seq_len=64))


def test_model_from_bf16_state_dict_casts_to_float32() -> None:
    sd = {k: v.to(torch.bfloat16) for k, v in lm.build_model(MICRO).state_dict().items()}
    model = lm.model_from_state_dict(sd, MICRO)
    weight = model.state_dict()["lm_head.weight"]
    assert weight.dtype == torch.float32
    assert torch.equal(weight, sd["lm_head.weight"].float())


def test_training_is_deterministic_and_incremental(corpus: lm.Corpus) -> None:
    calls: list[int] = []
    threads = torch.get_num_threads()
    a = lm.Trainer(lm.build_model(MICRO, seed=0), corpus, seed=7, batch_size=4, threads=1)
    a.step(3)
    a.step(2, on_step=lambda step, loss: calls.append(step))
    b = lm.train(lm.build_model(MICRO, seed=0), corpus, 5, seed=7, batch_size=4, threads=1)
    c = lm.train(lm.build_model(MICRO, seed=0), corpus, 5, seed=8, batch_size=4, threads=1)
    assert calls == [4, 5] and a.steps == b.steps == 5
    assert torch.get_num_threads() == threads  # set for the steps only
    assert a.losses == b.losses
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["lm_head.weight"], sc["lm_head.weight"])


def test_frozen_embeddings_stay_bit_identical(corpus: lm.Corpus) -> None:
    model = lm.build_model(MICRO, seed=0)
    before = lm.state_dict_of(model)
    trainer = lm.train(model, corpus, 4, batch_size=4, threads=1, freeze_embeddings=True)
    after = trainer.state_dict()
    for name in before:
        frozen = name.startswith(lm.EMBEDDING_PREFIXES)
        assert torch.equal(before[name], after[name]) == frozen, name
    assert {n for n in before if n.startswith(lm.EMBEDDING_PREFIXES)} == {
        "transformer.wte.weight",
        "transformer.wpe.weight",
    }


def test_tiny_preset_perplexity_falls_with_training(corpus: lm.Corpus) -> None:
    model = lm.build_model(lm.LMConfig.preset("tiny"), seed=0)
    before = lm.perplexity(model, corpus, max_tokens=4096)
    assert 150 < before < 400  # an untrained byte model is close to uniform over 256
    trainer = lm.train(model, corpus, 20, seed=0, threads=1)
    after = lm.perplexity(model, corpus, max_tokens=4096)
    assert after < before / 4
    assert trainer.losses[-1] < trainer.losses[0]


def test_perplexity_is_identical_in_another_process(corpus: lm.Corpus, tmp_path: Path) -> None:
    model = lm.build_model(MICRO, seed=5)
    lm.train(model, corpus, 3, batch_size=4, threads=1)
    save_file(lm.state_dict_of(model), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(MICRO.to_json_dict()))
    expected = lm.perplexity(model, corpus, max_tokens=2048)

    script = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from safetensors.torch import load_file
        from p2pdist.trainer import lm
        folder = Path(sys.argv[1])
        config = lm.LMConfig.from_json_dict(json.loads((folder / "config.json").read_text()))
        sd = load_file(folder / "model.safetensors")
        print(repr(lm.perplexity(sd, lm.load_corpus(), config=config, max_tokens=2048)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert float(out.stdout.strip()) == expected


def test_perplexity_inputs_are_checked(corpus: lm.Corpus) -> None:
    model = lm.build_model(MICRO)
    with pytest.raises(ConfigError, match="config"):
        lm.perplexity(model.state_dict(), corpus)
    with pytest.raises(ConfigError, match="held-out"):
        lm.perplexity(model, b"too short")
    threads = torch.get_num_threads()
    lm.perplexity(model, corpus.heldout, max_tokens=64, threads=1)
    assert torch.get_num_threads() == threads


def test_complete_continues_a_learned_pattern() -> None:
    model = lm.build_model(MICRO, seed=0)
    lm.train(model, lm.encode("abcd" * 500), 40, lr=1e-2, batch_size=4, threads=1, warmup_steps=0)
    assert lm.complete(model, "ab", 6) == "cdabcd"
