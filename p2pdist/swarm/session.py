"""The one libtorrent session of the process: seed folders, download torrents, report progress.

The only libtorrent session lives here (formats/torrent.py uses libtorrent to make and read .torrent
files, swarm/settings.py to describe the session). Callers hand in .torrent bytes and folders
and get back plain values (`Progress`, `TransferResult`) or a small `Transfer` handle
(swarm/transfer.py);
libtorrent's objects never leave this module.

One background thread pops alerts (libtorrent 2.x style, bindings/python/examples/client.py),
turns each one into plain values at once (alerts die at the next `pop_alerts`), asks for state
updates twice a second, and writes resume data of running downloads every few seconds, since
a process killed with SIGKILL gets no chance to write it at shutdown. `download()` blocks its
caller on a condition variable fed by that thread.

The settings (swarm/settings.py) follow the pitfalls measured in DESIGN.md ("The swarm"): many
peers per IP (every test peer lives on 127.0.0.1), DHT/LSD/UPnP/NAT-PMP off, uTP off unless
asked, rate limits applied to local peers when set, `min_announce_interval` from the
tracker's interval, and the add flags cleared of both `paused` and `auto_managed`.
"""

from __future__ import annotations

import atexit
import errno
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import libtorrent as lt

from p2pdist.errors import NoSeedersError, StoreError, SwarmError
from p2pdist.formats.torrent import TorrentMeta, read_torrent
from p2pdist.swarm.settings import (
    ALERT_MASK,
    WEB_SEED_ALERT_MASK,
    read_resume,
    session_settings,
    torrent_params,
    write_atomic,
)
from p2pdist.swarm.shares import Share, share_of, share_priorities
from p2pdist.swarm.transfer import Progress, TorrentState, Transfer, TransferResult, label

UPDATE_INTERVAL = 0.5
"""Seconds between state updates (progress) asked of libtorrent."""

RESUME_INTERVAL = 2.0
"""Seconds between resume-data writes of a running download (kill -9 loses at most this)."""

RECONNECT_INTERVAL = 5.0
"""Seconds between re-dials of the peers a caller named (they may start after us)."""

NO_SEEDERS_GRACE = 6.0
"""Seconds a download waits, with no data coming, after the tracker said no host holds a
complete copy (and no web seed or named peer can serve it) before it gives up: a seed that
starts meanwhile is found by the scrapes asked for every SCRAPE_INTERVAL."""

SCRAPE_INTERVAL = 2.0
"""Seconds between scrapes (and re-announces while the tracker fails) of a download that
receives nothing: a seed that just started, or a tracker that just came back, is found fast."""

SHUTDOWN_WAIT = 5.0
"""Seconds to wait for resume data and removals while stopping."""

_CHECKING = {"checking_files", "checking_resume_data", "queued_for_checking", "allocating"}
_WEB = (int(lt.peer_info.web_seed), int(lt.peer_info.http_seed))


class Swarm:
    """The process's libtorrent session; one per process (see `get_swarm`), more in tests.

    `utp` adds uTP to TCP (off by default: TCP is what a cluster needs, docs/NETWORK.md).
    `ssrf_mitigation` stays on unless a caller on loopback needs a tracker path other than
    /announce. `announce_interval_hint` (the tracker's interval, seconds) lowers libtorrent's
    300 s `min_announce_interval`, which otherwise overrides the tracker's.
    """

    def __init__(
        self,
        *,
        listen_interface: str = "127.0.0.1",
        port: int = 0,
        upload_rate_limit: int = 0,
        download_rate_limit: int = 0,
        announce_interval_hint: int | None = None,
        utp: bool = False,
        ssrf_mitigation: bool = True,
        extra_settings: dict[str, Any] | None = None,
    ) -> None:
        settings = session_settings(
            listen_interface=listen_interface,
            port=port,
            upload_rate_limit=upload_rate_limit,
            download_rate_limit=download_rate_limit,
            announce_interval_hint=announce_interval_hint,
            utp=utp,
            ssrf_mitigation=ssrf_mitigation,
            extra_settings=extra_settings,
        )
        try:
            # No default plugins: peer exchange (ut_pex) would pass peers on behind the
            # tracker's back (its locality policy decides who crosses a thin link, and
            # BEP 27 wants it off for private swarms); metadata exchange is useless to a
            # client that always has the .torrent. smart_ban stays: it bans the peer that
            # sent the bad block of a piece that failed its hash check. (The bindings take a
            # dict of settings, as their examples do; the stubs know only packs.)
            self._session = lt.session(settings, 0)  # type: ignore[call-overload]
            self._session.add_extension("smart_ban")
        except RuntimeError as exc:
            where = settings["listen_interfaces"]
            raise SwarmError(f"cannot start a session on {where}: {exc}") from exc
        self._cond = threading.Condition()
        self._torrents: dict[Any, TorrentState] = {}
        self._retired = (0, 0, 0)  # uploaded, downloaded, hash failures of removed torrents
        self._closed = False
        self._cycles = 0
        self._web_seeded_downloads = 0
        self._thread = threading.Thread(target=self._alert_loop, name="p2pdist-swarm", daemon=True)
        self._thread.start()

    @property
    def listen_port(self) -> int:
        """The TCP port peers reach this session on."""
        return int(self._session.listen_port())

    def __enter__(self) -> Swarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- seeding

    def seed(
        self,
        torrent: bytes,
        root: Path,
        *,
        verify_on_start: bool = False,
        super_seeding: bool = False,
        trackers: Sequence[str] | None = None,
    ) -> Transfer:
        """Serve the torrent's files from root/<relative path>, whatever the torrent's name.

        By default the files are trusted (libtorrent's seed mode: each piece is hashed the
        first time a peer asks for it, not all up front); `verify_on_start` checks them all
        first and serves only the pieces that pass. `super_seeding` (BEP 16) offers each
        peer one piece at a time so an origin sends each piece about once (bench/swarm.py:
        1.3 copies instead of 2.4 for 16 consumers, but no faster on loopback). `trackers`
        replace the torrent's announce URLs (same infohash). A trusted piece that fails its
        hash check when first served is not served; `Transfer.damaged_files()` names its files.
        """
        meta = read_torrent(torrent)
        root = Path(root)
        for rel, size in meta.files:
            path = root / rel
            if not path.is_file() or path.stat().st_size != size:
                raise StoreError(f"{path}: missing or not {size} bytes; cannot seed {label(meta)}")
        atp = torrent_params(meta, root, use_web_seeds=True, resume=None, trackers=trackers)
        if not verify_on_start:
            atp.flags |= lt.torrent_flags.seed_mode
        if super_seeding:
            atp.flags |= lt.torrent_flags.super_seeding
        state = self._add(atp, meta, resume_file=None)
        return Transfer(self, state)

    def transfer(self, info_hash: str) -> Transfer | None:
        """The transfer of that infohash still in the session, if any."""
        with self._cond:
            for state in self._torrents.values():
                if info_hash in (state.meta.info_hash_v1, state.meta.info_hash_v2):
                    return Transfer(self, state)
        return None

    def totals(self) -> SwarmTotals:
        """This session's transfer counters, torrents that left it included (they never go
        down while the session lives), and its torrents and peers now. Read by the node
        metrics exporter (p2pdist/metrics.py)."""
        with self._cond:
            states = [s for s in self._torrents.values() if not s.removed]
            up, down, failed = self._retired
        peers = seeding = 0
        for state in states:
            try:
                st = state.handle.status()
            except RuntimeError:  # removed meanwhile: counted in _retired by now
                continue
            up += int(st.total_payload_upload)
            down += int(st.total_payload_download)
            failed += state.hash_failures
            peers += int(st.num_peers)
            seeding += bool(st.is_seeding)
        return SwarmTotals(up, down, failed, peers, len(states), seeding)

    # ------------------------------------------------------------- downloading

    def download(
        self,
        torrent: bytes,
        dest: Path,
        *,
        resume_file: Path | None = None,
        use_web_seeds: bool = True,
        peers: Sequence[tuple[str, int]] = (),
        on_progress: Callable[[Progress], None] | None = None,
        stall_timeout: float = 60.0,
        keep_seeding: bool = False,
        only_files: Collection[str] | None = None,
    ) -> TransferResult:
        """Download the torrent so that its files end up at dest/<relative path>; block.

        Resume data goes to `resume_file` every RESUME_INTERVAL seconds and is read back on
        the next call, so a killed fetch continues where it stopped; without it, pieces
        already on disk are found by libtorrent's check. `peers` are dialled directly, in
        addition to the torrent's trackers and web seeds. Raises SwarmError when nothing
        arrives for `stall_timeout` seconds, StoreError when the files cannot be written.
        With `keep_seeding` the torrent stays in the session (see `transfer()`); otherwise
        it is removed and the resume file deleted once the download is complete.
        `only_files` (paths relative to the torrent's root) downloads just those files
        (libtorrent file priority 0 for the others); the download is complete when they are.
        """
        meta = read_torrent(torrent)
        dest = Path(dest)
        try:
            dest.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{dest}: cannot create the download folder: {exc}") from exc
        resume = None
        if resume_file is not None and resume_file.is_file():
            resume = read_resume(resume_file, meta)
        atp = torrent_params(meta, dest, use_web_seeds=use_web_seeds, resume=resume)
        if resume is not None:
            # What this call wants, not what the interrupted one did: libtorrent applies
            # saved piece priorities (a share, swarm/shares.py) over file priorities, so a
            # full download cut short would make a partial rerun fetch every file, and the
            # zeros of a partial one would leave files out of a full rerun.
            atp.piece_priorities = []
            atp.file_priorities = [4] * atp.ti.layout().num_files()
        if only_files is not None:
            atp.file_priorities = _file_priorities(atp.ti, meta.name, only_files)
        started = time.monotonic()
        web_seeds = len(meta.web_seeds) if use_web_seeds else 0
        endpoints = _web_endpoints(meta.web_seeds) if web_seeds else None
        with self._block_alerts(bool(web_seeds)):
            state = self._add(atp, meta, resume_file=resume_file, web_endpoints=endpoints)
            handle = state.handle
            last_done, last_change, next_dial = -1, time.monotonic(), 0.0
            next_probe, no_seeders_since = time.monotonic() + SCRAPE_INTERVAL, None
            can_fail_fast = not web_seeds and not peers
            seen: Progress | None = None
            share_view = _ShareView()
            try:
                while True:
                    now = time.monotonic()
                    # The handle is used under the condition and only while the session
                    # lives: close() destroys the session under it.
                    with self._cond:
                        if peers and now >= next_dial and not self._closed:
                            for host, port in peers:
                                handle.connect_peer((host, int(port)))
                            next_dial = now + RECONNECT_INTERVAL
                        self._cond.wait(UPDATE_INTERVAL)
                        error, finished = state.error, state.finished
                        progress, known = state.progress, state.list_peers
                        closed = self._closed
                        tracker_seeds, tracker_error = state.tracker_seeds, state.tracker_error
                        if not closed:
                            if now >= next_probe and now - last_change >= SCRAPE_INTERVAL:
                                # Nothing arrives: ask the tracker again now rather than at its
                                # interval (a seed may have just started, the tracker may be
                                # back after a restart).
                                _probe_tracker(handle, tracker_error is not None)
                                next_probe = now + SCRAPE_INTERVAL
                            _update_share(handle, share_view)
                            if web_seeds:
                                state.web_endpoints = _learn_web_endpoints(
                                    handle, state.web_endpoints or set()
                                )
                    seeding_peers = progress.seeds if progress is not None else 0
                    connected = progress.peers if progress is not None else 0
                    # every peer the tracker named is connected and none is a seed: a peer not
                    # reached yet (its announce is stale on one replica, it is slow to accept)
                    # may still be one, so that case waits for the stall timeout instead
                    if (
                        can_fail_fast
                        and tracker_seeds == 0
                        and seeding_peers == 0
                        and connected >= known
                    ):
                        no_seeders_since = no_seeders_since or now
                        if now - max(no_seeders_since, last_change) > NO_SEEDERS_GRACE:
                            raise NoSeedersError(
                                f"no host is seeding {label(meta)} (the tracker knows no complete "
                                f"copy, {known} other peer(s), no web seed); start `p2pdist seed` "
                                "on the publisher or a host that holds it"
                            )
                    else:
                        no_seeders_since = None
                    if error is not None:
                        raise error
                    if closed:
                        raise SwarmError(
                            f"download of {label(meta)}: the session was closed; retry"
                        )
                    if progress is not None and progress is not seen:
                        seen = progress
                        if on_progress is not None:
                            on_progress(progress)
                        if progress.state in _CHECKING or progress.done > last_done:
                            last_done, last_change = progress.done, now
                        if progress.done >= meta.total_size and progress.state in (
                            "finished",
                            "seeding",
                        ):
                            finished = True
                    if finished:
                        break
                    if now - last_change > stall_timeout:
                        raise SwarmError(
                            f"download of {label(meta)} stalled: no data for {stall_timeout:g} s "
                            f"with {known} peer(s) and {web_seeds} web seed(s) known"
                            f"{_stall_cause(state, handle)}"
                        )
            except BaseException:
                self._save_and_remove(state)
                raise
            status = handle.status()
            downloaded = int(status.total_payload_download)
            from_peers = downloaded
            if web_seeds:
                # libtorrent does not post block alerts for every web seed block (those that
                # span files go missing), so count the blocks from BitTorrent peers instead.
                with self._cond:
                    cycle = self._cycles  # let the alert thread dispatch what came before
                    while self._cycles < cycle + 2 and not self._closed:
                        self._cond.wait(UPDATE_INTERVAL)
                    from_peers = min(downloaded, state.peer_bytes)
            result = TransferResult(
                seconds=time.monotonic() - started,
                total_bytes=meta.total_size,
                bytes_from_peers=from_peers,
                bytes_from_web_seeds=downloaded - from_peers,
                hash_failures=state.hash_failures,
                bytes_uploaded=int(status.total_payload_upload),
                info_hash=meta.info_hash,
            )
            with self._cond:
                state.resume_file = None
            if not keep_seeding:
                self._remove(state)
            if resume_file is not None:
                resume_file.unlink(missing_ok=True)
            return result

    # --------------------------------------------------------------- shutdown

    def close(self) -> None:
        """Write resume data of unfinished downloads, then stop the session."""
        with self._cond:
            if self._closed:
                return
            pending = [
                s for s in self._torrents.values() if s.resume_file is not None and not s.finished
            ]
        for state in pending:
            self._save_resume(state)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        # Under the condition: a download that saw the close may be removing its torrent
        # (`_remove` holds the condition until it has asked libtorrent), and must find the
        # session either still there or its torrent already marked removed.
        with self._cond:
            self._session.pause()
            for state in list(self._torrents.values()):
                state.payload_up = _safe_upload(state.handle, state.payload_up)
                state.removed = True
            self._torrents.clear()
            del self._session  # the destructor blocks until libtorrent has shut down

    # -------------------------------------------------------------- internals

    def _add(
        self,
        atp: Any,
        meta: TorrentMeta,
        *,
        resume_file: Path | None,
        web_endpoints: set[tuple[str, int]] | None = None,
    ) -> TorrentState:
        with self._cond:
            if self._closed:
                raise SwarmError(f"{label(meta)}: the swarm is closed; start a new one")
            try:
                handle = self._session.add_torrent(atp)
            except RuntimeError as exc:
                raise SwarmError(f"cannot add {label(meta)} ({meta.info_hash}): {exc}") from exc
            state = TorrentState(handle, meta, resume_file)
            state.web_endpoints = web_endpoints
            state.storage_size = int(atp.ti.layout().total_size())
            self._torrents[handle] = state
        return state

    @contextmanager
    def _block_alerts(self, wanted: bool) -> Iterator[None]:
        """Block alerts on while this download runs, if `wanted` (see WEB_SEED_ALERT_MASK)."""
        if not wanted:
            yield
            return
        self._count_web_seeded(+1)
        try:
            yield
        finally:
            self._count_web_seeded(-1)

    def _count_web_seeded(self, change: int) -> None:
        with self._cond:
            was = self._web_seeded_downloads
            self._web_seeded_downloads += change
            if (was == 0) != (self._web_seeded_downloads == 0) and not self._closed:
                mask = WEB_SEED_ALERT_MASK if self._web_seeded_downloads else ALERT_MASK
                self._session.apply_settings({"alert_mask": int(mask)})

    def _remove(self, state: TorrentState) -> None:
        with self._cond:
            if state.removed or self._torrents.get(state.handle) is not state:
                return
            state.payload_up = _safe_upload(state.handle, state.payload_up)
            self._retire(state)
            state.resume_file = None
            self._session.remove_torrent(state.handle)
            deadline = time.monotonic() + SHUTDOWN_WAIT
            while not state.removed and time.monotonic() < deadline and not self._closed:
                self._cond.wait(0.1)
            state.removed = True
            self._torrents.pop(state.handle, None)

    def _retire(self, state: TorrentState) -> None:
        """Keep a leaving torrent's counters in the session's totals (under the condition)."""
        try:
            down = int(state.handle.status().total_payload_download)
        except RuntimeError:
            down = 0
        up, was_down, failed = self._retired
        self._retired = (up + state.payload_up, was_down + down, failed + state.hash_failures)

    def _save_and_remove(self, state: TorrentState) -> None:
        if state.resume_file is not None and not self._closed:
            self._save_resume(state)
        self._remove(state)

    def _save_resume(self, state: TorrentState) -> None:
        with self._cond:
            before = state.resume_writes
            try:
                state.handle.save_resume_data(
                    lt.torrent_handle.flush_disk_cache | lt.torrent_handle.save_info_dict
                )
            except RuntimeError:
                return
            deadline = time.monotonic() + SHUTDOWN_WAIT
            while state.resume_writes == before and time.monotonic() < deadline:
                self._cond.wait(0.1)

    def _alert_loop(self) -> None:
        """Pop alerts, turn them into plain state, ask for updates and resume data."""
        next_update = next_resume = 0.0
        while True:
            with self._cond:
                if self._closed:
                    return
            self._session.wait_for_alert(int(UPDATE_INTERVAL * 500))
            alerts = self._session.pop_alerts()
            with self._cond:
                for alert in alerts:
                    self._dispatch(alert)
                now = time.monotonic()
                if now >= next_update:
                    self._session.post_torrent_updates()
                    next_update = now + UPDATE_INTERVAL
                if now >= next_resume:
                    for state in self._torrents.values():
                        if state.resume_file is not None and not state.finished:
                            state.handle.save_resume_data(lt.torrent_handle.flush_disk_cache)
                    next_resume = now + RESUME_INTERVAL
                self._cycles += 1
                self._cond.notify_all()

    def _dispatch(self, alert: Any) -> None:
        """Apply one alert to its torrent's state (called with the condition held)."""
        if isinstance(alert, lt.state_update_alert):
            for st in alert.status:
                state = self._torrents.get(st.handle)
                if state is not None:
                    state.progress = _progress(st)
                    if int(st.num_complete) >= 0:
                        state.tracker_seeds = int(st.num_complete)
                    state.list_peers = int(st.list_peers)
                    state.payload_up = int(st.total_payload_upload)
            return
        state = self._torrents.get(getattr(alert, "handle", None))
        if state is None:
            return
        if isinstance(alert, lt.block_finished_alert):
            if state.web_endpoints is not None and tuple(alert.endpoint) not in state.web_endpoints:
                state.peer_bytes += state.block_length(alert.piece_index, alert.block_index)
        elif isinstance(alert, lt.hash_failed_alert):
            state.hash_failures += 1
            state.failed_pieces.add(int(alert.piece_index))
        elif isinstance(alert, lt.peer_ban_alert):
            state.banned.add(f"{alert.endpoint[0]}:{alert.endpoint[1]}")
        elif isinstance(alert, lt.tracker_reply_alert):
            state.tracker_error = None
        elif isinstance(alert, lt.scrape_reply_alert):
            state.tracker_error = None
            state.tracker_seeds = int(alert.complete)
        elif isinstance(alert, lt.tracker_error_alert):  # (a failed scrape is no outage)
            state.tracker_error = str(alert.message())
        elif isinstance(alert, lt.torrent_finished_alert):
            state.finished = True
        elif isinstance(alert, lt.save_resume_data_alert):
            if state.resume_file is not None and _resume_worth_keeping(alert.params, state):
                write_atomic(state.resume_file, lt.write_resume_data_buf(alert.params))
            state.resume_writes += 1
        elif isinstance(alert, lt.save_resume_data_failed_alert):
            state.resume_writes += 1
        elif isinstance(alert, lt.file_error_alert):
            state.error = _file_error(state.meta, alert.error, alert.filename(), alert.message())
        elif isinstance(alert, lt.torrent_error_alert):
            state.error = _file_error(state.meta, alert.error, "", alert.message())
        elif isinstance(alert, lt.torrent_removed_alert):
            state.removed = True


def _resume_worth_keeping(params: Any, state: TorrentState) -> bool:
    """Whether resume data should replace what is on disk.

    libtorrent trusts resume data and checks no file it says nothing of: data claiming no
    piece (taken before the first one arrived) or taken while the files were being checked
    (only the pieces checked so far) would make the next run download again what is on disk.
    Without a resume file, the next run checks the partial files and keeps every good piece.
    """
    checking = state.progress is None or state.progress.state in _CHECKING
    return not checking and any(params.have_pieces)


def _probe_tracker(handle: Any, failing: bool) -> None:
    """Scrape the torrent's tracker (seeders now), or re-announce while it fails."""
    try:
        if failing:
            handle.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
        else:
            handle.scrape_tracker()
    except RuntimeError:
        pass


def _stall_cause(state: TorrentState, handle: Any) -> str:
    """What a stall message adds: hash failures and who sent them, pieces no peer has, a
    failing tracker; or the generic advice."""
    parts = []
    if state.hash_failures:
        who = f" (banned: {', '.join(sorted(state.banned))})" if state.banned else ""
        parts.append(f"{state.hash_failures} piece(s) from peers failed their hash check{who}")
    try:
        have = handle.status().pieces
        availability = handle.piece_availability()
        missing = sum(1 for i, got in enumerate(have) if not got and availability[i] == 0)
    except (RuntimeError, IndexError):
        missing = 0
    if missing:
        parts.append(
            f"{missing} piece(s) are held by no connected peer (a seed's stored copy may be "
            "damaged: its `p2pdist seed` output names the file)"
        )
    if state.tracker_error:
        parts.append(f"the tracker fails: {state.tracker_error}")
    if not parts:
        return "; check that a seed or the origin is up"
    return "; " + "; ".join(parts)


def _web_endpoints(urls: Sequence[str]) -> set[tuple[str, int]]:
    """The (ip, port) each web seed URL resolves to, so its blocks can be told apart."""
    found: set[tuple[str, int]] = set()
    for url in urls:
        parts = urlsplit(url)
        if not parts.hostname:
            continue
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
        except OSError:
            continue
        found.update((str(info[4][0]), int(info[4][1])) for info in infos)
    return found


@dataclass
class _ShareView:
    """What one download knows for its share (swarm/shares.py): our address as peers see it
    (kept once chosen), every address seen downloading since the start, the share in force."""

    own: str | None = None
    downloading: set[str] = field(default_factory=set)
    share: Share | None = None


def _update_share(handle: Any, view: _ShareView) -> None:
    """Put this consumer's share of the pieces first, and again whenever `view.downloading`
    grows. A peer that finishes or drops its connection keeps its rank, so that consumers'
    views stay alike: re-split as peers finished or churned, they disagreed on the split and
    their shares overlapped (BENCHMARKS.md, "Cluster", 2f)."""
    try:
        peers = handle.get_peer_info()
        ours: Counter[str] = Counter()  # our address as each peer sees it
        for peer in peers:
            if peer.flags & (lt.peer_info.connecting | lt.peer_info.handshake):
                continue
            if peer.connection_type != lt.peer_info.standard_bittorrent:
                continue  # a web seed
            ours[peer.local_endpoint()[0]] += 1
            if not peer.flags & (lt.peer_info.seed | lt.peer_info.upload_only):
                view.downloading.add(peer.ip[0])
        if view.own is None and ours:
            view.own = ours.most_common(1)[0][0]
        if view.own is None:
            return
        share = share_of(view.own, view.downloading)
        if share == view.share or (view.share is None and share.of == 1):
            view.share = share  # unchanged, or alone: libtorrent's own order is the right one
            return
        handle.prioritize_pieces(share_priorities(share, handle.get_piece_priorities()))
        view.share = share
    except RuntimeError:  # removed meanwhile; the download loop reports why
        return


def _learn_web_endpoints(handle: Any, known: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """Add the endpoints libtorrent reports for its web seed connections."""
    try:
        infos = handle.get_peer_info()
    except RuntimeError:
        return known
    found = {(str(p.ip[0]), int(p.ip[1])) for p in infos if int(p.connection_type) in _WEB}
    return known | found


def _progress(st: Any) -> Progress:
    rate = int(st.download_payload_rate)
    left = int(st.total_wanted) - int(st.total_wanted_done)
    return Progress(
        done=int(st.total_wanted_done),
        total=int(st.total_wanted),
        download_rate=rate,
        upload_rate=int(st.upload_payload_rate),
        peers=int(st.num_peers),
        seeds=int(st.num_seeds),
        state=str(st.state).rsplit(".", 1)[-1],
        eta_seconds=(left / rate) if rate > 0 else (0.0 if left == 0 else None),
    )


def _file_error(meta: TorrentMeta, error: Any, filename: str, message: str) -> Exception:
    """A storage failure as StoreError (disk full, permissions), anything else as SwarmError."""
    code = int(error.value()) if error is not None else 0
    where = f"{filename}: " if filename else ""
    if code == errno.ENOSPC:
        return StoreError(f"{where}disk full while downloading {label(meta)}; free space and retry")
    if code and error.category().name() in ("system", "generic"):
        return StoreError(
            f"{where}cannot write {label(meta)}: {os.strerror(code)}; check the folder"
        )
    return SwarmError(f"{label(meta)}: {message}")


def _file_priorities(ti: Any, root: str, only_files: Collection[str]) -> list[int]:
    """libtorrent file priorities: 4 (default) for the chosen files, 0 (skip) for the rest."""
    layout, prefix, wanted = ti.layout(), root + "/", set(only_files)
    return [
        4 if layout.file_path(i).removeprefix(prefix) in wanted else 0
        for i in range(layout.num_files())
    ]


def _safe_upload(handle: Any, fallback: int) -> int:
    try:
        return int(handle.status().total_payload_upload)
    except RuntimeError:
        return fallback


@dataclass(frozen=True)
class SwarmTotals:
    """A session's counters (see ``Swarm.totals``): payload bytes each way and pieces that
    failed their hash check, since it started; torrents, those served whole, and peers now."""

    uploaded: int
    downloaded: int
    hash_failures: int
    peers: int
    torrents: int
    seeding: int


_SWARM: Swarm | None = None
_SWARM_LOCK = threading.Lock()


def get_swarm(**kwargs: Any) -> Swarm:
    """The process-wide Swarm, created on first call with `kwargs` (later kwargs are ignored).

    It is closed at interpreter exit, writing resume data of unfinished downloads.
    """
    global _SWARM
    with _SWARM_LOCK:
        if _SWARM is None or _SWARM._closed:
            _SWARM = Swarm(**kwargs)
            atexit.register(_SWARM.close)
        return _SWARM


def existing_swarm() -> Swarm | None:
    """The process-wide Swarm if one is running, without starting one."""
    with _SWARM_LOCK:
        return _SWARM if _SWARM is not None and not _SWARM._closed else None


__all__ = [
    "Progress",
    "Swarm",
    "SwarmTotals",
    "Transfer",
    "TransferResult",
    "existing_swarm",
    "get_swarm",
]
