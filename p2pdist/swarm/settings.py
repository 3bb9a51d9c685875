"""What p2pdist asks of libtorrent: session settings, add-torrent parameters, resume data.

The settings carry the pitfalls measured on loopback swarms (DESIGN.md, "The swarm", and
BENCHMARKS.md): each one says what it fixed and by how much. Only the swarm package (session.py, transfer.py) uses this module.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import libtorrent as lt

from p2pdist import config
from p2pdist.errors import ConfigError
from p2pdist.formats.torrent import TorrentMeta

BLOCK_SIZE = 16 * 1024
"""libtorrent's request size: the unit of block progress and of request queues."""

ALERT_MASK = (
    lt.alert.category_t.error_notification
    | lt.alert.category_t.status_notification
    | lt.alert.category_t.storage_notification
    | lt.alert.category_t.tracker_notification
)

WEB_SEED_ALERT_MASK = ALERT_MASK | lt.alert.category_t.block_progress_notification
"""ALERT_MASK while a download with web seeds runs: a block alert (one per 16 KiB) is how its
bytes from peers are told from its bytes from web seeds. Each costs the alert thread a Python
call, 0.4-0.8 of the 3-5 CPU-s a 1 GiB fetch took, so they are off otherwise."""


OWN_SETTINGS = {
    "alert_mask": "the swarm's progress and completion are read from these alerts",
    "alert_queue_size": "the swarm's progress and completion are read from these alerts",
    "listen_interfaces": "use P2PDIST_LISTEN and P2PDIST_PORT",
    "upload_rate_limit": "use P2PDIST_UPLOAD_LIMIT",
    "download_rate_limit": "use P2PDIST_DOWNLOAD_LIMIT",
    "enable_outgoing_utp": "use P2PDIST_UTP",
    "enable_incoming_utp": "use P2PDIST_UTP",
    "ssrf_mitigation": "use P2PDIST_SSRF_MITIGATION",
    "validate_https_trackers": "https trackers are always checked (P2PDIST_CA_BUNDLE for a private CA)",
}
"""libtorrent settings a user's overrides may not change, and why."""

UNCAPPED_REQUEST_QUEUE = 128
"""Block requests one peer may queue at us when no upload cap sets the figure (2 MiB)."""

REQUEST_QUEUE_SECONDS = 1
"""Seconds of a peer's measured rate we keep requested from it (libtorrent: 3; whole seconds)."""


def session_settings(
    *,
    listen_interface: str,
    port: int,
    upload_rate_limit: int,
    download_rate_limit: int,
    announce_interval_hint: int | None,
    utp: bool,
    ssrf_mitigation: bool,
    extra_settings: dict[str, Any] | None,
) -> dict[str, Any]:
    """The settings_pack of a Swarm (see its docstring for the arguments)."""
    iface = f"[{listen_interface}]" if ":" in listen_interface else listen_interface
    settings: dict[str, Any] = {
        "listen_interfaces": f"{iface}:{port}",
        "alert_mask": int(ALERT_MASK),
        "alert_queue_size": 100_000,
        "user_agent": f"p2pdist libtorrent/{lt.__version__}",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        # TCP only unless asked: between namespaced hosts libtorrent's uTP fetched 1 GiB in
        # 132 s where TCP took 4.9 s (docs/NETWORK.md); uTP is for shared internet links.
        "enable_outgoing_utp": bool(utp),
        "enable_incoming_utp": bool(utp),
        "upload_rate_limit": int(upload_rate_limit),
        "download_rate_limit": int(download_rate_limit),
        "ssrf_mitigation": ssrf_mitigation,
        # Several tracker URLs (replicas, or independent trackers) share one tier: announce
        # to all of them, so every one knows this peer and any one may go down.
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        # https trackers: certificate and host name checked (libtorrent's default, kept).
        "validate_https_trackers": True,
    }
    trust_ca_bundle(config.ca_bundle())
    if upload_rate_limit or download_rate_limit:
        settings["ignore_limits_on_local_network"] = False
        # The rate limiter hands out quota per tick: at the default 500 ms a capped peer
        # sent nothing for its first 2 s (measured, 4 MB/s cap); 100 ms cut that to 0.5 s.
        settings["tick_interval"] = 100
    # Peers may queue this many block requests at us (advertised as `reqq`; it caps their
    # outstanding requests). At libtorrent's 2000 each consumer queued up to 32 MiB at a seed,
    # so pieces were claimed long before they were sent and consumers could not fetch them
    # from each other: the seed sent them twice. With an upload cap: 0.125 s of it (floor 32
    # blocks; the swarm bench went from 1.95x/2.67x to 1.70x/2.26x the fluid bound for 4/16
    # consumers). Without one (the link is the limit, as between real hosts): 128 blocks
    # (2 MiB). On the namespace bed, 8 consumers of one seed at 100 Mbit/s each way took
    # 1.85-1.90x the bound at libtorrent's 2000 (seed copies 1.6-1.7) and 1.56x with 128
    # (1.27 copies), while one consumer on an unshaped link fetched 1 GiB as fast (5.7-6.2 s
    # vs 5.6-6.0 s; BENCHMARKS.md, "Cluster").
    settings["max_allowed_in_request_queue"] = (
        max(32, min(2000, int(upload_rate_limit) // (8 * BLOCK_SIZE)))
        if upload_rate_limit
        else UNCAPPED_REQUEST_QUEUE
    )
    # libtorrent asks a peer for whole pieces when it could send one within
    # `whole_pieces_threshold` (20 s) at its rate: every capped peer qualifies, so each
    # piece came from a single source and pieces finished (became tradeable) at one peer's
    # pace. With 0 blocks of a piece are spread over peers: 64 MiB at 5 MB/s, 256 KiB pieces,
    # won every one of 6 paired runs (N=4/16/32: about 1.44x -> 1.22x, 2.07x -> 1.51x,
    # 2.10x -> 1.76x the fluid bound; BENCHMARKS.md, "Swarm"); on the bed, links capped by
    # the network rather than by libtorrent, 1.85-1.90x -> 1.65x for 8 consumers.
    settings["whole_pieces_threshold"] = 0
    # What we ask of a peer: requests for 1 s of its measured rate (libtorrent's 3 s), still
    # capped by the `reqq` it advertises. On the bed a consumer's connection to a seed that
    # serves 8 at 100 Mbit/s carries 1.6 MB/s, so at 3 s it filled the seed's whole 128-block
    # queue and claimed pieces the other consumers could then only get from the seed too.
    # In 13 pairs (N = 4, 8, 16) faster in 11, 0.01-0.02x slower in 2; at N = 8 1.40x ->
    # 1.37x the fluid bound on average, seed copies 1.24-1.27 -> 1.21-1.22. Unlike a smaller
    # reqq it costs a distant peer nothing: 1 s of its rate covers any round trip under 1 s.
    settings["request_queue_time"] = REQUEST_QUEUE_SECONDS
    if announce_interval_hint is not None:
        settings["min_announce_interval"] = max(1, int(announce_interval_hint))
    settings.update(extra_settings or {})
    return settings


def checked_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` (a user's libtorrent settings) with each name, type and range checked
    against libtorrent's own, so a typo fails in one line instead of being ignored (or
    wrapped: libtorrent keeps 32 bits of an int). Settings p2pdist depends on, or sets from
    its own options, are refused with the option to use instead."""
    where = "P2PDIST_LIBTORRENT or [p2pdist.libtorrent]"
    defaults: dict[str, Any] = dict(lt.default_settings())
    for name, value in overrides.items():
        if name in OWN_SETTINGS:
            raise ConfigError(f"libtorrent setting {name} is p2pdist's own: {OWN_SETTINGS[name]}")
        if name not in defaults:
            raise ConfigError(f"{name!r} is not a libtorrent setting ({where})")
        expected = type(defaults[name])
        if (expected is int and isinstance(value, bool)) or not isinstance(value, expected):
            raise ConfigError(
                f"libtorrent setting {name} takes {expected.__name__}, not {value!r} ({where})"
            )
        if expected is int and not -(2**31) <= value < 2**31:
            raise ConfigError(f"libtorrent setting {name} = {value} is out of range ({where})")
    return overrides


def trust_ca_bundle(bundle: Path | None) -> None:
    """Make libtorrent check https trackers against ``bundle`` (``P2PDIST_CA_BUNDLE``).

    libtorrent has no setting for a CA file: its OpenSSL loads the default verify paths when
    a session starts, and those honour ``SSL_CERT_FILE``. So the bundle is put there before
    the session is made, for this process (over an ``SSL_CERT_FILE`` already set: the
    p2pdist setting is the more specific one).
    """
    if bundle is not None:
        os.environ["SSL_CERT_FILE"] = str(bundle)


def torrent_params(
    meta: TorrentMeta,
    folder: Path,
    *,
    use_web_seeds: bool,
    resume: Any,
    trackers: Sequence[str] | None = None,
) -> Any:
    """add_torrent_params that put file i at folder/<its path without the root name>.

    ``trackers`` replace the torrent's own announce URLs (the info dict, so the infohash, is
    untouched): a seed announces to the tracker it is configured with, not to the URL the
    publisher baked in (which may be 127.0.0.1 on the tracker's own host).
    """
    data = meta.data
    strip_web = not use_web_seeds and bool(meta.web_seeds)
    if strip_web or trackers is not None:
        decoded: Any = lt.bdecode(data)
        if strip_web:
            decoded.pop(b"url-list", None)
            decoded.pop(b"httpseeds", None)
        if trackers is not None:
            decoded.pop(b"announce-list", None)
            decoded.pop(b"announce", None)
            if trackers:
                decoded[b"announce"] = trackers[0].encode()
                decoded[b"announce-list"] = [
                    [t.encode() for t in trackers]
                ]  # one tier, all announced
        data = lt.bencode(decoded)
    ti = lt.torrent_info(data)
    atp = resume if resume is not None else lt.add_torrent_params()
    atp.ti = ti
    atp.save_path = str(folder)
    layout = ti.layout()
    prefix = meta.name + "/"
    renames = {}
    for index in range(layout.num_files()):
        path = layout.file_path(index)
        if path.startswith(prefix):
            renames[index] = path[len(prefix) :]
    atp.renamed_files = renames
    if not use_web_seeds:
        atp.url_seeds = []
        atp.http_seeds = []
        atp.flags |= lt.torrent_flags.override_web_seeds
    atp.flags &= ~(lt.torrent_flags.paused | lt.torrent_flags.auto_managed)
    atp.flags &= ~lt.torrent_flags.seed_mode
    return atp


def read_resume(path: Path, meta: TorrentMeta) -> Any:
    """Resume data for this torrent, or None when it is unreadable or for another torrent."""
    try:
        atp = lt.read_resume_data(path.read_bytes())
    except (OSError, RuntimeError):
        return None
    hashes = atp.info_hashes
    v1 = str(hashes.v1) if hashes.has_v1() else None
    v2 = str(hashes.v2) if hashes.has_v2() else None
    if (v1 or v2) and (v1, v2) != (meta.info_hash_v1, meta.info_hash_v2):
        return None
    return atp


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` by rename; on failure keep the old file (resume data only
    saves re-checking pieces, so a full disk must not fail the download)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
