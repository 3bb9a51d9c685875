"""p2pdist among the Hugging Face tools, for real: a tiny GPT-2 saved by transformers,
published and fetched through a real tracker and swarm, then found by repo id by
``from_pretrained`` and ``snapshot_download`` offline; fetches of a subset of files; and a
repo id already in the HF cache published as is; a follower keeping refs/main at the newest
version. No hub is ever contacted (HF_HUB_OFFLINE)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.integration.harness import Node

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (the test extra pulls it in)"
)
pytest.importorskip("huggingface_hub", reason="huggingface_hub is not installed")

pytestmark = pytest.mark.integration

NAME = "org/Tiny-GPT2"  # as Hugging Face writes names: mixed case


def tiny_gpt2(folder: Path) -> Path:
    import torch

    config = transformers.GPT2Config(vocab_size=96, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    (folder / "notes.bin").write_bytes(os.urandom(40_000))  # a file --exclude leaves out
    return folder


def offline(script: str, hf_cache: Path) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh Python the way a user's program runs: hub offline, the
    cache from the environment."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf_cache),
           "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
    env.pop("HF_HOME", None)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )


LOAD_BY_REPO_ID = f"""
import torch, transformers, huggingface_hub
folder = huggingface_hub.snapshot_download({NAME!r}, local_files_only=True)
model = transformers.GPT2LMHeadModel.from_pretrained({NAME!r}).eval()
same = transformers.GPT2LMHeadModel.from_pretrained({NAME!r}, revision="v1").eval()
print(folder)
ids = torch.tensor([[1, 5, 9, 13, 2]])
with torch.no_grad():
    print(float(model(ids).logits.sum()), float(same(ids).logits.sum()))
"""


def test_a_fetched_version_is_found_by_repo_id_offline_and_costs_no_second_copy(
    nodes: Callable[..., Node], tmp_path: Path
) -> None:
    src = tiny_gpt2(tmp_path / "gpt2")
    publisher = nodes("publisher", publisher=True)
    publisher.start_seeding("publish", str(src), "--name", NAME, "--version", "v1")
    hf_cache = tmp_path / "hf-hub"
    consumer = nodes("consumer", HF_HUB_CACHE=str(hf_cache))

    find = f"import huggingface_hub; huggingface_hub.snapshot_download({NAME!r}, local_files_only=True)"
    before = offline(find, hf_cache)
    assert "LocalEntryNotFoundError" in before.stderr  # nothing there yet: the check can fail

    result = consumer.fetch_json(f"{NAME}@v1", "--hf-cache")
    snapshot = Path(result["hf_cache"])
    assert snapshot.parent.parent == hf_cache / "models--org--Tiny-GPT2"
    assert (hf_cache / "models--org--Tiny-GPT2" / "refs" / "main").read_text() == snapshot.name

    after = offline(LOAD_BY_REPO_ID, hf_cache)
    assert after.returncode == 0, after.stderr[-3000:]
    folder, sums = after.stdout.strip().splitlines()[-2:]
    assert Path(folder) == snapshot
    import torch

    reference = transformers.GPT2LMHeadModel.from_pretrained(src).eval()
    with torch.no_grad():
        logits = float(reference(torch.tensor([[1, 5, 9, 13, 2]])).logits.sum())
    assert sums == f"{logits} {logits}"

    # hard links: the HF blob is the store's blob (one inode), not a second copy
    weights = snapshot / "model.safetensors"
    stored = Path(result["path"]) / "model.safetensors"
    assert weights.resolve().stat().st_ino == stored.resolve().stat().st_ino
    assert weights.resolve().stat().st_nlink >= 2

    # and back: that repo id, as it sits in the HF cache, is published as a new version
    # (the publisher's own key, as the same team would; another key is refused for the name)
    republisher = nodes(
        "republisher",
        publisher=True,
        HF_HUB_CACHE=str(hf_cache),
        P2PDIST_CONFIG_DIR=str(publisher.root / "config"),
    )
    again = republisher.run("publish", NAME, "--version", "v2", "--no-seed", "--json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["ref"] == f"{NAME}@v2"
    assert summary["full_bytes"] == result["full_bytes"]


def test_include_and_exclude_fetch_only_the_chosen_files(
    nodes: Callable[..., Node], tmp_path: Path
) -> None:
    src = tiny_gpt2(tmp_path / "gpt2")
    publisher = nodes("publisher", publisher=True)
    publisher.start_seeding("publish", str(src), "--name", NAME, "--version", "v1")
    consumer = nodes("consumer")

    plain = nodes("plain").run("fetch", f"{NAME}@v1", "--include", "*.safetensors")
    assert plain.returncode == 0, plain.stderr  # stderr is a pipe: lines, not a bar
    lines = [line for line in plain.stderr.splitlines() if line.startswith(f"{NAME}@v1: ")]
    assert lines and all("peers, ETA" in line for line in lines)
    assert "(100%)" in lines[-1] and "KiB" in lines[-1]

    configs = consumer.fetch_json(f"{NAME}@v1", "--include", "*.json")
    assert sorted(configs["files"]) == ["config.json", "generation_config.json"]
    json_bytes = sum(p.stat().st_size for p in src.glob("*.json"))
    assert configs["planned_bytes"] == json_bytes
    assert configs["bytes_from_peers"] < configs["full_bytes"] / 2  # not the weights
    snap = Path(configs["path"])
    assert (snap / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert not (snap / "model.safetensors").exists()

    listed = json.loads(consumer.run("ls", "--json").stdout)["versions"]
    assert listed[0]["partial"] == {"files": 2, "of": 4}

    script = f"import p2pdist\np2pdist.load({NAME + '@v1'!r}, fetch=False)"
    load = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=consumer.env
    )
    assert load.returncode == 1
    assert "lacks model.safetensors" in load.stderr and "p2pdist fetch" in load.stderr

    ran = consumer.run("fetch", f"{NAME}@v1", "--exclude", "*.bin", "--json")
    assert ran.returncode == 0, ran.stderr
    rest = json.loads(ran.stdout)
    events = [json.loads(line) for line in ran.stderr.splitlines() if line.startswith("{")]
    assert events and all(e["event"] == "progress" for e in events)  # NDJSON on stderr
    assert events[-1]["done"] == events[-1]["total"] > 0
    assert sorted(rest["files"]) == ["config.json", "generation_config.json", "model.safetensors"]
    assert (Path(rest["path"]) / "model.safetensors").read_bytes() == (
        src / "model.safetensors"
    ).read_bytes()
    assert rest["bytes_from_peers"] < rest["full_bytes"] - json_bytes  # json files: held
    assert consumer.run("verify", f"{NAME}@v1").returncode == 0

    whole = consumer.fetch_json(f"{NAME}@v1")  # no pattern: the partial version is completed
    assert whole["files"] is None and whole["planned_bytes"] == 40_000  # notes.bin alone
    assert whole["bytes_from_peers"] < whole["full_bytes"] / 2
    listed = json.loads(consumer.run("ls", "--json").stdout)["versions"]
    assert listed[0]["partial"] is None
    assert consumer.run("verify", f"{NAME}@v1").returncode == 0

    none = consumer.run("fetch", f"{NAME}@v1", "--include", "*.gguf")
    assert none.returncode == 1 and "no file matches" in none.stderr
    assert "Traceback" not in none.stderr


def test_a_follower_with_the_hf_cache_on_keeps_refs_main_at_the_newest_version(
    nodes: Callable[..., Node], tmp_path: Path
) -> None:
    """``fetch --follow`` on a host whose config turns the HF cache on (P2PDIST_HF_CACHE=1):
    every version it follows is placed, and ``refs/main`` moves to the newest, so a program
    that loads by repo id picks up each new version."""

    import torch

    publisher = nodes("publisher", publisher=True)
    v1_src = tiny_gpt2(tmp_path / "v1")
    publisher.start_seeding("publish", str(v1_src), "--name", NAME, "--version", "v1")
    hf_cache = tmp_path / "hf-hub"
    refs = hf_cache / "models--org--Tiny-GPT2" / "refs"
    follower = nodes("follower", HF_HUB_CACHE=str(hf_cache), P2PDIST_HF_CACHE="1")
    following = follower.start("fetch", f"{NAME}@latest", "--follow")
    try:
        wait_until(lambda: (refs / "v1").is_file(), "v1 placed in the HF cache", timeout=120)
        assert (refs / "main").read_text() == (refs / "v1").read_text()

        v2_src = tmp_path / "v2"
        model = transformers.GPT2LMHeadModel.from_pretrained(v1_src)
        with torch.no_grad():
            model.lm_head.weight.mul_(1.5)  # a new version of the same model
        model.save_pretrained(v2_src)
        publisher.start_seeding("publish", str(v2_src), "--name", NAME, "--version", "v2")
        wait_until(lambda: (refs / "v2").is_file(), "v2 placed in the HF cache", timeout=120)
        wait_until(
            lambda: (refs / "main").read_text() == (refs / "v2").read_text(),
            "refs/main at v2",
            timeout=30,
        )
        snapshot = hf_cache / "models--org--Tiny-GPT2" / "snapshots" / (refs / "v2").read_text()
        placed = (snapshot / "model.safetensors").read_bytes()
        assert placed == (v2_src / "model.safetensors").read_bytes()
        assert placed != (v1_src / "model.safetensors").read_bytes()
    finally:
        following.send_signal(signal.SIGINT)
        following.communicate(timeout=60)
