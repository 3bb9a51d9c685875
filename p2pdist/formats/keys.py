"""Publisher keys: the signing key of this host, and the publisher keys it trusts.

A publisher signs each manifest with an ed25519 key kept in the config dir (private key mode
600). A consumer pins each model's publisher key on first fetch, like SSH's known_hosts
(trust on first use), or ahead of time with ``p2pdist trust NAME PUBKEY``; a version signed
by another key is refused until the rotation is accepted deliberately.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from filelock import FileLock

from p2pdist import config
from p2pdist.errors import ConfigError, FormatError, SignatureError
from p2pdist.formats.manifest import Manifest, public_key_hex
from p2pdist.ref import validate_name

SIGNING_KEY_FILE = "signing_key.pem"
TRUSTED_KEYS_FILE = "trusted_publishers.json"


def signing_key_path(config_dir: Path | None = None) -> Path:
    return (config_dir or config.config_dir()) / SIGNING_KEY_FILE


def generate_signing_key(config_dir: Path | None = None, *, overwrite: bool = False) -> Path:
    """Create this host's ed25519 signing key (mode 600); return its path.

    Refuses to replace an existing key unless ``overwrite``: a lost key means consumers must
    accept a rotation for every model it signed.
    """
    path = signing_key_path(config_dir)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: a signing key already exists; pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def load_signing_key(config_dir: Path | None = None, *, create: bool = False) -> Ed25519PrivateKey:
    """This host's signing key; with ``create``, make one when there is none."""
    path = signing_key_path(config_dir)
    if not path.exists():
        if not create:
            raise ConfigError(f"no signing key at {path}; create one with `p2pdist keygen`")
        generate_signing_key(config_dir)
    return read_signing_key(path)


def read_signing_key(path: Path) -> Ed25519PrivateKey:
    """The ed25519 private key in the PEM file ``path``; one ConfigError line otherwise."""
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{path}: cannot read the signing key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an ed25519 private key")
    return key


def public_key_of(key: Ed25519PrivateKey) -> str:
    return public_key_hex(key.public_key())


def _validate_public_key(value: str) -> str:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(value))
    except ValueError:
        raise FormatError(
            f"invalid ed25519 public key {value!r}: expected 64 hex characters"
        ) from None
    return value.lower()


class TrustStore:
    """The publisher key pinned for each model name (a JSON file in the config dir)."""

    def __init__(self, config_dir: Path | None = None) -> None:
        self.path = (config_dir or config.config_dir()) / TRUSTED_KEYS_FILE
        self._lock = FileLock(str(self.path) + ".lock")

    def _read(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"{self.path}: unreadable trust file ({e}); fix or remove it"
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.path}: trust file must be a JSON object")
        return {str(k): str(v) for k, v in data.items()}

    def _write(self, data: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(sorted(data.items())), indent=2) + "\n")
        os.replace(tmp, self.path)

    def get(self, name: str) -> str | None:
        return self._read().get(name)

    def trust(self, name: str, public_key: str) -> None:
        """Pin (or deliberately rotate) the publisher key of model ``name``."""
        validate_name(name)
        key = _validate_public_key(public_key)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            data = self._read()
            data[name] = key
            self._write(data)

    def check(self, manifest: Manifest, *, pin: bool = True) -> bool:
        """Verify the manifest's signature against the pinned key; pin it on first use.

        Returns True when the key was pinned now (first use). Raises SignatureError when the
        signature fails or the key differs from the pinned one.
        """
        manifest.verify_signature()
        assert manifest.public_key is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            data = self._read()
            pinned = data.get(manifest.name)
            if pinned is None:
                if pin:
                    data[manifest.name] = manifest.public_key
                    self._write(data)
                return True
        if pinned != manifest.public_key:
            raise SignatureError(
                f"{manifest.name}@{manifest.version} is signed by key {manifest.public_key}, "
                f"not the pinned key {pinned}; if the publisher rotated its key, accept it with "
                f"`p2pdist trust {manifest.name} {manifest.public_key}`",
                expected=pinned,
                actual=manifest.public_key,
            )
        return False
