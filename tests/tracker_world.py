"""Builders the tracker tests share: signed versions with real torrents, tokens, raw queries.

This module holds no tests; the tracker's test modules import it
(``from tests.tracker_world import ...``). Everything is real: ed25519 keys, bencoded
torrents whose infohashes the manifest signs, tokens written to the tracker's SQLite file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import json
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.formats.bencode import bencode, infohashes
from p2pdist.formats.manifest import FileEntry, Manifest, TorrentRef
from p2pdist.tracker import TrackerSettings, create_app
from p2pdist.tracker.db import DB_FILENAME, Database
from p2pdist.tracker.registry import check_publish
from tests.conftest import free_port

PIECE = 16 * 1024


def make_torrent(root: str, files: dict[str, bytes], announce: str = "http://x/announce") -> bytes:
    """A v1 multi-file .torrent of ``files`` (path -> bytes) under folder ``root``."""
    blob = b"".join(files[p] for p in sorted(files))
    pieces = b"".join(
        hashlib.sha1(blob[i : i + PIECE]).digest() for i in range(0, max(len(blob), 1), PIECE)
    )
    info = {
        "files": [{"length": len(files[p]), "path": p.split("/")} for p in sorted(files)],
        "name": root,
        "piece length": PIECE,
        "pieces": pieces,
    }
    return bencode({"announce": announce, "info": info})


@dataclass(frozen=True)
class Version:
    """A signed version ready to publish: its manifest and torrents."""

    manifest: Manifest
    torrent: bytes
    delta_torrent: bytes | None

    @property
    def manifest_bytes(self) -> bytes:
        return self.manifest.to_bytes()

    @property
    def v1(self) -> bytes:
        """The full torrent's 20-byte swarm id."""
        assert self.manifest.torrent is not None and self.manifest.torrent.v1 is not None
        return bytes.fromhex(self.manifest.torrent.v1)

    def body(self, private: bool = False, **override: object) -> dict[str, object]:
        """The publish request body (override any field to break it)."""
        body: dict[str, object] = {
            "manifest": json.loads(self.manifest_bytes),
            "torrent": base64.b64encode(self.torrent).decode(),
            "delta_torrent": None
            if self.delta_torrent is None
            else base64.b64encode(self.delta_torrent).decode(),
            "private": private,
        }
        body.update(override)
        return body


def make_version(
    key: Ed25519PrivateKey,
    name: str,
    version: str,
    parent: str | None = None,
    content: bytes | None = None,
    paths: tuple[str, ...] = ("model.safetensors", "config.json"),
) -> Version:
    """A version of ``name`` signed by ``key``, with a full torrent and (given a parent) a delta."""
    content = content if content is not None else f"{name}@{version}".encode() * 100
    files = {p: content + p.encode() for p in paths}
    torrent = make_torrent(version, files)
    v1, _ = infohashes(torrent)
    delta_torrent = None
    delta_files: tuple[FileEntry, ...] = ()
    delta_ref = None
    if parent is not None:
        delta_torrent = make_torrent(f"{version}.delta", {"delta.safetensors": content[::-1]})
        delta_ref = TorrentRef(v1=infohashes(delta_torrent)[0])
        delta_files = (FileEntry("delta.safetensors", len(content), "ab" * 32),)
    manifest = Manifest(
        name=name,
        version=version,
        parent=parent,
        files=tuple(FileEntry(p, len(b), "cd" * 32) for p, b in sorted(files.items())),
        delta_files=delta_files,
        torrent=TorrentRef(v1=v1),
        delta_torrent=delta_ref,
    ).signed(key)
    return Version(manifest, torrent, delta_torrent)


def publish_directly(
    data_dir: Path, name: str, version: str = "v1", private: bool = False
) -> bytes:
    """Publish a version straight into the tracker's database (the registry's own check
    included), without a running tracker; returns its v1 infohash."""
    v = make_version(Ed25519PrivateKey.generate(), name, version)
    new = check_publish(name, version, json.dumps(v.body(private=private)).encode())
    db = Database(data_dir / DB_FILENAME)
    try:
        db.publish(new)
    finally:
        db.close()
    return v.v1


def make_token(data_dir: Path, namespace: str | None, publish: bool = True) -> str:
    """A new token in the tracker database under ``data_dir``."""
    db = Database(data_dir / DB_FILENAME)
    try:
        return db.create_token(namespace, publish=publish)
    finally:
        db.close()


def announce_query(
    info_hash: bytes,
    peer_id: bytes,
    port: int = 6881,
    left: int = 100,
    event: str | None = "started",
    **extra: str,
) -> str:
    """A raw announce query string, binary values percent-encoded as clients do."""
    parts = [
        f"info_hash={quote_from_bytes(info_hash, safe='')}",
        f"peer_id={quote_from_bytes(peer_id, safe='')}",
        f"port={port}",
        "uploaded=0",
        "downloaded=0",
        f"left={left}",
        "compact=1",
    ]
    if event:
        parts.append(f"event={event}")
    parts += [f"{k}={v}" for k, v in extra.items()]
    return "&".join(parts)


def peer_id(n: int) -> bytes:
    return b"-PD0001-" + f"{n:012d}".encode()


@contextlib.contextmanager
def running_tracker(settings: TrackerSettings) -> Iterator[str]:
    """Serve the tracker app in a thread on a free loopback port; yield its base URL."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        runner = web.AppRunner(create_app(settings), shutdown_timeout=2.0)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        box["stop"], box["loop"] = asyncio.Event(), asyncio.get_running_loop()
        box["url"] = f"http://127.0.0.1:{port}"
        ready.set()
        await box["stop"].wait()
        await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(30), "tracker thread did not start"
    try:
        yield box["url"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(30)
        with warnings.catch_warnings():  # transports of clients cut off at shutdown
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
