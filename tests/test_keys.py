from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.errors import ConfigError, SignatureError
from p2pdist.formats.keys import (
    TrustStore,
    generate_signing_key,
    load_signing_key,
    public_key_of,
    signing_key_path,
)
from p2pdist.formats.manifest import FileEntry, Manifest


def test_keygen_writes_private_key_mode_600(p2p_home: Path) -> None:
    path = generate_signing_key()
    assert path == signing_key_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = load_signing_key()
    assert len(public_key_of(key)) == 64
    with pytest.raises(ConfigError, match="already exists"):
        generate_signing_key()


def test_missing_key_says_how_to_create_one(p2p_home: Path) -> None:
    with pytest.raises(ConfigError, match="p2pdist keygen"):
        load_signing_key()


def _manifest(key: Ed25519PrivateKey, version: str = "v1") -> Manifest:
    return Manifest(name="org/m", version=version, files=(FileEntry("a", 1, "0" * 64),)).signed(key)


def test_trust_on_first_use_then_refuse_other_key(p2p_home: Path) -> None:
    trust = TrustStore()
    first, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    assert trust.check(_manifest(first)) is True
    assert trust.check(_manifest(first, "v2")) is False
    with pytest.raises(SignatureError, match="p2pdist trust org/m"):
        trust.check(_manifest(other, "v3"))
    trust.trust("org/m", public_key_of(other))  # a deliberate rotation
    assert trust.check(_manifest(other, "v3")) is False
