"""Symbolic links in a published folder (issue 15, finding 10).

A link whose target lies inside the folder is published as a copy of its target at the link's
path; a link that leaves the folder is refused with one line naming it and ``--follow-symlinks``
(which takes what it points to, deliberately); dangling links, loops and special files are
refused too. Nothing in the folder is skipped silently.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.errors import FormatError, UnsafePathError
from p2pdist.publishing import build_version, folder_files
from p2pdist.store.cache import Store

from .conftest import make_version_folder, small_state_dict


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_version_folder(tmp_path / "model", small_state_dict())


def _build(folder: Path, home: Path, key: Ed25519PrivateKey, **kwargs: object):  # type: ignore[no-untyped-def]
    return build_version(
        folder, name="org/model", version="v1", key=key, store=Store(home), **kwargs
    )  # type: ignore[arg-type]


def test_a_link_to_a_file_outside_is_refused_and_nothing_is_stored(
    folder: Path, tmp_path: Path, p2p_home: Path, signing_key: Ed25519PrivateKey
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not the model's")
    (folder / "tokenizer.json").symlink_to(secret)
    with pytest.raises(UnsafePathError, match=r"tokenizer.json is a symbolic link to .*outside"):
        _build(folder, p2p_home, signing_key)
    assert not Store(p2p_home).has("org/model", "v1")


def test_follow_symlinks_publishes_what_the_links_point_to(
    folder: Path, tmp_path: Path, p2p_home: Path, signing_key: Ed25519PrivateKey
) -> None:
    secret = tmp_path / "outside.txt"
    secret.write_text("shared tokenizer")
    shared = tmp_path / "shared"
    (shared / "sub").mkdir(parents=True)
    (shared / "sub" / "vocab.txt").write_text("a b c")
    (folder / "tokenizer.json").symlink_to(secret)
    (folder / "extra").symlink_to(shared)
    published = _build(folder, p2p_home, signing_key, follow_symlinks=True)
    paths = {e.path for e in published.manifest.files}
    assert {"tokenizer.json", "extra/sub/vocab.txt"} <= paths
    assert (published.snapshot / "tokenizer.json").read_text() == "shared tokenizer"
    assert (published.snapshot / "extra/sub/vocab.txt").read_text() == "a b c"


def test_a_linked_directory_outside_is_refused_not_left_out(
    folder: Path, tmp_path: Path, p2p_home: Path, signing_key: Ed25519PrivateKey
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "vocab.txt").write_text("a b c")
    (folder / "tokenizer").symlink_to(shared, target_is_directory=True)
    with pytest.raises(UnsafePathError, match=r"tokenizer is a symbolic link to .*outside"):
        _build(folder, p2p_home, signing_key)


def test_links_inside_the_folder_are_published_as_copies(
    folder: Path, p2p_home: Path, signing_key: Ed25519PrivateKey
) -> None:
    (folder / "configs").mkdir()
    (folder / "configs" / "generation.json").write_text('{"top_k": 5}')
    (folder / "generation_config.json").symlink_to("configs/generation.json")
    (folder / "alias").symlink_to("configs", target_is_directory=True)
    assert folder_files(folder) == sorted(
        ["alias/generation.json", "config.json", "configs/generation.json",
         "generation_config.json", "model.safetensors"]
    )  # fmt: skip
    published = _build(folder, p2p_home, signing_key)
    assert (published.snapshot / "generation_config.json").read_text() == '{"top_k": 5}'
    assert (published.snapshot / "alias/generation.json").read_text() == '{"top_k": 5}'


@pytest.mark.parametrize("kind", ["dangling", "loop", "fifo"])
def test_what_cannot_be_published_is_refused_never_skipped(folder: Path, kind: str) -> None:
    if kind == "dangling":
        (folder / "gone.json").symlink_to(folder / "never-was.json")
        match = "gone.json is a symbolic link to nothing"
    elif kind == "loop":
        (folder / "sub").mkdir()
        (folder / "sub" / "up").symlink_to("..", target_is_directory=True)
        match = "sub/up leads back into"
    else:
        os.mkfifo(folder / "pipe")
        match = "pipe is neither a file nor a folder"
    with pytest.raises(FormatError, match=match):
        folder_files(folder)


def test_hidden_entries_are_left_out_as_documented(folder: Path, tmp_path: Path) -> None:
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref")
    (folder / ".cache").symlink_to(tmp_path)  # hidden: not looked into, not refused
    assert folder_files(folder) == ["config.json", "model.safetensors"]


def test_the_cli_refuses_in_one_line_and_names_the_flag(
    folder: Path, tmp_path: Path, p2p_home: Path
) -> None:
    (tmp_path / "outside.txt").write_text("x")
    (folder / "notes.txt").symlink_to(tmp_path / "outside.txt")
    result = subprocess.run(
        [sys.executable, "-m", "p2pdist.cli", "publish", str(folder), "--name", "org/model",
         "--version", "v1", "--no-seed", "--tracker", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "notes.txt is a symbolic link" in lines[0]
    assert "--follow-symlinks" in lines[0]
