"""The ASGI application: routing for ``/npm/<feed>/...`` and the composition root.

npm's routes do not fit a path-template router (``@scope%2fname``, ``/-rev/``, tarballs under
the package), so the path is split once, safely (:mod:`entrepot.http.paths`), and dispatched
by hand. Handlers parse, call one use case, render.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import math
import os
import re
import select
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import httpx
import orjson
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from entrepot.accounts import Accounts
from entrepot.auth import Authenticator, Principal
from entrepot.connectors import Upstreams
from entrepot.errors import (
    BadRequest,
    NotFound,
    RegistryError,
    Unauthorized,
)
from entrepot.http.account_routes import AccountRoutes
from entrepot.http.admin_api import AdminApi, Operations
from entrepot.http.bodies import read_body, read_json
from entrepot.http.metrics import Metrics
from entrepot.http.paths import split_path, take_package_name
from entrepot.http.responses import JSON, error_response, json_response
from entrepot.http.wire import encode_head, uvicorn_cycle, write_whole
from entrepot.lru import SizedLRU
from entrepot.npm.packument import CORGI
from entrepot.registry import Registry, Rendered
from entrepot.settings import Settings
from entrepot.storage.base import (
    BlobStore,
    Feed,
    MetadataStore,
    Missing,
    StoreUnavailable,
    seq_memo,
)
from entrepot.storage.open import open_local_stores, open_stores
from entrepot.storage.sqlite import SQLiteMetadataStore
from entrepot.web.ui import WebUI

log = logging.getLogger("entrepot")
access_log = logging.getLogger("entrepot.access")
_TOKEN_IN_PATH = re.compile(r"(/-/user/token/)[^/?]*")

_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
SMALL_TARBALL = 1024 * 1024

Handler = Callable[[Request, list[str]], Awaitable[Response]]


class EntrepotApp:
    """The whole HTTP surface of one server process."""

    def __init__(
        self,
        settings: Settings,
        meta: MetadataStore,
        blobs: BlobStore,
        upstreams: Upstreams | None = None,
    ) -> None:
        self.settings = settings
        self.meta = meta
        self.blobs = blobs
        self.upstreams = upstreams
        self.metrics = Metrics()
        self._origins: dict[tuple[str, str], str] = {}
        #: Small tarballs by content hash: immutable, so never stale (S3 reads spared).
        self._small_blobs: SizedLRU[str, bytes] = SizedLRU(
            len, max_bytes=64 * 1024 * 1024, max_item=256 * 1024
        )
        if upstreams is not None:
            # A tarball just fetched through a connector is in memory already: the first
            # install after a cold one then reads none from the store (S3: one GET each).
            upstreams.kept_tarball = self._small_blobs.put
        #: Finished answers to repeated GETs (see :class:`Memo`). Their bodies are mostly
        #: the packument cache's and the tarball cache's own bytes, shared, but an entry
        #: keeps its body alive after those caches let it go.
        self._memo: SizedLRU[tuple[Any, ...], Memo] = SizedLRU(
            lambda memo: len(memo.answer.body), max_bytes=64 * 1024 * 1024, max_entries=20_000
        )
        self.registry = Registry(
            meta, blobs, max_unpacked=settings.max_unpacked_bytes, upstreams=upstreams
        )
        self.auth = Authenticator(meta, allow_password_auth=settings.allow_password_auth)
        self.accounts = Accounts(meta, self.auth, allow_registration=settings.allow_registration)
        self.account_routes = AccountRoutes(self.accounts, self.principal, settings.max_body_bytes)
        self.operations = Operations(meta, self.registry, self.accounts)
        self.admin_api = AdminApi(
            self.operations, self.principal, self.origin, settings.max_body_bytes
        )
        self.web = WebUI(self.operations, self.auth, self.origin, self.issuer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        key = memo_key(scope) if scope["method"] in ("GET", "HEAD") else None
        if key is not None:
            hit = self._memo.get(key)
            if hit is not None:
                try:
                    # An answer to credentials needs the counter as of now: see seq(). (Not
                    # memoized for the request: a remembered answer that turns out stale is
                    # rare, and the per-request memo would cost every hit.)
                    current: int | None = await self.meta.seq(fresh=key[_MEMO_AUTH] is not None)
                except StoreUnavailable:
                    current = None
                if current == hit.seq and time.monotonic() < hit.until:
                    await hit.answer(scope, receive, send)
                    self._observe(scope, hit.kind, 200, started)
                    return
                self._memo.drop(key)
        seq_memo.set({})
        request = Request(scope, receive)
        seq_before: int | None = None
        try:
            if key is not None:
                with contextlib.suppress(StoreUnavailable):  # the route says what failed
                    seq_before = await self.meta.seq()  # before anything the answer uses
            response = await self.route(request)
        except RegistryError as exc:
            response = error_response(exc)
        except StoreUnavailable as exc:
            log.error("store unavailable on %s %s: %s", request.method, _loggable_path(scope), exc)
            response = json_response(
                {"error": "the registry's storage is unavailable; try again shortly"},
                503,
                {"Retry-After": "5"},
            )
        except Exception:
            log.exception("unhandled error on %s %s", request.method, _loggable_path(scope))
            response = json_response({"error": "internal server error"}, 500)
        await response(scope, receive, send)
        kind = scope.get("entrepot.kind", "other")
        until = scope.get("entrepot.memo_until")
        if (
            key is not None
            and until is not None
            and seq_before is not None
            and isinstance(response, PrebuiltResponse)
            and isinstance(response.body, bytes)
        ):
            self._memo.put(key, Memo(seq_before, until, kind, response))
        self._observe(scope, kind, response.status_code, started)

    def _observe(self, scope: Scope, kind: str, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        self.metrics.observe(kind, status, elapsed)
        if self.settings.access_log:
            client = scope.get("client")
            access_log.info(
                "%s %s %s %d %.1fms",
                client[0] if client else "-",
                scope["method"],
                _loggable_path(scope),
                status,
                elapsed * 1000,
            )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.upstreams is not None:
                    # The HTTP client (TLS context, lazy imports) costs tens of milliseconds:
                    # pay it now rather than in the first install through a connector.
                    _ = self.upstreams.client
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.upstreams is not None:
                    await self.upstreams.close()
                await self.meta.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- routing ----------------------------------------------------------------------------

    async def route(self, request: Request) -> Response:
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        segments = split_path(raw.split(b"?", 1)[0])
        if segments in ([""], []):
            return await self.home(request)
        if segments == ["-", "health"]:
            return await self.health()
        if segments == ["-", "metrics"]:
            return await self.metrics_page()
        if segments[:2] == ["-", "api"]:
            return await self.admin_api.route(request, segments[2:])
        if segments[:2] == ["-", "ui"] and len(segments) > 2:
            return await self.web.route(request, segments[2:])
        if len(segments) == 4 and segments[:3] == ["-", "web", "login"]:
            return await self.account_routes.web_login_page(request, segments[3])
        if segments[0] != "npm" or len(segments) < 2 or not segments[1]:
            raise NotFound("not found: feeds are at /npm/<feed>/")
        feed_name, rest = segments[1], segments[2:]
        if rest and rest[-1] == "" and len(rest) > 1:
            rest = rest[:-1]
        if not rest or rest == [""]:
            return await self.feed_info(request, feed_name)
        if rest[0] == "-":
            return await self.special(request, feed_name, rest[1:])
        return await self.package_route(request, feed_name, rest)

    async def health(self) -> Response:
        """For load balancers: 200 when the metadata store answers, else 503."""
        try:
            await self.meta.list_feeds()  # a real query, not a cached counter
            seq = await self.meta.seq()
        except Exception as exc:  # any failure of the store makes this node unhealthy
            log.error("health check failed: metadata store: %s", type(exc).__name__)
            return json_response({"status": "unavailable", "metadata": "unreachable"}, 503)
        try:
            await self.blobs.exists("0" * 128)
        except Exception as exc:
            log.error("health check failed: blob store: %s", type(exc).__name__)
            return json_response({"status": "unavailable", "blobs": "unreachable"}, 503)
        return json_response({"status": "ok", "seq": seq})

    async def metrics_page(self) -> Response:
        gauges: dict[str, float] = {"seq": float(await self.meta.seq())}
        if self.upstreams is not None:
            gauges["upstream_requests_total"] = float(self.upstreams.upstream_requests)
        gauges.update(self.registry.counters())
        body = self.metrics.render(gauges)
        return Response(body, media_type="text/plain; version=0.0.4")

    async def principal(self, request: Request) -> Principal | None:
        client = request.client.host if request.client else None
        header = _header(request, b"authorization")
        if header is not None and len(request.headers.getlist("authorization")) > 1:
            # Which one a proxy or the server would pick differs: refuse rather than guess.
            raise BadRequest("more than one Authorization header")
        return await self.auth.authenticate(header, client)

    def origin(self, request: Request) -> str:
        """This server's URL without a path: the configured public URL, else the request's."""
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        host = _header(request, b"host") or ""
        scheme = request.scope.get("scheme", "http")
        key = (scheme, host)
        origin = self._origins.get(key)
        if origin is None:
            if not _HOST.match(host):
                server = request.scope.get("server") or ("127.0.0.1", self.settings.port)
                host = f"{server[0]}:{server[1]}"
            origin = f"{scheme}://{host}"
            if len(self._origins) < 1000:
                self._origins[key] = origin
        return origin

    def feed_base(self, request: Request, feed: str) -> str:
        return f"{self.origin(request)}/npm/{feed}/"

    def issuer(self, request: Request) -> str:
        """The name an authenticator app shows for this server."""
        return f"Entrepot ({self.origin(request).split('://', 1)[1]})"

    async def home(self, request: Request) -> Response:
        if _wants_html(request.headers.get("accept", "")):
            return await self.web.home(request)
        principal = await self.principal(request)
        # Only the feeds the caller may read: a private feed stays hidden from signed-in
        # users without a role on it, as it does on every other path.
        feeds = [
            f.name
            for f in await self.meta.list_feeds()
            if await self.registry.role(f, principal) > 0
        ]
        return json_response(
            {"name": "entrepot", "feeds": {f: self.feed_base(request, f) for f in feeds}}
        )

    async def feed_info(self, request: Request, feed_name: str) -> Response:
        feed = await self.registry.feed(feed_name, await self.principal(request))
        count = await self.meta.count_packages(feed.id)
        return json_response(
            {
                "feed": feed.name,
                "private": feed.private,
                "packages": count,
                "registry": self.feed_base(request, feed.name),
            }
        )

    async def special(self, request: Request, feed_name: str, rest: list[str]) -> Response:
        method = request.method
        if rest == ["ping"] and method in ("GET", "HEAD"):
            await self.registry.known_feed(feed_name)
            return json_response({})
        if rest and rest[0] == "user":
            await self.registry.known_feed(feed_name)
            return await self.account_routes.user(request, rest[1:])
        if rest == ["whoami"] and method == "GET":
            principal = await self.principal(request)
            if principal is None:
                raise Unauthorized("you are not signed in", scheme="Bearer")
            return json_response({"username": principal.name})
        if rest[:2] == ["npm", "v1"] and rest[2:3] in (["tokens"], ["user"]):
            await self.registry.known_feed(feed_name)
            return await self.account_routes.npm_v1(request, rest[2:], self.issuer(request))
        if rest == ["v1", "login"] and method == "POST":
            await self.registry.known_feed(feed_name)
            return await self.account_routes.start_web_login(
                request, self.origin(request), self.feed_base(request, feed_name)
            )
        if len(rest) == 3 and rest[:2] == ["v1", "done"] and method == "GET":
            return await self.account_routes.poll_web_login(rest[2])
        feed = await self.registry.feed(feed_name, await self.principal(request))
        if len(rest) >= 3 and rest[0] == "package":
            name, tail = take_package_name(rest[1:])
            if tail[:1] == ["dist-tags"]:
                return await self.dist_tags(request, feed, name, tail[1:])
        if rest == ["v1", "search"] and method in ("GET", "HEAD"):
            return await self.search(request, feed)
        if rest[:1] == ["all"] and method in ("GET", "HEAD") and rest[1:] in ([], ["since"]):
            since = request.query_params.get("startkey") if rest[1:] == ["since"] else None
            return json_response(await self.registry.listing(feed, since))
        if rest == ["npm", "v1", "security", "advisories", "bulk"] and method == "POST":
            body = await self.read_json(request)
            return json_response(await self.registry.audit(feed, "bulk", body) or {})
        if rest == ["npm", "v1", "security", "audits", "quick"] and method == "POST":
            body = await self.read_json(request)
            answer = await self.registry.audit(feed, "quick", body)
            return json_response(answer if isinstance(answer, dict) else EMPTY_QUICK_AUDIT)
        raise NotFound(f"no such registry endpoint: /-/{'/'.join(rest)[:200]}")

    async def package_route(self, request: Request, feed_name: str, rest: list[str]) -> Response:
        principal = await self.principal(request)
        feed = await self.registry.feed(feed_name, principal)
        if principal is not None and principal.expires is not None:
            request.scope["entrepot.expires"] = principal.expires
        name, tail = take_package_name(rest)
        method = request.method
        if not tail:
            if method in ("GET", "HEAD"):
                return await self.packument(request, feed, name)
            if method == "PUT":
                body = await self.read_json(request)
                # Any "_attachments" key means a publish, so {} or null gets publish's errors.
                if "_attachments" in body:
                    request.scope["entrepot.kind"] = "publish"
                    # The role first: a user who may not publish gets 403, not an OTP prompt.
                    await self.registry.require(feed, principal, "publisher")
                    await self.second_factor(request, principal)
                    rev = await self.registry.publish(feed, name, body, _writer(principal))
                    return json_response({"ok": True, "id": name, "rev": rev}, 201)
                rev = await self.registry.update_document(feed, name, body, None, principal)
                return json_response({"ok": True, "id": name, "rev": rev}, 201)
        elif tail[0] == "-rev" and len(tail) == 2:
            if method == "PUT":
                body = await self.read_json(request)
                rev = await self.registry.update_document(feed, name, body, tail[1], principal)
                return json_response({"ok": True, "id": name, "rev": rev}, 201)
            if method == "DELETE":
                await self.registry.delete_package(feed, name, tail[1], principal)
                return json_response({"ok": True, "id": name})
        elif tail[0] == "-" and len(tail) == 2 and method in ("GET", "HEAD"):
            return await self.tarball(request, feed, name, tail[1])
        elif tail[0] == "-" and len(tail) == 4 and tail[2] == "-rev" and method == "DELETE":
            await self.registry.delete_tarball(feed, name, tail[1], principal)
            return json_response({"ok": True})
        elif len(tail) == 1 and method in ("GET", "HEAD"):
            return await self.version_manifest(request, feed, name, tail[0])
        raise NotFound(f"no route for {method} on this path")

    async def second_factor(self, request: Request, principal: Principal | None) -> None:
        """Publishing needs the ``npm-otp`` code of a user who enrolled an authenticator."""
        if principal is None:
            return
        user = await self.meta.get_user_by_id(principal.user_id)
        if user is not None:
            await self.auth.check_second_factor(user, request.headers.get("npm-otp"))

    # -- reads ------------------------------------------------------------------------------

    async def packument(self, request: Request, feed: Feed, name: str) -> Response:
        request.scope["entrepot.kind"] = "packument"
        accept = _header(request, b"accept") or ""
        write = bool(request.scope["query_string"]) and request.query_params.get("write") == "true"
        abbreviated = CORGI in accept and not write
        rendered = await self.registry.packument(
            feed, name, abbreviated=abbreviated, feed_base=self.feed_base(request, feed.name)
        )
        if _etag_matches(_header(request, b"if-none-match"), rendered):
            return Response(status_code=304, headers=_packument_headers(rendered, feed.private))
        gzipped = (
            "gzip" in (_header(request, b"accept-encoding") or "") and len(rendered.body) > 512
        )
        # The header block of each variant is built once per rendered document.
        key = (gzipped, feed.private, abbreviated)
        raw = rendered.http_cache.get(key)
        if raw is None:
            body = rendered.gzipped if gzipped else rendered.body
            headers = _packument_headers(rendered, feed.private)
            headers["Content-Type"] = CORGI if abbreviated else JSON
            headers["Content-Length"] = str(len(body))
            if gzipped:
                headers["Content-Encoding"] = "gzip"
            encoded = [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]
            raw = rendered.http_cache[key] = (body, encoded, encode_head(encoded, len(body)))
        # An upstream copy is good until it must be revalidated; a local one until a write.
        _memo_until(request.scope, rendered.fresh_until if rendered.package_seq < 0 else None)
        return PrebuiltResponse(*raw)

    async def version_manifest(
        self, request: Request, feed: Feed, name: str, spec: str
    ) -> Response:
        rendered = await self.registry.packument(
            feed, name, abbreviated=False, feed_base=self.feed_base(request, feed.name)
        )
        doc = orjson.loads(rendered.body)
        version = doc["dist-tags"].get(spec, spec)
        if version not in doc["versions"]:
            raise NotFound(f"{name}@{spec[:100]} not found in feed {feed.name!r}")
        return json_response(doc["versions"][version])

    async def tarball(self, request: Request, feed: Feed, name: str, filename: str) -> Response:
        request.scope["entrepot.kind"] = "tarball"
        ref = await self.registry.tarball(feed, name, filename)
        etag = f'"{ref.blob_key[:32] or ref.size}"'
        headers = {
            "ETag": etag,
            "Cache-Control": "private, max-age=31536000, immutable"
            if feed.private
            else "public, max-age=31536000, immutable",
        }
        if ref.stream is not None:
            headers.pop("ETag")
            if ref.stream.size is not None:
                headers["Content-Length"] = str(ref.stream.size)
            return RelayResponse(
                ref.stream.chunks, media_type="application/octet-stream", headers=headers
            )
        if ref.data is not None:
            return Response(ref.data, media_type="application/octet-stream", headers=headers)
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        if ref.path is not None and ref.size > SMALL_TARBALL:
            return LargeFileResponse(
                ref.path, media_type="application/octet-stream", headers=headers
            )
        cached = self._small_blobs.get(ref.blob_key)
        if cached is not None:
            data = cached
        elif ref.path is not None:
            # Small files come from the page cache in microseconds: reading them here costs
            # less than FileResponse's thread hops (2,250 -> see docs/benchmarks.md).
            try:
                data = ref.path.read_bytes()
            except FileNotFoundError:
                raise NotFound(f"the tarball {filename[:200]!r} is missing from storage") from None
        else:
            try:
                data = await self.blobs.get(ref.blob_key)
            except Missing:
                log.error("tarball %s of %s is missing from the blob store", filename[:200], name)
                raise NotFound(f"the tarball {filename[:200]!r} is missing from storage") from None
        if cached is None and ref.blob_key:
            self._small_blobs.put(ref.blob_key, data)
        headers["Content-Type"] = "application/octet-stream"
        headers["Content-Length"] = str(len(data))
        # A local version's bytes change only by a write; a connector's may be refused
        # once its upstream copy is revalidated.
        _memo_until(request.scope, ref.fresh_until)
        return PrebuiltResponse(
            data, [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]
        )

    async def search(self, request: Request, feed: Feed) -> Response:
        """npm's search (and UPM's "My Registries" list): ``text``, ``size`` (<= 250),
        ``from``."""
        params = request.query_params
        size = _int_param(params.get("size"), 20, 1, 250)
        offset = _int_param(params.get("from"), 0, 0, 1_000_000)
        text = params.get("text", "")[:200]
        return json_response(await self.registry.search(feed, text, size=size, offset=offset))

    # -- tags -------------------------------------------------------------------------------

    async def dist_tags(self, request: Request, feed: Feed, name: str, tail: list[str]) -> Response:
        method = request.method
        principal = await self.principal(request)
        if not tail and method == "GET":
            return json_response(dict(await self.registry.dist_tags(feed, name)))
        if len(tail) == 1 and method in ("PUT", "POST"):
            try:
                version = orjson.loads(await self.read_body(request) or b"null")
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"the body is not valid JSON: {exc}") from None
            await self.registry.set_dist_tag(feed, name, tail[0], version, principal)
            return json_response({"ok": True}, 201)
        if len(tail) == 1 and method == "DELETE":
            await self.registry.remove_dist_tag(feed, name, tail[0], principal)
            return json_response({"ok": True})
        raise NotFound("no such dist-tags endpoint")

    # -- users ------------------------------------------------------------------------------

    # -- bodies -----------------------------------------------------------------------------

    async def read_body(self, request: Request) -> bytes:
        settings = self.settings
        return await read_body(request, settings.max_body_bytes, settings.body_idle_timeout)

    async def read_json(self, request: Request) -> dict[str, Any]:
        settings = self.settings
        return await read_json(request, settings.max_body_bytes, settings.body_idle_timeout)


EMPTY_QUICK_AUDIT = {
    "actions": [],
    "advisories": {},
    "muted": [],
    "metadata": {
        "vulnerabilities": {"info": 0, "low": 0, "moderate": 0, "high": 0, "critical": 0},
        "dependencies": 0,
        "devDependencies": 0,
        "optionalDependencies": 0,
        "totalDependencies": 0,
    },
}


def _wants_html(accept: str) -> bool:
    """Browsers ask for HTML first; scripts (``*/*``, ``application/json``) get JSON."""
    for part in accept.split(","):
        kind = part.split(";", 1)[0].strip().lower()
        if kind in ("text/html", "application/xhtml+xml"):
            return True
        if kind in ("application/json", "*/*"):
            return False
    return False


def _writer(principal: Principal | None) -> Principal:
    if principal is None:
        raise Unauthorized("you must sign in to publish (npm login, or a token in .npmrc)")
    return principal


def _int_param(value: str | None, default: int, low: int, high: int) -> int:
    # Stripped once, then checked and converted: str.strip() and int() do not agree on
    # what is whitespace (int(" 7") is 7, int("\x1f7") is an error).
    digits = value.strip() if value is not None else ""
    if not (digits.isascii() and digits.isdigit()):
        return default
    if len(digits) > 9:  # beyond any bound here (and int() refuses over 4,300 digits)
        return high
    return max(low, min(high, int(digits)))


def _header(request: Request, name: bytes) -> str | None:
    """One request header, from a dict built once per request (Starlette's ``Headers``
    scans the list on every lookup; the hot path asks for five)."""
    scope = request.scope
    table: dict[bytes, bytes] | None = scope.get("entrepot.headers")
    if table is None:
        table = scope["entrepot.headers"] = {}
        for key, value in scope["headers"]:
            table.setdefault(key, value)
    value = table.get(name)
    return value.decode("latin-1") if value is not None else None


def _packument_headers(rendered: Rendered, private: bool) -> dict[str, str]:
    headers = {
        "ETag": rendered.etag,
        "Last-Modified": rendered.last_modified,
        "Vary": "Accept, Accept-Encoding, Authorization",
        "Cache-Control": "private, no-cache" if private else "public, max-age=0",
    }
    if rendered.stale:
        headers["X-Entrepot-Stale"] = rendered.stale
        headers["Warning"] = '110 entrepot "Response is Stale"'
    return headers


#: ``preadv`` flag (Linux): fail with EAGAIN instead of waiting for the disk.
_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


async def _pread(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset``: straight from the page cache when they are there,
    else read by a worker thread, so that a slow disk never blocks the event loop."""
    if _RWF_NOWAIT is not None:
        buffer = bytearray(size)
        try:
            count = os.preadv(fd, [buffer], offset, _RWF_NOWAIT)
        except BlockingIOError:
            pass
        else:
            # No copy into bytes: the transport takes any buffer, and this one is not reused.
            return buffer if count == size else memoryview(buffer)[:count]  # type: ignore[return-value]
    return await anyio.to_thread.run_sync(os.pread, fd, size, offset)


#: Zero-copy sends run in these threads (a slow reader holds one); when all are busy, a
#: response is written chunk by chunk from the event loop instead.
_SENDFILE_THREADS = 8
_sendfile_slots = threading.BoundedSemaphore(_SENDFILE_THREADS)
_sendfile_pool = concurrent.futures.ThreadPoolExecutor(
    _SENDFILE_THREADS, thread_name_prefix="entrepot-sendfile"
)
#: A reader that takes nothing for this long loses its connection.
SENDFILE_IDLE_TIMEOUT = 60.0


def _plain_socket_of(send: Send) -> tuple[Any, int] | None:
    """uvicorn's response cycle behind ``send`` and its socket's descriptor, when the
    response may be written straight to that socket: plain TCP (never TLS), a
    Content-Length response, and nothing waiting in the transport's buffer."""
    cycle = uvicorn_cycle(send)
    if cycle is None:
        return None
    transport = getattr(cycle, "transport", None)
    if transport is None or transport.is_closing():
        return None
    if transport.get_extra_info("sslcontext") is not None:
        return None
    if transport.get_write_buffer_size() or getattr(cycle, "chunked_encoding", None) is not False:
        return None
    sock = transport.get_extra_info("socket")
    fileno = getattr(sock, "fileno", None)
    return (cycle, fileno()) if fileno is not None else None


def _sendfile_all(sock: int, fd: int, offset: int, count: int) -> int:
    """Write ``count`` bytes of ``fd`` from ``offset`` to the non-blocking socket with
    sendfile(2), waiting for room with poll(2); the bytes sent (fewer if the peer left or
    stalled past the idle timeout)."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    sent = 0
    while sent < count:
        try:
            done = os.sendfile(sock, fd, offset + sent, count - sent)
        except BlockingIOError:
            done = -1
        except OSError:
            return sent
        if done == 0:
            return sent
        if done > 0:
            sent += done
            continue
        events = poller.poll(SENDFILE_IDLE_TIMEOUT * 1000)
        if not events or events[0][1] & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
            return sent
    return sent


class RelayResponse(StreamingResponse):
    """An upstream tarball on its way to the client, chunk by chunk. Unlike Starlette's
    response, no task group listens for the client going away (it cost 7% of the event
    loop in a cold install): the relay goes on to the end either way, so the tarball is
    still checked and kept for the next install, and the server drops what is sent to a
    client that has gone."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.stream_response(send)


class LargeFileResponse(FileResponse):
    """Starlette's file response with the plain (no range) body read on the event loop when
    the page cache has it: a read through a worker thread costs a thread hop per 64 KiB,
    which held a 30 MB tarball to a third of nginx's rate (bench/installs.py). Reads are
    CHUNK bytes: fewer, larger writes cost less CPU per megabyte, and a slow reader holds
    at most one chunk plus the transport's buffer."""

    chunk_size = 256 * 1024

    async def _handle_simple(self, send: Send, send_header_only: bool, send_pathsend: bool) -> None:
        if send_header_only or send_pathsend:
            await super()._handle_simple(send, send_header_only, send_pathsend)
            return
        headers = self.raw_headers
        await send({"type": "http.response.start", "status": self.status_code, "headers": headers})
        fd = os.open(self.path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if await self._send_zero_copy(send, fd, size):
                return
            offset = 0
            more = True
            while more:
                chunk = await _pread(fd, min(self.chunk_size, size - offset), offset)
                offset += len(chunk)
                more = bool(chunk) and offset < size
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
        finally:
            os.close(fd)

    async def _send_zero_copy(self, send: Send, fd: int, size: int) -> bool:
        """The body straight from the page cache to the socket (sendfile), as nginx does,
        when the server is uvicorn on plain TCP and a sending thread is free. False when
        this response must be written the ordinary way (nothing was sent yet)."""
        target = _plain_socket_of(send)
        if target is None or size == 0 or not _sendfile_slots.acquire(blocking=False):
            return False
        cycle, sock = target
        try:
            loop = asyncio.get_running_loop()
            sent = await loop.run_in_executor(_sendfile_pool, _sendfile_all, sock, fd, 0, size)
        finally:
            _sendfile_slots.release()
        # Tell uvicorn's cycle what went past it, then end the response its way.
        cycle.expected_content_length -= sent
        if sent < size:
            cycle.transport.abort()  # the reader left or stalled: drop the connection
            cycle.expected_content_length = 0
            cycle.keep_alive = False
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True


#: The request headers an answer worth remembering can depend on: who asks, which form
#: (abbreviated or full) and encoding, the host its tarball URLs are built from, and the
#: ETag the client holds. A request with any of them twice is never remembered.
_MEMO_HEADERS = {
    name: index
    for index, name in enumerate(
        (b"authorization", b"accept", b"accept-encoding", b"host", b"if-none-match")
    )
}


#: Where the Authorization header sits in a memo key (after path, query, scheme, client).
_MEMO_AUTH = 4 + _MEMO_HEADERS[b"authorization"]


def memo_key(scope: Scope) -> tuple[Any, ...] | None:
    """What a remembered GET answer is filed under: the raw path and query, the scheme, the
    client's address (a token may be limited to some), and the headers above."""
    path = scope.get("raw_path") or scope["path"].encode()
    if not path.startswith(b"/npm/"):
        return None  # only packuments and tarballs are remembered
    found: list[bytes | None] = [None] * len(_MEMO_HEADERS)
    for name, value in scope["headers"]:
        index = _MEMO_HEADERS.get(name)
        if index is not None:
            if found[index] is not None:
                return None
            found[index] = value
    client = scope.get("client")
    return (
        path,
        scope["query_string"],
        scope.get("scheme"),
        client[0] if client else None,
        *found,
    )


def _memo_until(scope: Scope, until: float | None) -> None:
    """Mark this request's answer as worth remembering, until ``until`` (a monotonic
    deadline; None: until the next write) and no later than the caller's token expires."""
    deadline = math.inf if until is None else until
    expires = scope.get("entrepot.expires")
    if expires is not None:
        deadline = min(deadline, time.monotonic() + (expires - time.time()))
    scope["entrepot.memo_until"] = deadline


@dataclasses.dataclass(frozen=True)
class Memo:
    """A finished answer to a packument or small-tarball GET, filed by :func:`memo_key`.

    It is served while the store's change counter is the one read before the answer was
    made (any write anywhere moves it: a publish, a revocation, a role change) and ``until``
    has not passed. A hit costs the counter read and one write to the socket (two ASGI
    messages on a server other than uvicorn): no routing, no authentication, no cache
    lookups. Bodies are mostly shared with the packument and blob caches.
    """

    seq: int
    until: float
    kind: str
    #: The answer as first sent: it holds no per-request state, so it is sent again as is.
    answer: PrebuiltResponse


class PrebuiltResponse(Response):
    """A 200 response whose header block was built before: the packument hot path skips
    Starlette's per-response header assembly, and on uvicorn the answer goes out in one
    write (:func:`write_whole`). ``head``: the block encoded by :func:`encode_head` when the
    caller keeps one (a packument variant's); else it is encoded here."""

    def __init__(
        self, body: bytes, raw_headers: list[tuple[bytes, bytes]], head: bytes | None = None
    ) -> None:
        self.status_code = 200
        self.body = body
        self.raw_headers = raw_headers
        self.background = None
        self.head = head if head is not None else encode_head(raw_headers, len(body))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        head_only = scope["method"] == "HEAD"
        if self.head is not None and write_whole(send, self.head, self.body, head_only):
            return
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": b"" if head_only else self.body})


def _loggable_path(scope: Scope) -> str:
    """The request path for a log line: no query string, no token (``npm logout``)."""
    path = str(scope.get("path", ""))[:300]
    return _TOKEN_IN_PATH.sub(r"\1<redacted>", path)


def _etag_matches(header: str | None, rendered: Rendered) -> bool:
    if not header:
        return False
    wanted = rendered.etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") in (wanted, "*") for tag in header.split(","))


def create_app(
    settings: Settings,
    *,
    meta: MetadataStore | None = None,
    blobs: BlobStore | None = None,
    environ: Mapping[str, str] | None = None,
    upstream_client: httpx.AsyncClient | None = None,
) -> EntrepotApp:
    """The composition root. Stores come from the settings unless given; ``environ`` holds
    connector credentials (with the settings' ``credentials`` table); ``upstream_client`` is
    the seam for tests that stub upstream registries."""
    if meta is None or blobs is None:
        opened_meta, opened_blobs = open_local_stores(settings)
        meta = meta or opened_meta
        blobs = blobs or opened_blobs
    upstreams = Upstreams(
        meta,
        blobs,
        client=upstream_client,
        credentials={**(environ or {}), **settings.credentials},
        timeout=settings.upstream_timeout,
        verify=settings.ca_bundle or True,
        # One process on the embedded store has nobody to coalesce fetches with (another
        # process on the same folder, say `entrepot mirror`, at worst fetches a name twice).
        shared=settings.workers > 1 or not isinstance(meta, SQLiteMetadataStore),
    )
    upstreams.own_ports = {settings.port}
    return EntrepotApp(settings, meta, blobs, upstreams)


class ServerApp:
    """The app a server process runs: it opens the stores on its own event loop (at
    lifespan start-up, or at the first request), which PostgreSQL's and S3's clients need,
    then hands every request to the :class:`EntrepotApp` built on them."""

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.environ = dict(environ)
        self.app: EntrepotApp | None = None
        self._lock: asyncio.Lock | None = None

    async def ready(self) -> EntrepotApp:
        if self.app is None:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if self.app is None:
                    meta, blobs = await open_stores(self.settings, environ=self.environ)
                    self.app = create_app(
                        self.settings, meta=meta, blobs=blobs, environ=self.environ
                    )
        return self.app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.app or await self.ready()
        await app(scope, receive, send)


def create_app_from_environment() -> ServerApp:
    """Factory for server worker processes: settings come from ``ENTREPOT_*``."""
    import os

    from entrepot.settings import load_settings

    return ServerApp(load_settings(environ=os.environ), os.environ)
