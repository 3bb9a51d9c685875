"""``p2pdist origin``: the store's public versions as BEP 19 web seeds, nothing else."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.errors import NotFoundError
from p2pdist.formats.manifest import Manifest, list_files
from p2pdist.formats.torrent import make_torrent
from p2pdist.store.cache import Store
from p2pdist.swarm.origin import _OneLine, create_origin_app

from .conftest import make_version_folder, sign_folder, small_state_dict

ROOT = "/org--model@v1"


def _add(
    store: Store, tmp_path: Path, key: Ed25519PrivateKey, *, private: bool = False
) -> Manifest:
    folder = make_version_folder(tmp_path / "src", small_state_dict())
    torrent = make_torrent(folder, list_files(folder), name="org--model@v1", private=private)
    manifest = sign_folder(folder, key)
    store.add_version(manifest, folder, torrent=torrent.data)
    return manifest


@pytest.fixture
def store(p2p_home: Path) -> Store:
    return Store(p2p_home)


async def test_a_stored_file_is_served_whole_and_by_range(
    aiohttp_client: Any, store: Store, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    _add(store, tmp_path, signing_key)
    expected = (tmp_path / "src" / "model.safetensors").read_bytes()
    client = await aiohttp_client(create_origin_app(store))
    whole = await client.get(f"{ROOT}/model.safetensors")
    assert whole.status == 200 and await whole.read() == expected
    part = await client.get(f"{ROOT}/model.safetensors", headers={"Range": "bytes=10-99"})
    assert part.status == 206 and await part.read() == expected[10:100]
    for path in ("/org--model@v1/../../keys", "/org--model@v1/p2pdist.json",
                 "/org--model@v2/model.safetensors", "/org--model@v1.delta/model.safetensors",
                 "/nothing/model.safetensors"):  # fmt: skip
        assert (await client.get(path)).status == 404, path


async def test_a_private_version_is_not_served(
    aiohttp_client: Any, store: Store, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    _add(store, tmp_path, signing_key, private=True)
    client = await aiohttp_client(create_origin_app(store))
    assert (await client.get(f"{ROOT}/model.safetensors")).status == 404


async def test_a_version_removed_while_served_is_404_not_500(
    aiohttp_client: Any,
    store: Store,
    tmp_path: Path,
    signing_key: Ed25519PrivateKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _add(store, tmp_path, signing_key)
    client = await aiohttp_client(create_origin_app(store))

    def gone(*args: object) -> None:  # `rm` between the check that it exists and the read
        raise NotFoundError("org/model@v1 is not in the store")

    monkeypatch.setattr(Store, "manifest", gone)
    assert (await client.get(f"{ROOT}/model.safetensors")).status == 404
    monkeypatch.undo()
    store.remove("org/model", "v1")  # the folder gone: the same
    assert (await client.get(f"{ROOT}/model.safetensors")).status == 404


async def test_a_link_pointed_outside_the_blobs_is_not_followed(
    aiohttp_client: Any, store: Store, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    _add(store, tmp_path, signing_key)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    link = store.snapshot("org/model", "v1") / "config.json"
    link.unlink()
    link.symlink_to(secret)
    client = await aiohttp_client(create_origin_app(store))
    assert (await client.get(f"{ROOT}/config.json")).status == 404


def test_a_malformed_request_is_logged_in_one_line() -> None:
    try:
        raise ValueError("Bad status line 'GARBAGE'")
    except ValueError:
        error = sys.exc_info()
    record = logging.LogRecord(
        "aiohttp.server", logging.ERROR, __file__, 1, "Error handling request", (), error
    )
    assert _OneLine().filter(record)
    assert record.exc_info is None
    assert record.getMessage() == "Error handling request: Bad status line 'GARBAGE'"
