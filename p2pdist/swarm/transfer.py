"""What the session hands out about one torrent: its label, progress snapshots, the result of
a finished download, and the `Transfer` handle of a torrent it keeps serving.

Plain values, so callers never hold libtorrent objects; `TorrentState` is the session's
mutable record of one torrent, written by its alert thread under the session's condition.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pdist.formats.torrent import TorrentMeta
from p2pdist.swarm.settings import BLOCK_SIZE

if TYPE_CHECKING:
    from p2pdist.swarm.session import Swarm


def label(meta: TorrentMeta) -> str:
    """How messages name a torrent: p2pdist's own by the version they hold (the folder
    ``org--gpt@v3`` is org/gpt@v3, ``….delta`` its delta; "--" never occurs in a name), any
    other by its name."""
    base = meta.name.removesuffix(".delta")
    name, at, version = base.partition("@")
    if not at:
        return meta.name
    ref = f"{name.replace('--', '/', 1)}@{version}"
    return f"{ref} (delta)" if base != meta.name else ref


@dataclass(frozen=True)
class Progress:
    """A snapshot of one transfer; rates in bytes/s, `eta_seconds` None when unknown."""

    done: int
    total: int
    download_rate: int
    upload_rate: int
    peers: int
    seeds: int
    state: str
    eta_seconds: float | None


@dataclass(frozen=True)
class TransferResult:
    """What a finished download cost: payload bytes by source, hash failures, upload.

    `bytes_from_peers + bytes_from_web_seeds` is the payload received in this call, pieces
    that failed their hash check and redundant blocks included; after a resume it counts
    only what was fetched again.
    """

    seconds: float
    total_bytes: int
    bytes_from_peers: int
    bytes_from_web_seeds: int
    hash_failures: int
    bytes_uploaded: int
    info_hash: str = ""


class TorrentState:
    """Mutable state of one torrent in the session, written by the alert thread.

    Guarded by the owning Swarm's condition; readers copy what they need under it.
    """

    def __init__(self, handle: Any, meta: TorrentMeta, resume_file: Path | None) -> None:
        self.handle = handle
        self.meta = meta
        self.resume_file = resume_file
        self.progress: Progress | None = None
        self.list_peers = 0
        self.payload_up = 0
        self.hash_failures = 0
        self.error: Exception | None = None
        self.finished = False
        self.resume_writes = 0
        self.removed = False
        self.web_endpoints: set[tuple[str, int]] | None = None  # None: no web seeds
        self.peer_bytes = 0
        self.storage_size = meta.total_size
        self.failed_pieces: set[int] = set()
        self.tracker_seeds = -1  # complete copies the tracker knows (-1: not told yet)
        self.tracker_error: str | None = None
        self.banned: set[str] = set()  # peers libtorrent banned for sending corrupt data

    def block_length(self, piece: int, block: int) -> int:
        """Bytes in one 16 KiB block (the torrent's last block may be short)."""
        start = piece * self.meta.piece_size + block * BLOCK_SIZE
        return max(0, min(BLOCK_SIZE, self.storage_size - start))


class Transfer:
    """A torrent the session keeps serving (a seed, or a download kept seeding)."""

    def __init__(self, swarm: Swarm, state: TorrentState) -> None:
        self._swarm = swarm
        self._state = state

    @property
    def info_hash(self) -> str:
        """The swarm's infohash (v1 hex, or v2 hex for a v2-only torrent)."""
        return self._state.meta.info_hash

    def progress(self) -> Progress | None:
        """The latest snapshot, or None before the first state update."""
        with self._swarm._cond:
            return self._state.progress

    def uploaded_bytes(self) -> int:
        """Payload bytes sent to peers since this transfer started."""
        if self._state.removed:
            return self._state.payload_up
        try:
            return int(self._state.handle.status().total_payload_upload)
        except RuntimeError:
            return self._state.payload_up

    def peers(self) -> tuple[tuple[str, int], ...]:
        """Endpoints (ip, port) of the peers connected now."""
        if self._state.removed:
            return ()
        try:
            infos = self._state.handle.get_peer_info()
        except RuntimeError:
            return ()
        return tuple((str(p.ip[0]), int(p.ip[1])) for p in infos if int(p.connection_type) == 1)

    @property
    def hash_failures(self) -> int:
        """Pieces that failed their hash check in this transfer (a seed: its own stored copy)."""
        with self._swarm._cond:
            return self._state.hash_failures

    def damaged_files(self) -> list[str]:
        """Files (paths inside the torrent) holding a piece that failed its hash check."""
        with self._swarm._cond:
            pieces = sorted(self._state.failed_pieces)
        import libtorrent as lt

        meta = self._state.meta
        info = lt.torrent_info(meta.data)
        layout = info.layout()
        found: list[str] = []
        for piece in pieces:
            for part in info.map_block(piece, 0, info.piece_size(piece)):
                if layout.file_flags(part.file_index) & lt.file_storage.flag_pad_file:
                    continue
                rel = layout.file_path(part.file_index).removeprefix(meta.name + "/")
                if rel not in found:
                    found.append(rel)
        return found

    def retry_tracker(self) -> bool:
        """Re-announce now if the last announce failed (a tracker back from a restart has
        forgotten every peer); True when it asked."""
        with self._swarm._cond:
            failing = self._state.tracker_error is not None and not self._state.removed
        if failing:
            import libtorrent as lt

            try:
                self._state.handle.force_reannounce(
                    0, -1, lt.reannounce_flags_t.ignore_min_interval
                )
            except RuntimeError:
                return False
        return failing

    def stop(self) -> None:
        """Stop serving; the files stay where they are."""
        self._swarm._remove(self._state)

    def __repr__(self) -> str:
        return f"Transfer({self._state.meta.name!r}, info_hash={self.info_hash})"
