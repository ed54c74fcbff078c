"""The SSRF guard as the connectors call it before every upstream request: host names are
resolved off the event loop, addresses checked at once, and a forbidden answer refused."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from typing import Any

import pytest

from entrepot import netguard
from entrepot.errors import BadRequest


class Resolutions:
    """A stand-in for ``netguard.resolve``: answers with one address and records the thread
    each resolution ran on."""

    def __init__(self, address: str) -> None:
        self.address = ipaddress.ip_address(address)
        self.threads: list[threading.Thread] = []

    def __call__(self, host: str, port: int) -> list[Any]:
        self.threads.append(threading.current_thread())
        return [self.address]


def guard(url: str, *, allow_internal: bool = False, own_ports: set[int] | None = None) -> None:
    asyncio.run(
        netguard.check_upstream_off_loop(
            url, own_ports=own_ports or set(), allow_internal=allow_internal
        )
    )


def test_a_host_name_is_resolved_in_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    resolutions = Resolutions("10.1.2.3")
    monkeypatch.setattr(netguard, "resolve", resolutions)
    guard("https://registry.example.test/npm/")
    assert len(resolutions.threads) == 1
    assert resolutions.threads[0] is not threading.current_thread()


def test_a_host_name_that_resolves_to_metadata_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netguard, "resolve", Resolutions("169.254.169.254"))
    with pytest.raises(BadRequest, match="cloud metadata"):
        guard("http://rebound.example.test/")


def test_an_address_is_checked_on_the_calling_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    resolutions = Resolutions("127.0.0.1")
    monkeypatch.setattr(netguard, "resolve", resolutions)
    with pytest.raises(BadRequest, match="this server itself"):
        guard("http://127.0.0.1:4873/npm/main/", own_ports={4873})
    assert resolutions.threads == [threading.current_thread()]


def test_allow_internal_resolves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    resolutions = Resolutions("169.254.169.254")
    monkeypatch.setattr(netguard, "resolve", resolutions)
    guard("http://metadata.example.test/", allow_internal=True)
    assert resolutions.threads == []
