"""The client's address: the connection's, or what a trusted proxy says it is.

Behind a TLS-terminating proxy (nginx, a load balancer) every connection comes from the
proxy, and the client's address arrives in ``X-Forwarded-For`` (a list each proxy appends
to) or ``X-Real-IP``. Those headers are written by whoever sends the request, so they are
believed only when the connection itself comes from a proxy the operator trusts
(``tracker serve --trusted-proxy CIDR``); from anyone else they are ignored, or any client
could announce a third party's address into a swarm.

``client_address`` is the one implementation, called by the raw announce front
(``front.py``, with the raw header bytes) and by aiohttp's handlers (``request_address``),
so the two paths cannot disagree about who a peer is.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from aiohttp import web

Network = IPv4Network | IPv6Network

_HEADERS = re.compile(rb"\r\n(x-forwarded-for|x-real-ip):[ \t]*([^\r]*)", re.IGNORECASE)


def _parse(text: str) -> IPv4Address | IPv6Address | None:
    """An address from a forwarded entry (``1.2.3.4``, ``[::1]``, ``1.2.3.4:5678``), or None."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ip_address(text)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=8192)
def _classify(text: str, proxies: tuple[Network, ...]) -> tuple[str | None, bool]:
    """``text`` as an address (normalised, or None when it is none) and whether it is one of
    the ``proxies``; cached, since a proxy's clients come back again and again."""
    address = _parse(text)
    if address is None:
        return None, False
    return str(address), any(address in net for net in proxies)


def is_trusted(peer: str | None, proxies: Sequence[Network]) -> bool:
    """Whether a connection from ``peer`` comes from one of the trusted ``proxies``."""
    if peer is None or not proxies:
        return False
    return _classify(peer, tuple(proxies))[1]


def client_address(
    peer: str | None,
    forwarded_for: str | None,
    real_ip: str | None,
    proxies: Sequence[Network],
) -> str | None:
    """The address of the client behind a connection from ``peer``.

    The connection's own address unless it comes from a trusted proxy; then the first
    ``X-Forwarded-For`` entry from the right that is not itself a trusted proxy (each proxy
    appends the address it saw, so entries left of it may be forged by the client), else
    ``X-Real-IP`` (the last one: a proxy appends its own after any the client sent), else
    the proxy's own address. An unparseable entry ends the walk at the proxy's own address:
    what lies left of it, and an ``X-Real-IP`` beside it, cannot be trusted either.
    """
    if peer is None or not proxies:
        return peer
    nets = tuple(proxies)
    if not _classify(peer, nets)[1]:
        return peer
    if forwarded_for:
        entries = forwarded_for.split(",")
        for entry in reversed(entries):
            address, trusted = _classify(entry, nets)
            if address is None:
                return peer  # nothing from here leftwards (nor X-Real-IP) can be trusted
            if not trusted:
                return address
        else:
            first = _classify(entries[0], nets)[0]  # only trusted proxies: the farthest one
            if first is not None:
                return first
    if real_ip:
        address = _classify(real_ip, nets)[0]
        if address is not None:
            return address
    return peer


def address_from_head(peer: str | None, headers: bytes, proxies: Sequence[Network]) -> str | None:
    """``client_address`` for a raw request head (the front's header bytes, CRLF-separated,
    starting with the CRLF that ends the request line). The front calls it only for
    connections from a trusted proxy (it checks that once per connection)."""
    forwarded: list[str] = []
    real_ip: str | None = None
    for match in _HEADERS.finditer(headers):
        value = match.group(2).decode("latin-1")
        if match.group(1).lower() == b"x-real-ip":
            real_ip = value
        else:
            forwarded.append(value)
    return client_address(peer, ",".join(forwarded) or None, real_ip, proxies)


def request_address(request: web.BaseRequest, proxies: Sequence[Network]) -> str | None:
    """``client_address`` for an aiohttp request (its connection's peer and its headers)."""
    peer = request.remote
    if not is_trusted(peer, proxies):
        return peer
    headers = request.headers
    forwarded = ",".join(headers.getall("X-Forwarded-For", ())) or None
    real_ip = headers.getall("X-Real-IP", ())
    return client_address(peer, forwarded, real_ip[-1] if real_ip else None, proxies)


__all__ = ["Network", "address_from_head", "client_address", "is_trusted", "request_address"]
