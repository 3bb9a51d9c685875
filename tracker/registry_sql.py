"""The registry's rules in SQL, once, for every engine (SQLite and PostgreSQL).

``SqlRegistry`` implements ``registry_store.RegistryStore`` on top of two primitives an
engine provides: ``_read(sql, args)`` (rows of one statement) and ``_transaction()`` (a
context that yields a statement runner and commits at its end, serialised against other
writers of the same database, also in other processes). Statements are written with ``?``
placeholders and portable SQL (``ON CONFLICT``, ``RETURNING``, ``substr``); engines
translate placeholders where theirs differ. Every statement takes parameters, never
formatted strings, so a hostile name is data and nothing else.

Tokens are stored as SHA-256 hashes, and so are the announce passkeys derived from them
(``p2pdist.client.passkey_for``): the database alone grants nothing. A token's public id is
the first 12 hex digits of its hash: enough to list and revoke it, useless to announce.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import Any, Literal

from p2pdist.client import passkey_for
from p2pdist.errors import ConflictError, NotFoundError, SignatureError
from p2pdist.formats.statement import Statement
from p2pdist.ref import ModelRef
from p2pdist.tracker.registry_store import (
    Grant,
    ModelInfo,
    NewVersion,
    Published,
    TokenInfo,
    TrackedHash,
    VersionInfo,
)

SCHEMA_VERSION = 1
TOKEN_PREFIX = "p2pt_"
TOKEN_ID_LENGTH = 12

Row = tuple[Any, ...]
Run = Callable[..., list[Row]]
"""``run(sql, *args)``: execute one statement inside a transaction, return its rows."""


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_NOT_YANKED = "NOT EXISTS (SELECT 1 FROM yanks y WHERE y.model = v.model AND y.version = v.version)"
_MODEL_COLUMNS = (
    "SELECT m.name, m.private, m.public_key, "
    f"(SELECT version FROM versions v WHERE v.model = m.name AND {_NOT_YANKED} "
    "ORDER BY seq DESC LIMIT 1), "
    "(SELECT COUNT(*) FROM versions v WHERE v.model = m.name) FROM models m"
)
_VERSION_COLUMNS = (
    "SELECT model, version, seq, parent, created, published, size, delta_size FROM versions"
)


class SqlRegistry:
    """The registry on a SQL engine; subclasses provide ``_read`` and ``_transaction``."""

    location: str = ""
    shared: bool = False

    # -- engine primitives ------------------------------------------------------------------
    def _read(self, sql: str, *args: Any) -> list[Row]:
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[Run]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _one(self, sql: str, *args: Any) -> Row | None:
        rows = self._read(sql, *args)
        return rows[0] if rows else None

    # -- tokens -----------------------------------------------------------------------------
    def create_token(self, namespace: str | None, *, publish: bool = True) -> str:
        """Make a token, store only its hashes, and return it (shown once, never stored)."""
        if namespace is not None:
            ModelRef(namespace)  # namespaces follow the name rules, checked by the caller
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._transaction() as run:
            run(
                "INSERT INTO tokens (token_hash, passkey_hash, namespace, publish, created) "
                "VALUES (?, ?, ?, ?, ?)",
                sha256(token), sha256(passkey_for(token)), namespace, int(publish), now(),
            )  # fmt: skip
        return token

    def grant_for_token(self, token: str) -> Grant | None:
        return self._grant("token_hash", sha256(token))

    def grant_for_passkey(self, passkey: str) -> Grant | None:
        return self._grant("passkey_hash", sha256(passkey))

    def _grant(self, column: Literal["token_hash", "passkey_hash"], digest: str) -> Grant | None:
        row = self._one(f"SELECT namespace, publish FROM tokens WHERE {column} = ?", digest)
        return None if row is None else Grant(row[0], bool(row[1]))

    def tokens(self) -> list[TokenInfo]:
        """Every token: public id, scope and creation time (never the secret, never its hash)."""
        rows = self._read(
            "SELECT token_hash, namespace, publish, created FROM tokens ORDER BY created, token_hash"
        )
        return [TokenInfo(r[0][:TOKEN_ID_LENGTH], r[1], bool(r[2]), r[3]) for r in rows]

    def revoke_token(self, token_id: str) -> TokenInfo:
        """Delete the token whose public id is ``token_id``; NotFoundError if none is."""
        token_id = token_id.strip().lower()
        if len(token_id) != TOKEN_ID_LENGTH or any(c not in "0123456789abcdef" for c in token_id):
            raise NotFoundError(
                f"{token_id[:32]!r} is not a token id: {TOKEN_ID_LENGTH} hex digits, "
                "as `tracker token --list` shows"
            )
        with self._transaction() as run:
            rows = run(
                "DELETE FROM tokens WHERE substr(token_hash, 1, 12) = ? "
                "RETURNING token_hash, namespace, publish, created",
                token_id,
            )
        if not rows:
            raise NotFoundError(f"no token with id {token_id}")
        r = rows[0]
        return TokenInfo(r[0][:TOKEN_ID_LENGTH], r[1], bool(r[2]), r[3])

    # -- reads ------------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        rows = self._read(f"{_MODEL_COLUMNS} ORDER BY m.name")
        return [ModelInfo(r[0], bool(r[1]), r[2], r[3], int(r[4])) for r in rows]

    def model(self, name: str) -> ModelInfo | None:
        r = self._one(f"{_MODEL_COLUMNS} WHERE m.name = ?", name)
        return None if r is None else ModelInfo(r[0], bool(r[1]), r[2], r[3], int(r[4]))

    def versions(self, model: str) -> list[VersionInfo]:
        rows = self._read(f"{_VERSION_COLUMNS} WHERE model = ? ORDER BY seq", model)
        return [VersionInfo(*r) for r in rows]

    def version(self, model: str, version: str) -> VersionInfo | None:
        row = self._one(f"{_VERSION_COLUMNS} WHERE model = ? AND version = ?", model, version)
        return None if row is None else VersionInfo(*row)

    def blob(
        self, model: str, version: str, what: Literal["manifest", "torrent", "delta"]
    ) -> bytes:
        """The manifest, full torrent or delta torrent of a version, exactly as published."""
        column = {"manifest": "manifest", "torrent": "torrent", "delta": "delta_torrent"}[what]
        row = self._one(
            f"SELECT {column} FROM versions WHERE model = ? AND version = ?", model, version
        )
        if row is None:
            raise NotFoundError(f"{model}@{version}: no such version")
        if row[0] is None:
            raise NotFoundError(f"{model}@{version}: has no delta torrent (it has no parent)")
        return bytes(row[0])

    def tracked_hashes(self) -> list[TrackedHash]:
        return [h for p in self.changes(0) for h in p.hashes]

    def changes(self, after_seq: int) -> list[Published]:
        """Versions published after sequence number ``after_seq``, oldest first, with their
        swarm ids: how a tracker learns what another replica published."""
        rows = self._read(
            "SELECT v.seq, v.model, v.version, i.info_hash, i.kind, m.private FROM versions v "
            "JOIN models m ON m.name = v.model JOIN infohashes i ON i.seq = v.seq "
            "WHERE v.seq > ? ORDER BY v.seq",
            after_seq,
        )
        out: list[Published] = []
        for seq, model, version, info_hash, kind, private in rows:
            tracked = TrackedHash(bytes(info_hash), model, version, kind, bool(private))
            if out and out[-1].seq == seq:
                last = out[-1]
                out[-1] = Published(seq, model, version, (*last.hashes, tracked))
            else:
                out.append(Published(seq, model, version, (tracked,)))
        return out

    def last_seq(self) -> int:
        row = self._one("SELECT MAX(seq) FROM versions")
        return int(row[0]) if row is not None and row[0] is not None else 0

    # -- publish ----------------------------------------------------------------------------
    def publish(self, new: NewVersion) -> Literal["created", "same"]:
        """Store a version atomically, pinning the model's key on its first publish.

        Returns "same" when the identical bytes are already stored (idempotent). Raises
        ConflictError for the same version with other bytes or another ``private`` than the
        model's, SignatureError when the model's pinned key differs, NotFoundError when the
        declared parent is not published.
        """
        with self._transaction() as run:
            return self._publish(run, new)

    def _publish(self, run: Run, new: NewVersion) -> Literal["created", "same"]:
        found = run("SELECT public_key, private FROM models WHERE name = ?", new.model)
        model = found[0] if found else None
        if model is not None and model[0] == "":  # an operator reset the pin: this key pins
            run("UPDATE models SET public_key = ? WHERE name = ?", new.public_key, new.model)
            _audit(run, new.model, "pinned", f"key {new.public_key} pinned by the publish of "
                   f"{new.version} after a pin reset")  # fmt: skip
            model = (new.public_key, model[1])
        if model is not None and model[0] != new.public_key:
            raise SignatureError(
                f"{new.model}@{new.version}: signed by key {new.public_key[:16]}…, but "
                f"{new.model} is pinned to key {model[0][:16]}… (its first publisher)",
                expected=model[0],
                actual=new.public_key,
            )
        if model is not None and bool(model[1]) != new.private:
            # Not silently: a public model's "private" version would be readable by all,
            # and a private model's public torrent announces without a passkey (refused).
            kind, flag = ("private", "with") if model[1] else ("public", "without")
            raise ConflictError(
                f"{new.model}@{new.version}: {new.model} is a {kind} model; publish its "
                f"versions {flag} --private (a model cannot change between the two)"
            )
        old = run(
            "SELECT manifest, torrent, delta_torrent FROM versions WHERE model = ? AND version = ?",
            new.model, new.version,
        )  # fmt: skip
        if old:
            o = old[0]
            same = (bytes(o[0]), bytes(o[1]), None if o[2] is None else bytes(o[2]))
            if same == (new.manifest, new.torrent, new.delta_torrent):
                return "same"
            raise ConflictError(
                f"{new.model}@{new.version} is already published with other bytes; "
                "versions are immutable: publish a new version"
            )
        if run(
            "SELECT 1 FROM tags WHERE model = ? AND tag = ? AND version <> ''",
            new.model, new.version,
        ):  # fmt: skip
            raise ConflictError(
                f"{new.model}@{new.version}: {new.version} is a tag of {new.model} (a name "
                "that resolves to another version); publish under another version name"
            )
        if new.parent is not None and not run(
            "SELECT 1 FROM versions WHERE model = ? AND version = ?", new.model, new.parent
        ):
            raise NotFoundError(
                f"{new.model}@{new.version}: parent version {new.parent} is not published; "
                "publish it first"
            )
        for info_hash, _ in new.info_hashes:
            if run("SELECT 1 FROM infohashes WHERE info_hash = ?", info_hash):
                raise ConflictError(
                    f"{new.model}@{new.version}: infohash {info_hash.hex()} already belongs "
                    "to another published version"
                )
        stamp = now()
        if model is None:
            run(
                "INSERT INTO models (name, private, public_key, created) VALUES (?, ?, ?, ?)",
                new.model, int(new.private), new.public_key, stamp,
            )  # fmt: skip
        ((seq,),) = run(
            "INSERT INTO versions (model, version, parent, created, published, size, "
            "delta_size, manifest, torrent, delta_torrent) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            new.model, new.version, new.parent, new.created, stamp, new.size,
            new.delta_size, new.manifest, new.torrent, new.delta_torrent,
        )  # fmt: skip
        for info_hash, kind in new.info_hashes:
            run(
                "INSERT INTO infohashes (info_hash, seq, kind) VALUES (?, ?, ?)",
                info_hash,
                seq,
                kind,
            )
        return "created"

    # -- lifecycle: yanks, tags, key rotation, pin reset --------------------------------------
    def yanked(self, model: str) -> dict[str, str | None]:
        """Withdrawn versions of ``model`` and the reason each was given (None: none given)."""
        return dict(self._read("SELECT version, reason FROM yanks WHERE model = ?", model))

    def tags(self, model: str) -> dict[str, str]:
        """The movable tags of ``model``: tag -> version."""
        return dict(
            self._read("SELECT tag, version FROM tags WHERE model = ? AND version <> ''", model)
        )

    def audit(self, model: str | None = None) -> list[tuple[str, str, str, str]]:
        """The audit trail (time, model, action, detail), oldest first."""
        if model is None:
            return [tuple(r) for r in self._read("SELECT at, model, action, detail FROM audit")]
        rows = self._read("SELECT at, model, action, detail FROM audit WHERE model = ?", model)
        return [tuple(r) for r in rows]

    def apply_statement(self, statement: Statement) -> str:
        """Check a publisher's signed statement against the model's pinned key and apply it;
        return a one-line account of what changed (see ``formats.statement``)."""
        name = statement.model
        with self._transaction() as run:
            found = run("SELECT public_key FROM models WHERE name = ?", name)
            if not found:
                raise NotFoundError(f"model {name} not found")
            pinned = found[0][0]
            if pinned == "":
                raise SignatureError(
                    f"{name}: its key pin was reset by the operator; the next publish pins "
                    "a new key, and statements are accepted from that key"
                )
            statement.verify(pinned)
            if statement.kind == "rotate-key":
                new_key = statement.fields["new_key"]
                run("UPDATE models SET public_key = ? WHERE name = ?", new_key, name)
                _audit(run, name, "rotate-key", f"key {pinned} -> {new_key}, signed by the old key")
                return f"{name}: publisher key rotated to {new_key[:16]}…"
            version = statement.fields["version"]
            if not run("SELECT 1 FROM versions WHERE model = ? AND version = ?", name, version):
                raise NotFoundError(f"{name}@{version}: no such version")
            blob = statement.to_bytes()
            if statement.kind == "yank":
                reason = statement.fields.get("reason")
                _not_older(run, "yanks", "version", name, version, statement.signed_at)
                run(
                    "INSERT INTO yanks (model, version, reason, signed_at, statement) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (model, version) DO UPDATE SET "
                    "reason = excluded.reason, signed_at = excluded.signed_at, "
                    "statement = excluded.statement",
                    name, version, reason, statement.signed_at, blob,
                )  # fmt: skip
                # the tags on it stop resolving, but keep their signed_at (a tombstone), so
                # an older statement replayed cannot point them back somewhere
                run("UPDATE tags SET version = '' WHERE model = ? AND version = ?", name, version)
                _audit(
                    run, name, "yank", f"{version} withdrawn" + (f": {reason}" if reason else "")
                )
                return f"{name}@{version} withdrawn"
            tag = statement.fields["tag"]
            if run("SELECT 1 FROM yanks WHERE model = ? AND version = ?", name, version):
                raise ConflictError(f"{name}@{version} was withdrawn; a tag cannot point at it")
            if run("SELECT 1 FROM versions WHERE model = ? AND version = ?", name, tag):
                raise ConflictError(f"{name}@{tag} is a version; a tag cannot take its name")
            _not_older(run, "tags", "tag", name, tag, statement.signed_at)
            run(
                "INSERT INTO tags (model, tag, version, signed_at, statement) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (model, tag) DO UPDATE SET "
                "version = excluded.version, signed_at = excluded.signed_at, "
                "statement = excluded.statement",
                name, tag, version, statement.signed_at, blob,
            )  # fmt: skip
            _audit(run, name, "tag", f"{tag} -> {version}")
            return f"{name}@{tag} now points at {version}"

    def reset_pin(self, model: str, reason: str) -> str:
        """The operator's way out of a lost publisher key: unpin ``model`` (its next publish
        pins the key that signs it), with an audit record. Returns the key that was pinned."""
        with self._transaction() as run:
            found = run("SELECT public_key FROM models WHERE name = ?", model)
            if not found:
                raise NotFoundError(f"model {model} not found")
            run("UPDATE models SET public_key = '' WHERE name = ?", model)
            _audit(run, model, "reset-pin", f"operator unpinned key {found[0][0]}: {reason}")
        return str(found[0][0])


def _audit(run: Run, model: str, action: str, detail: str) -> None:
    run(
        "INSERT INTO audit (at, model, action, detail) VALUES (?, ?, ?, ?)",
        now(),
        model,
        action,
        detail,
    )


def _not_older(run: Run, table: str, column: str, model: str, key: str, signed_at: str) -> None:
    """Refuse a statement older than the one already applied to the same subject (a replay)."""
    rows = run(f"SELECT signed_at FROM {table} WHERE model = ? AND {column} = ?", model, key)
    if rows and rows[0][0] > signed_at:
        raise ConflictError(
            f"{model}@{key}: a newer statement (signed {rows[0][0]}) is already applied"
        )


def rows_of(cursor: Any) -> list[Row]:
    """The rows a DB-API cursor produced (none for a statement without a result)."""
    return [tuple(r) for r in cursor.fetchall()] if cursor.description is not None else []


__all__ = ["SCHEMA_VERSION", "TOKEN_ID_LENGTH", "TOKEN_PREFIX", "SqlRegistry", "rows_of"]
