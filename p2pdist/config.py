"""Configuration: the one place that reads P2PDIST_* environment variables and the config file.

Precedence, highest first: an explicit argument (a CLI flag), the environment
(``P2PDIST_HOME``, ``P2PDIST_TRACKER``, ``P2PDIST_TOKEN``, ``P2PDIST_CA_BUNDLE``,
``P2PDIST_CONFIG``), the config
file (``$P2PDIST_CONFIG`` or ``~/.config/p2pdist/config.toml``), then the default. Values are
read when asked for, never at import, so a program or a test can change the environment
and be obeyed.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pdist.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_HOME = Path("~/.cache/p2pdist")
DEFAULT_CONFIG_DIR = Path("~/.config/p2pdist")
DEFAULT_TRACKER = "http://127.0.0.1:6969"


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def config_dir() -> Path:
    """The folder of the config file, the signing key and the trusted publisher keys.

    ``$P2PDIST_CONFIG_DIR`` overrides it (tests and the demo point it at a temporary folder).
    """
    override = _env("P2PDIST_CONFIG_DIR")
    return Path(override).expanduser() if override else DEFAULT_CONFIG_DIR.expanduser()


def config_file() -> Path:
    override = _env("P2PDIST_CONFIG")
    return Path(override).expanduser() if override else config_dir() / "config.toml"


def _file_values() -> dict[str, Any]:
    path = config_file()
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config file ({e}); fix or remove it") from None
    section = data.get("p2pdist", data)
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: expected a table of settings")
    return section


def _resolve(
    explicit: str | None,
    env_name: str,
    file_key: str,
    default: str | None,
    also: type[int] | type[bool] | None = None,
) -> str | None:
    """A setting as text: ``explicit``, else the environment, else the config file (where a
    key may also be the TOML type ``also``, as in ``upload_limit = 1000``), else ``default``."""
    if explicit:
        return explicit
    from_env = _env(env_name)
    if from_env:
        return from_env
    value = _file_values().get(file_key)
    if value is None:
        return default
    if isinstance(value, str):
        return value
    if also is bool and (isinstance(value, bool) or value in (0, 1)):
        return "1" if value else "0"
    if also is int and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    kind = {None: "a string", int: "a string or an integer", bool: "a string, true/false or 0/1"}
    raise ConfigError(f"{config_file()}: {file_key} must be {kind[also]}, not {value!r}")


def home(explicit: str | Path | None = None) -> Path:
    """The store root: flag, ``$P2PDIST_HOME``, config ``home``, or ``~/.cache/p2pdist``."""
    value = _resolve(str(explicit) if explicit else None, "P2PDIST_HOME", "home", None)
    return Path(value).expanduser() if value else DEFAULT_HOME.expanduser()


def tracker_url(explicit: str | None = None) -> str:
    """The tracker/registry base URL: flag, ``$P2PDIST_TRACKER``, config ``tracker``, default.

    Several comma-separated URLs name replicas of one registry (or trackers of one swarm):
    the registry client fails over from one to the next, and torrents announce to each (one
    BEP 12 tier per URL). The answer keeps them comma-separated; ``tracker_urls`` splits.
    """
    return ",".join(tracker_urls(explicit))


def tracker_urls(explicit: str | None = None) -> list[str]:
    """The tracker URLs of ``tracker_url``, in order, each checked and without a final '/'."""
    value = _resolve(explicit, "P2PDIST_TRACKER", "tracker", DEFAULT_TRACKER)
    assert value is not None
    return split_tracker_urls(value)


def split_tracker_urls(value: str) -> list[str]:
    """``"http://a:1, http://b:2/"`` -> ``["http://a:1", "http://b:2"]`` (ConfigError if bad)."""
    urls: list[str] = []
    for part in value.split(","):
        url = part.strip().rstrip("/")
        if not url:
            continue
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"tracker URL {url!r} must start with http:// or https://")
        if url not in urls:
            urls.append(url)
    if not urls:
        raise ConfigError(f"no tracker URL in {value!r}")
    return urls


def token(explicit: str | None = None) -> str | None:
    """The registry bearer token: flag, ``$P2PDIST_TOKEN``, config ``token``, or None."""
    return _resolve(explicit, "P2PDIST_TOKEN", "token", None)


@dataclass(frozen=True)
class Settings:
    """A resolved snapshot of the configuration, for code that wants all of it at once."""

    home: Path
    tracker: str
    token: str | None
    config_dir: Path

    @classmethod
    def resolve(
        cls,
        *,
        home_dir: str | Path | None = None,
        tracker: str | None = None,
        token_value: str | None = None,
    ) -> Settings:
        return cls(
            home=home(home_dir),
            tracker=tracker_url(tracker),
            token=token(token_value),
            config_dir=config_dir(),
        )


def ca_bundle(explicit: str | Path | None = None) -> Path | None:
    """The CA certificates (PEM) that https trackers are checked against: flag,
    ``$P2PDIST_CA_BUNDLE``, config ``ca_bundle``, or None (the system's CAs).

    For trackers whose certificate a private CA signed. It is used by the registry client
    and by libtorrent's announces alike; it replaces the system's CAs for both.
    """
    value = _resolve(str(explicit) if explicit else None, "P2PDIST_CA_BUNDLE", "ca_bundle", None)
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"CA bundle {path} (P2PDIST_CA_BUNDLE or config ca_bundle) is not a file: "
            "point it at the PEM certificate of the CA that signed the tracker's certificate"
        )
    return path


def listen_interface(explicit: str | None = None) -> str:
    """The address this host's BitTorrent session listens on: flag, ``$P2PDIST_LISTEN``,
    config ``listen``, or ``0.0.0.0`` (every interface). Tests and the demo use 127.0.0.1."""
    value = _resolve(explicit, "P2PDIST_LISTEN", "listen", "0.0.0.0")
    assert value is not None
    return value


def _count(
    explicit: int | None, env_name: str, file_key: str, what: str, unit: str = "bytes/s"
) -> int:
    if explicit is not None:
        return explicit
    value = _resolve(None, env_name, file_key, "0", also=int)
    try:
        return max(0, int(str(value)))
    except ValueError:
        raise ConfigError(f"{what} {value!r} must be an integer number of {unit}") from None


def upload_rate_limit(explicit: int | None = None) -> int:
    """Upload cap in bytes/s for this host's session (0 = none): flag or ``$P2PDIST_UPLOAD_LIMIT``."""
    return _count(explicit, "P2PDIST_UPLOAD_LIMIT", "upload_limit", "upload limit")


def download_rate_limit(explicit: int | None = None) -> int:
    """Download cap in bytes/s (0 = none): flag, ``$P2PDIST_DOWNLOAD_LIMIT``, config
    ``download_limit``."""
    return _count(explicit, "P2PDIST_DOWNLOAD_LIMIT", "download_limit", "download limit")


def listen_port(explicit: int | None = None) -> int:
    """The TCP (and uTP) port peers reach this host on: flag, ``$P2PDIST_PORT``, config
    ``port``, or 0 (any free port). Firewalls and Kubernetes NetworkPolicies need a fixed one."""
    port = _count(explicit, "P2PDIST_PORT", "port", "listen port", "0..65535")
    if port > 65535:
        raise ConfigError(f"listen port {port} must be at most 65535 (P2PDIST_PORT)")
    return port


def utp(explicit: bool | None = None) -> bool:
    """Whether the swarm also speaks uTP: flag, ``$P2PDIST_UTP=1``, config ``utp = true``;
    off by default. uTP yields to other traffic on shared internet links, but libtorrent's
    uTP ran 27x slower than TCP between hosts of one network (docs/NETWORK.md)."""
    if explicit is not None:
        return explicit
    value = _resolve(None, "P2PDIST_UTP", "utp", "0", also=bool)
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def announce_address(explicit: str | None = None) -> str | None:
    """The address other peers should dial this host at, announced to the tracker instead of
    the one the tracker sees (a host behind a proxy or a port forward): flag,
    ``$P2PDIST_ANNOUNCE_ADDRESS``, config ``announce_address``, or None (what the tracker sees)."""
    value = _resolve(explicit, "P2PDIST_ANNOUNCE_ADDRESS", "announce_address", None)
    if value is None:
        return None
    import ipaddress

    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        raise ConfigError(
            f"announce address {value!r} must be an IP address (P2PDIST_ANNOUNCE_ADDRESS)"
        ) from None


def writeback_interval(explicit: float | None = None) -> float:
    """Seconds between a download's background flushes to disk (store/writeback.py):
    ``explicit``, ``$P2PDIST_WRITEBACK``, config ``writeback``, or 1; 0 turns them off (a
    filesystem where fdatasync is costly, such as some network mounts)."""
    value: Any = explicit
    if value is None:
        value = _env("P2PDIST_WRITEBACK")
    if value is None:
        value = _file_values().get("writeback", 1.0)
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        seconds = float(value)
        if not math.isfinite(seconds):
            raise ValueError(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"writeback interval {value!r} must be a number of seconds "
            "(P2PDIST_WRITEBACK or config writeback)"
        ) from None
    return max(0.0, seconds)


def libtorrent_settings() -> dict[str, int | bool | str]:
    """libtorrent settings_pack entries applied over p2pdist's own, for tuning a deployment:
    ``$P2PDIST_LIBTORRENT`` (a JSON object, e.g. ``{"unchoke_slots_limit": 16}``) or the config
    file's ``[p2pdist.libtorrent]`` table; empty by default. Names and types are checked
    against libtorrent's when the session starts."""
    from_env = _env("P2PDIST_LIBTORRENT")
    if from_env:
        import json

        try:
            value: Any = json.loads(from_env)
        except ValueError as e:
            raise ConfigError(f"P2PDIST_LIBTORRENT is not JSON ({e})") from None
        where = "P2PDIST_LIBTORRENT"
    else:
        value = _file_values().get("libtorrent", {})
        where = f"{config_file()}: libtorrent"
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be an object of libtorrent settings, not {value!r}")
    for key, item in value.items():
        if not isinstance(item, (int, bool, str)):
            raise ConfigError(f"{where}: {key} must be an integer, a boolean or a string")
    return dict(value)


def ssrf_mitigation(explicit: bool | None = None) -> bool:
    """libtorrent's SSRF mitigation (default on): ``$P2PDIST_SSRF_MITIGATION=0`` turns it off.

    With it on, libtorrent reaches a tracker on a loopback address only at exactly
    ``/announce``; private models announce to ``/announce/<passkey>``, so a tracker on
    127.0.0.1 (tests, the demo) needs it off. Production trackers keep it on.
    """
    if explicit is not None:
        return explicit
    value = _resolve(None, "P2PDIST_SSRF_MITIGATION", "ssrf_mitigation", "1", also=bool)
    return str(value).strip().lower() not in ("0", "false", "no", "off")


def web_seeds(explicit: Sequence[str] | None = None) -> tuple[str, ...]:
    """Web seeds (BEP 19 origins) this host trusts for every model, besides those a version's
    signed manifest names: the argument, ``$P2PDIST_WEB_SEEDS`` (URLs separated by spaces or
    commas), or config ``web_seeds`` (a string or a list of strings); none by default. Web
    seeds that only the registry names are never used (docs/SECURITY.md)."""
    if explicit:
        return tuple(explicit)
    from_env = _env("P2PDIST_WEB_SEEDS")
    value: Any = from_env if from_env else _file_values().get("web_seeds")
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.replace(",", " ").split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{config_file()}: web_seeds must be a string or a list of strings")


def hf_hub_cache(explicit: str | Path | None = None) -> Path:
    """The Hugging Face hub cache that ``fetch --hf-cache`` fills, resolved as huggingface_hub
    resolves it (its constants.py): flag, ``$HF_HUB_CACHE``, ``$HUGGINGFACE_HUB_CACHE``,
    ``$HF_HOME/hub``, ``$XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub``."""
    if explicit:
        return Path(os.path.expandvars(str(explicit))).expanduser()
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = _env(name)
        if value:
            return Path(os.path.expandvars(value)).expanduser()
    hf_home = _env("HF_HOME")
    if hf_home is None:
        xdg = _env("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
        hf_home = str(Path(xdg) / "huggingface")
    return Path(os.path.expandvars(hf_home)).expanduser() / "hub"


def hf_cache_default(explicit: bool | None = None) -> bool:
    """Whether ``fetch`` also places what it fetched in the Hugging Face cache without being
    asked: flag, ``$P2PDIST_HF_CACHE`` (1/0), config ``hf_cache = true``, default off."""
    if explicit is not None:
        return explicit
    value = _resolve(None, "P2PDIST_HF_CACHE", "hf_cache", "0", also=bool)
    return str(value).strip().lower() in ("1", "true", "yes", "on")
