"""Reading through upstream registries (and other feeds), with a cache that keeps installs
working when the upstream is down.

For a name the feed does not hold, connectors are asked in order. An upstream packument is
cached with its ETag: fresh for the connector's TTL, then served while one background request
revalidates it (stale-while-revalidate), and served as it is when every upstream fails
(stale-if-error). Concurrent misses for one name make one upstream request (single flight).
Tarballs are streamed to the client while being hashed and written, and kept only if they
match the upstream's ``dist.integrity``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import fnmatch
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx
import orjson

from entrepot.errors import NotFound, UpstreamTimeout, UpstreamUnavailable
from entrepot.lru import SizedLRU
from entrepot.netguard import Guard, Resolutions, current_guard
from entrepot.npm import semver
from entrepot.npm.packument import CORGI
from entrepot.storage.base import BlobStore, Connector, Feed, MetadataStore, UpstreamDoc
from entrepot.upstream_http import (
    DEFAULT_HEADERS,
    REDIRECTS,
    AiohttpTransport,
    Answer,
    HttpxAnswer,
    proxied,
    tls_context,
    transport_for,
)

log = logging.getLogger("entrepot.connectors")

#: How long an upstream 404 is believed.
NOT_FOUND_TTL = 60.0
#: Largest upstream packument accepted (the biggest public ones are tens of MB).
MAX_DOC_BYTES = 200 * 1024 * 1024
FEED_PREFIX = "feed:"
#: What npm sends to ask for the abbreviated packument.
CORGI_ACCEPT = f"{CORGI}; q=1.0, application/json; q=0.8, */*"
#: Connections to upstreams, all connectors together.
MAX_CONNECTIONS = 64


#: The request extension that names a request's connector, for the SSRF guard on redirects.
_CONNECTOR = "entrepot.connector"


@dataclasses.dataclass(frozen=True)
class Found:
    """An upstream packument, as a parsed document, and where it came from."""

    doc: dict[str, Any]
    connector: Connector
    fetched: float
    stale: bool


@dataclasses.dataclass(frozen=True)
class StoredTarball:
    """An upstream tarball already in the blob store (checked against its integrity when it
    was fetched): its key, its size and, on a file store, its path."""

    blob_key: str
    size: int
    path: Path | None


class Dist(NamedTuple):
    """What fetching and checking a version's upstream tarball needs from its manifest,
    kept apart so that a fetch need not hold (or parse again) the whole document. A tuple:
    a cold install makes one for every version of every document it renders."""

    tarball: str | None
    integrity: str | None
    shasum: str | None

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> Dist:
        dist = manifest.get("dist")
        return cls.of_dist(dist) if isinstance(dist, dict) else NO_DIST

    @classmethod
    def of_dist(cls, dist: Mapping[str, Any]) -> Dist:
        """From a manifest's ``dist`` object."""
        url, integrity, shasum = dist.get("tarball"), dist.get("integrity"), dist.get("shasum")
        return cls(
            url if isinstance(url, str) else None,
            integrity if isinstance(integrity, str) else None,
            shasum if isinstance(shasum, str) else None,
        )


NO_DIST = Dist(None, None, None)


@dataclasses.dataclass
class TarballStream:
    """An upstream tarball on its way: headers known, body to be streamed once."""

    size: int | None
    chunks: AsyncIterator[bytes]


def name_matches(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Glob match on the full name, or on the scope (``@acme`` matches ``@acme/*``)."""
    scope = name.split("/", 1)[0] if name.startswith("@") else None
    return any(
        fnmatch.fnmatchcase(name, p) or (scope is not None and p in (scope, f"{scope}/*"))
        for p in patterns
    )


def connector_admits(connector: Connector, name: str) -> bool:
    if connector.allow and not name_matches(name, connector.allow):
        return False
    return not (connector.block and name_matches(name, connector.block))


def visible_versions(doc: Mapping[str, Any], min_age_hours: float | None, now: float) -> set[str]:
    """Versions old enough to be seen (all of them without a minimum age)."""
    versions = doc.get("versions")
    if not isinstance(versions, dict):
        return set()
    if not min_age_hours:
        return set(versions)
    times = doc.get("time") if isinstance(doc.get("time"), dict) else {}
    assert isinstance(times, dict)
    cutoff = now - min_age_hours * 3600
    visible = set()
    for version in versions:
        published = _epoch(times.get(version))
        if published is not None and published <= cutoff:
            visible.add(version)
    return visible


def _epoch(stamp: object) -> float | None:
    if not isinstance(stamp, str):
        return None
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def filtered(doc: dict[str, Any], connector: Connector, now: float) -> dict[str, Any]:
    """The document with versions younger than the connector's minimum age removed, and
    ``latest`` moved to the newest visible release when it pointed at a hidden one."""
    visible = visible_versions(doc, connector.min_age_hours, now)
    versions = doc.get("versions") or {}
    if len(visible) == len(versions):
        return doc
    out = dict(doc)
    out["versions"] = {v: m for v, m in versions.items() if v in visible}
    tags = {t: v for t, v in (doc.get("dist-tags") or {}).items() if v in visible}
    if "latest" not in tags and visible:
        valid = [v for v in visible if semver.clean(v) == v]
        releases = [v for v in valid if "-" not in v]
        best = semver.max_version(releases or valid)
        if best:
            tags["latest"] = best
    out["dist-tags"] = tags
    if isinstance(doc.get("time"), dict):
        out["time"] = {k: t for k, t in doc["time"].items() if k not in versions or k in visible}
    return out


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        """Nothing is kept."""


_NO_COOKIES = _NoCookies()


class UpstreamClient(httpx.AsyncClient):
    """The connectors' HTTP client. It keeps no cookies, as npm keeps none: an upstream
    registry needs none, and the cookie jar's work on every response took 4% of the event
    loop in a cold install."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("headers", DEFAULT_HEADERS)
        super().__init__(**options)
        transport = options.get("transport")
        #: The transport's direct path for GETs, where httpx would hand them to that same
        #: transport anyway: no proxy from the environment, none given, no other mounts.
        self.direct: AiohttpTransport | None = (
            transport
            if isinstance(transport, AiohttpTransport)
            and not options.get("proxy")
            and not options.get("mounts")
            and not proxied(bool(options.get("trust_env", True)))
            else None
        )

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        """Nothing is kept."""


class Upstreams:
    """The connectors of every feed, their cache, and the one HTTP client they share."""

    def __init__(
        self,
        meta: MetadataStore,
        blobs: BlobStore,
        *,
        client: httpx.AsyncClient | None = None,
        credentials: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        verify: str | bool = True,
        shared: bool = True,
    ) -> None:
        self.meta = meta
        #: Whether other processes may use the same store (server workers, other servers):
        #: only then are fetches coalesced across processes, which costs two writes each.
        self.shared = shared
        self.blobs = blobs
        if client is not None:
            # Every hop of every request goes through the SSRF guard, whoever made the client.
            hooks = client.event_hooks
            client.event_hooks = {**hooks, "request": [*hooks["request"], self._guard_hop]}
        self._client = client
        #: The CA bundle's path, if any, or whether to verify.
        self._verify = verify
        #: Upstream host names' addresses, for the SSRF guard and the connection pool.
        self.resolutions = Resolutions()
        self._credentials = dict(credentials or {})
        #: Requests in flight by (connector id, name, abbreviated).
        self._inflight: dict[tuple[int, str, bool], asyncio.Task[UpstreamDoc | None]] = {}
        self._tarballs_inflight: dict[tuple[int, str, str], asyncio.Event] = {}
        #: Blobs this process wrote, or found, for a stored upstream tarball. Blobs never
        #: change, and the store only deletes one that no tarball row names: while the row
        #: is there, the blob is, and asking the store again (S3: a HEAD) can be skipped.
        self._blobs_seen: SizedLRU[str, bool] = SizedLRU(lambda _: 1, max_bytes=100_000)
        #: Documents being written to the shared cache after their request was answered,
        #: and those documents by (connector id, name) until they land there.
        self._storing: set[asyncio.Task[None]] = set()
        self._unstored: dict[tuple[int, str], UpstreamDoc] = {}
        #: Upstream documents parsed once, for the reads that follow a fetch (a big
        #: packument costs milliseconds of the event loop to parse). Weighed as five times
        #: the body: parsed, a packument takes about 3.8 times its JSON (measured on the
        #: 476 documents of the benchmark tree), and the body is kept too.
        self._memory: SizedLRU[tuple[int, str], tuple[UpstreamDoc, dict[str, Any]]] = SizedLRU(
            lambda item: 5 * len(item[0].body), max_bytes=64 * 1024 * 1024, max_entries=2000
        )
        #: Documents whose last refresh failed: their cached copy is served marked stale.
        self._failing: set[tuple[int, str]] = set()
        #: Connectors that answered a direct GET with a redirect: theirs go through httpx.
        self._redirecting: set[int] = set()
        self._connectors: dict[int, tuple[int, list[Connector]]] = {}
        self.upstream_requests = 0
        self._timeout = timeout
        self._holder = uuid.uuid4().hex
        #: Ports this server listens on: a loopback upstream on one of them is itself.
        self.own_ports: set[int] = set()
        #: Set by the registry: a packument document of another feed on this server.
        self.feed_document: Callable[[str, str, int], Awaitable[dict[str, Any] | None]] | None = (
            None
        )
        #: Set by the registry: the bytes of a tarball of another feed on this server.
        self.feed_tarball: Callable[[str, str, str, int], Awaitable[bytes]] | None = None
        #: Set by the HTTP layer: told of each tarball kept (blob key, bytes), so that its
        #: cache of small tarballs spares the next request a read from the store.
        self.kept_tarball: Callable[[str, bytes], None] | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            tls = tls_context(self._verify)
            self._client = UpstreamClient(
                trust_env=True,  # HTTPS_PROXY, NO_PROXY, SSL_CERT_FILE
                follow_redirects=True,
                # Every hop, redirects included, goes through the SSRF guard.
                event_hooks={"request": [self._guard_hop]},
                # The limits hold for proxied requests, which go through httpx's own pool.
                limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=32),
                transport=transport_for(tls, MAX_CONNECTIONS, self.resolutions),
                timeout=self._timeout,
                verify=tls,
            )
        return self._client

    async def close(self) -> None:
        if self._storing:
            await asyncio.wait(set(self._storing), timeout=10)
        if self._client is not None:
            await self._client.aclose()

    async def connectors(self, feed: Feed) -> list[Connector]:
        seq = await self.meta.seq()
        cached = self._connectors.get(feed.id)
        if cached is None or cached[0] != seq:
            cached = (seq, await self.meta.list_connectors(feed.id))
            self._connectors[feed.id] = cached
        return cached[1]

    def _auth_headers(self, connector: Connector) -> dict[str, str]:
        if not connector.credential_env:
            return {}
        secret = self._credentials.get(connector.credential_env)
        if not secret:
            log.warning(
                "connector %s: credential variable %s is not set; asking anonymously",
                connector.name,
                connector.credential_env,
            )
            return {}
        if connector.credential_kind == "basic":
            encoded = base64.b64encode(secret.encode()).decode()
            return {"Authorization": f"Basic {encoded}"}
        return {"Authorization": f"Bearer {secret}"}

    async def _guard_hop(self, request: httpx.Request) -> None:
        """The SSRF guard, on every hop of every request (a request hook). It also leaves
        the request's rule where the connection pool's resolver finds it, should the hop
        need a new connection (see :mod:`entrepot.netguard`)."""
        connector = request.extensions.get(_CONNECTOR)
        if not isinstance(connector, Connector):
            current_guard.set(None)  # the strictest rule
            return
        await self._guard(connector, str(request.url))

    async def _guard(self, connector: Connector, url: str) -> None:
        """Refuse a request to ``url`` the connector's rule does not allow, and leave the
        rule for the pool's resolver."""
        guard = Guard(connector.name, connector.allow_internal, frozenset(self.own_ports))
        current_guard.set(guard)
        await self.resolutions.check(url, guard)

    async def _get(self, connector: Connector, url: str, headers: dict[str, str]) -> Answer:
        """GET ``url`` for ``connector``, its body not yet read. Sent on the pool's
        connections directly where the client allows it (see :mod:`entrepot.upstream_http`),
        through httpx otherwise and for a connector that redirects: httpx follows the
        redirect, its hook guarding every hop and dropping credentials at another origin.
        Raises httpx's exceptions, or UpstreamUnavailable when the guard refuses a hop."""
        client = self.client
        direct = client.direct if isinstance(client, UpstreamClient) else None
        if direct is not None and connector.id not in self._redirecting:
            await self._guard(connector, url)
            answer = await direct.get(url, headers, self._timeout)
            if answer.status not in REDIRECTS:
                return answer
            await answer.aclose()
            # Asked again through httpx, from the start; and from now on, for this connector.
            self._redirecting.add(connector.id)
        request = client.build_request(
            "GET", url, headers=headers, extensions={_CONNECTOR: connector}
        )
        return HttpxAnswer(await client.send(request, stream=True))

    # -- packuments -------------------------------------------------------------------------

    async def find(
        self, feed: Feed, name: str, *, depth: int = 0, abbreviated: bool = False
    ) -> Found | None:
        """The first connector's document for ``name``; None if no connector has it.

        With ``abbreviated``, the caller needs only what installs need: a URL connector
        without a minimum age (which needs publish times) may answer with the upstream's
        abbreviated document, which is smaller to fetch, parse and store. A full document
        is asked for otherwise; an abbreviated copy is then served only, marked stale, when
        the upstream cannot send the full one.

        Raises :class:`UpstreamUnavailable` when a connector failed and nothing is cached.
        """
        failures: list[str] = []
        timed_out = False
        now = time.time()
        for connector in await self.connectors(feed):
            if not connector_admits(connector, name):
                continue
            if connector.url.startswith(FEED_PREFIX):
                doc = await self._feed_document(connector, name, depth)
                if doc is not None:
                    return Found(filtered(doc, connector, now), connector, now, False)
                continue
            try:
                short = abbreviated and not connector.min_age_hours
                found = await self._from_url(connector, name, short)
            except UpstreamUnavailable as exc:
                failures.append(f"{connector.name}: {exc.message}")
                timed_out = timed_out or isinstance(exc, UpstreamTimeout)
                continue
            if found is not None:
                doc = filtered(found.doc, connector, now)
                return dataclasses.replace(found, doc=doc)
        if failures:
            error = UpstreamTimeout if timed_out else UpstreamUnavailable
            raise error(f"no upstream could answer for {name}: " + "; ".join(failures))
        return None

    async def fresh_copy(self, feed: Feed, name: str) -> tuple[Connector, float] | None:
        """The connector and fetch time of the copy :meth:`find` would answer with, when
        that copy is fresh and can be known without reading it (no feed connector, no
        minimum age on the way); None otherwise: ask :meth:`find`."""
        now = time.time()
        for connector in await self.connectors(feed):
            if not connector_admits(connector, name):
                continue
            if connector.url.startswith(FEED_PREFIX) or connector.min_age_hours:
                return None
            known = self._known((connector.id, name))
            if known is not None:
                state: tuple[int, float] | None = (known.status, known.fetched)
            else:
                state = await self.meta.upstream_doc_state(connector.id, name)
            if state is None:
                return None
            status, fetched = state
            if now - fetched >= (connector.ttl if status == 200 else NOT_FOUND_TTL):
                return None
            if status == 200:
                return (connector, fetched)
            # A fresh 404 from this connector: find goes on to the next one.
        return None

    async def _feed_document(
        self, connector: Connector, name: str, depth: int
    ) -> dict[str, Any] | None:
        if self.feed_document is None or depth > 4:
            return None
        return await self.feed_document(connector.url.removeprefix(FEED_PREFIX), name, depth + 1)

    async def _from_url(self, connector: Connector, name: str, abbreviated: bool) -> Found | None:
        key = (connector.id, name)
        now = time.time()
        cached = self._known(key) or await self.meta.get_upstream_doc(connector.id, name)
        # An abbreviated copy does not answer a request for the full document: fetch that
        # (and keep the abbreviated copy for an upstream failure).
        fallback = cached
        if cached is not None and cached.abbreviated and not abbreviated:
            if key in self._failing:
                # The last request for the full one failed: the abbreviated copy, at once,
                # while one more is tried in the background.
                self._single_flight(connector, name, None, False)
                return self._found(connector, name, cached, stale=True)
            cached = None
        # A full copy is revalidated as a full one: one copy then answers both forms.
        abbreviated = abbreviated and (cached is None or cached.abbreviated)
        if cached is not None:
            ttl = connector.ttl if cached.status == 200 else NOT_FOUND_TTL
            fresh = now - cached.fetched < ttl
            if fresh:
                return self._found(connector, name, cached, stale=False)
            if cached.status == 200:
                # Stale while revalidate: answer now, refresh in the background; once a
                # refresh has failed, the copy is marked stale until one succeeds.
                self._single_flight(connector, name, cached, abbreviated)
                return self._found(connector, name, cached, stale=key in self._failing)
        try:
            result = await asyncio.shield(self._single_flight(connector, name, cached, abbreviated))
        except UpstreamUnavailable:
            if fallback is not None and fallback.status == 200:
                return self._found(connector, name, fallback, stale=True)
            raise
        if result is None:
            if fallback is not None and fallback.status == 200:
                return self._found(connector, name, fallback, stale=True)
            raise UpstreamUnavailable(f"connector {connector.name} failed")
        return self._found(connector, name, result, stale=False)

    def _known(self, key: tuple[int, str]) -> UpstreamDoc | None:
        """The document this process holds for the key (parsed, or still being stored)."""
        memory = self._memory.get(key)
        return memory[0] if memory is not None else self._unstored.get(key)

    def _found(
        self, connector: Connector, name: str, doc: UpstreamDoc, *, stale: bool
    ) -> Found | None:
        if doc.status != 200:
            return None
        key = (connector.id, name)
        memory = self._memory.get(key)
        if memory is not None and memory[0] is doc:
            parsed = memory[1]
        else:
            parsed = orjson.loads(doc.body)
            self._memory.put(key, (doc, parsed))
        return Found(parsed, connector, doc.fetched, stale)

    def _single_flight(
        self, connector: Connector, name: str, cached: UpstreamDoc | None, abbreviated: bool
    ) -> asyncio.Task[UpstreamDoc | None]:
        """The one request in flight for the name in that form (an abbreviated request
        joins a full one, which answers it too)."""
        task = self._inflight.get((connector.id, name, False))
        if task is None and abbreviated:
            task = self._inflight.get((connector.id, name, True))
        if task is None:
            flight = (connector.id, name, abbreviated)
            task = asyncio.create_task(self._fetch(connector, name, cached, abbreviated))
            self._inflight[flight] = task
            task.add_done_callback(lambda done: self._fetched(flight, done))
        return task

    def _fetched(
        self, flight: tuple[int, str, bool], task: asyncio.Task[UpstreamDoc | None]
    ) -> None:
        self._inflight.pop(flight, None)
        key = flight[:2]
        # Retrieving the exception also keeps a failed background refresh out of the log.
        if task.cancelled() or task.exception() is not None:
            self._failing.add(key)
        else:
            self._failing.discard(key)

    async def _fetch(
        self, connector: Connector, name: str, cached: UpstreamDoc | None, abbreviated: bool
    ) -> UpstreamDoc | None:
        """One upstream request for the name. Where other processes share the store (and
        one is using it now), it is coalesced across them with a lease: the holder
        fetches, the others wait for its answer to land in the shared cache."""
        lease = f"doc:{connector.id}:{name}"
        started = time.time()
        deadline = time.monotonic() + self._timeout + 5
        holding = False
        # Without a copy, the caller has just read the store and found none: the first
        # look is under the lease.
        look = cached is not None
        # Alone on a shared store, a lease would wait for nobody: three statements spared.
        shared = self.shared and not await self.meta.alone()
        while shared:
            # Another process may have refreshed it meanwhile.
            stored = await self.meta.get_upstream_doc(connector.id, name) if look else None
            look = True
            if stored is not None and stored.abbreviated and not abbreviated:
                stored = None  # not what this request needs
            if stored is not None and (cached is None or stored.fetched > cached.fetched):
                ttl = connector.ttl if stored.status == 200 else NOT_FOUND_TTL
                if time.time() - stored.fetched < ttl or stored.fetched >= started:
                    if holding:
                        await self.meta.release_lease(lease, self._holder)
                    self._memory.drop((connector.id, name))
                    return stored
                cached = stored
            if holding:
                break
            if await self.meta.acquire_lease(lease, self._holder, self._timeout + 5):
                # Read once more under the lease: the previous holder may have stored its
                # answer and let go between the read above and this acquisition.
                holding = True
                continue
            if time.monotonic() > deadline:
                break  # the holder is stuck; ask ourselves
            await asyncio.sleep(0.05)
        held = lease if holding else None
        try:
            doc, parsed = await self._request(connector, name, cached, abbreviated)
        except BaseException:
            await self._release(held)
            raise
        if parsed is None:
            try:
                await self.meta.put_upstream_doc(connector.id, name, doc)
            finally:
                await self._release(held)
            self._memory.drop((connector.id, name))
            return doc
        # A new document: this process reads it from memory at once, so the request that
        # asked for it does not wait for the store's write lock; other processes poll
        # the shared cache, and the lease is held until the document lands there.
        self._memory.put((connector.id, name), (doc, parsed))
        self._unstored[(connector.id, name)] = doc
        task = asyncio.create_task(self._store_doc(connector, name, doc, held))
        self._storing.add(task)
        task.add_done_callback(self._storing.discard)
        return doc

    async def _release(self, lease: str | None) -> None:
        if lease is not None:
            await self.meta.release_lease(lease, self._holder)

    async def _store_doc(
        self, connector: Connector, name: str, doc: UpstreamDoc, lease: str | None
    ) -> None:
        try:
            await self.meta.put_upstream_doc(connector.id, name, doc)
        except Exception as exc:  # kept in memory only; the next process asks again
            log.warning("connector %s: could not cache %s: %s", connector.name, name[:214], exc)
        finally:
            key = (connector.id, name)
            if self._unstored.get(key) is doc:
                del self._unstored[key]
            with contextlib.suppress(Exception):
                await self._release(lease)

    async def _request(
        self, connector: Connector, name: str, cached: UpstreamDoc | None, abbreviated: bool
    ) -> tuple[UpstreamDoc, dict[str, Any] | None]:
        """The upstream's answer, and the parsed document when it sent a new one."""
        url = f"{connector.url.rstrip('/')}/{quote(name, safe='@')}"
        accept = CORGI_ACCEPT if abbreviated else "application/json"
        headers = {"Accept": accept, **self._auth_headers(connector)}
        if cached is not None and cached.status == 200 and cached.etag:
            headers["If-None-Match"] = cached.etag
        self.upstream_requests += 1
        parsed: dict[str, Any] | None = None
        try:
            answer = await self._get(connector, url, headers)
            try:
                status = answer.status
                if status == 304 and cached is not None:
                    doc = dataclasses.replace(cached, fetched=time.time())
                elif status == 404:
                    doc = UpstreamDoc(404, None, time.time(), b"")
                elif status == 200:
                    body = await _read_limited(answer, MAX_DOC_BYTES)
                    parsed = _check_document(body, name)
                    # Only an answer that says it is abbreviated is taken as such: an
                    # upstream that ignores the Accept header sends the full document.
                    short = (answer.header("content-type") or "").startswith(CORGI)
                    etag = answer.header("etag")
                    doc = UpstreamDoc(200, etag, time.time(), body, abbreviated and short)
                elif status in (401, 403):
                    raise UpstreamUnavailable(
                        f"connector {connector.name} refused our credentials (HTTP {status})"
                    )
                else:
                    raise UpstreamUnavailable(f"connector {connector.name} answered HTTP {status}")
            finally:
                await answer.aclose()
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"connector {connector.name} timed out") from None
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(
                f"connector {connector.name} is unreachable ({type(exc).__name__})"
            ) from None
        return doc, parsed

    # -- tarballs ---------------------------------------------------------------------------

    async def tarball(
        self, found: Found, name: str, version: str, *, depth: int = 0
    ) -> StoredTarball | bytes | TarballStream:
        """A tarball of an upstream version: a stored blob, the bytes from another feed, or
        a stream that stores it on the way."""
        connector = found.connector
        manifest = (found.doc.get("versions") or {}).get(version)
        if not isinstance(manifest, dict):
            raise NotFound(f"{name}@{version} not found upstream")
        if connector.url.startswith(FEED_PREFIX):
            if self.feed_tarball is None:
                raise NotFound(f"{name}@{version} not found")
            filename = f"{name.rpartition('/')[2]}-{version}.tgz"
            feed = connector.url.removeprefix(FEED_PREFIX)
            return await self.feed_tarball(feed, name, filename, depth + 1)
        return await self.fetch_tarball(connector, name, version, Dist.of(manifest))

    async def fetch_tarball(
        self, connector: Connector, name: str, version: str, dist: Dist
    ) -> StoredTarball | TarballStream:
        """A URL connector's tarball of a version whose manifest had ``dist``: stored, or
        fetched and stored on the way."""
        key = (connector.id, name, version)
        while True:
            stored = await self.stored_tarball(connector, name, version)
            if stored is not None:
                return stored
            # Reading the store may have let another request start the same fetch (the
            # PostgreSQL store yields while it reads): then wait for that one.
            if key not in self._tarballs_inflight:
                break
        url = dist.tarball
        if url is None or not url.startswith(("http://", "https://")):
            raise NotFound(f"{name}@{version} has no tarball URL upstream")
        return await self._stream(connector, name, version, url, dist)

    async def stored_tarball(
        self, connector: Connector, name: str, version: str
    ) -> StoredTarball | None:
        """The connector's tarball of a version if it is in the blob store (after any fetch
        of it in progress here); None if it has to be fetched."""
        waiting = self._tarballs_inflight.get((connector.id, name, version))
        if waiting is not None:
            await waiting.wait()
        cached = await self.meta.get_upstream_tarball(connector.id, name, version)
        if cached is None:
            return None
        key = cached[0]
        if self._blobs_seen.get(key) is None:
            if not await self.blobs.exists(key):
                return None
            self._blobs_seen.put(key, True)
        return StoredTarball(key, cached[1], self.blobs.local_path(key))

    async def _stream(
        self, connector: Connector, name: str, version: str, url: str, dist: Dist
    ) -> TarballStream:
        key = (connector.id, name, version)
        done = asyncio.Event()
        self._tarballs_inflight[key] = done
        self.upstream_requests += 1
        try:
            response = await self._get(connector, url, self._auth_headers(connector))
        except UpstreamUnavailable:  # a redirect the SSRF guard refused
            self._finish(key, done)
            raise
        except httpx.TimeoutException:
            self._finish(key, done)
            raise UpstreamTimeout(f"connector {connector.name} timed out") from None
        except httpx.HTTPError as exc:
            self._finish(key, done)
            raise UpstreamUnavailable(
                f"connector {connector.name} is unreachable ({type(exc).__name__})"
            ) from None
        if response.status != 200:
            await response.aclose()
            self._finish(key, done)
            if response.status == 404:
                raise NotFound(f"{name}@{version}: the upstream has no tarball")
            raise UpstreamUnavailable(
                f"connector {connector.name} answered HTTP {response.status} for a tarball"
            )
        length = response.header("content-length")
        size = (
            int(length)
            if length
            and length.isascii()
            and length.isdigit()
            and not response.header("content-encoding")
            else None
        )
        return TarballStream(size, self._relay(connector, name, version, dist, response, key, done))

    def _finish(self, key: tuple[int, str, str], done: asyncio.Event) -> None:
        self._tarballs_inflight.pop(key, None)
        done.set()

    async def _relay(
        self,
        connector: Connector,
        name: str,
        version: str,
        dist: Dist,
        response: Answer,
        key: tuple[int, str, str],
        done: asyncio.Event,
    ) -> AsyncIterator[bytes]:
        # Kept in memory: the blob store takes the whole tarball at the end anyway.
        chunks: list[bytes] = []
        sha512 = hashlib.sha512()
        sha1 = hashlib.sha1(usedforsecurity=False)
        # The last chunk is held back until the hash is checked: a corrupt tarball then never
        # reaches the client complete (its Content-Length is not met, or chunking not ended).
        held = b""
        try:
            async for chunk in response.chunks():
                chunks.append(chunk)
                sha512.update(chunk)
                sha1.update(chunk)
                if held:
                    yield held
                held = chunk
            integrity = "sha512-" + base64.b64encode(sha512.digest()).decode()
            if not _integrity_matches(dist, integrity, sha1.hexdigest()):
                log.error(
                    "connector %s: %s@%s does not match its dist.integrity; not kept",
                    connector.name,
                    name,
                    version,
                )
                raise UpstreamUnavailable(
                    f"the tarball of {name}@{version} from {connector.name} is corrupt"
                )
            # Checked: the client may have its last bytes now, before the copy is stored
            # (storing waits for the disk and for the store's write lock).
            if held:
                yield held
            data = b"".join(chunks)
            chunks.clear()
            key_hex = sha512.hexdigest()
            await self.blobs.put(key_hex, data)
            await self.meta.put_upstream_tarball(connector.id, name, version, key_hex, len(data))
            self._blobs_seen.put(key_hex, True)
            if self.kept_tarball is not None:
                self.kept_tarball(key_hex, data)
        finally:
            await response.aclose()
            self._finish(key, done)

    # -- audit --------------------------------------------------------------------------------

    async def forward(
        self,
        feed: Feed,
        path: str,
        body_for: Callable[[Connector], Mapping[str, Any] | None],
    ) -> Any | None:
        """POST an audit body to the first URL connector that answers 200; None if none.
        ``body_for`` gives each connector's body (None: nothing to send it)."""
        for connector in await self.connectors(feed):
            if connector.url.startswith(FEED_PREFIX):
                continue
            body = body_for(connector)
            if body is None:
                continue
            url = f"{connector.url.rstrip('/')}/{path}"
            headers = {"Content-Type": "application/json", **self._auth_headers(connector)}
            try:
                response = await self.client.post(
                    url,
                    content=orjson.dumps(body),
                    headers=headers,
                    extensions={_CONNECTOR: connector},
                )
            except (httpx.HTTPError, UpstreamUnavailable):
                continue
            if response.status_code == 200:
                try:
                    return orjson.loads(response.content)
                except orjson.JSONDecodeError:
                    continue
        return None


async def _read_limited(response: Answer, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.chunks():
        size += len(chunk)
        if size > limit:
            raise UpstreamUnavailable(f"the upstream document is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _check_document(body: bytes, name: str) -> dict[str, Any]:
    """The parsed upstream document, if it is a packument."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamUnavailable(f"the upstream sent invalid JSON for {name}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("versions", {}), dict):
        raise UpstreamUnavailable(f"the upstream sent something that is not a packument for {name}")
    return doc


def _integrity_matches(dist: Dist, integrity: str, shasum: str) -> bool:
    if dist.integrity is not None:
        sha512s = [p for p in dist.integrity.split() if p.startswith("sha512-")]
        if sha512s:
            return integrity in sha512s
    if dist.shasum is not None:
        return dist.shasum.lower() == shasum
    return True
