"""The error tree of p2pdist.

Every failure a user can cause or meet (bad input, tampering, a dead peer, a full disk)
is raised as one of these, so that the CLI can print it as one line and exit 1, and a
program can catch exactly what it expects::

    P2PDistError
    ├── RefError(ValueError)            a reference like "org/name@v3" that does not parse
    ├── ConfigError                     missing or invalid configuration (tracker URL, key, token)
    ├── FormatError(ValueError)         bytes that are not what the format says (manifest, header, delta)
    │   └── UnsafePathError             an absolute path or ".." where only relative paths belong
    ├── IntegrityError                  content whose hash differs from what was signed
    │   └── SignatureError              a signature that does not verify, or an untrusted key
    ├── NotFoundError(LookupError)      a model, version or file that does not exist
    ├── ConflictError                   an immutable thing that already exists with other bytes
    ├── AuthError(PermissionError)      a missing or insufficient token
    ├── TrackerError(ConnectionError)   the tracker is down or answered nonsense
    ├── SwarmError                      a download that cannot complete (no peers, no origin, stalled)
    ├── SwarmError                      a download that cannot complete (no peers, no origin, stalled)
    │   └── NoSeedersError              the tracker knows no complete copy and there is no origin
    ├── StoreError(OSError)             the local store cannot be written (disk full, permissions)
    └── MissingDependencyError(ImportError)  an optional extra (torch) that this install lacks

Each message names the thing concerned and, where there is one, the next step.
"""

from __future__ import annotations

from pathlib import Path


class P2PDistError(Exception):
    """Root of every error p2pdist raises on purpose."""


class RefError(P2PDistError, ValueError):
    """A model reference that does not parse."""


class ConfigError(P2PDistError):
    """Configuration that is missing or invalid."""


class FormatError(P2PDistError, ValueError):
    """Bytes that do not follow the format they claim (manifest, safetensors header, delta)."""


class UnsafePathError(FormatError):
    """A path that is absolute, contains '..', or otherwise escapes its folder."""


class IntegrityError(P2PDistError):
    """Content whose blake3 differs from the signed manifest.

    Attributes:
        path: the file concerned (relative to its version folder) or None.
        expected: the hash the manifest declares, or None.
        actual: the hash of the bytes found, or None.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        expected: str | None = None,
        actual: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.expected = expected
        self.actual = actual


class SignatureError(IntegrityError):
    """A manifest signature that fails, or a publisher key that is not the trusted one."""


class NotFoundError(P2PDistError, LookupError):
    """A model, version, or file that does not exist where it was looked for."""


class ConflictError(P2PDistError):
    """An immutable object (a published version) that already exists with other bytes."""


class AuthError(P2PDistError, PermissionError):
    """A request without a token, or with a token that lacks the right."""


class TrackerError(P2PDistError, ConnectionError):
    """The tracker cannot be reached, or answered something that is not the protocol."""


class SwarmError(P2PDistError):
    """A transfer that cannot complete: no peers and no origin, a stall, a fatal torrent error."""


class NoSeedersError(SwarmError):
    """The tracker knows no complete copy of a torrent and no web seed serves it."""


class StoreError(P2PDistError, OSError):
    """The local store cannot be read or written (disk full, permissions, a held lock)."""


class MissingDependencyError(P2PDistError, ImportError):
    """A feature whose optional dependency is not installed (torch for loading: the extra
    ``p2pdist[torch]``); the message names the package and the install command."""


__all__ = [
    "AuthError",
    "ConfigError",
    "ConflictError",
    "FormatError",
    "IntegrityError",
    "MissingDependencyError",
    "NoSeedersError",
    "NotFoundError",
    "P2PDistError",
    "RefError",
    "SignatureError",
    "StoreError",
    "SwarmError",
    "TrackerError",
    "UnsafePathError",
]
