"""The connectors' HTTP transport (httpx over aiohttp's connections) against the scripted
upstream on loopback: what it sends, what it hands back, and how each failure reaches the
connectors (as the httpx exception they handle)."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import pytest
from tests.e2e.cluster import make_certificate
from tests.e2e.upstream import Mode, ScriptedUpstream

from entrepot import connectors, netguard
from entrepot.connectors import UpstreamClient, Upstreams
from entrepot.errors import UpstreamTimeout, UpstreamUnavailable
from entrepot.netguard import Guard, current_guard
from entrepot.storage.base import Connector, UpstreamDoc
from entrepot.upstream_http import tls_context, transport_for

T = TypeVar("T")

#: The end of an empty answer from a server that closes the connection after it.
CLOSING = b"Content-Length: 0\r\nConnection: close\r\n\r\n"


@pytest.fixture
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as scripted:
        yield scripted


def with_client(work: Callable[[httpx.AsyncClient], Awaitable[T]], timeout: float = 5.0) -> T:
    async def run() -> T:
        client = httpx.AsyncClient(
            transport=transport_for(True, 8), follow_redirects=True, timeout=timeout
        )
        async with client:
            return await work(client)

    return asyncio.run(run())


def test_a_get_sends_the_headers_and_hands_back_status_headers_and_body(
    upstream: ScriptedUpstream,
) -> None:
    upstream.packages.add("sent", "1.0.0")
    corgi = "application/vnd.npm.install-v1+json"

    async def work(client: httpx.AsyncClient) -> list[httpx.Response]:
        short = await client.get(f"{upstream.url}/sent", headers={"Accept": corgi})
        full = await client.get(f"{upstream.url}/sent", headers={"If-None-Match": '"x"'})
        missing = await client.get(f"{upstream.url}/not-there")
        return [short, full, missing]

    short, full, missing = with_client(work)
    assert short.status_code == 200
    assert short.headers["content-type"] == corgi
    assert short.content == upstream.packages.abbreviated("sent")
    assert full.status_code == 200 and full.content == upstream.packages.packument("sent")
    assert full.headers["etag"] == upstream.packages.etag(full.content)
    assert missing.status_code == 404 and missing.json() == {"error": "Not found"}
    first, second = upstream.packument_requests("sent")
    assert first.headers["accept"] == corgi
    assert second.headers["if-none-match"] == '"x"'
    assert "gzip" in first.headers["accept-encoding"]


def test_a_streamed_tarball_arrives_whole_in_chunks(upstream: ScriptedUpstream) -> None:
    upstream.packages.add("big", "1.0.0")
    data = upstream.packages.tarball_of("big", "1.0.0")
    url = upstream.url + upstream.packages.tarball_path("big", "1.0.0")

    async def work(client: httpx.AsyncClient) -> tuple[int, bytes]:
        async with client.stream("GET", url) as response:
            return response.status_code, b"".join([c async for c in response.aiter_bytes()])

    assert with_client(work) == (200, data)


def test_a_gzip_body_is_decoded_by_httpx() -> None:
    """aiohttp hands the body on as sent; httpx decodes it from Content-Encoding."""
    body = b'{"name":"zipped"}' * 100
    packed = gzip.compress(body)

    async def work(client: httpx.AsyncClient) -> httpx.Response:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Encoding: gzip\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n" % len(packed) + packed
            )
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await client.get(f"http://127.0.0.1:{port}/zipped")

    response = with_client(work)
    assert response.status_code == 200 and response.content == body


def test_a_post_sends_its_body(upstream: ScriptedUpstream) -> None:
    async def work(client: httpx.AsyncClient) -> int:
        response = await client.post(f"{upstream.url}/-/npm/v1/security/audits/quick", json={})
        return response.status_code

    assert with_client(work) == 404
    (posted,) = [r for r in upstream.requests if r.method == "POST"]
    assert posted.json == {}


def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused

        async def work(client: httpx.AsyncClient) -> None:
            await client.get(f"http://127.0.0.1:{port}/anything")

        with pytest.raises(httpx.ConnectError):
            with_client(work)


def test_a_dropped_connection_is_a_protocol_error_after_one_request(
    upstream: ScriptedUpstream,
) -> None:
    upstream.packages.add("dropped", "1.0.0")
    upstream.set(Mode.DROP)

    async def work(client: httpx.AsyncClient) -> None:
        await client.get(f"{upstream.url}/dropped")

    with pytest.raises(httpx.RemoteProtocolError):
        with_client(work)
    assert len(upstream.packument_requests("dropped")) == 1  # not sent again


def test_a_slow_answer_is_a_read_timeout(upstream: ScriptedUpstream) -> None:
    upstream.packages.add("slow", "1.0.0")
    upstream.set(Mode.SLOW, delay=3)

    async def work(client: httpx.AsyncClient) -> None:
        await client.get(f"{upstream.url}/slow")

    with pytest.raises(httpx.ReadTimeout):
        with_client(work, timeout=0.5)


def test_redirects_come_back_to_httpx_which_shows_every_hop_to_its_hooks() -> None:
    """The SSRF guard is an httpx request hook: it must see the redirect's target."""
    hops: list[str] = []

    async def work(client: httpx.AsyncClient) -> httpx.Response:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET /moved "):
                writer.write(b"HTTP/1.1 302 Found\r\nLocation: /here\r\n" + CLOSING)
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
            writer.close()

        async def record(request: httpx.Request) -> None:
            hops.append(request.url.path)

        client.event_hooks["request"] = [record]
        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await client.get(f"http://127.0.0.1:{port}/moved")

    response = with_client(work)
    assert response.status_code == 200 and response.content == b"ok"
    assert hops == ["/moved", "/here"]


def test_the_connectors_client_keeps_no_cookies() -> None:
    """As npm keeps none: an upstream's Set-Cookie is not sent back."""
    sent: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"Set-Cookie": "session=s3cr3t; Path=/"}, text="{}")

    async def work() -> None:
        async with UpstreamClient(transport=httpx.MockTransport(answer)) as client:
            first = await client.get("http://127.0.0.1:9/a")
            assert first.headers["set-cookie"].startswith("session=")
            await client.get("http://127.0.0.1:9/b")
            assert not client.cookies

    asyncio.run(work())
    assert sent == [None, None]


def connector_for(url: str, *, allow_internal: bool = False) -> Connector:
    return Connector(
        id=1,
        feed_id=1,
        name="up",
        position=0,
        url=url,
        credential_kind=None,
        credential_env=None,
        allow=(),
        block=(),
        min_age_hours=None,
        ttl=300,
        allow_internal=allow_internal,
    )


def with_upstreams(
    work: Callable[[Upstreams], Awaitable[T]], timeout: float = 5.0, **options: Any
) -> T:
    """``work`` with the connectors' own client (their transport, guard and resolver)."""

    async def run() -> T:
        upstreams = Upstreams(cast(Any, None), cast(Any, None), timeout=timeout, **options)
        try:
            return await work(upstreams)
        finally:
            await upstreams.close()

    return asyncio.run(run())


class Rebinding:
    """``netguard.resolve`` for a name that first resolves to the scripted upstream, then
    (as a rebinding attacker's DNS would answer) to the cloud metadata address."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, host: str, port: int) -> list[Any]:
        self.calls += 1
        if host == "127.0.0.1":
            return [ipaddress.ip_address(host)]
        assert host == "registry.example.test"
        address = "127.0.0.1" if self.calls == 1 else "169.254.169.254"
        return [ipaddress.ip_address(address)]


def rebinding(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> tuple[Rebinding, str, Connector]:
    """The scripted upstream (with package ``named``) under a host name that rebinds: its
    resolver, its URL and a connector to it."""
    monkeypatch.setenv("NO_PROXY", "*")
    upstream.packages.add("named", "1.0.0")
    resolver = Rebinding()
    monkeypatch.setattr(netguard, "resolve", resolver)
    base = upstream.url.replace("127.0.0.1", "registry.example.test")
    return resolver, base, connector_for(base)


def test_a_host_name_is_resolved_once_for_the_guard_and_the_connection(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool connects to the very addresses the guard checked: a name that resolves
    elsewhere on a second lookup (DNS rebinding) gets no connection there."""
    resolver, base, connector = rebinding(upstream, monkeypatch)

    async def work(upstreams: Upstreams) -> list[httpx.Response]:
        answers = []
        for _ in range(3):
            answers.append(
                await upstreams.client.get(
                    f"{base}/named", extensions={connectors._CONNECTOR: connector}
                )
            )
        # Once the kept answer is dropped, the name is looked up again and refused.
        upstreams.resolutions.forget()
        with pytest.raises(UpstreamUnavailable, match=r"connector up: .*cloud metadata"):
            await upstreams.client.get(
                f"{base}/named", extensions={connectors._CONNECTOR: connector}
            )
        return answers

    answers = with_upstreams(work)
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert answers[0].content == upstream.packages.packument("named")
    assert len(upstream.packument_requests("named")) == 3
    assert resolver.calls == 2


def test_a_new_connection_is_refused_where_the_name_now_resolves_inside(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard's check passed from a kept answer, the connection is opened after the
    answer expired: the pool's resolver checks the new one and opens nothing."""
    _, base, connector = rebinding(upstream, monkeypatch)

    async def work(upstreams: Upstreams) -> None:
        await upstreams.resolutions.check(base, Guard("up", False, frozenset()))
        upstreams.resolutions.forget()  # expires between the check and the connection

        async def passes(request: httpx.Request) -> None:
            current_guard.set(Guard("up", False, frozenset()))  # the check already ran

        upstreams.client.event_hooks["request"] = [passes]
        with pytest.raises(UpstreamUnavailable, match="cloud metadata"):
            await upstreams.client.get(
                f"{base}/named", extensions={connectors._CONNECTOR: connector}
            )

    with_upstreams(work)
    assert upstream.packument_requests("named") == []


def test_the_pool_resolves_with_the_rule_of_the_request_that_opens_the_connection(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connector allowed inside resolves as aiohttp does, not by the strict rule."""
    monkeypatch.setenv("NO_PROXY", "*")
    upstream.packages.add("named", "1.0.0")
    monkeypatch.setattr(netguard, "resolve", lambda host, port: [ipaddress.ip_address("fe80::1")])
    base = upstream.url.replace("127.0.0.1", "localhost")
    inside = connector_for(base, allow_internal=True)
    outside = connector_for(base)

    async def work(upstreams: Upstreams) -> httpx.Response:
        with pytest.raises(UpstreamUnavailable, match="link-local"):
            await upstreams.client.get(f"{base}/named", extensions={connectors._CONNECTOR: outside})
        return await upstreams.client.get(
            f"{base}/named", extensions={connectors._CONNECTOR: inside}
        )

    answer = with_upstreams(work)
    assert answer.status_code == 200
    assert answer.content == upstream.packages.packument("named")


# -- the direct path: packuments and tarballs past httpx --------------------------------------


def without_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any request through httpx fails the test: what follows must go the direct path."""

    async def refuse(*args: Any, **kwargs: Any) -> httpx.Response:
        raise AssertionError("sent through httpx")

    monkeypatch.setattr(UpstreamClient, "send", refuse)


def test_packuments_and_tarballs_go_past_httpx_with_the_same_headers(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_httpx(monkeypatch)
    upstream.packages.add("direct", "1.0.0")
    data = upstream.packages.tarball_of("direct", "1.0.0")
    connector = connector_for(upstream.url)

    async def work(upstreams: Upstreams) -> tuple[UpstreamDoc, UpstreamDoc, bytes]:
        full, parsed = await upstreams._request(connector, "direct", None, abbreviated=False)
        assert parsed is not None and parsed["name"] == "direct"
        again, _ = await upstreams._request(connector, "direct", full, abbreviated=False)
        url = upstream.url + upstream.packages.tarball_path("direct", "1.0.0")
        answer = await upstreams._get(connector, url, {})
        try:
            assert answer.status == 200
            body = b"".join([chunk async for chunk in answer.chunks()])
        finally:
            await answer.aclose()
        return full, again, body

    full, again, body = with_upstreams(work)
    assert full.status == 200 and full.body == upstream.packages.packument("direct")
    assert full.etag == upstream.packages.etag(full.body)
    assert again.status == 200 and again.body == full.body  # a 304 keeps the cached copy
    assert body == data
    first, second = upstream.packument_requests("direct")
    assert second.headers["if-none-match"] == full.etag
    (tarball,) = upstream.tarball_requests("direct")
    for sent in (first, tarball):
        assert sent.headers["accept-encoding"] == "gzip, deflate"
        assert sent.headers["user-agent"].startswith("entrepot/")
    assert first.headers["accept"] == "application/json"
    assert tarball.headers["accept"] == "*/*"


def test_the_httpx_client_sends_the_same_default_headers(upstream: ScriptedUpstream) -> None:
    async def work(upstreams: Upstreams) -> None:
        await upstreams.client.get(f"{upstream.url}/-/ping")

    with_upstreams(work)
    (ping,) = upstream.requests
    assert ping.headers["accept-encoding"] == "gzip, deflate"
    assert ping.headers["accept"] == "*/*"
    assert ping.headers["user-agent"].startswith("entrepot/")


async def serve(
    answer: Callable[[bytes], bytes], tls: ssl.SSLContext | None = None
) -> asyncio.Server:
    """A loopback server answering each request head with ``answer(head)``, then closing
    (over TLS with ``tls``)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(answer(head))
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)


def port_of(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


def test_a_gzip_packument_is_decoded_on_the_direct_path(monkeypatch: pytest.MonkeyPatch) -> None:
    without_httpx(monkeypatch)
    body = b'{"name":"zipped","versions":{}}' + b" " * 5000
    packed = gzip.compress(body)

    def answer(head: bytes) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(packed) + packed
        )

    async def work(upstreams: Upstreams) -> UpstreamDoc:
        async with await serve(answer) as server:
            connector = connector_for(f"http://127.0.0.1:{port_of(server)}")
            doc, _ = await upstreams._request(connector, "zipped", None, abbreviated=False)
            return doc

    assert with_upstreams(work).body == body


def test_a_redirecting_connector_is_followed_through_httpx_without_its_credentials_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The direct path follows no redirect: the request goes again through httpx, which
    guards every hop and drops the credentials at another origin; and later requests of
    that connector go through httpx from the start."""
    seen: list[tuple[str, str | None]] = []

    def record(head: bytes) -> tuple[str, str | None]:
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        auth = {k.lower(): v for k, v in fields.items()}.get("authorization")
        seen.append((path, auth))
        return path, auth

    def there(head: bytes) -> bytes:
        record(head)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nthere"

    async def work(upstreams: Upstreams) -> list[bytes]:
        async with await serve(there) as elsewhere:
            target = f"http://127.0.0.1:{port_of(elsewhere)}/there"

            def moved(head: bytes) -> bytes:
                path, _ = record(head)
                where = b"http://169.254.169.254/x" if path == "/inside" else target.encode()
                return b"HTTP/1.1 302 Found\r\nLocation: " + where + b"\r\n" + CLOSING

            async with await serve(moved) as server:
                base = f"http://127.0.0.1:{port_of(server)}"
                connector = dataclasses.replace(
                    connector_for(base), credential_kind="bearer", credential_env="UP_TOKEN"
                )
                auth = upstreams._auth_headers(connector)
                assert auth == {"Authorization": "Bearer s3cret"}
                bodies = []
                for _ in range(2):
                    answer = await upstreams._get(connector, f"{base}/moved", auth)
                    assert answer.status == 200
                    bodies.append(b"".join([c async for c in answer.chunks()]))
                    await answer.aclose()
                with pytest.raises(UpstreamUnavailable, match=r"connector up: .*cloud metadata"):
                    await upstreams._get(connector, f"{base}/inside", auth)
                return bodies

    bodies = with_upstreams(work, credentials={"UP_TOKEN": "s3cret"})
    assert bodies == [b"there", b"there"]
    token = "Bearer s3cret"
    assert seen == [
        ("/moved", token),  # direct: a redirect, not followed
        ("/moved", token),  # again through httpx
        ("/there", None),  # another origin: no credentials
        ("/moved", token),  # the connector's next request: through httpx at once
        ("/there", None),
        ("/inside", token),  # its redirect to the metadata address is refused by the hook
    ]


def test_a_proxy_in_the_environment_sends_every_request_through_httpx(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    monkeypatch.setenv("NO_PROXY", "*")  # no proxy named: NO_PROXY alone changes nothing

    def direct(**options: Any) -> bool:
        client = UpstreamClient(transport=transport_for(True, 8), **options)
        return client.direct is not None

    assert direct()
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    assert not direct()
    assert direct(trust_env=False)
    assert not direct(trust_env=False, proxy="http://127.0.0.1:9")
    assert not UpstreamClient(transport=httpx.MockTransport(lambda r: httpx.Response(200))).direct


@pytest.mark.parametrize(
    ("mode", "raised", "message"),
    [
        (Mode.DROP, UpstreamUnavailable, r"connector up is unreachable \(RemoteProtocolError\)"),
        (Mode.SLOW, UpstreamTimeout, "connector up timed out"),
        (Mode.ERROR, UpstreamUnavailable, "connector up answered HTTP 500"),
    ],
)
def test_a_failing_upstream_on_the_direct_path_is_the_connectors_error(
    upstream: ScriptedUpstream,
    monkeypatch: pytest.MonkeyPatch,
    mode: Mode,
    raised: type[Exception],
    message: str,
) -> None:
    without_httpx(monkeypatch)
    upstream.packages.add("failing", "1.0.0")
    upstream.set(mode, delay=3)
    connector = connector_for(upstream.url)

    async def work(upstreams: Upstreams) -> None:
        with pytest.raises(raised, match=message):
            await upstreams._request(connector, "failing", None, abbreviated=False)

    with_upstreams(work, timeout=0.5)
    assert len(upstream.packument_requests("failing")) == 1  # not sent again


def test_a_refused_connection_or_a_cut_body_on_the_direct_path_is_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    without_httpx(monkeypatch)

    def cut(head: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b'{"name":'

    async def work(upstreams: Upstreams) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))  # bound, not listening: refused
            closed = connector_for(f"http://127.0.0.1:{sock.getsockname()[1]}")
            with pytest.raises(UpstreamUnavailable, match=r"unreachable \(ConnectError\)"):
                await upstreams._request(closed, "x", None, abbreviated=False)
        async with await serve(cut) as server:
            connector = connector_for(f"http://127.0.0.1:{port_of(server)}")
            with pytest.raises(UpstreamUnavailable, match=r"unreachable \(RemoteProtocolError\)"):
                await upstreams._request(connector, "x", None, abbreviated=False)

    with_upstreams(work)


def test_the_direct_path_checks_the_guard_and_connects_only_to_checked_addresses(
    upstream: ScriptedUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_httpx(monkeypatch)
    resolver, _, connector = rebinding(upstream, monkeypatch)

    async def work(upstreams: Upstreams) -> list[UpstreamDoc]:
        docs = [(await upstreams._request(connector, "named", None, False))[0] for _ in range(3)]
        upstreams.resolutions.forget()
        with pytest.raises(UpstreamUnavailable, match=r"connector up: .*cloud metadata"):
            await upstreams._request(connector, "named", None, False)
        return docs

    docs = with_upstreams(work)
    assert [d.body for d in docs] == [upstream.packages.packument("named")] * 3
    assert len(upstream.packument_requests("named")) == 3
    assert resolver.calls == 2


@pytest.mark.filterwarnings("error::DeprecationWarning")
def test_an_https_upstream_is_verified_on_the_direct_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The direct path uses the pool's TLS settings: a certificate the configured bundle
    (``ca_bundle``) signs is trusted; without the bundle, the same upstream is refused."""
    without_httpx(monkeypatch)
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    cert, key = make_certificate(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    body = b'{"name":"secure","versions":{}}'

    def answer(head: bytes) -> bytes:
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )

    async def fetch(upstreams: Upstreams) -> UpstreamDoc:
        async with await serve(answer, tls) as server:
            connector = connector_for(f"https://127.0.0.1:{port_of(server)}")
            doc, _ = await upstreams._request(connector, "secure", None, abbreviated=False)
            return doc

    assert with_upstreams(fetch, verify=str(cert)).body == body

    async def refused(upstreams: Upstreams) -> None:
        with pytest.raises(UpstreamUnavailable, match=r"unreachable \(ConnectError\)"):
            await fetch(upstreams)

    with_upstreams(refused)


def test_a_ca_bundle_adds_to_the_default_authorities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A corporate CA for one connector must not cost the others the public ones."""
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    cert, _ = make_certificate(tmp_path)
    default = tls_context(True).get_ca_certs()
    with_bundle = tls_context(str(cert)).get_ca_certs()
    assert len(default) > 10
    assert len(with_bundle) == len(default) + 1
    assert all(ca in with_bundle for ca in default)
    assert tls_context(False).verify_mode == ssl.CERT_NONE
