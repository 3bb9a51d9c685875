"""The request log of ``tracker serve -v``: one line per request, on both paths.

Announces and scrapes answered by the raw front (``front.py``) never reach aiohttp, so its
access logger alone would miss most requests; both paths write through the logger
``p2pdist.tracker.access`` in one format::

    <client address> <METHOD> <path> <status> <bytes or -> [<refusal reason>]

The client address is the one the tracker acts on (behind a trusted proxy, the forwarded
one). Query strings are left out and a passkey in the path is shown as ``<passkey>``: a log
must not hand out announce credentials.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from p2pdist.tracker.forwarded import request_address
from p2pdist.tracker.state import STATE

ACCESS_LOG = logging.getLogger("p2pdist.tracker.access")

_PASSKEY_PATH = re.compile(r"^/(announce|scrape)/[^/]+$")
_FAILURE = b"d14:failure reason"


def _refusal(body: bytes) -> str:
    """The ``failure reason`` of a bencoded refusal, or ''."""
    if not body.startswith(_FAILURE):
        return ""
    length, _, rest = body[len(_FAILURE) :].partition(b":")
    try:
        return " refused: " + rest[: int(length)].decode("utf-8", "replace")
    except ValueError:
        return " refused"


def log_answer(client: str | None, kind: str, passkey: str | None, answer: object) -> None:
    """Log an announce or scrape the front answered (``answer``: bytes, or a coroutine when
    the answer waits for a passkey lookup: its size is not known yet)."""
    path = f"/{kind}" if passkey is None else f"/{kind}/<passkey>"
    if isinstance(answer, bytes):
        ACCESS_LOG.info("%s GET %s 200 %d%s", client, path, len(answer), _refusal(answer))
    else:
        ACCESS_LOG.info("%s GET %s 200 -", client, path)


class AccessLogger(AbstractAccessLogger):
    """aiohttp's access logger for the tracker: the same line as ``log_answer``."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        proxies = (
            request.app[STATE].settings.proxy_networks if isinstance(request, web.Request) else ()
        )
        path = request.path
        if _PASSKEY_PATH.match(path):
            path = path.rsplit("/", 1)[0] + "/<passkey>"
        body = getattr(response, "body", None)
        reason = _refusal(body) if isinstance(body, bytes) else ""
        size = response.body_length
        self.logger.info(
            "%s %s %s %d %s%s",
            request_address(request, proxies), request.method, path, response.status,
            size if size else "-", reason,
        )  # fmt: skip

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


__all__ = ["ACCESS_LOG", "AccessLogger", "log_answer"]
