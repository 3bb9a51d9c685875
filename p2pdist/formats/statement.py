"""Signed registry statements: a publisher's word on a model after its versions are out.

Three kinds, each signed by the publisher's ed25519 key over canonical JSON (as manifests
are), so the registry can check them against the key pinned for the model and anyone can
check them again later (the registry keeps the statement as sent):

- ``yank``: withdraw ``version`` (with an optional ``reason``): it leaves ``latest``,
  followers do not move to it, a fetch by its exact name is refused saying why;
- ``tag``: point the movable tag ``tag`` (``stable``, ...) at ``version``; resolved like
  ``latest``;
- ``rotate-key``: from now on the model's key is ``new_key``; signed by the *old* key, so a
  stolen registry token alone cannot take a model over.

``signed_at`` orders statements: the registry refuses one older than the last it applied of
the same kind and subject, so an old statement replayed cannot move a tag back.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from p2pdist.errors import FormatError, SignatureError
from p2pdist.formats import jsonio
from p2pdist.formats.keys import public_key_of
from p2pdist.formats.manifest import canonical_json
from p2pdist.ref import validate_name, validate_version

Kind = Literal["yank", "tag", "rotate-key"]
KINDS: tuple[str, ...] = ("yank", "tag", "rotate-key")
MAX_REASON = 500
MAX_CLOCK_SKEW_SECONDS = 600
"""How far in the future a statement's ``signed_at`` may lie (clocks disagree a little; a
statement dated years ahead would block every later one of its subject)."""
SIGNED_AT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_FIELDS = {
    "yank": {"version", "reason"},
    "tag": {"tag", "version"},
    "rotate-key": {"new_key"},
}


@dataclass(frozen=True)
class Statement:
    """One signed statement; ``fields`` are the kind's own (see the module docstring)."""

    kind: Kind
    model: str
    fields: dict[str, Any] = field(default_factory=dict)
    signed_at: str = ""
    public_key: str | None = None
    signature: str | None = None

    def _unsigned(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model": self.model,
            "signed_at": self.signed_at,
            "public_key": self.public_key,
            **self.fields,
        }

    def to_json(self) -> dict[str, Any]:
        return {**self._unsigned(), "signature": self.signature}

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    def signed(self, key: Ed25519PrivateKey) -> Statement:
        """This statement stamped now and signed by ``key``."""
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        unsigned = Statement(self.kind, self.model, dict(self.fields), stamp, public_key_of(key))
        signature = key.sign(canonical_json(unsigned._unsigned())).hex()
        return Statement(
            self.kind, self.model, dict(self.fields), stamp, unsigned.public_key, signature
        )

    def verify(self, trusted_key: str) -> None:
        """Raise SignatureError unless signed by ``trusted_key`` (the model's pinned key)."""
        where = f"{self.kind} statement for {self.model}"
        if self.public_key != trusted_key:
            raise SignatureError(
                f"{where}: signed by key {(self.public_key or '?')[:16]}…, but {self.model} is "
                f"pinned to key {trusted_key[:16]}…",
                expected=trusted_key,
                actual=self.public_key or "",
            )
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(trusted_key)).verify(
                bytes.fromhex(self.signature or ""), canonical_json(self._unsigned())
            )
        except (InvalidSignature, ValueError):
            raise SignatureError(f"{where}: the signature does not verify") from None

    @classmethod
    def from_json(cls, obj: Any) -> Statement:
        """Parse and check the shape of a statement (not its signature: see ``verify``)."""
        if not isinstance(obj, dict):
            raise FormatError("a statement must be a JSON object")
        kind = obj.get("kind")
        if kind not in KINDS:
            raise FormatError(f"statement kind must be one of {', '.join(KINDS)}")
        own = _FIELDS[kind]
        common = {"kind", "model", "signed_at", "public_key", "signature"}
        extra = set(obj) - common - own
        if extra:
            raise FormatError(f"unknown statement fields: {', '.join(sorted(extra))}")
        for name in ("model", "signed_at", "public_key", "signature"):
            if not isinstance(obj.get(name), str):
                raise FormatError(f"statement field {name} must be a string")
        validate_name(obj["model"])
        try:
            signed_at = datetime.strptime(obj["signed_at"], SIGNED_AT_FORMAT)
        except ValueError:
            raise FormatError(
                "statement field signed_at must be a UTC time like 2026-01-31T12:00:00.000000Z"
            ) from None
        ahead = signed_at.replace(tzinfo=timezone.utc) - datetime.now(timezone.utc)
        if ahead.total_seconds() > MAX_CLOCK_SKEW_SECONDS:
            raise FormatError(
                f"statement signed_at {obj['signed_at']} lies in the future; check the signer's clock"
            )
        fields = {k: obj[k] for k in own if k in obj}
        if kind in ("yank", "tag"):
            validate_version(_string(fields, "version"))
        if kind == "tag":
            validate_version(_string(fields, "tag"))
        if kind == "yank" and fields.get("reason") is not None:
            reason = _string(fields, "reason")
            if len(reason) > MAX_REASON or any(unicodedata.category(c) == "Cc" for c in reason):
                raise FormatError(f"a yank reason is one line of at most {MAX_REASON} characters")
        if kind == "rotate-key":
            new_key = _string(fields, "new_key")
            try:
                if not re.fullmatch(r"[0-9a-f]{64}", new_key):  # as public_key_of writes it
                    raise ValueError
                Ed25519PublicKey.from_public_bytes(bytes.fromhex(new_key))
            except ValueError:
                raise FormatError(
                    "new_key must be an ed25519 public key in lowercase hex (64 digits)"
                ) from None
        return cls(
            kind, obj["model"], fields, obj["signed_at"], obj["public_key"], obj["signature"]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Statement:
        return cls.from_json(jsonio.loads(data, what="statement"))


def _string(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str):
        raise FormatError(f"statement field {name} must be a string")
    return value


__all__ = ["KINDS", "Kind", "Statement"]
