"""Connectors (read-through upstreams), in-process: upstream registries are stubbed with
``httpx.MockTransport`` so failures, timing and concurrency are exact.

Time moves by a fake clock that replaces the ``time`` module inside ``entrepot.connectors``
and ``entrepot.registry``; every assertion on upstream traffic reads the stub's request log.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gzip
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tests.api.conftest import Api, publish_body, quote_name
from tests.e2e.upstream import (
    Mode,
    Recorded,
    UpstreamPackages,
    corrupted,
    hours_ago,
    scripted_reply,
)

from entrepot import connectors, registry
from entrepot.admin import Admin
from entrepot.http import app as http_app
from entrepot.http.app import EMPTY_QUICK_AUDIT, create_app
from entrepot.lockfiles import Locked
from entrepot.mirror import mirror
from entrepot.npm.packument import ABBREVIATED_FIELDS
from entrepot.settings import load_settings
from entrepot.storage.base import Connector

#: Never contacted: the mock transport answers for these URLs.
FIRST_URL = "http://127.0.0.1:9/first"
SECOND_URL = "http://127.0.0.1:9/second"
FEED_BASE = "http://testserver/npm/main/"
BULK = "/-/npm/v1/security/advisories/bulk"
QUICK = "/-/npm/v1/security/audits/quick"
CORGI = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"


# -- the stubbed upstreams ---------------------------------------------------------------------


class MockRegistry:
    """One upstream registry behind the mock transport, with its own failure switches."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.packages = UpstreamPackages(url)
        self.requests: list[Recorded] = []
        self.mode = Mode.NORMAL
        #: Raised instead of answering (a timeout, a refused connection).
        self.error: Callable[[httpx.Request], Exception] | None = None
        #: While set to an unset event, answers wait for it.
        self.gate: asyncio.Event | None = None
        self.audit_answer: Any = None
        #: Tarballs are sent in chunks of this size (None: in one piece).
        self.chunk_size: int | None = None

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(Recorded(request.method, request.url.raw_path.decode(), headers, body))
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error(request)
        if self.mode is Mode.DROP:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        status, reply_headers, content = scripted_reply(
            self.packages,
            self.mode,
            request.method,
            request.url.raw_path.decode(),
            headers,
            self.audit_answer,
        )
        if (
            self.chunk_size is None
            or reply_headers.get("Content-Type") != "application/octet-stream"
        ):
            return httpx.Response(status, headers=reply_headers, content=content)
        size = self.chunk_size

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(content), size):
                yield content[start : start + size]

        reply_headers["Content-Length"] = str(len(content))
        return httpx.Response(status, headers=reply_headers, content=chunks())

    def packument_requests(self, name: str) -> list[Recorded]:
        return [r for r in self.requests if self.packages.name_of(r.path) == name]

    def tarball_requests(self, name: str) -> list[Recorded]:
        prefix = f"{self.packages.base_path}/{name}/-/"
        return [r for r in self.requests if r.path.replace("%2F", "/").startswith(prefix)]

    def audit_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST"]


@dataclasses.dataclass
class Upstream:
    first: MockRegistry
    second: MockRegistry

    async def handle(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        for registry_ in (self.first, self.second):
            if url.startswith(registry_.url + "/"):
                return await registry_.handle(request)
        raise AssertionError(f"a request to an unknown upstream: {url}")

    @property
    def requests(self) -> list[Recorded]:
        return self.first.requests + self.second.requests


class Clock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def perf_counter(self) -> float:
        return time.perf_counter()

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def upstream() -> Upstream:
    return Upstream(MockRegistry(FIRST_URL), MockRegistry(SECOND_URL))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(connectors, "time", fake)
    monkeypatch.setattr(registry, "time", fake)
    monkeypatch.setattr(http_app, "time", fake)  # remembered answers expire with the copy
    return fake


ConnectedFactory = Callable[..., Api]


@pytest.fixture
def make_connected(tmp_path: Path, upstream: Upstream) -> Iterator[ConnectedFactory]:
    """``make(environ=None, **settings)``: an ``Api`` whose upstream client is the stub."""
    made: list[Api] = []
    runner = asyncio.Runner()

    def make(environ: dict[str, str] | None = None, **overrides: Any) -> Api:
        data_dir = tmp_path / f"data{len(made)}"
        settings = load_settings(overrides={"data_dir": data_dir, **overrides})
        client = httpx.AsyncClient(transport=httpx.MockTransport(upstream.handle))
        app = create_app(settings, environ=environ, upstream_client=client)
        api = Api(runner, app, data_dir)
        made.append(api)
        api.run(api._setup())
        return api

    yield make
    for api in made:
        api.close()
    runner.close()


@pytest.fixture
def api(make_connected: ConnectedFactory) -> Api:
    return make_connected()


# -- helpers -----------------------------------------------------------------------------------


def connect(api: Api, url: str, feed: str = "main", **options: Any) -> Connector:
    """``entrepot connector add FEED URL [options]``."""
    return api.run(Admin(api.app.meta).add_connector(feed, url, **options))


def get(api: Api, name: str, feed: str = "main", **headers: str) -> httpx.Response:
    return api.get(f"/npm/{feed}/{quote_name(name)}", headers=headers)


def doc_of(api: Api, name: str, feed: str = "main") -> dict[str, Any]:
    response = get(api, name, feed)
    assert response.status_code == 200, response.text
    assert "x-entrepot-stale" not in response.headers
    result: dict[str, Any] = response.json()
    return result


def tarball_path(name: str, version: str, feed: str = "main") -> str:
    return f"/npm/{feed}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"


def assert_error(response: httpx.Response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    message = str(body["error"])
    for fragment in fragments:
        assert fragment in message, message
    return message


def settle(api: Api) -> None:
    """Let background work (revalidations) finish."""

    async def wait() -> None:
        current = asyncio.current_task()
        while pending := [t for t in asyncio.all_tasks() if t is not current]:
            await asyncio.gather(*pending, return_exceptions=True)

    api.run(wait())


def stored_tarball(api: Api, connector: Connector, name: str, version: str) -> object:
    return api.run(api.app.meta.get_upstream_tarball(connector.id, name, version))


def timeout(request: httpx.Request) -> Exception:
    return httpx.ReadTimeout("scripted timeout", request=request)


def refused(request: httpx.Request) -> Exception:
    return httpx.ConnectError("Connection refused", request=request)


# -- reading through -----------------------------------------------------------------------------


def test_a_miss_is_fetched_from_the_first_connector_that_has_it(
    api: Api, upstream: Upstream
) -> None:
    connect(api, FIRST_URL, name="first")
    connect(api, SECOND_URL, name="second")
    upstream.first.packages.add("both", "1.0.0", marker="first")
    upstream.second.packages.add("both", "2.0.0", marker="second")
    upstream.second.packages.add("only-second", "1.2.3")

    both = doc_of(api, "both")
    assert set(both["versions"]) == {"1.0.0"}
    assert upstream.second.packument_requests("both") == []

    only = doc_of(api, "only-second")
    assert set(only["versions"]) == {"1.2.3"}
    assert only["dist-tags"] == {"latest": "1.2.3"}
    assert len(upstream.first.packument_requests("only-second")) == 1
    assert len(upstream.second.packument_requests("only-second")) == 1

    response = get(api, "on-neither")
    assert_error(response, 404, "on-neither")


@pytest.mark.parametrize("name", ["plain-up", "@up/scoped"])
@pytest.mark.parametrize("accept", ["application/json", CORGI])
def test_tarball_urls_point_at_this_feed(
    api: Api, upstream: Upstream, name: str, accept: str
) -> None:
    connect(api, FIRST_URL)
    upstream.first.packages.add(name, "1.0.0")
    upstream.first.packages.add(name, "1.1.0")
    response = get(api, name, Accept=accept)
    assert response.status_code == 200, response.text
    versions = response.json()["versions"]
    assert set(versions) == {"1.0.0", "1.1.0"}
    original = orjson.loads(upstream.first.packages.packument(name) or b"{}")
    for version, manifest in versions.items():
        assert manifest["dist"]["tarball"] == "http://testserver" + tarball_path(name, version)
        assert manifest["dist"]["integrity"] == original["versions"][version]["dist"]["integrity"]
    assert "127.0.0.1:9" not in response.text


def test_a_tarball_is_streamed_stored_and_then_served_from_the_cache(
    api: Api, upstream: Upstream
) -> None:
    connector = connect(api, FIRST_URL)
    upstream.first.packages.add("@up/tgz", "1.0.0")
    data = upstream.first.packages.tarball_of("@up/tgz", "1.0.0")
    url = doc_of(api, "@up/tgz")["versions"]["1.0.0"]["dist"]["tarball"]

    first = api.get(url.removeprefix("http://testserver"))
    assert first.status_code == 200
    assert first.content == data
    assert stored_tarball(api, connector, "@up/tgz", "1.0.0") == (
        hashlib.sha512(data).hexdigest(),
        len(data),
    )
    assert len(upstream.first.tarball_requests("@up/tgz")) == 1

    upstream.first.mode = Mode.ERROR
    again = api.get(url.removeprefix("http://testserver"))
    assert again.status_code == 200
    assert again.content == data
    assert len(upstream.first.tarball_requests("@up/tgz")) == 1


def test_a_version_the_upstream_does_not_have_is_404_without_a_tarball_request(
    api: Api, upstream: Upstream
) -> None:
    connect(api, FIRST_URL)
    upstream.first.packages.add("few", "1.0.0")
    assert_error(api.get(tarball_path("few", "9.9.9")), 404, "few-9.9.9.tgz")
    assert upstream.first.tarball_requests("few") == []


def test_a_kept_tarball_is_served_again_until_its_upstream_copy_drops_the_version(
    api: Api, upstream: Upstream, clock: Clock
) -> None:
    connect(api, FIRST_URL, ttl=300)
    packages = upstream.first.packages
    packages.add("kept", "1.0.0")
    data = packages.tarball_of("kept", "1.0.0")
    path = tarball_path("kept", "1.0.0")
    assert api.get(path).content == data  # fetched, checked and stored
    for _ in range(3):
        again = api.get(path)
        assert again.status_code == 200 and again.content == data
    assert len(upstream.first.tarball_requests("kept")) == 1

    # The upstream withdraws 1.0.0. Within the TTL the copy it came from is still current.
    packages.remove("kept")
    packages.add("kept", "1.1.0")
    clock.advance(30)
    assert api.get(path).content == data
    # Past the TTL the packument is revalidated; 1.0.0 is no longer offered by anyone.
    clock.advance(300)
    get(api, "kept")
    settle(api)
    clock.advance(61)
    assert set(doc_of(api, "kept")["versions"]) == {"1.1.0"}
    assert_error(api.get(path), 404, "kept-1.0.0.tgz")
    assert len(upstream.first.tarball_requests("kept")) == 1


def test_a_kept_tarball_is_refused_at_once_when_its_connector_is_removed(
    api: Api, upstream: Upstream
) -> None:
    connector = connect(api, FIRST_URL)
    upstream.first.packages.add("gone-with-it", "1.0.0")
    path = tarball_path("gone-with-it", "1.0.0")
    assert api.get(path).status_code == 200
    assert api.get(path).status_code == 200
    api.run(Admin(api.app.meta).remove_connector("main", connector.name))
    assert_error(api.get(path), 404, "gone-with-it-1.0.0.tgz")


# -- freshness, revalidation, single flight ----------------------------------------------------


def test_fresh_for_the_ttl_then_revalidated_in_the_background_with_the_etag(
    api: Api, upstream: Upstream, clock: Clock
) -> None:
    connect(api, FIRST_URL, ttl=300)
    packages = upstream.first.packages
    packages.add("ttl-pkg", "1.0.0")
    etag = packages.etag(packages.packument("ttl-pkg") or b"")

    assert set(doc_of(api, "ttl-pkg")["versions"]) == {"1.0.0"}
    first = upstream.first.packument_requests("ttl-pkg")
    assert len(first) == 1 and "if-none-match" not in first[0].headers

    clock.advance(200)  # past the server's own render cache (60 s), within the TTL
    doc_of(api, "ttl-pkg")
    assert len(upstream.first.packument_requests("ttl-pkg")) == 1

    clock.advance(150)  # past the TTL: served at once, revalidated in the background
    assert set(doc_of(api, "ttl-pkg")["versions"]) == {"1.0.0"}
    settle(api)
    requests = upstream.first.packument_requests("ttl-pkg")
    assert len(requests) == 2
    assert requests[1].headers["if-none-match"] == etag

    clock.advance(100)  # the 304 made it fresh again: no request
    doc_of(api, "ttl-pkg")
    settle(api)
    assert len(upstream.first.packument_requests("ttl-pkg")) == 2

    packages.add("ttl-pkg", "1.1.0")
    clock.advance(300)
    stale_answer = doc_of(api, "ttl-pkg")  # still the cached copy, while revalidating
    assert set(stale_answer["versions"]) == {"1.0.0"}
    settle(api)
    assert len(upstream.first.packument_requests("ttl-pkg")) == 3
    clock.advance(61)
    assert set(doc_of(api, "ttl-pkg")["versions"]) == {"1.0.0", "1.1.0"}
    assert len(upstream.first.packument_requests("ttl-pkg")) == 3


def document_reads(api: Api, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, the names whose upstream document is read from the store; the parsed
    documents in memory are forgotten, as if other documents had pushed them out."""
    reads: list[str] = []
    store = api.app.meta
    real = store.get_upstream_doc

    async def counted(connector_id: int, name: str) -> object:
        reads.append(name)
        return await real(connector_id, name)

    monkeypatch.setattr(store, "get_upstream_doc", counted)
    upstreams = api.app.upstreams
    assert upstreams is not None
    upstreams._memory = type(upstreams._memory)(lambda item: 1, max_bytes=1_000)
    return reads


def test_a_render_of_a_still_fresh_copy_outlives_the_render_cache_without_rereading_it(
    api: Api, upstream: Upstream, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect(api, FIRST_URL, ttl=300)
    upstream.first.packages.add("big-doc", "1.0.0")
    path = tarball_path("big-doc", "1.0.0")
    first = get(api, "big-doc")
    assert api.get(path).status_code == 200  # fetched and stored
    assert api.get(path).status_code == 200  # from the store
    reads = document_reads(api, monkeypatch)
    clock.advance(61)  # past the render cache (60 s), within the TTL
    again = get(api, "big-doc")
    assert again.status_code == 200 and again.content == first.content
    assert reads == []
    assert api.get(path).status_code == 200
    assert reads == []  # the copy's state was enough: it was neither read nor parsed
    assert len(upstream.first.packument_requests("big-doc")) == 1


def test_a_stored_tarball_of_a_version_the_packument_offered_needs_no_document_read(
    api: Api, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    connect(api, FIRST_URL, ttl=300)
    upstream.first.packages.add("offered", "1.0.0")
    upstream.first.packages.add("offered", "1.1.0")
    get(api, "offered")  # npm asks for the packument first
    for version in ("1.0.0", "1.1.0"):
        assert api.get(tarball_path("offered", version)).status_code == 200  # fetched
    reads = document_reads(api, monkeypatch)
    for version in ("1.0.0", "1.1.0"):
        again = api.get(tarball_path("offered", version))
        assert again.content == upstream.first.packages.tarball_of("offered", version)
    assert reads == []
    assert_error(api.get(tarball_path("offered", "1.2.0")), 404, "offered-1.2.0.tgz")
    assert len(upstream.first.tarball_requests("offered")) == 2


def test_a_tarball_of_a_version_the_packument_offered_is_fetched_without_a_document_read(
    api: Api, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold install: the packument, then its tarballs, long after the parsed document
    left memory. The tarball URL and integrity the packument offered are enough."""
    connector = connect(api, FIRST_URL, ttl=300)
    upstream.first.packages.add("cold", "1.0.0")
    upstream.first.packages.add("cold", "1.1.0")
    get(api, "cold", Accept=CORGI)
    settle(api)  # the document lands in the store
    reads = document_reads(api, monkeypatch)
    for version in ("1.0.0", "1.1.0"):
        fetched = api.get(tarball_path("cold", version))
        assert fetched.content == upstream.first.packages.tarball_of("cold", version)
    assert reads == []
    assert len(upstream.first.tarball_requests("cold")) == 2
    # A corrupt upstream tarball is still refused on this path: the integrity came along.
    upstream.first.packages.add("cold", "1.2.0")
    upstream.first.mode = Mode.CORRUPT
    get(api, "cold")  # a full read: fetched anew, and offers 1.2.0
    settle(api)
    reads.clear()
    upstream.first.packages.remove("cold")  # what the tarball path needs was offered
    good = upstream.first.packages.tarball_of("cold", "1.2.0")
    bad = stream(api, tarball_path("cold", "1.2.0"))
    assert not (bad.status == 200 and bad.completed and bad.error is None), bad
    assert len(bad.body) < len(good), "the client got every byte of the corrupt tarball"
    assert reads == []
    assert len(upstream.first.tarball_requests("cold")) == 3
    assert stored_tarball(api, connector, "cold", "1.2.0") is None


def test_an_install_asks_for_the_abbreviated_document_and_a_full_read_for_the_full_one(
    api: Api, upstream: Upstream, clock: Clock
) -> None:
    connect(api, FIRST_URL, ttl=300)
    packages = upstream.first.packages
    packages.add("short", "1.0.0", dependencies={"dep": "^1.0.0"})
    short = get(api, "short", Accept=CORGI)
    assert short.status_code == 200, short.text
    assert short.headers["content-type"].startswith("application/vnd.npm.install-v1+json")
    manifest = short.json()["versions"]["1.0.0"]
    assert manifest["dependencies"] == {"dep": "^1.0.0"}
    assert manifest["dist"]["tarball"] == "http://testserver" + tarball_path("short", "1.0.0")
    assert (
        short.json()["modified"]
        == orjson.loads(packages.packument("short") or b"")["time"]["modified"]
    )
    requests = upstream.first.packument_requests("short")
    assert (
        len(requests) == 1
        and "application/vnd.npm.install-v1+json" in requests[0].headers["accept"]
    )
    assert api.get(tarball_path("short", "1.0.0")).status_code == 200

    # npm view, the web UI: the full document, which the abbreviated copy cannot give.
    full = doc_of(api, "short")
    assert full["versions"]["1.0.0"]["description"] == "short from the scripted upstream"
    assert set(full["time"]) >= {"created", "modified", "1.0.0"}
    requests = upstream.first.packument_requests("short")
    assert len(requests) == 2
    assert requests[1].headers["accept"] == "application/json"
    assert "if-none-match" not in requests[1].headers  # that tag was the abbreviated one's

    # The full copy answers installs too, and is revalidated as a full copy.
    clock.advance(61)
    assert get(api, "short", Accept=CORGI).json()["versions"]["1.0.0"]["dependencies"] == {
        "dep": "^1.0.0"
    }
    assert len(upstream.first.packument_requests("short")) == 2
    clock.advance(300)
    get(api, "short", Accept=CORGI)
    settle(api)
    requests = upstream.first.packument_requests("short")
    assert len(requests) == 3
    assert requests[2].headers["accept"] == "application/json"
    assert requests[2].headers["if-none-match"] == packages.etag(packages.packument("short") or b"")


def test_a_full_read_with_only_an_abbreviated_copy_and_the_upstream_down_is_served_stale(
    api: Api, upstream: Upstream, clock: Clock
) -> None:
    connect(api, FIRST_URL, name="flaky", ttl=300)
    upstream.first.packages.add("kept-short", "1.0.0")
    assert get(api, "kept-short", Accept=CORGI).status_code == 200
    upstream.first.mode = Mode.ERROR
    full = get(api, "kept-short")
    assert full.status_code == 200, full.text
    assert "flaky" in full.headers["x-entrepot-stale"]
    assert set(full.json()["versions"]) == {"1.0.0"}
    assert api.get(tarball_path("kept-short", "1.0.0")).status_code == 502  # never fetched

    # Once that failed, the next full read does not wait for the upstream: the copy at
    # once, and one more try in the background, which brings the full document.
    gate = asyncio.Event()
    upstream.first.gate = gate
    clock.advance(6)  # a stale answer is kept for 5 s
    again = get(api, "kept-short")
    assert again.status_code == 200 and "flaky" in again.headers["x-entrepot-stale"]
    upstream.first.mode = Mode.NORMAL
    gate.set()
    settle(api)
    upstream.first.gate = None
    clock.advance(6)
    assert doc_of(api, "kept-short")["versions"]["1.0.0"]["description"] == (
        "kept-short from the scripted upstream"
    )


def test_a_connector_with_a_minimum_age_asks_for_full_documents(
    api: Api, upstream: Upstream
) -> None:
    """Publish times are in the full document only."""
    connect(api, FIRST_URL, min_age_hours=24)
    upstream.first.packages.add("aged", "1.0.0", published=hours_ago(48))
    upstream.first.packages.add("aged", "1.1.0", published=hours_ago(1))
    response = get(api, "aged", Accept=CORGI)
    assert set(response.json()["versions"]) == {"1.0.0"}
    requests = upstream.first.packument_requests("aged")
    assert [r.headers["accept"] for r in requests] == ["application/json"]


def test_an_upstream_that_ignores_the_accept_header_gives_a_full_copy(
    api: Api, upstream: Upstream
) -> None:
    connect(api, FIRST_URL)
    upstream.first.packages.abbreviates = False
    upstream.first.packages.add("plain", "1.0.0")
    assert get(api, "plain", Accept=CORGI).status_code == 200
    settle(api)
    full = doc_of(api, "plain")
    assert full["versions"]["1.0.0"]["description"] == "plain from the scripted upstream"
    assert len(upstream.first.packument_requests("plain")) == 1


@pytest.mark.parametrize(("workers", "leases"), [(1, 0), (2, 1)])
def test_fetches_are_coalesced_across_processes_only_where_processes_share_the_store(
    make_connected: ConnectedFactory,
    upstream: Upstream,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    leases: int,
) -> None:
    """A lease costs two writes per fetch: a lone process on the embedded store skips it."""
    api = make_connected(workers=workers)
    connect(api, FIRST_URL)
    upstream.first.packages.add("leased", "1.0.0")
    taken: list[str] = []
    store = api.app.meta
    real = store.acquire_lease

    async def counted(key: str, holder: str, seconds: float) -> bool:
        taken.append(key)
        return await real(key, holder, seconds)

    monkeypatch.setattr(store, "acquire_lease", counted)
    assert set(doc_of(api, "leased")["versions"]) == {"1.0.0"}
    settle(api)
    assert len(taken) == leases
    assert len(upstream.first.packument_requests("leased")) == 1


def test_mirror_pulls_full_documents_and_tarballs_and_never_asks_for_local_names(
    api: Api, upstream: Upstream
) -> None:
    """``entrepot mirror``: after it, the feed answers installs and ``npm view`` alone."""
    connect(api, FIRST_URL, ttl=3600)
    packages = upstream.first.packages
    packages.add("pinned", "1.0.0", dependencies={"dep": "^2.0.0"})
    packages.add("dep", "2.0.0")
    packages.add("@corp/mine", "9.0.0")  # a local scope: must never be asked for
    packages.add("internal-lib", "1.0.0")  # a local name with another version upstream
    api.publish("@corp/mine", "1.0.0")
    api.publish("internal-lib", "2.0.0")
    locked = [
        Locked("pinned", "1.0.0", None),
        Locked("dep", "2.0.0", None),
        Locked("@corp/mine", "1.0.0", None),
        Locked("internal-lib", "1.0.0", None),
        Locked("gone", "1.0.0", None),
    ]
    feed = api.run(api.app.registry.known_feed("main"))
    report = api.run(mirror(api.app.registry, feed, locked))
    settle(api)
    assert sorted(report.fetched) == ["dep@2.0.0", "pinned@1.0.0"]
    assert report.local == ["@corp/mine@1.0.0"]
    assert sorted(spec for spec, _ in report.failed) == ["gone@1.0.0", "internal-lib@1.0.0"]
    assert upstream.first.packument_requests("@corp/mine") == []
    assert upstream.first.packument_requests("internal-lib") == []
    for name in ("pinned", "dep"):
        assert [r.headers["accept"] for r in upstream.first.packument_requests(name)] == [
            "application/json"
        ]

    upstream.first.mode = Mode.ERROR  # offline from here on
    full = doc_of(api, "pinned")
    assert full["versions"]["1.0.0"]["description"] == "pinned from the scripted upstream"
    assert get(api, "dep", Accept=CORGI).status_code == 200
    for name, version in (("pinned", "1.0.0"), ("dep", "2.0.0")):
        tarball = api.get(tarball_path(name, version))
        assert tarball.content == packages.tarball_of(name, version)
    again = api.run(mirror(api.app.registry, feed, locked[:2]))
    assert sorted(again.cached) == ["dep@2.0.0", "pinned@1.0.0"]
    assert len(upstream.first.packument_requests("pinned")) == 1


def test_a_304_answer_keeps_the_cached_copy(api: Api, upstream: Upstream, clock: Clock) -> None:
    connect(api, FIRST_URL, ttl=100)
    upstream.first.packages.add("nm-pkg", "1.0.0")
    before = doc_of(api, "nm-pkg")
    upstream.first.packages.add("nm-pkg", "2.0.0")  # the upstream says 304 all the same
    upstream.first.mode = Mode.NOT_MODIFIED
    clock.advance(120)
    doc_of(api, "nm-pkg")
    settle(api)
    clock.advance(61)
    assert doc_of(api, "nm-pkg") == before
    requests = upstream.first.packument_requests("nm-pkg")
    assert len(requests) == 2 and "if-none-match" in requests[1].headers


def test_an_upstream_404_is_believed_for_60_seconds(
    api: Api, upstream: Upstream, clock: Clock
) -> None:
    connect(api, FIRST_URL)
    assert_error(get(api, "not-yet"), 404, "not-yet")
    clock.advance(30)
    assert_error(get(api, "not-yet"), 404, "not-yet")
    assert len(upstream.first.packument_requests("not-yet")) == 1

    upstream.first.packages.add("not-yet", "1.0.0")
    clock.advance(31)
    assert set(doc_of(api, "not-yet")["versions"]) == {"1.0.0"}
    assert len(upstream.first.packument_requests("not-yet")) == 2


def test_fifty_concurrent_misses_make_one_upstream_request(api: Api, upstream: Upstream) -> None:
    connect(api, FIRST_URL)
    upstream.first.packages.add("@up/popular", "1.0.0")
    gate = asyncio.Event()
    upstream.first.gate = gate

    async def all_at_once() -> list[httpx.Response]:
        async def release() -> None:
            while not upstream.first.requests:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.05)  # let every request reach the server first
            gate.set()

        path = "/npm/main/" + quote_name("@up/popular")
        results = await asyncio.gather(
            *(api.client.get(path) for _ in range(50)), release(), return_exceptions=False
        )
        return [r for r in results if isinstance(r, httpx.Response)]

    responses = api.run(all_at_once())
    assert len(responses) == 50
    assert {r.status_code for r in responses} == {200}
    assert {r.content for r in responses} == {responses[0].content}
    assert len(upstream.first.packument_requests("@up/popular")) == 1


def test_fifty_requests_for_an_expired_packument_make_one_revalidation(
    api: Api, upstream: Upstream
) -> None:
    # A TTL of 0: the document is expired at once, and the server's own render cache keeps
    # nothing either, so all 50 requests reach the connector while one revalidation runs.
    connect(api, FIRST_URL, ttl=0)
    upstream.first.packages.add("expiring", "1.0.0")
    before = doc_of(api, "expiring")
    gate = asyncio.Event()
    upstream.first.gate = gate  # the revalidation hangs until every request was answered

    async def all_at_once() -> list[httpx.Response]:
        path = "/npm/main/expiring"
        return list(await asyncio.gather(*(api.client.get(path) for _ in range(50))))

    responses = api.run(all_at_once())
    assert {r.status_code for r in responses} == {200}
    assert all(r.json() == before for r in responses)
    gate.set()
    settle(api)
    requests = upstream.first.packument_requests("expiring")
    assert len(requests) == 2
    assert "if-none-match" in requests[1].headers


def offer_one_version(api: Api, upstream: Upstream, name: str) -> None:
    """The first connector offers ``name@1.0.0``, and the feed has served its packument."""
    connect(api, FIRST_URL)
    upstream.first.packages.add(name, "1.0.0")
    assert get(api, name).status_code == 200


def test_concurrent_requests_for_a_tarball_fetch_it_once_when_store_reads_yield(
    api: Api, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The PostgreSQL store yields to the event loop while it reads: two requests for the
    # same tarball both find it missing before either has started fetching it.
    offer_one_version(api, upstream, "twice")
    meta = api.app.meta
    read = meta.get_upstream_tarball

    async def slow_read(*args: Any) -> Any:
        await asyncio.sleep(0.01)
        return await read(*args)

    monkeypatch.setattr(meta, "get_upstream_tarball", slow_read)

    async def both() -> list[httpx.Response]:
        path = tarball_path("twice", "1.0.0")
        return list(await asyncio.gather(api.client.get(path), api.client.get(path)))

    first, second = api.run(both())
    tarball = upstream.first.packages.tarball_of("twice", "1.0.0")
    assert first.status_code == second.status_code == 200
    assert first.content == second.content == tarball
    assert len(upstream.first.tarball_requests("twice")) == 1


def test_a_tarball_just_kept_is_served_again_without_asking_the_store(
    api: Api, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    offer_one_version(api, upstream, "primed")
    first = api.get(tarball_path("primed", "1.0.0"))
    assert first.status_code == 200
    reads: list[Path] = []
    read_bytes = Path.read_bytes

    def counted(path: Path) -> bytes:
        reads.append(path)
        return read_bytes(path)

    async def no_get(key: str) -> bytes:
        raise AssertionError(f"blob {key[:16]} read from the store")

    async def no_exists(key: str) -> bool:
        raise AssertionError(f"blob {key[:16]} looked for in the store (S3: a HEAD)")

    monkeypatch.setattr(Path, "read_bytes", counted)
    monkeypatch.setattr(api.app.blobs, "get", no_get)
    monkeypatch.setattr(api.app.blobs, "exists", no_exists)
    again = api.get(tarball_path("primed", "1.0.0"))
    assert again.status_code == 200
    assert again.content == first.content == upstream.first.packages.tarball_of("primed", "1.0.0")
    assert [p for p in reads if api.data_dir in p.parents] == []
    assert len(upstream.first.tarball_requests("primed")) == 1


def test_a_tarball_after_its_packument_looks_for_no_local_version_until_a_write(
    api: Api, upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The packument just rendered found no local package of that name: until something
    # is written, the tarball request need not ask the store again (on PostgreSQL, two
    # round trips per tarball of a cold install).
    offer_one_version(api, upstream, "lookless")
    meta = api.app.meta
    asked: list[str] = []

    def spy(method: str) -> Callable[..., Any]:
        real = getattr(meta, method)

        async def counted(*args: Any) -> Any:
            asked.append(method)
            return await real(*args)

        return counted

    for method in ("find_version", "package_seq"):
        monkeypatch.setattr(meta, method, spy(method))
    assert api.get(tarball_path("lookless", "1.0.0")).status_code == 200
    assert asked == []
    # Published here since: the name is local now (the dependency-confusion guard), so the
    # upstream's tarball is no longer served, and the local one is.
    api.publish("lookless", "2.0.0")
    assert api.get(tarball_path("lookless", "1.0.0")).status_code == 404
    assert api.get(tarball_path("lookless", "2.0.0")).status_code == 200
    assert "find_version" in asked


# -- failures ------------------------------------------------------------------------------------


FAILURES: dict[str, Callable[[MockRegistry], None]] = {
    "500": lambda r: setattr(r, "mode", Mode.ERROR),
    "dropped": lambda r: setattr(r, "mode", Mode.DROP),
    "refused": lambda r: setattr(r, "error", refused),
    "timeout": lambda r: setattr(r, "error", timeout),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_cached_copy_is_served_marked_stale_when_the_upstream_fails(
    api: Api, upstream: Upstream, clock: Clock, failure: str
) -> None:
    connect(api, FIRST_URL, name="flaky", ttl=60)
    upstream.first.packages.add("kept", "1.0.0")
    before = doc_of(api, "kept")
    url = before["versions"]["1.0.0"]["dist"]["tarball"].removeprefix("http://testserver")
    data = api.get(url).content
    FAILURES[failure](upstream.first)

    clock.advance(120)
    first = get(api, "kept")  # served at once while the revalidation runs (and fails)
    assert first.status_code == 200 and first.json() == before
    settle(api)
    clock.advance(61)
    stale = get(api, "kept")
    assert stale.status_code == 200, stale.text
    assert stale.json() == before
    assert "flaky" in stale.headers["x-entrepot-stale"]
    assert api.get(url).content == data

    upstream.first.mode = Mode.NORMAL  # back up: the next revalidation clears the mark
    upstream.first.error = None
    settle(api)
    clock.advance(61)
    get(api, "kept")
    settle(api)
    clock.advance(61)
    assert "x-entrepot-stale" not in get(api, "kept").headers


@pytest.mark.parametrize(
    ("failure", "status", "fragment"),
    [
        ("500", 502, "answered HTTP 500"),
        ("dropped", 502, "unreachable"),
        ("refused", 502, "unreachable"),
        ("timeout", 504, "timed out"),
    ],
)
def test_an_uncached_name_fails_with_the_connector_named(
    api: Api, upstream: Upstream, failure: str, status: int, fragment: str
) -> None:
    connect(api, FIRST_URL, name="flaky")
    upstream.first.packages.add("never-seen", "1.0.0")
    FAILURES[failure](upstream.first)
    assert_error(get(api, "never-seen"), status, "flaky", fragment, "never-seen")
    assert_error(get(api, "never-seen", Accept=CORGI), status, "flaky")
    assert_error(api.get(tarball_path("never-seen", "1.0.0")), status, "flaky")


def test_when_one_connector_fails_the_next_one_answers(api: Api, upstream: Upstream) -> None:
    connect(api, FIRST_URL, name="down")
    connect(api, SECOND_URL, name="up")
    upstream.first.mode = Mode.ERROR
    upstream.second.packages.add("elsewhere", "1.0.0")
    assert set(doc_of(api, "elsewhere")["versions"]) == {"1.0.0"}


def test_when_every_connector_fails_the_error_names_each(api: Api, upstream: Upstream) -> None:
    connect(api, FIRST_URL, name="down-one")
    connect(api, SECOND_URL, name="down-two")
    upstream.first.mode = Mode.ERROR
    upstream.second.error = timeout
    assert_error(get(api, "nowhere"), 504, "down-one", "down-two")


def test_a_failing_connector_then_a_404_is_still_a_502(api: Api, upstream: Upstream) -> None:
    connect(api, FIRST_URL, name="down")
    connect(api, SECOND_URL, name="empty")
    upstream.first.mode = Mode.ERROR
    assert_error(get(api, "missing"), 502, "down")


def test_a_client_handed_in_goes_through_the_ssrf_guard_too(api: Api, upstream: Upstream) -> None:
    # The guard is a request hook on the connectors' client, also on one handed in (as this
    # module's mock is): a connector that turns out to point at this server is refused.
    connect(api, FIRST_URL)
    upstream.first.packages.add("loop", "1.0.0")
    assert get(api, "loop").status_code == 200
    asked = len(upstream.requests)
    assert api.app.upstreams is not None
    api.app.upstreams.own_ports.add(9)  # FIRST_URL's port
    assert_error(api.get(tarball_path("loop", "1.0.0")), 502, "this server itself")
    assert_error(get(api, "other"), 502, "this server itself")
    assert len(upstream.requests) == asked


# -- tarball integrity ---------------------------------------------------------------------------


@dataclasses.dataclass
class Streamed:
    status: int
    body: bytes
    completed: bool
    error: BaseException | None


def stream(api: Api, path: str) -> Streamed:
    """GET straight through ASGI, watching the body arrive; the app may fail mid-stream."""

    async def run() -> Streamed:
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver")],
            "server": ("testserver", 80),
            "client": ("127.0.0.1", 50000),
        }
        sent_request = False
        status = 0
        chunks: list[bytes] = []
        completed = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # the client stays connected
            raise AssertionError("unreachable")

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status, completed
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))
                completed = completed or not message.get("more_body", False)

        error: BaseException | None = None
        try:
            await api.app(scope, receive, send)
        except Exception as exc:
            error = exc
        return Streamed(status, b"".join(chunks), completed, error)

    return api.run(run())


@pytest.mark.parametrize("chunk_size", [None, 100])
def test_a_tarball_that_does_not_match_its_integrity_is_not_delivered_nor_kept(
    api: Api, upstream: Upstream, chunk_size: int | None
) -> None:
    connector = connect(api, FIRST_URL)
    upstream.first.chunk_size = chunk_size
    upstream.first.packages.add("@up/tampered", "1.0.0")
    good = upstream.first.packages.tarball_of("@up/tampered", "1.0.0")
    doc_of(api, "@up/tampered")
    path = tarball_path("@up/tampered", "1.0.0")
    upstream.first.mode = Mode.CORRUPT

    bad = stream(api, path)
    assert not (bad.status == 200 and bad.completed and bad.error is None), bad
    assert len(bad.body) < len(good), "the client got every byte of the corrupt tarball"
    assert stored_tarball(api, connector, "@up/tampered", "1.0.0") is None
    blob_keys = api.run(api.app.blobs.keys())
    assert hashlib.sha512(corrupted(good)).hexdigest() not in blob_keys

    upstream.first.mode = Mode.NORMAL  # a later request tries again
    fixed = api.get(path)
    assert fixed.status_code == 200
    assert fixed.content == good
    assert len(upstream.first.tarball_requests("@up/tampered")) == 2
    assert stored_tarball(api, connector, "@up/tampered", "1.0.0") is not None


@pytest.mark.parametrize("chunk_size", [None, 100])
def test_a_valid_tarball_streams_completely(
    api: Api, upstream: Upstream, chunk_size: int | None
) -> None:
    connect(api, FIRST_URL)
    upstream.first.chunk_size = chunk_size
    upstream.first.packages.add("@up/fine", "1.0.0")
    doc_of(api, "@up/fine")
    got = stream(api, tarball_path("@up/fine", "1.0.0"))
    assert got.error is None and got.status == 200 and got.completed
    data = upstream.first.packages.tarball_of("@up/fine", "1.0.0")
    assert len(data) > 200  # several chunks when chunked
    assert got.body == data


# -- local names win -------------------------------------------------------------------------


def test_dependency_confusion_a_local_name_ignores_higher_upstream_versions(
    api: Api, upstream: Upstream
) -> None:
    connect(api, FIRST_URL)
    api.publish("internal-lib", "1.0.0")
    upstream.first.packages.add("internal-lib", "1.0.0", marker="attacker")
    upstream.first.packages.add("internal-lib", "99.0.0", marker="attacker")

    for accept in ("application/json", CORGI):
        served = get(api, "internal-lib", Accept=accept).json()
        assert set(served["versions"]) == {"1.0.0"}
        assert served["dist-tags"] == {"latest": "1.0.0"}
    assert_error(api.get(tarball_path("internal-lib", "99.0.0")), 404, "internal-lib")
    local = api.get(tarball_path("internal-lib", "1.0.0"))
    assert local.status_code == 200
    assert b"attacker" not in gzip.decompress(local.content)
    assert upstream.requests == []


def test_a_name_published_locally_takes_over_from_the_upstream_copy(
    api: Api, upstream: Upstream
) -> None:
    connect(api, FIRST_URL)
    upstream.first.packages.add("claimed", "5.0.0")
    assert set(doc_of(api, "claimed")["versions"]) == {"5.0.0"}
    api.publish("claimed", "1.0.0")
    served = doc_of(api, "claimed")
    assert set(served["versions"]) == {"1.0.0"}
    assert_error(api.get(tarball_path("claimed", "5.0.0")), 404, "claimed")
    assert upstream.first.tarball_requests("claimed") == []


def test_a_scope_with_a_local_package_is_never_looked_up_upstream(
    api: Api, upstream: Upstream
) -> None:
    connect(api, FIRST_URL)
    api.publish("@corp/mine", "1.0.0")
    upstream.first.packages.add("@corp/other", "1.0.0")
    upstream.first.packages.add("@corpus/other", "1.0.0")

    assert_error(get(api, "@corp/other"), 404, "@corp/other")
    assert_error(get(api, "@corp/other", Accept=CORGI), 404, "@corp/other")
    assert_error(api.get(tarball_path("@corp/other", "1.0.0")), 404, "@corp/other")
    assert not [r for r in upstream.requests if "corp%2F" in r.path or "corp/" in r.path]

    # A scope that merely starts the same way is another scope.
    assert set(doc_of(api, "@corpus/other")["versions"]) == {"1.0.0"}


def test_upstream_names_let_a_local_name_or_scope_read_through(
    api: Api, upstream: Upstream
) -> None:
    connect(api, FIRST_URL)
    api.publish("@corp/mine", "1.0.0")
    api.publish("shared-lib", "1.0.0")
    upstream.first.packages.add("@corp/other", "2.0.0")
    upstream.first.packages.add("shared-lib", "1.0.0", marker="upstream")
    upstream.first.packages.add("shared-lib", "3.0.0")
    feed = api.run(api.app.meta.get_feed("main"))
    assert feed is not None
    api.run(api.app.meta.set_upstream_names(feed.id, ["@corp/other", "shared-lib"]))

    assert set(doc_of(api, "@corp/other")["versions"]) == {"2.0.0"}
    merged = doc_of(api, "shared-lib")
    assert set(merged["versions"]) == {"1.0.0", "3.0.0"}
    local_integrity = publish_body("shared-lib", "1.0.0")["versions"]["1.0.0"]["dist"]["integrity"]
    assert merged["versions"]["1.0.0"]["dist"]["integrity"] == local_integrity
    assert all(m["dist"]["tarball"].startswith(FEED_BASE) for m in merged["versions"].values())
    # The abbreviated form merges the same way, with the install fields only.
    short = get(api, "shared-lib", Accept=CORGI)
    assert short.status_code == 200
    abbreviated = short.json()
    assert set(abbreviated) == {"name", "modified", "dist-tags", "versions"}
    assert set(abbreviated["versions"]) == {"1.0.0", "3.0.0"}
    local = abbreviated["versions"]["1.0.0"]
    assert local["dist"]["integrity"] == local_integrity
    assert "marker" not in local and "readme" not in local
    assert set(local) <= set(ABBREVIATED_FIELDS) | {"dist"}
    assert abbreviated["dist-tags"] == merged["dist-tags"]
    # Changed last by the local publish, which came after the upstream's.
    assert abbreviated["modified"] == merged["time"]["modified"]
    upstream_tgz = api.get(tarball_path("shared-lib", "3.0.0"))
    assert upstream_tgz.content == upstream.first.packages.tarball_of("shared-lib", "3.0.0")
    # @corp/mine itself is still local only.
    assert upstream.first.packument_requests("@corp/mine") == []


# -- filters -----------------------------------------------------------------------------------


def test_allow_and_block_patterns_match_names_and_scopes(api: Api, upstream: Upstream) -> None:
    connect(api, FIRST_URL, allow=["@ok", "@fine/*", "good-*", "exact"], block=["good-bad*"])
    names = [
        "@ok/a",
        "@fine/b",
        "good-one",
        "exact",
        "good-bad-one",
        "@okay/a",
        "exact-not",
        "@other/exact",
        "other",
    ]
    for name in names:
        upstream.first.packages.add(name, "1.0.0")
    admitted = {n for n in names if get(api, n).status_code == 200}
    assert admitted == {"@ok/a", "@fine/b", "good-one", "exact"}
    asked = {n for n in names if upstream.first.packument_requests(n)}
    assert asked == admitted


def test_block_by_scope(api: Api, upstream: Upstream) -> None:
    connect(api, FIRST_URL, block=["@evil", "@worse/*", "typo-*"])
    names = ["@evil/a", "@worse/b", "typo-squat", "@evil-twin/a", "fine"]
    for name in names:
        upstream.first.packages.add(name, "1.0.0")
    admitted = {n for n in names if get(api, n).status_code == 200}
    assert admitted == {"@evil-twin/a", "fine"}
    assert {n for n in names if upstream.first.packument_requests(n)} == admitted


def test_a_name_one_connector_filters_out_goes_to_the_next(api: Api, upstream: Upstream) -> None:
    connect(api, FIRST_URL, name="internal-mirror", allow=["@mirror/*"])
    connect(api, SECOND_URL, name="public", block=["@mirror"])
    upstream.first.packages.add("@mirror/x", "1.0.0")
    upstream.second.packages.add("@mirror/x", "6.6.6")
    upstream.second.packages.add("plain", "2.0.0")
    assert set(doc_of(api, "@mirror/x")["versions"]) == {"1.0.0"}
    assert set(doc_of(api, "plain")["versions"]) == {"2.0.0"}
    assert upstream.first.packument_requests("plain") == []
    assert upstream.second.packument_requests("@mirror/x") == []


def test_min_age_hides_young_versions_and_moves_latest(api: Api, upstream: Upstream) -> None:
    connect(api, FIRST_URL, min_age_hours=24)
    packages = upstream.first.packages
    packages.add("aging", "1.0.0", published=hours_ago(24 * 10))
    packages.add("aging", "1.1.0", published=hours_ago(24 * 5))
    packages.add("aging", "1.2.0-rc.1", published=hours_ago(30), tag="next")
    packages.add("aging", "2.0.0-beta.1", published=hours_ago(3), tag="beta")
    packages.add("aging", "2.0.0", published=hours_ago(1))
    packages.add("all-young", "1.0.0", published=hours_ago(2))

    for accept in ("application/json", CORGI):
        served = get(api, "aging", Accept=accept).json()
        assert set(served["versions"]) == {"1.0.0", "1.1.0", "1.2.0-rc.1"}
        assert served["dist-tags"] == {"latest": "1.1.0", "next": "1.2.0-rc.1"}
    times = doc_of(api, "aging")["time"]
    assert "2.0.0" not in times and "2.0.0-beta.1" not in times and "1.1.0" in times
    assert_error(api.get(tarball_path("aging", "2.0.0")), 404, "aging")
    assert upstream.first.tarball_requests("aging") == []
    assert api.get(tarball_path("aging", "1.1.0")).status_code == 200

    # Nothing old enough: as if the upstream did not have it.
    assert_error(get(api, "all-young"), 404, "all-young")


# -- audit -------------------------------------------------------------------------------------


ADVISORY = {
    "express": [
        {
            "id": 1099999,
            "url": "https://example.test/advisories/1099999",
            "title": "Prototype pollution",
            "severity": "high",
            "vulnerable_versions": "<4.1.0",
            "cwe": ["CWE-1321"],
            "cvss": {"score": 7.5, "vectorString": "CVSS:3.1/AV:N"},
        }
    ]
}

LOCAL_NAMES = ("internal-lib", "@corp/mine", "@corp/never-published")


def publish_locals(api: Api) -> None:
    api.publish("internal-lib", "1.0.0")
    api.publish("@corp/mine", "1.0.0")


def assert_no_local_name_left(api: Api, upstream: Upstream) -> None:
    sent = b"".join(
        gzip.decompress(r.body) if r.body[:2] == b"\x1f\x8b" else r.body for r in upstream.requests
    )
    for name in (*LOCAL_NAMES, "@corp"):
        assert name.encode() not in sent, f"{name} was sent upstream"


def test_bulk_audit_is_forwarded_without_local_names(api: Api, upstream: Upstream) -> None:
    connect(api, FIRST_URL)
    publish_locals(api)
    upstream.first.audit_answer = ADVISORY
    body = {
        "internal-lib": ["1.0.0"],
        "@corp/mine": ["1.0.0"],
        "@corp/never-published": ["2.0.0"],
        "express": ["4.0.0"],
        "left-pad": ["1.3.0"],
    }
    # npm 11 gzips its bulk audit body.
    response = api.request(
        "POST",
        "/npm/main" + BULK,
        content=gzip.compress(orjson.dumps(body)),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == ADVISORY
    (forwarded,) = upstream.first.audit_requests()
    assert forwarded.path == "/first" + BULK
    assert forwarded.json == {"express": ["4.0.0"], "left-pad": ["1.3.0"]}
    assert_no_local_name_left(api, upstream)


def test_bulk_audit_goes_to_the_first_connector_that_answers(api: Api, upstream: Upstream) -> None:
    connect(api, FIRST_URL, name="no-audit")
    connect(api, SECOND_URL, name="with-audit")
    publish_locals(api)
    upstream.second.audit_answer = ADVISORY
    response = api.request(
        "POST", "/npm/main" + BULK, json={"express": ["4.0.0"], "internal-lib": ["1.0.0"]}
    )
    assert response.status_code == 200
    assert response.json() == ADVISORY
    assert [r.json for r in upstream.first.audit_requests()] == [{"express": ["4.0.0"]}]
    assert [r.json for r in upstream.second.audit_requests()] == [{"express": ["4.0.0"]}]
    assert_no_local_name_left(api, upstream)


def test_an_audit_sends_each_connector_only_the_names_it_serves(
    api: Api, upstream: Upstream
) -> None:
    # The public connector must not learn the partner's names, and the partner's connector
    # serves only its scope: each gets the names its allow and block patterns admit.
    connect(api, FIRST_URL, name="public", block=["@partner"])
    connect(api, SECOND_URL, name="partner", allow=["@partner"])
    upstream.second.audit_answer = ADVISORY
    body = {"@partner/secret-sdk": ["1.0.0"], "express": ["4.0.0"]}
    bulk = api.request("POST", "/npm/main" + BULK, json=body)
    assert bulk.status_code == 200 and bulk.json() == ADVISORY
    assert [r.json for r in upstream.first.audit_requests()] == [{"express": ["4.0.0"]}]
    assert [r.json for r in upstream.second.audit_requests()] == [
        {"@partner/secret-sdk": ["1.0.0"]}
    ]

    tree = {
        "name": "project",
        "version": "1.0.0",
        "requires": {"@partner/secret-sdk": "1.0.0", "express": "^4.0.0"},
        "dependencies": {
            "@partner/secret-sdk": {"version": "1.0.0", "requires": {"ms": "2.0.0"}},
            "express": {
                "version": "4.0.0",
                "requires": {"@partner/helper": "1.0.0"},
                "dependencies": {"@partner/helper": {"version": "1.0.0"}},
            },
            "ms": {"version": "2.0.0"},
        },
    }
    quick = api.request("POST", "/npm/main" + QUICK, json=tree)
    assert quick.status_code == 200
    sent_public = upstream.first.audit_requests()[-1].json
    assert sent_public["requires"] == {"express": "^4.0.0"}
    assert sent_public["dependencies"] == {
        "express": {"version": "4.0.0", "requires": {}, "dependencies": {}},
        "ms": {"version": "2.0.0"},
    }
    assert b"@partner" not in b"".join(r.body for r in upstream.first.requests)
    sent_partner = upstream.second.audit_requests()[-1].json
    assert sent_partner["requires"] == {"@partner/secret-sdk": "1.0.0"}
    assert set(sent_partner["dependencies"]) == {"@partner/secret-sdk"}


def test_a_bulk_audit_of_local_names_only_is_answered_here(api: Api, upstream: Upstream) -> None:
    connect(api, FIRST_URL)
    publish_locals(api)
    upstream.first.audit_answer = ADVISORY
    response = api.request(
        "POST", "/npm/main" + BULK, json={"internal-lib": ["1.0.0"], "@corp/x": ["1.0.0"]}
    )
    assert response.status_code == 200
    assert response.json() == {}
    assert upstream.requests == []


QUICK_TREE: dict[str, Any] = {
    "name": "project",
    "version": "1.0.0",
    "requires": {"internal-lib": "^1.0.0", "express": "^4.0.0", "@corp/mine": "1.0.0"},
    "dependencies": {
        "internal-lib": {
            "version": "1.0.0",
            "integrity": "sha512-x",
            "requires": {"left-pad": "^1.0.0"},
        },
        "@corp/mine": {"version": "1.0.0", "integrity": "sha512-y"},
        "express": {
            "version": "4.0.0",
            "integrity": "sha512-z",
            "requires": {"@corp/never-published": "1.0.0", "debug": "2.6.9"},
            "dependencies": {
                "@corp/never-published": {"version": "1.0.0"},
                "debug": {"version": "2.6.9", "requires": {"ms": "2.0.0"}},
            },
        },
        "left-pad": {"version": "1.3.0"},
    },
    "install": [],
    "remove": [],
    "metadata": {},
}

PRUNED_TREE: dict[str, Any] = {
    "name": "project",
    "version": "1.0.0",
    "requires": {"express": "^4.0.0"},
    "dependencies": {
        "express": {
            "version": "4.0.0",
            "integrity": "sha512-z",
            "requires": {"debug": "2.6.9"},
            "dependencies": {"debug": {"version": "2.6.9", "requires": {"ms": "2.0.0"}}},
        },
        "left-pad": {"version": "1.3.0"},
    },
    "install": [],
    "remove": [],
    "metadata": {},
}


def test_quick_audit_is_forwarded_with_local_names_pruned(api: Api, upstream: Upstream) -> None:
    connect(api, FIRST_URL)
    publish_locals(api)
    answer = {**EMPTY_QUICK_AUDIT, "advisories": {"1099999": ADVISORY["express"][0]}}
    upstream.first.audit_answer = answer
    response = api.request("POST", "/npm/main" + QUICK, json=QUICK_TREE)
    assert response.status_code == 200, response.text
    assert response.json() == answer
    (forwarded,) = upstream.first.audit_requests()
    assert forwarded.path == "/first" + QUICK
    assert forwarded.json == PRUNED_TREE
    assert_no_local_name_left(api, upstream)


@pytest.mark.parametrize("connectors_", ["none", "failing", "feed-only"])
def test_audit_without_an_answer_is_empty_but_valid(
    api: Api, upstream: Upstream, connectors_: str
) -> None:
    if connectors_ == "failing":
        connect(api, FIRST_URL, name="first")
        connect(api, SECOND_URL, name="second")
        upstream.first.mode = Mode.ERROR
        upstream.second.error = refused
    elif connectors_ == "feed-only":
        connect(api, "feed:team")
    bulk = api.request("POST", "/npm/main" + BULK, json={"express": ["4.0.0"]})
    assert bulk.status_code == 200
    assert bulk.json() == {}
    quick = api.request("POST", "/npm/main" + QUICK, json=PRUNED_TREE)
    assert quick.status_code == 200
    assert quick.json() == EMPTY_QUICK_AUDIT
    if connectors_ == "failing":
        assert len(upstream.first.audit_requests()) == 2
        assert len(upstream.second.audit_requests()) == 2


# -- publishing, feeds, credentials ------------------------------------------------------------


def test_publishing_works_while_every_upstream_is_down(api: Api, upstream: Upstream) -> None:
    connect(api, FIRST_URL, name="first")
    connect(api, SECOND_URL, name="second")
    upstream.first.error = refused
    upstream.second.error = timeout
    api.publish("made-here", "1.0.0")
    api.publish("@corp/made-here", "1.0.0")
    api.publish("made-here", "1.1.0")
    assert set(doc_of(api, "made-here")["versions"]) == {"1.0.0", "1.1.0"}
    assert set(doc_of(api, "@corp/made-here")["versions"]) == {"1.0.0"}
    assert api.get(tarball_path("made-here", "1.1.0")).status_code == 200
    assert upstream.requests == []


def test_a_feed_connector_reads_another_feed_on_this_server(api: Api, upstream: Upstream) -> None:
    admin = Admin(api.app.meta)
    api.run(admin.grant("team", "alice", "owner"))
    for name in ("team-lib", "@team/core"):
        response = api.put(
            "/npm/team/" + quote_name(name), auth=api.alice, json=publish_body(name, "1.2.0")
        )
        assert response.status_code == 201, response.text
    connect(api, "feed:team")
    connect(api, FIRST_URL)
    upstream.first.packages.add("team-lib", "9.0.0")

    for name in ("team-lib", "@team/core"):
        served = doc_of(api, name)
        assert set(served["versions"]) == {"1.2.0"}
        url = served["versions"]["1.2.0"]["dist"]["tarball"]
        assert url == "http://testserver" + tarball_path(name, "1.2.0")
        response = api.get(url.removeprefix("http://testserver"))
        assert response.status_code == 200
        original = api.get(tarball_path(name, "1.2.0", feed="team"), auth=api.alice)
        assert response.content == original.content
    assert upstream.requests == []


def test_a_feed_connector_passes_through_that_feeds_own_connectors(
    api: Api, upstream: Upstream
) -> None:
    connect(api, FIRST_URL, feed="team")
    connect(api, "feed:team")
    upstream.first.packages.add("deep", "1.0.0")
    served = doc_of(api, "deep")
    assert set(served["versions"]) == {"1.0.0"}
    url = served["versions"]["1.0.0"]["dist"]["tarball"]
    assert url.startswith(FEED_BASE)
    response = api.get(url.removeprefix("http://testserver"))
    assert response.status_code == 200
    assert response.content == upstream.first.packages.tarball_of("deep", "1.0.0")


@pytest.mark.parametrize("kind", ["token", "basic"])
def test_credentials_come_from_the_server_environment(
    make_connected: ConnectedFactory, upstream: Upstream, kind: str
) -> None:
    secret = "user:s3cret-upstream" if kind == "basic" else "s3cret-upstream-token"
    api = make_connected(environ={"UPSTREAM_SECRET": secret})
    connect(api, FIRST_URL, **{f"{kind}_env": "UPSTREAM_SECRET"})
    upstream.first.packages.add("private-up", "1.0.0")
    served = get(api, "private-up")
    assert served.status_code == 200
    assert secret.encode() not in served.content
    tgz = api.get(tarball_path("private-up", "1.0.0"))
    assert tgz.status_code == 200
    expected = (
        "Basic " + base64.b64encode(secret.encode()).decode()
        if kind == "basic"
        else f"Bearer {secret}"
    )
    assert len(upstream.first.requests) == 2
    assert all(r.headers.get("authorization") == expected for r in upstream.first.requests)


def test_an_unset_credential_variable_asks_anonymously(api: Api, upstream: Upstream) -> None:
    connect(api, FIRST_URL, token_env="NOT_SET_ANYWHERE")
    upstream.first.packages.add("anon", "1.0.0")
    assert get(api, "anon").status_code == 200
    assert all("authorization" not in r.headers for r in upstream.first.requests)
