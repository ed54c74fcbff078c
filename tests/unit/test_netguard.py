"""The SSRF guard as the connectors call it before every upstream request, and as the
connection pool's resolver applies it when a connection is opened: host names are resolved
off the event loop and kept a while, addresses checked at once, and a forbidden answer
refused."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from typing import Any

import pytest

from entrepot import netguard
from entrepot.errors import UpstreamUnavailable
from entrepot.netguard import Guard, GuardedResolver, Resolutions, current_guard

STRICT = Guard("up", allow_internal=False, own_ports=frozenset({4873}))
ALLOWED = Guard("inside", allow_internal=True, own_ports=frozenset({4873}))


class Resolver:
    """A stand-in for ``netguard.resolve``: answers with the addresses it is told to and
    records the thread each resolution ran on."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = [ipaddress.ip_address(a) for a in addresses]
        self.threads: list[threading.Thread] = []
        self.gate: threading.Event | None = None

    def __call__(self, host: str, port: int) -> list[Any]:
        self.threads.append(threading.current_thread())
        if self.gate is not None:
            self.gate.wait(5)
        return list(self.addresses)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def check(url: str, guard: Guard = STRICT, resolutions: Resolutions | None = None) -> None:
    asyncio.run((resolutions or Resolutions()).check(url, guard))


def test_a_host_name_is_resolved_in_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = Resolver("10.1.2.3")
    monkeypatch.setattr(netguard, "resolve", resolver)
    check("https://registry.example.test/npm/")
    assert len(resolver.threads) == 1
    assert resolver.threads[0] is not threading.current_thread()


def test_a_host_name_that_resolves_to_metadata_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netguard, "resolve", Resolver("10.1.2.3", "169.254.169.254"))
    with pytest.raises(UpstreamUnavailable, match=r"connector up: .*cloud metadata"):
        check("http://rebound.example.test/")


def test_an_address_is_checked_on_the_calling_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = Resolver("127.0.0.1")
    monkeypatch.setattr(netguard, "resolve", resolver)
    with pytest.raises(UpstreamUnavailable, match="this server itself"):
        check("http://127.0.0.1:4873/npm/main/")
    assert resolver.threads == [threading.current_thread()]
    check("http://127.0.0.1:4874/npm/main/")  # another port on loopback is fine


def test_allow_internal_resolves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = Resolver("169.254.169.254")
    monkeypatch.setattr(netguard, "resolve", resolver)
    check("http://metadata.example.test/", ALLOWED)
    assert resolver.threads == []


def test_a_name_is_resolved_once_per_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = Resolver("10.1.2.3")
    monkeypatch.setattr(netguard, "resolve", resolver)
    clock = Clock()
    resolutions = Resolutions(ttl=10, clock=clock)

    async def checks() -> None:
        for _ in range(5):
            await resolutions.check("https://registry.example.test/a", STRICT)
        assert len(resolver.threads) == 1
        # The name now resolves inside: the kept answer holds until it expires, then the
        # new one is checked and refused.
        resolver.addresses = [ipaddress.ip_address("169.254.169.254")]
        clock.now += 9.9
        await resolutions.check("https://registry.example.test/b", STRICT)
        clock.now += 0.2
        with pytest.raises(UpstreamUnavailable, match="cloud metadata"):
            await resolutions.check("https://registry.example.test/c", STRICT)
        assert len(resolver.threads) == 2
        # Other ports are other entries.
        with pytest.raises(UpstreamUnavailable, match="cloud metadata"):
            await resolutions.check("https://registry.example.test:8443/", STRICT)
        assert len(resolver.threads) == 3

    asyncio.run(checks())


def test_concurrent_lookups_of_a_name_share_one_resolution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolver = Resolver("10.1.2.3")
    resolver.gate = threading.Event()
    monkeypatch.setattr(netguard, "resolve", resolver)
    resolutions = Resolutions()

    async def lookups() -> list[list[Any]]:
        waiting = [
            asyncio.create_task(resolutions.addresses("registry.example.test", 443))
            for _ in range(20)
        ]
        await asyncio.sleep(0.05)
        resolver.gate.set()  # type: ignore[union-attr]
        return await asyncio.gather(*waiting)

    answers = asyncio.run(lookups())
    assert len(resolver.threads) == 1
    assert all(a == [ipaddress.ip_address("10.1.2.3")] for a in answers)


def test_a_name_that_does_not_resolve_is_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = Resolver()
    monkeypatch.setattr(netguard, "resolve", resolver)
    resolutions = Resolutions()

    async def lookups() -> None:
        assert await resolutions.addresses("gone.example.test", 443) == []
        assert await resolutions.addresses("gone.example.test", 443) == []

    asyncio.run(lookups())
    assert len(resolver.threads) == 2


def resolve_in_pool(
    host: str, guard: Guard | None, resolutions: Resolutions, family: int = socket.AF_UNSPEC
) -> list[Any]:
    async def run() -> list[Any]:
        if guard is not None:
            current_guard.set(guard)
        resolver = GuardedResolver(resolutions)
        try:
            return list(await resolver.resolve(host, 443, socket.AddressFamily(family)))
        finally:
            await resolver.close()

    return asyncio.run(run())


def test_the_pool_connects_only_to_addresses_the_guard_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolver = Resolver("10.1.2.3", "2001:db8::7")
    monkeypatch.setattr(netguard, "resolve", resolver)
    resolutions = Resolutions()
    results = resolve_in_pool("registry.example.test", STRICT, resolutions)
    assert [(r["host"], r["port"], r["family"]) for r in results] == [
        ("10.1.2.3", 443, socket.AF_INET),
        ("2001:db8::7", 443, socket.AF_INET6),
    ]
    assert all(r["hostname"] == "registry.example.test" for r in results)
    only_v4 = resolve_in_pool("registry.example.test", STRICT, resolutions, socket.AF_INET)
    assert [r["host"] for r in only_v4] == ["10.1.2.3"]
    # The guard's check and the pool's connection used one resolution.
    asyncio.run(resolutions.check("https://registry.example.test/", STRICT))
    assert len(resolver.threads) == 1


@pytest.mark.parametrize(
    ("guard", "named"),
    [(STRICT, "connector up: "), (None, "connector (none named): ")],
    ids=["the request's rule", "no rule: strict"],
)
def test_the_pool_refuses_a_name_that_resolves_inside(
    monkeypatch: pytest.MonkeyPatch, guard: Guard | None, named: str
) -> None:
    monkeypatch.setattr(netguard, "resolve", Resolver("fe80::1"))
    with pytest.raises(UpstreamUnavailable) as refused:
        resolve_in_pool("rebound.example.test", guard, Resolutions())
    assert refused.value.message.startswith(named)
    assert "link-local" in refused.value.message and "--allow-internal" in refused.value.message


def test_the_pool_refuses_this_server_by_the_requests_own_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(netguard, "resolve", Resolver("127.0.0.1"))
    own = Guard("up", allow_internal=False, own_ports=frozenset({443}))
    with pytest.raises(UpstreamUnavailable, match="this server itself"):
        resolve_in_pool("loop.example.test", own, Resolutions())


def test_an_unresolvable_name_is_an_os_error_in_the_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    # aiohttp turns an OSError from its resolver into its DNS error (a ConnectError here).
    monkeypatch.setattr(netguard, "resolve", Resolver())
    with pytest.raises(OSError, match="cannot resolve"):
        resolve_in_pool("gone.example.test", STRICT, Resolutions())


def test_the_pool_resolves_as_aiohttp_does_for_a_connector_allowed_inside(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolver = Resolver("169.254.169.254")
    monkeypatch.setattr(netguard, "resolve", resolver)
    results = resolve_in_pool("localhost", ALLOWED, Resolutions())
    assert results and all(ipaddress.ip_address(r["host"]).is_loopback for r in results)
    assert resolver.threads == []
