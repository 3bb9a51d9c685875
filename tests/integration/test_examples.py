"""The examples in examples/, run for real against a tracker subprocess, as a user runs them.

- train_and_publish.py publishes three versions (v1 full, v2 and v3 as deltas) while
  inference_follower.py, a separate process on another "host", hot-swaps each one into its
  running model in order and recomputes the trainer's held-out perplexity exactly;
- publish_hf_folder.sh publishes a tiny random GPT-2 written by transformers, fetches it on
  a second host, verifies it, and the fetched folder gives transformers identical logits.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.integration.harness import Node, Tracker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODEL = "org/lm"  # the `publish_token` fixture publishes in namespace "org"


def _events(stdout: str) -> list[dict[str, Any]]:
    """The JSON objects an example printed with --json, one per line."""
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _example_env(node: Node) -> dict[str, str]:
    return {**node.env, "OMP_NUM_THREADS": "1"}


def _start_follower(node: Node, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / "inference_follower.py"), "--name", MODEL, "--json",
         *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_example_env(node),
    )  # fmt: skip


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    if proc.poll() is None:
        proc.kill()
    return proc.communicate(timeout=30)


def test_follower_hot_swaps_every_version_the_trainer_publishes(
    nodes: Callable[..., Node],
) -> None:
    trainer_host = nodes("trainer", publisher=True)
    inference_host = nodes("inference")
    # The follower starts first and waits for the model to appear, so it is owed every
    # version from v1; the trainer pauses after each publish until one other host seeds it
    # (--wait-for-hosts 1), so each later version arrives as a delta from the one before.
    follower = _start_follower(inference_host, "--versions", "3", "--timeout", "240")
    try:
        trained = subprocess.run(
            [sys.executable, str(EXAMPLES / "train_and_publish.py"), "--name", MODEL,
             "--steps", "6", "--every", "2", "--keep", "2", "--wait-for-hosts", "1", "--json"],
            capture_output=True, text=True, env=_example_env(trainer_host), timeout=240,
        )  # fmt: skip
        assert trained.returncode == 0, trained.stdout + trained.stderr
        follower_out, follower_err = follower.communicate(timeout=240)
    finally:
        if follower.returncode is None:
            _stop(follower)
    assert follower.returncode == 0, follower_out + follower_err

    published = [e for e in _events(trained.stdout) if e["event"] == "published"]
    received = [e for e in _events(follower_out) if e["event"] == "version"]
    assert [e["version"] for e in published] == ["v1", "v2", "v3"], trained.stdout
    assert [e["step"] for e in published] == [2, 4, 6]
    assert [e["parent"] for e in published] == [None, "v1", "v2"]
    assert published[0]["delta_bytes"] is None
    assert all(0 < e["delta_bytes"] < e["full_bytes"] for e in published[1:])

    assert [e["version"] for e in received] == ["v1", "v2", "v3"], follower_out
    assert [(e["plan"], e["base"]) for e in received] == [
        ("full", None), ("delta", "v1"), ("delta", "v2"),
    ]  # fmt: skip
    assert [e["swap"] for e in received] == ["built", "swapped in place", "swapped in place"]
    assert all(e["bytes_from_peers"] > 0 for e in received)
    for pub, got in zip(published, received, strict=True):
        # Bit-identical: same weights, same held-out slice, one thread, same CPU.
        assert got["perplexity"] == pub["perplexity"] == got["trainer_perplexity"], (pub, got)
    perplexities = [e["perplexity"] for e in published]
    assert len(set(perplexities)) == 3  # training moved the weights between versions


def test_follower_fails_visibly_when_no_version_arrives(nodes: Callable[..., Node]) -> None:
    follower = _start_follower(nodes("inference"), "--versions", "1", "--timeout", "1")
    try:
        out, err = follower.communicate(timeout=120)
    finally:
        if follower.returncode is None:
            _stop(follower)
    assert follower.returncode == 1, out + err
    assert _events(out)[-1] == {
        "event": "error", "message": "timeout", "updates": 0,
    }  # fmt: skip


def _hf_env(tmp_path: Path, tracker: Tracker, token: str | None) -> dict[str, str]:
    """The publishing host's environment, with the venv's `p2pdist` first on PATH."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "P2PDIST_HOME": str(tmp_path / "publisher" / "home"),
        "P2PDIST_CONFIG_DIR": str(tmp_path / "publisher" / "config"),
        "P2PDIST_TRACKER": tracker.url,
        "P2PDIST_LISTEN": "127.0.0.1",
        "TMPDIR": str(tmp_path),
    }
    env.pop("P2PDIST_TOKEN", None)
    if token:
        env["P2PDIST_TOKEN"] = token
    return env


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text`` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        line = " ".join(a.decode(errors="replace") for a in args)
        if text in line:
            found.append(line)
    return found


def test_publish_hf_folder_script_round_trips_a_transformers_model(
    tmp_path: Path, tracker: Tracker, publish_token: str
) -> None:
    transformers = pytest.importorskip(
        "transformers", reason="transformers is not installed: cannot write or read a HF folder"
    )
    config = transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=32,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    folder = tmp_path / "tiny-gpt2"
    model.save_pretrained(folder, safe_serialization=True)
    out_dir = tmp_path / "fetched"

    result = subprocess.run(
        ["bash", str(EXAMPLES / "publish_hf_folder.sh"), str(folder), "org/tiny-gpt2",
         str(out_dir)],
        capture_output=True, text=True, env=_hf_env(tmp_path, tracker, publish_token),
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    fetch_json = re.search(r"^\{$.*?^\}$", result.stdout, re.MULTILINE | re.DOTALL)
    assert fetch_json is not None, result.stdout
    fetched = json.loads(fetch_json.group(0))
    assert fetched["ref"] == "org/tiny-gpt2@v1"
    assert fetched["plan"] == "full" and fetched["bytes_from_peers"] == fetched["full_bytes"]
    assert "OK org/tiny-gpt2@v1: signature valid" in result.stdout
    assert _processes_mentioning(str(folder)) == []  # the background publisher was stopped
    assert not list(tmp_path.glob("p2pdist-hf.*"))  # and the second host's folder removed

    loaded = transformers.GPT2LMHeadModel.from_pretrained(out_dir).eval()
    theirs = loaded.state_dict()
    for name, tensor in model.state_dict().items():  # byte-exact weights
        assert torch.equal(tensor, theirs[name]), name
    ids = torch.arange(32).remainder(100)[None, :]
    with torch.no_grad():  # and the same function (kernels may differ in the last bits)
        torch.testing.assert_close(model(ids).logits, loaded(ids).logits, rtol=0, atol=1e-5)


def test_publish_hf_folder_script_refuses_without_a_token(tmp_path: Path, tracker: Tracker) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    result = subprocess.run(
        ["bash", str(EXAMPLES / "publish_hf_folder.sh"), str(folder), "org/m"],
        capture_output=True, text=True, env=_hf_env(tmp_path, tracker, None), timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert "P2PDIST_TOKEN" in result.stderr
