"""Guarding connectors against server-side request forgery.

A connector URL makes the server send requests; one that points at link-local addresses
(cloud metadata services live at 169.254.169.254) or back at this server itself is refused
unless an administrator allows it explicitly. Checked when the connector is added and again
before each upstream request, since a name can resolve differently later (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from entrepot.errors import BadRequest

_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}


def forbidden_reason(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> str | None:
    """Why requests to this address are refused, or None if they are fine."""
    if address in _METADATA:
        return "a cloud metadata address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return "not a host address"
    return None


def resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def check_upstream(url: str, *, own_ports: set[int], allow_internal: bool) -> None:
    """Refuse an upstream URL that resolves to a forbidden address or to this server."""
    if allow_internal:
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for address in resolve(host, port):
        reason = forbidden_reason(address)
        if reason is None and address.is_loopback and port in own_ports:
            reason = "this server itself"
        if reason is not None:
            raise BadRequest(
                f"the connector URL points at {reason} ({address}); if that is intended, "
                "an administrator can allow it with --allow-internal"
            )


async def check_upstream_off_loop(url: str, *, own_ports: set[int], allow_internal: bool) -> None:
    """:func:`check_upstream` for a request about to be sent from the event loop: a host
    name is resolved in a worker thread (``getaddrinfo`` blocks, on a DNS miss for as long
    as the resolver takes, and every request would hold the loop that long); an address
    is checked at once."""
    if allow_internal:
        return
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        await asyncio.to_thread(
            check_upstream, url, own_ports=own_ports, allow_internal=allow_internal
        )
        return
    check_upstream(url, own_ports=own_ports, allow_internal=allow_internal)
