"""The connectors' HTTP: httpx's API over aiohttp's connections, and a direct path past httpx.

httpx (redirects with a guard on every hop, proxies from the environment, timeouts, content
decoding, and ``httpx.MockTransport`` in the tests) is the client the connectors use; the
wire underneath is aiohttp's, whose HTTP/1.1 parser is compiled. On a cold install httpx's
own pool (httpcore over h11, pure Python) cost about 1 ms of CPU per upstream request; this
transport about a quarter of that (see docs/decisions.md). aiohttp here neither follows
redirects (httpx does, so the SSRF guard sees every hop) nor decodes bodies (httpx does,
from the headers it gets).

The two GETs a cold install makes by the thousand (packuments and tarballs) can skip httpx
altogether: :meth:`AiohttpTransport.get` sends one request on the same connections and
hands back an :class:`Answer`, for about half the CPU (httpx's request, headers and
response objects cost about 0.2 ms a request). It follows no redirect: the caller sends a
redirected request again through httpx, whose hooks guard every hop. Its failures are
httpx's exceptions, as the transport's are, so callers handle one set.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Protocol

import aiohttp
import httpx
from multidict import CIMultiDict

from entrepot import __version__
from entrepot.netguard import GuardedResolver, Resolutions
from entrepot.settings import load_ca_bundle

#: How much of a body is handed on at a time.
CHUNK = 64 * 1024

#: What every upstream request carries unless it says otherwise (httpx's defaults, with
#: this server's name): the direct path and the httpx client send the same.
DEFAULT_HEADERS = {
    "Accept": "*/*",
    "Accept-Encoding": "gzip, deflate",
    "User-Agent": f"entrepot/{__version__}",
}

#: The statuses after which httpx would follow ``Location``.
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Answer(Protocol):
    """An upstream's answer to a GET, read the same way whichever path fetched it. Reading
    its body may raise httpx's transport exceptions."""

    @property
    def status(self) -> int: ...

    def header(self, name: str) -> str | None: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class HttpxAnswer:
    """A streamed httpx response as an :class:`Answer`."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code

    def header(self, name: str) -> str | None:
        value: str | None = self._response.headers.get(name)
        return value

    def chunks(self) -> AsyncIterator[bytes]:
        return self._response.aiter_bytes()

    async def aclose(self) -> None:
        await self._response.aclose()


class DirectAnswer:
    """An aiohttp response (its body decoded) as an :class:`Answer`."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status

    def header(self, name: str) -> str | None:
        return self._response.headers.get(name)

    def chunks(self) -> AsyncIterator[bytes]:
        return _chunks(self._response, None)

    async def aclose(self) -> None:
        self._response.release()


def proxied(trust_env: bool) -> bool:
    """Whether the environment names a proxy for HTTP or HTTPS requests (httpx would use it
    when ``trust_env``)."""
    if not trust_env:
        return False
    proxies = urllib.request.getproxies()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (made in the running loop at the first request), with at most
    ``max_connections`` connections, each kept ``keepalive`` seconds after its last answer
    (below the 5 s after which Node.js servers, Verdaccio's among them, close idle ones).
    Host names are resolved through ``resolutions`` by the SSRF guard's resolver: a new
    connection goes only to addresses the guard has checked for the request opening it."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext,
        max_connections: int = 64,
        keepalive: float = 4.0,
        resolutions: Resolutions | None = None,
    ) -> None:
        self._ssl = verify
        self._max_connections = max_connections
        self._keepalive = keepalive
        self._resolutions = resolutions or Resolutions()
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                keepalive_timeout=self._keepalive,
                ssl=self._ssl,
                # The resolver keeps answers itself, checked (aiohttp's cache would not be).
                resolver=GuardedResolver(self._resolutions),
                use_dns_cache=False,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Accept"),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            # aiohttp sends a GET again once when the connection drops; httpx's pool did
            # not, and a connector's miss is one upstream request (the single flight's
            # promise, and what a failing upstream should see). No public switch exists.
            self._session._retry_connection = False
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.get("pool"),
            sock_connect=timeouts.get("connect"),
            sock_read=timeouts.get("read"),
        )
        body = await request.aread()
        sent = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        with _as_httpx(request, connecting=True):
            response = await self._open().request(
                request.method,
                str(request.url),
                headers=sent,
                data=body or None,
                allow_redirects=False,
                timeout=timeout,
            )
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers]
        return httpx.Response(
            response.status,
            headers=headers,
            stream=_Body(response, request),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("ascii", "replace"),
            },
        )

    async def get(self, url: str, headers: Mapping[str, str], timeout: float) -> DirectAnswer:
        """GET ``url`` with :data:`DEFAULT_HEADERS` and ``headers``, each phase (a free
        connection, connecting, each read) given ``timeout`` seconds as httpx's ``timeout``
        would; the body decoded from its ``Content-Encoding``. A redirect is answered as
        it is. The caller must have set the request's SSRF guard (``current_guard``): the
        pool's resolver reads it should the request need a new connection."""
        limits = aiohttp.ClientTimeout(
            total=None, connect=timeout, sock_connect=timeout, sock_read=timeout
        )
        sent: CIMultiDict[str] = CIMultiDict(DEFAULT_HEADERS)
        sent.update(headers)
        with _as_httpx(None, connecting=True):
            response = await self._open().request(
                "GET",
                url,
                headers=sent,
                allow_redirects=False,
                timeout=limits,
                auto_decompress=True,
            )
        return DirectAnswer(response)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Body(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _chunks(self._response, self._request)

    async def aclose(self) -> None:
        self._response.release()


async def _chunks(
    response: aiohttp.ClientResponse, request: httpx.Request | None
) -> AsyncIterator[bytes]:
    """The body, :data:`CHUNK` bytes at a time, its failures as httpx's exceptions."""
    with _as_httpx(request, connecting=False):
        async for chunk in response.content.iter_chunked(CHUNK):
            yield chunk


@contextlib.contextmanager
def _as_httpx(request: httpx.Request | None, *, connecting: bool) -> Iterator[None]:
    """aiohttp's failures inside, raised as the httpx exceptions the connectors handle."""
    try:
        yield
    except BaseException as exc:
        translated = _translate(exc, request, connecting=connecting)
        if translated is exc:
            raise
        raise translated from exc


def _translate(
    exc: BaseException, request: httpx.Request | None, *, connecting: bool
) -> BaseException:
    """aiohttp's failures as the httpx exceptions the connectors handle."""
    kind: type[httpx.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(exc, aiohttp.SocketTimeoutError):
        kind = httpx.ReadTimeout
    elif isinstance(exc, asyncio.TimeoutError):
        kind = httpx.ConnectTimeout if connecting else httpx.ReadTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError
    elif isinstance(
        exc,
        aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientResponseError,
    ):
        kind = httpx.RemoteProtocolError
    elif isinstance(exc, aiohttp.ClientError | OSError):
        kind = httpx.ConnectError if connecting else httpx.ReadError
    else:
        return exc  # cancellation and the like go through as they are
    return kind(f"{type(exc).__name__}: {exc}", request=request)


def tls_context(verify: ssl.SSLContext | str | bool) -> ssl.SSLContext:
    """The connectors' TLS settings: the CAs httpx trusts by default (certifi's, or
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` from the environment) and, given a path (the
    ``ca_bundle`` setting: a PEM file or a folder of them), the CAs there as well. ``False``
    verifies nothing; a context is taken as it is."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if isinstance(verify, bool):
        return httpx.create_ssl_context(verify=verify, trust_env=True)
    context = httpx.create_ssl_context(verify=True, trust_env=True)
    load_ca_bundle(context, verify)
    return context


def transport_for(
    verify: ssl.SSLContext | str | bool,
    max_connections: int,
    resolutions: Resolutions | None = None,
) -> AiohttpTransport:
    """The transport with the connectors' TLS settings (:func:`tls_context`)."""
    return AiohttpTransport(
        verify=tls_context(verify), max_connections=max_connections, resolutions=resolutions
    )
