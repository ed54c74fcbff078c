"""Guarding connectors against server-side request forgery.

A connector URL makes the server send requests; one that points at link-local addresses
(cloud metadata services live at 169.254.169.254) or back at this server itself is refused
unless an administrator allows it explicitly. Checked when the connector is added, before
each upstream request and redirect hop, and when the connection pool opens a connection:
the pool connects only to addresses the guard has just checked, so a name that resolves
differently later (DNS rebinding) cannot slip a connection past it.

Host names are resolved off the event loop and each answer is kept :data:`RESOLVE_TTL`
seconds (:class:`Resolutions`), for the checks and the pool alike: an upstream request does
not wait for a DNS lookup, or a worker thread, each time.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import ipaddress
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from entrepot.errors import BadRequest, UpstreamUnavailable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: How long a host name's addresses are kept: as long as aiohttp keeps a DNS answer.
RESOLVE_TTL = 10.0
#: At most this many names are kept (connectors name a handful of hosts).
MAX_NAMES = 256

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


def resolve(host: str, port: int) -> list[Address]:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def refusal(
    addresses: list[Address], port: int, own_ports: frozenset[int] | set[int]
) -> str | None:
    """Why a connection to these addresses on that port is refused, or None."""
    for address in addresses:
        reason = forbidden_reason(address)
        if reason is None and address.is_loopback and port in own_ports:
            reason = "this server itself"
        if reason is not None:
            return (
                f"the connector URL points at {reason} ({address}); if that is intended, "
                "an administrator can allow it with --allow-internal"
            )
    return None


def check_upstream(url: str, *, own_ports: set[int], allow_internal: bool) -> None:
    """Refuse an upstream URL that resolves to a forbidden address or to this server."""
    if allow_internal:
        return
    host, port = _host_port(url)
    reason = refusal(resolve(host, port), port, own_ports)
    if reason is not None:
        raise BadRequest(reason)


@dataclasses.dataclass(frozen=True)
class Guard:
    """The guard's rule for one connector's requests."""

    connector: str
    allow_internal: bool
    own_ports: frozenset[int]

    def refuse(self, reason: str) -> UpstreamUnavailable:
        return UpstreamUnavailable(f"connector {self.connector}: {reason}")


#: The rule of the upstream request being sent. The connectors' request hook sets it; the
#: connection pool's resolver, which runs in the same task when it opens a connection for
#: that request, reads it. Unset, the strictest rule holds.
current_guard: contextvars.ContextVar[Guard | None] = contextvars.ContextVar(
    "entrepot_guard", default=None
)
_STRICT = Guard("(none named)", False, frozenset())


class Resolutions:
    """Host names' addresses, resolved in a worker thread (``getaddrinfo`` blocks) and kept
    :data:`RESOLVE_TTL` seconds; concurrent lookups of one name share one resolution. An
    address (an IP literal) is taken at once, on the calling thread. A name that does not
    resolve is not kept."""

    def __init__(
        self, ttl: float = RESOLVE_TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        self._known: dict[tuple[str, int], tuple[float, list[Address]]] = {}
        self._pending: dict[tuple[str, int], asyncio.Future[list[Address]]] = {}

    def forget(self) -> None:
        """Drop every kept answer: the next lookup of each name resolves it again."""
        self._known.clear()

    async def addresses(self, host: str, port: int) -> list[Address]:
        if _is_address(host):
            return resolve(host, port)  # no lookup: nothing to keep
        key = (host, port)
        known = self._known.get(key)
        if known is not None and self._clock() < known[0]:
            return known[1]
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().run_in_executor(None, resolve, host, port)
            self._pending[key] = pending
            pending.add_done_callback(lambda _: self._pending.pop(key, None))
        found = await asyncio.shield(pending)
        if found:
            if len(self._known) >= MAX_NAMES:
                self._known.clear()
            self._known[key] = (self._clock() + self._ttl, found)
        return found

    async def check(self, url: str, guard: Guard) -> None:
        """Refuse (:class:`UpstreamUnavailable`) a request to ``url`` under ``guard``."""
        if not guard.allow_internal:
            await self.checked(*_host_port(url), guard)

    async def checked(self, host: str, port: int, guard: Guard) -> list[Address]:
        """The host's addresses, once ``guard`` allows every one of them (else
        :class:`UpstreamUnavailable`); empty if the name does not resolve."""
        addresses = await self.addresses(host, port)
        reason = refusal(addresses, port, guard.own_ports)
        if reason is not None:
            raise guard.refuse(reason)
        return addresses


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class GuardedResolver(AbstractResolver):
    """The connection pool's resolver: it connects to the addresses :class:`Resolutions`
    keeps, once the guard of the request that opens the connection has checked them. A
    connector allowed internal addresses resolves as aiohttp does by default."""

    def __init__(self, resolutions: Resolutions) -> None:
        self._resolutions = resolutions
        self._plain: ThreadedResolver | None = None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        guard = current_guard.get() or _STRICT
        if guard.allow_internal:
            if self._plain is None:
                self._plain = ThreadedResolver()
            return await self._plain.resolve(host, port, family)
        addresses = await self._resolutions.checked(host, port, guard)
        if not addresses:
            raise OSError(f"cannot resolve {host[:253]}")
        results: list[ResolveResult] = []
        for address in addresses:
            kind = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            if family not in (socket.AF_UNSPEC, kind):
                continue
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(address),
                    port=port,
                    family=kind,
                    proto=socket.IPPROTO_TCP,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not results:
            raise OSError(f"no address of {host[:253]} in the asked family")
        return results

    async def close(self) -> None:
        if self._plain is not None:
            await self._plain.close()
