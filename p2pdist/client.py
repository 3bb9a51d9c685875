"""Talk to the registry face of a p2pdist tracker (the ``/v1/`` JSON API).

Synchronous and stdlib-only (``urllib.request``), so the CLI, the loader, the trainer's
publisher and background threads can all use it without an event loop. Every failure
becomes one of p2pdist's errors with a message that says what to do:

- the tracker cannot be reached or times out -> TrackerError naming the URL and how to start it;
- 404 -> NotFoundError, 401/403 -> AuthError, 409 -> ConflictError, other 4xx -> FormatError
  (the request was refused as malformed), 5xx or an answer that is not the expected JSON ->
  TrackerError.

The HTTP contract (paths, bodies, status codes) is documented in the tracker's package
docstring (``p2pdist.tracker``). A model name may hold one ``/`` (``org/name``); it goes into
the path as is.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import http.client
import json
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from p2pdist import config
from p2pdist.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    FormatError,
    NotFoundError,
    RefError,
    SignatureError,
    TrackerError,
    UnsafePathError,
)
from p2pdist.formats import jsonio

DEFAULT_TIMEOUT = 10.0
"""Seconds to wait for a connection or an answer (long-polls add their wait on top)."""

MAX_ANSWER_BYTES = 128 * 1024 * 1024
"""Largest answer read from the registry (manifests are at most 16 MiB, torrents far less)."""

_PASSKEY_CONTEXT = b"p2pdist announce passkey v1\x00"

_REFUSALS: dict[str, type[FormatError] | type[RefError] | type[SignatureError]] = {
    "FormatError": FormatError,
    "UnsafePathError": UnsafePathError,
    "RefError": RefError,
    "SignatureError": SignatureError,
}
"""Error types a 400 answer may name (its ``type`` field), raised as themselves here."""


def passkey_for(token: str) -> str:
    """The announce passkey of a token: 32 hex characters, derived so neither reveals the other.

    A private torrent's announce URL is ``<tracker>/announce/<passkey>``; standard clients
    then announce with the rights of the token without ever holding the token itself.
    """
    return hashlib.sha256(_PASSKEY_CONTEXT + token.encode("utf-8")).hexdigest()[:32]


def tls_context(ca_bundle: Path | None = None) -> ssl.SSLContext:
    """The TLS context for https trackers: the system's CAs, or only those of ``ca_bundle``
    (``config.ca_bundle()``: a private CA); certificates and host names are always checked."""
    try:
        return ssl.create_default_context(cafile=None if ca_bundle is None else str(ca_bundle))
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(
            f"CA bundle {ca_bundle} cannot be read as PEM certificates ({e}); "
            "fix P2PDIST_CA_BUNDLE or config ca_bundle"
        ) from None


class RegistryClient:
    """A client of a tracker's registry, optionally authenticated with a bearer token.

    ``base_url`` may name several replicas of one registry (a list, or comma-separated): a
    request that cannot reach one (refused, timed out, or answered 502/503/504) is tried on
    the next, and the client stays with the one that answered. Publishing is idempotent
    (the same bytes again answer 200), so a publish retried on another replica is safe.

    An ``https://`` tracker's certificate is checked against the system's CAs, or against
    ``ca_bundle`` (default: ``config.ca_bundle()``, ``$P2PDIST_CA_BUNDLE``) when given.
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        ca_bundle: Path | None = None,
    ):
        from p2pdist.config import split_tracker_urls

        text = base_url if isinstance(base_url, str) else ",".join(base_url)
        self.base_urls: list[str] = split_tracker_urls(text)
        self._current = 0
        self.token = token
        self.timeout = timeout
        self._waits: dict[int, _CancellableConnection] = {}  # by thread: long-polls in flight
        self._waits_lock = threading.RLock()  # stop() may run in a signal handler
        context = None
        if any(url.startswith("https://") for url in self.base_urls):
            context = tls_context(ca_bundle if ca_bundle is not None else config.ca_bundle())
        self._opener = urllib.request.build_opener(
            _Handler(self), _HTTPSHandler(self, context=context)
        )

    def __repr__(self) -> str:
        urls = ",".join(self.base_urls)
        return f"RegistryClient({urls!r}, token={'set' if self.token else None})"

    @property
    def base_url(self) -> str:
        """The URL requests go to first: the last one that answered."""
        return self.base_urls[self._current]

    # -- the API ----------------------------------------------------------------------------
    def publish(
        self,
        manifest_bytes: bytes,
        torrent: bytes,
        delta_torrent: bytes | None,
        private: bool = False,
    ) -> dict[str, Any]:
        """Publish a signed manifest with its torrents; returns the registry's answer.

        The answer has ``name``, ``version`` and ``created`` (False when the identical version
        was already published, which is not an error).
        """
        try:
            manifest = jsonio.loads(manifest_bytes, what="manifest")
            name, version = manifest["name"], manifest["version"]
        except (ValueError, TypeError, KeyError) as e:
            raise FormatError(f"cannot publish: manifest is not a p2pdist manifest ({e})") from None
        body = json.dumps(
            {
                "manifest": manifest,
                "torrent": base64.b64encode(torrent).decode("ascii"),
                "delta_torrent": None
                if delta_torrent is None
                else base64.b64encode(delta_torrent).decode("ascii"),
                "private": private,
            }
        ).encode("utf-8")
        answer = self._json("POST", f"/v1/models/{_q(name)}/versions/{_q(version)}", body=body)
        if not isinstance(answer, dict) or "version" not in answer:
            raise self._nonsense("publish answer without a version")
        return answer

    def list_models(self) -> list[dict[str, Any]]:
        """Every model this token may see: name, private, latest, versions (a count)."""
        return self._list("/v1/models", "models")

    def list_versions(self, name: str) -> list[dict[str, Any]]:
        """The versions of a model in publish order, with sizes and live swarm counts."""
        try:
            return self._list(f"/v1/models/{_q(name)}/versions", "versions")
        except NotFoundError as e:
            raise self._unknown_model(name, e) from None

    def latest(self, name: str) -> str:
        """The most recently published version of a model."""
        try:
            answer = self._json("GET", f"/v1/models/{_q(name)}/latest")
        except NotFoundError as e:
            raise self._unknown_model(name, e) from None
        return self._version_of(answer)

    def _unknown_model(self, name: str, error: NotFoundError) -> NotFoundError:
        """``error``, or when the model itself is unknown to the registry (as far as this
        token can see), a message saying so with the closest names it does know."""
        try:
            known = [m["name"] for m in self.list_models() if isinstance(m.get("name"), str)]
        except Exception:  # the suggestion is a courtesy: the original error stands
            return error
        if name in known:
            return error
        by_fold = {k.casefold(): k for k in known}
        close = difflib.get_close_matches(name.casefold(), list(by_fold), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(by_fold[c] for c in close)}? " if close else ""
        scope = "" if self.token else " without a token (private models need one)"
        return NotFoundError(
            f"no model {name} in the registry at {self.base_url}{scope}; {hint}"
            f"it knows {len(known)} model(s)"
        )

    def wait_for_newer(
        self, name: str, after: str | None, wait: float, cancel: threading.Event | None = None
    ) -> str | None:
        """Long-poll: the latest version once it is newer than ``after``, or None after ``wait`` s.

        With ``after=None`` any published version counts, and a model not published yet is
        waited for too. The registry caps one wait at 60 s; call again to wait longer. Setting
        ``cancel`` and then calling ``cancel_waits()`` from another thread ends the wait at
        once (None), as a Follower's stop() does.
        """
        query = {"wait": f"{max(0.0, min(wait, 60.0)):g}"}
        if after is not None:
            query["after"] = after
        path = f"/v1/models/{_q(name)}/latest?{urllib.parse.urlencode(query)}"
        timeout = self.timeout + min(wait, 60.0)
        if cancel is not None and cancel.is_set():
            return None
        try:
            status, data = self._request("GET", path, timeout=timeout, cancel=cancel)
            if status in (204, 304):
                return None
            return self._version_of(self._parse(data))
        except TrackerError:
            if cancel is not None and cancel.is_set():
                return None
            raise

    def cancel_waits(self) -> None:
        """End the long-polls in flight whose ``cancel`` event is set (their sockets are shut
        down; a wait still connecting sees its event and gives up)."""
        with self._waits_lock:
            waits = list(self._waits.values())
        for connection in waits:
            if connection.cancel is not None and connection.cancel.is_set():
                connection.abort()

    def resolve(self, name: str, ref: str) -> str:
        """The version ``name@ref`` names: a version (NotFoundError saying why when it was
        withdrawn), a movable tag's version, or the latest for ``latest``."""
        return self._version_of(self._json("GET", f"/v1/models/{_q(name)}/resolve/{_q(ref)}"))

    def tags(self, name: str) -> dict[str, str]:
        """The movable tags of a model: tag -> version."""
        answer = self._json("GET", f"/v1/models/{_q(name)}/tags")
        tags = answer.get("tags") if isinstance(answer, dict) else None
        if not isinstance(tags, dict):
            raise self._nonsense("answer without a tags object")
        return tags

    def post_statement(self, name: str, statement: bytes) -> dict[str, Any]:
        """Send a publisher's signed statement (yank, tag, rotate-key) about ``name``."""
        answer = self._json("POST", f"/v1/models/{_q(name)}/statements", body=statement)
        if not isinstance(answer, dict) or "applied" not in answer:
            raise self._nonsense("statement answer without 'applied'")
        return answer

    def manifest_bytes(self, name: str, version: str) -> bytes:
        """The manifest of a version, exactly as published (verify its signature yourself)."""
        try:
            path = f"/v1/models/{_q(name)}/versions/{_q(version)}/manifest"
            _, data = self._request("GET", path)
        except NotFoundError as e:
            raise self._unknown_model(name, e) from None
        return data

    def torrent(self, name: str, version: str, kind: str = "full") -> bytes:
        """The full or delta .torrent of a version."""
        if kind not in ("full", "delta"):
            raise ValueError(f"kind must be 'full' or 'delta', not {kind!r}")
        path = f"/v1/models/{_q(name)}/versions/{_q(version)}/torrent?kind={kind}"
        _, data = self._request("GET", path)
        if not data.startswith(b"d"):
            raise self._nonsense("torrent answer is not a bencoded dictionary")
        return data

    def announce_url(self, private: bool = False) -> str:
        """The announce URL to put in torrents; for private models it carries the passkey."""
        return self.announce_urls(private)[0]

    def announce_urls(self, private: bool = False) -> list[str]:
        """One announce URL per tracker URL, in order (a torrent's BEP 12 tiers)."""
        if not private:
            return [f"{url}/announce" for url in self.base_urls]
        if not self.token:
            raise ConfigError(
                "a private model's announce URL needs a token: pass --token or set P2PDIST_TOKEN"
            )
        return [f"{url}/announce/{passkey_for(self.token)}" for url in self.base_urls]

    def health(self) -> bool:
        """True when the tracker answers /healthz with ok; False when it is down or unwell."""
        try:
            answer = self._json("GET", "/healthz")
        except (TrackerError, FormatError, AuthError, NotFoundError, ConflictError):
            return False
        return isinstance(answer, dict) and answer.get("status") == "ok"

    # -- plumbing ---------------------------------------------------------------------------
    def _list(self, path: str, key: str) -> list[dict[str, Any]]:
        answer = self._json("GET", path)
        items = answer.get(key) if isinstance(answer, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise self._nonsense(f"answer without a {key!r} list")
        return items

    def _version_of(self, answer: Any) -> str:
        version = answer.get("version") if isinstance(answer, dict) else None
        if not isinstance(version, str):
            raise self._nonsense("answer without a version")
        return version

    def _json(self, method: str, path: str, body: bytes | None = None) -> Any:
        _, data = self._request(method, path, body=body)
        return self._parse(data)

    def _parse(self, data: bytes) -> Any:
        try:
            return jsonio.loads(data, what="answer")
        except FormatError as e:
            raise self._nonsense(f"{e}: {data[:80]!r}") from None

    def _nonsense(self, problem: str) -> TrackerError:
        return TrackerError(
            f"tracker at {self.base_url} answered something that is not the p2pdist registry "
            f"protocol ({problem}); check P2PDIST_TRACKER points at a p2pdist tracker"
        )

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        timeout: float | None = None,
        cancel: threading.Event | None = None,
    ) -> tuple[int, bytes]:
        """One request, to the current URL and then, if that one is out of reach, to the
        others in turn; the last failure is raised when none answers."""
        first = self._current
        count = len(self.base_urls)
        for attempt in range(count):
            at = (first + attempt) % count
            try:
                answer = self._request_once(self.base_urls[at], method, path, body, timeout, cancel)
            except _Unreachable as e:
                if attempt == count - 1 or (cancel is not None and cancel.is_set()):
                    raise e.error from None
                continue
            self._current = at
            return answer
        raise AssertionError("unreachable")  # the loop returns or raises

    def _request_once(
        self,
        base_url: str,
        method: str,
        path: str,
        body: bytes | None,
        timeout: float | None,
        cancel: threading.Event | None,
    ) -> tuple[int, bytes]:
        url = base_url + path
        headers = {"Accept": "application/json", "User-Agent": "p2pdist"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=body, method=method, headers=headers)
        _cancel.event = cancel
        try:
            with self._opener.open(request, timeout=timeout or self.timeout) as response:
                return response.status, _read(response)
        except urllib.error.HTTPError as e:
            error = self._http_error(base_url, method, path, e)
            if e.code in (502, 503, 504):
                raise _Unreachable(error) from None
            raise error from None
        except (TimeoutError, urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise TrackerError(
                    f"tracker at {base_url} presented a TLS certificate this host does not "
                    f"trust ({reason.verify_message}); if a private CA signed it, set "
                    "P2PDIST_CA_BUNDLE (or config ca_bundle) to that CA's certificate"
                ) from None
            if isinstance(reason, ssl.SSLError):
                raise TrackerError(
                    f"TLS with the tracker at {base_url} failed ({reason.reason or reason}); "
                    "check that it serves https on that port (tracker serve --tls-cert)"
                ) from None
            raise _Unreachable(
                TrackerError(
                    f"tracker at {base_url} is not reachable ({reason}); start it with "
                    "`p2pdist tracker serve` or set P2PDIST_TRACKER"
                )
            ) from None
        finally:
            _cancel.event = None
            if cancel is not None:
                with self._waits_lock:
                    connection = self._waits.pop(threading.get_ident(), None)
                if connection is not None:
                    connection.release()

    def _connection(self, connection: _CancellableConnection) -> _CancellableConnection:
        """Register a new connection of a cancellable request (made in this thread)."""
        connection.cancel = _cancel.event
        if connection.cancel is not None:
            with self._waits_lock:
                previous = self._waits.get(threading.get_ident())
                self._waits[threading.get_ident()] = connection
            if previous is not None:  # a redirect: the first connection is done
                previous.release()
        return connection

    def _http_error(
        self, base_url: str, method: str, path: str, e: urllib.error.HTTPError
    ) -> Exception:
        try:
            answer = jsonio.loads(_read(e), what="error answer")
            detail, kind = answer.get("error"), answer.get("type")
        except (ValueError, AttributeError, OSError, TrackerError):
            detail = kind = None
        finally:
            e.close()
        if not isinstance(detail, str):
            detail = f"HTTP {e.code} {e.reason}"
        message = f"{detail} ({method} {path})"  # what happened first, the request after
        if e.code in (404, 410):  # 410: a version its publisher withdrew
            return NotFoundError(message)
        if e.code in (401, 403):
            return AuthError(message)
        if e.code == 409:
            return ConflictError(message)
        if e.code == 400 and kind in _REFUSALS:
            return _REFUSALS[kind](message)
        if 400 <= e.code < 500:
            return FormatError(message)
        return TrackerError(f"tracker at {base_url} failed: {message}")


class _Unreachable(Exception):
    """A tracker URL that could not answer (the next one may): carries the error to raise."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


_cancel = threading.local()
"""The ``cancel`` event of the request this thread is making (None: not cancellable)."""


class _CancellableConnection(http.client.HTTPConnection):
    """An HTTP connection that another thread can abort (its socket shut down)."""

    cancel: threading.Event | None = None
    _handle: socket.socket | None = None
    """A dup() of a cancellable connection's socket, from before it connects until the request
    ends: shutdown() through it reaches the socket while it connects, during the TLS handshake
    (when ``sock`` is the raw socket that wrap_socket detached) and after."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handle_lock = threading.RLock()
        self._create_connection = self._open

    def _open(
        self, address: tuple[str, int], timeout: Any, source_address: Any = None
    ) -> socket.socket:
        if self.cancel is None:
            return socket.create_connection(address, timeout, source_address)
        host, port = address
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in socket.getaddrinfo(
            host, port, 0, socket.SOCK_STREAM
        ):
            sock = socket.socket(family, kind, proto)
            with self._handle_lock:
                if self._handle is not None:
                    self._handle.close()
                self._handle = sock.dup()
            try:
                if self.cancel.is_set():
                    raise ConnectionAbortedError("long-poll cancelled")
                sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as e:
                sock.close()
                if self.cancel.is_set():
                    raise ConnectionAbortedError("long-poll cancelled") from None
                error = e
        raise error if error is not None else OSError(f"{host}: no address to connect to")

    def connect(self) -> None:
        super().connect()
        if self.cancel is not None and self.cancel.is_set():  # cancelled while connecting
            self.abort()
            raise ConnectionAbortedError("long-poll cancelled")

    def abort(self) -> None:
        with self._handle_lock:
            if self._handle is not None:
                try:
                    self._handle.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def release(self) -> None:
        """Close the handle once the request is over (abort() then does nothing)."""
        with self._handle_lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


class _CancellableHTTPSConnection(_CancellableConnection, http.client.HTTPSConnection):
    pass


class _Handler(urllib.request.HTTPHandler):
    def __init__(self, client: RegistryClient) -> None:
        super().__init__()
        self._client = client

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connect(host: str, **kwargs: Any) -> _CancellableConnection:
            return self._client._connection(_CancellableConnection(host, **kwargs))

        return self.do_open(connect, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, client: RegistryClient, context: ssl.SSLContext | None = None) -> None:
        super().__init__(context=context)
        self._client = client

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connect(host: str, **kwargs: Any) -> _CancellableConnection:
            return self._client._connection(_CancellableHTTPSConnection(host, **kwargs))

        extra = {"check_hostname": self._check_hostname} if hasattr(self, "_check_hostname") else {}
        return self.do_open(connect, req, context=self._context, **extra)  # type: ignore[attr-defined]


def _read(response: Any) -> bytes:
    data: bytes = response.read(MAX_ANSWER_BYTES + 1)
    if len(data) > MAX_ANSWER_BYTES:
        raise TrackerError(f"registry answer larger than {MAX_ANSWER_BYTES} bytes")
    return data


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="/")


__all__ = ["DEFAULT_TIMEOUT", "RegistryClient", "passkey_for", "tls_context"]
