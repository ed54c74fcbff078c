"""Hostile input, in-process: tarballs built to escape or exhaust, bodies built to crash the
parser or the memory, header and path tricks, and connector URLs aimed inside the network.

Every refusal must be a clear 4xx ``{"error": ...}`` that leaves the registry as it was, in
bounded memory (``tracemalloc`` peaks are asserted; nothing here times anything). The cases
that ``test_registry_api.py`` and ``tests/unit/test_tarball.py`` cover already (plain links,
``..``, the bomb under a small limit, bodies over the limit on publish) are not repeated:
these go through the other routes, the other tar header kinds and the defaults.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import os
import subprocess
import sys
import tarfile
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from tests.api.conftest import (
    Api,
    ApiFactory,
    RawResponse,
    basic,
    npm_tarball,
    publish_body,
)

from entrepot import connectors, netguard
from entrepot.admin import Admin
from entrepot.errors import BadRequest
from entrepot.http.app import create_app
from entrepot.npm.tarball import MAX_EXTENDED_HEADER, MAX_PACKAGE_JSON
from entrepot.settings import MIB, load_settings
from entrepot.storage.base import Connector

ENTREPOT = Path(sys.executable).parent / "entrepot"
PACKAGE_JSON = orjson.dumps({"name": "demo", "version": "2.0.0"})
#: Far below what reading a refused tarball whole (or a 10 MB package.json) would take.
MEMORY_BOUND = 24 * MIB


# -- helpers -----------------------------------------------------------------------------------


def assert_error(response: httpx.Response | RawResponse, status: int, *fragments: str) -> str:
    code = response.status_code if isinstance(response, httpx.Response) else response.status
    text = response.text if isinstance(response, httpx.Response) else response.body.decode()
    assert code == status, text
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    message = str(body["error"])
    for fragment in fragments:
        assert fragment in message, message
    return message


def measured(action: Callable[[], httpx.Response]) -> tuple[httpx.Response, int]:
    """The response and the peak of memory allocated while the app handled it."""
    tracemalloc.start()
    try:
        response = action()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return response, peak


def member(
    name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    info.mode = 0o644
    return info, data


def gzipped_tar(
    members: list[tuple[tarfile.TarInfo, bytes]], tar_format: int = tarfile.GNU_FORMAT
) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tar_format) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return zlib_gzip(out.getvalue())


def zlib_gzip(data: bytes) -> bytes:
    deflate = zlib.compressobj(6, zlib.DEFLATED, 31)
    return deflate.compress(data) + deflate.flush()


def pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode() + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


def with_raw_header(
    header_type: bytes, payload: bytes, *rest: tuple[tarfile.TarInfo, bytes]
) -> bytes:
    """A tar whose first entry is an extended header (pax, GNU long name) with this payload."""
    header = tarfile.TarInfo("././@LongLink" if header_type in b"LK" else "././@PaxHeader")
    header.type = header_type
    header.size = len(payload)
    tar = header.tobuf(format=tarfile.USTAR_FORMAT) + payload + bytes(-len(payload) % 512)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for info, data in rest:
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return zlib_gzip(tar + out.getvalue())


def bomb(unpacked: int) -> bytes:
    """package.json, then one file of ``unpacked`` zero bytes, compressed without holding it."""
    head = member("package/package.json", PACKAGE_JSON)[0].tobuf(format=tarfile.GNU_FORMAT)
    head += PACKAGE_JSON + bytes(-len(PACKAGE_JSON) % 512)
    zeros = tarfile.TarInfo("package/zeros.bin")
    zeros.size = unpacked
    head += zeros.tobuf(format=tarfile.GNU_FORMAT)
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [deflate.compress(head)]
    chunk = bytes(4 * MIB)
    for _ in range(-(-unpacked // len(chunk))):
        parts.append(deflate.compress(chunk))
    parts.append(deflate.flush())
    return b"".join(parts)


def publish_tarball(api: Api, tarball: bytes) -> tuple[httpx.Response, int]:
    body = orjson.dumps(publish_body("demo", "2.0.0", tarball=tarball))
    return measured(
        lambda: api.put(
            "/npm/main/demo",
            auth=api.alice,
            content=body,
            headers={"Content-Type": "application/json"},
        )
    )


@pytest.fixture
def published(api: Api) -> Api:
    api.publish("demo", "1.0.0")
    return api


# -- tarballs ------------------------------------------------------------------------------------

ESCAPES: dict[str, list[tuple[tarfile.TarInfo, bytes]]] = {
    # A link named like the manifest: a client that follows it reads the server's files.
    "symlink-as-package.json": [
        member("package/package.json", kind=tarfile.SYMTYPE, link="/etc/passwd")
    ],
    "symlink-up-and-out": [
        member("package/package.json", PACKAGE_JSON),
        member("package/lib", kind=tarfile.SYMTYPE, link="../../../../home"),
    ],
    "hardlink-outside": [
        member("package/package.json", PACKAGE_JSON),
        member("package/shadow", kind=tarfile.LNKTYPE, link="../../etc/shadow"),
    ],
    "absolute-after-many-files": [
        member("package/package.json", PACKAGE_JSON),
        *[member(f"package/lib/f{i}.js", b"1") for i in range(200)],
        member("/etc/cron.d/evil", b"* * * * * root sh\n"),
    ],
    # Over 100 bytes: the GNU format writes a long-name header, a second parser to get right.
    "dot-dot-in-a-gnu-long-name": [
        member("package/package.json", PACKAGE_JSON),
        member("package/" + "a/" * 60 + "../" * 70 + "evil.js", b"x"),
    ],
}


@pytest.mark.parametrize("case", list(ESCAPES))
def test_tarballs_that_escape_the_package_folder_are_refused(published: Api, case: str) -> None:
    before = published.snapshot("demo")
    response, peak = publish_tarball(published, gzipped_tar(ESCAPES[case]))
    assert_error(response, 400, "the tarball has")
    assert published.snapshot("demo") == before
    assert peak < MEMORY_BOUND


PAX_ESCAPES = {
    # The ustar name looks harmless; the pax "path" record replaces it.
    "pax-path-absolute": (pax_record("path", b"/etc/passwd"), "absolute path"),
    "pax-path-dot-dot": (pax_record("path", b"package/../../../evil.js"), "'..'"),
    "pax-linkpath": (pax_record("linkpath", b"/etc/passwd"), "link"),
}


@pytest.mark.parametrize("case", list(PAX_ESCAPES))
def test_pax_records_that_rename_an_entry_outside_are_refused(published: Api, case: str) -> None:
    record, message = PAX_ESCAPES[case]
    kind = tarfile.SYMTYPE if "link" in case else tarfile.REGTYPE
    tarball = with_raw_header(
        tarfile.XHDTYPE,
        record,
        member("package/harmless.js", b"" if kind == tarfile.SYMTYPE else b"x", kind),
        member("package/package.json", PACKAGE_JSON),
    )
    before = published.snapshot("demo")
    response, _ = publish_tarball(published, tarball)
    assert_error(response, 400, message)
    assert published.snapshot("demo") == before


@pytest.mark.parametrize(
    ("header_type", "size"),
    [
        (tarfile.XHDTYPE, 50 * MIB),
        (tarfile.XGLTYPE, 50 * MIB),
        (tarfile.GNUTYPE_LONGNAME, 50 * MIB),
    ],
    ids=["pax", "pax-global", "gnu-long-name"],
)
def test_huge_extended_headers_are_refused_without_being_read(
    published: Api, header_type: bytes, size: int
) -> None:
    payload = pax_record("comment", b"a" * size) if header_type != b"L" else b"a" * size
    tarball = with_raw_header(header_type, payload, member("package/package.json", PACKAGE_JSON))
    assert len(tarball) < MIB
    before = published.snapshot("demo")
    response, peak = publish_tarball(published, tarball)
    assert_error(response, 400, "extended header", str(MAX_EXTENDED_HEADER))
    assert published.snapshot("demo") == before
    # 50 MiB of header, refused from its size field: never held in memory.
    assert peak < MEMORY_BOUND


def test_a_pax_header_built_for_tarfiles_quadratic_parser_is_refused(published: Api) -> None:
    # 60,000 digits kept Python 3.11.7's tarfile busy for ~10 s (CVE-2024-6232), the event
    # loop with it; a million, for hours. Refused before tarfile parses the header.
    tarball = with_raw_header(
        tarfile.XHDTYPE,
        pax_record("comment", b"7" * 60_000),
        member("package/package.json", PACKAGE_JSON),
    )
    response, _ = publish_tarball(published, tarball)
    assert_error(response, 400, "pax header")
    assert published.get("/npm/main/demo").json()["dist-tags"] == {"latest": "1.0.0"}


SPARSE_RECORDS = {
    # tarfile turns these into numbers with int(), unchecked: a ValueError, once a 500.
    "map": [("GNU.sparse.map", b"a,b")],
    "size": [("GNU.sparse.size", b"x"), ("GNU.sparse.numblocks", b"y")],
    "format-1.0": [("GNU.sparse.major", b"1"), ("GNU.sparse.minor", b"0")],
}


@pytest.mark.parametrize("case", list(SPARSE_RECORDS))
def test_malformed_sparse_records_are_a_400_not_a_crash(published: Api, case: str) -> None:
    records = b"".join(pax_record(key, value) for key, value in SPARSE_RECORDS[case])
    tarball = with_raw_header(
        tarfile.XHDTYPE, records, member("package/package.json", PACKAGE_JSON)
    )
    before = published.snapshot("demo")
    response, _ = publish_tarball(published, tarball)
    assert_error(response, 400, "not a valid tarball")
    assert published.snapshot("demo") == before


def test_the_default_unpacked_limit_is_512_mib_and_a_bomb_over_it_is_refused(
    published: Api,
) -> None:
    assert load_settings().max_unpacked_bytes == 512 * MIB
    assert published.app.settings.max_unpacked_bytes == 512 * MIB
    data = bomb(520 * MIB)
    assert len(data) < MIB
    before = published.snapshot("demo")
    response, peak = publish_tarball(published, data)
    assert_error(response, 400, f"more than {512 * MIB} bytes")
    assert published.snapshot("demo") == before
    assert peak < MEMORY_BOUND


def test_a_configured_unpacked_limit_refuses_what_the_default_accepts(
    make_api: ApiFactory,
) -> None:
    data = bomb(3 * MIB)
    roomy = make_api()
    assert_ok = roomy.put(
        "/npm/main/demo", auth=roomy.alice, json=publish_body("demo", "2.0.0", tarball=data)
    )
    assert assert_ok.status_code == 201, assert_ok.text
    tight = make_api(max_unpacked_bytes=2 * MIB)
    response, peak = publish_tarball(tight, data)
    assert_error(response, 400, f"more than {2 * MIB} bytes")
    assert peak < MEMORY_BOUND


def test_a_package_json_of_10_mb_is_refused_unread(published: Api) -> None:
    padding = b" " * (10 * 1000 * 1000)
    huge = b'{"name":"demo","version":"2.0.0","pad":"' + padding + b'"}'
    tarball = gzipped_tar([member("package/package.json", huge)])
    before = published.snapshot("demo")
    response, peak = publish_tarball(published, tarball)
    assert_error(response, 400, f"larger than {MAX_PACKAGE_JSON // MIB} MiB")
    assert published.snapshot("demo") == before
    assert peak < MEMORY_BOUND


def test_a_package_json_nested_10000_deep_is_refused(published: Api) -> None:
    nested = b'{"name":"demo","version":"2.0.0","x":' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    tarball = gzipped_tar([member("package/package.json", nested)])
    before = published.snapshot("demo")
    response, peak = publish_tarball(published, tarball)
    assert_error(response, 400, "package.json is not valid JSON")
    assert published.snapshot("demo") == before
    assert peak < MEMORY_BOUND


# -- request bodies ------------------------------------------------------------------------------

#: Routes that read a body, as a signed-in client reaches them: (method, path).
BODY_ROUTES = [
    ("PUT", b"/npm/main/-/user/org.couchdb.user:alice"),
    ("PUT", b"/npm/main/-/package/demo/dist-tags/beta"),
    ("PUT", b"/npm/main/demo/-rev/1-0"),
    ("POST", b"/npm/main/-/npm/v1/security/advisories/bulk"),
    ("POST", b"/npm/main/-/npm/v1/security/audits/quick"),
    ("POST", b"/npm/main/-/npm/v1/tokens"),
    ("POST", b"/-/api/feeds"),
]


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES, ids=[p.decode() for _, p in BODY_ROUTES])
def test_a_declared_length_over_the_limit_is_refused_before_reading(
    make_api: ApiFactory, method: str, path: bytes
) -> None:
    api = make_api(max_body_bytes=64 * 1024)
    api.publish("demo", "1.0.0")
    root = api.run(Admin(api.app.meta).add_user("root", "root@example.test", None, admin=True))
    assert root.admin
    secret, _ = api.run(
        Admin(api.app.meta).create_token("root", read_only=False, feeds=[], expires_days=None)
    )
    before = api.snapshot("demo")
    chunks = [b"{" + b" " * 1023] * 100
    response = api.raw(
        method,
        path,
        headers=[
            ("authorization", f"Bearer {secret}"),
            ("content-type", "application/json"),
            ("content-length", str(100 * 1024)),
        ],
        chunks=chunks,
    )
    assert response.status == 413, response.body
    assert_error(response, 413, "over the limit")
    assert response.chunks_read == 0
    assert api.snapshot("demo") == before


DEEP = b"[" * 200_000 + b"]" * 200_000


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", b"/npm/main/demo"), ("PUT", b"/npm/main/demo/-rev/1-0"), *BODY_ROUTES],
    ids=["publish", "document", *[p.decode() for _, p in BODY_ROUTES]],
)
def test_json_nested_200000_deep_is_a_400(published: Api, method: str, path: bytes) -> None:
    before = published.snapshot("demo")
    response = published.raw(
        method,
        path,
        headers=[("authorization", published.alice), ("content-type", "application/json")],
        chunks=[DEEP[i : i + 65536] for i in range(0, len(DEEP), 65536)],
    )
    if path == b"/-/api/feeds":
        # Alice is no administrator: refused before the body matters.
        assert response.status in (400, 403), response.body
    else:
        assert_error(response, 400, "JSON")
    assert published.snapshot("demo") == before


# -- headers and paths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", b"/npm/main/@acme%252fwidget"),
        ("GET", b"/npm/main/@acme%252Fwidget/-/widget-1.0.0.tgz"),
        ("PUT", b"/npm/main/@acme%252fwidget"),
        ("GET", b"/npm/main%252f..%252fteam/demo"),
        ("GET", b"/npm/main/-/package/@acme%252fwidget/dist-tags"),
    ],
)
def test_double_encoded_slashes_are_refused(published: Api, method: str, path: bytes) -> None:
    published.publish("@acme/widget", "1.0.0")
    before = published.snapshot("@acme/widget")
    body = orjson.dumps(publish_body("@acme/widget", "2.0.0")) if method == "PUT" else b""
    response = published.raw(
        method,
        path,
        headers=[("authorization", published.alice), ("content-type", "application/json")],
        chunks=[body] if body else [],
    )
    assert_error(response, 400, "double-encoded")
    assert published.snapshot("@acme/widget") == before


@pytest.mark.parametrize("size", [8 * 1024 + 1, 64 * 1024, 1024 * 1024])
def test_overlong_urls_are_a_400(published: Api, size: int) -> None:
    path = b"/npm/main/" + b"a" * (size - len(b"/npm/main/"))
    assert len(path) == size
    for method in ("GET", "PUT", "DELETE"):
        assert_error(published.raw(method, path), 400, "too long")
    # The query string does not count towards it, and a long one breaks nothing.
    response = published.raw("GET", b"/npm/main/-/v1/search?text=" + b"a" * size)
    assert response.status == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", b"/npm/main/demo"),
        ("GET", b"/npm/team/demo"),
        ("GET", b"/npm/main/-/whoami"),
        ("PUT", b"/npm/main/demo"),
        ("PUT", b"/npm/main/-/package/demo/dist-tags/beta"),
        ("DELETE", b"/npm/main/demo/-rev/1-0"),
        ("GET", b"/npm/main/-/npm/v1/tokens"),
        ("GET", b"/-/api/feeds"),
        ("GET", b"/"),
    ],
)
def test_duplicate_authorization_headers_are_a_400(
    published: Api, method: str, path: bytes
) -> None:
    before = published.snapshot("demo")
    body = orjson.dumps(publish_body("demo", "2.0.0")) if path == b"/npm/main/demo" else b'"1.0.0"'
    for first, second in [
        (published.alice, published.alice),
        (published.alice, f"Bearer {published.bob_token}"),
        (basic("alice", published.alice_token), published.alice),
    ]:
        response = published.raw(
            method,
            path,
            headers=[
                ("authorization", first),
                ("authorization", second),
                ("content-type", "application/json"),
            ],
            chunks=[body] if method == "PUT" else [],
        )
        assert_error(response, 400, "more than one Authorization header")
    assert published.snapshot("demo") == before


INJECTED = "Set-Cookie: pwned=1"


def assert_no_injected_header(status: int, headers: list[tuple[str, str]]) -> None:
    assert status < 500
    for name, value in headers:
        assert "\r" not in name + value and "\n" not in name + value, (name, value)
        assert "pwned" not in value.lower() or "%" in value, (name, value)
        assert not (name.lower() == "set-cookie" and "pwned" in value), (name, value)


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", b"/npm/main/demo%0d%0aSet-Cookie:%20pwned=1", []),
        ("GET", b"/npm/main/@acme%2fdemo%0d%0aSet-Cookie:%20pwned=1", []),
        ("GET", b"/npm/ma%0d%0ain/demo", []),
        ("GET", b"/npm/main/demo/-/demo-1.0.0.tgz%0d%0aSet-Cookie:%20pwned=1", []),
        ("PUT", b"/npm/main/-/package/demo/dist-tags/be%0d%0ata", []),
        ("GET", b"/-/ui/feed/team%0d%0aSet-Cookie:%20pwned=1", []),
        ("GET", b"/-/web/login/%0d%0aSet-Cookie:%20pwned=1", []),
        ("GET", b"/npm/main/demo", [("if-none-match", "x\r\nSet-Cookie: pwned=1")]),
        ("GET", b"/npm/main/demo", [("accept", "text/html\r\nSet-Cookie: pwned=1")]),
        ("GET", b"/npm/main/-/whoami", [("authorization", "Bearer x\r\nSet-Cookie: pwned=1")]),
        ("GET", b"/npm/main/-/whoami", [("authorization", "Basic\r\nSet-Cookie: pwned=1")]),
        ("GET", b"/npm/team/nosuch", [("authorization", "Weird\r\nSet-Cookie: pwned=1")]),
        ("PUT", b"/npm/main/demo", [("npm-otp", "1\r\nSet-Cookie: pwned=1")]),
    ],
)
def test_client_cr_lf_never_reaches_a_response_header(
    published: Api, method: str, path: bytes, headers: list[tuple[str, str]]
) -> None:
    headers = [*headers, ("content-type", "application/json")]
    if not any(name == "authorization" for name, _ in headers):
        headers.append(("authorization", published.alice))
    body = orjson.dumps(publish_body("demo", "2.0.0")) if path == b"/npm/main/demo" else b'"1.0.0"'
    response = published.raw(
        method, path, headers=headers, chunks=[body] if method == "PUT" else []
    )
    assert_no_injected_header(response.status, list(response.headers.items()))
    if b"%0d%0a" in path:
        # Refused when the path is split: the name is never looked up, nor echoed.
        assert_error(response, 400, "control characters")


@pytest.mark.parametrize(
    "path",
    [
        "/-/ui/feed/team?next=%0d%0aSet-Cookie:%20pwned=1",
        "/-/ui/signin?next=/%0d%0aSet-Cookie:%20pwned=1",
        "/-/ui/signin?next=%0d%0a//evil.example/",
        "/npm/main/-/v1/search?text=%0d%0aSet-Cookie:%20pwned=1",
        "/npm/main/-/all/since?startkey=%0d%0a",
    ],
)
def test_cr_lf_in_query_strings_never_reaches_a_response_header(published: Api, path: str) -> None:
    response = published.get(path)
    raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw]
    assert_no_injected_header(response.status_code, raw)
    location = response.headers.get("location")
    if location is not None:
        # The sign-in redirect carries the path back, encoded, and stays on this site.
        assert location.startswith("/")
        assert not location.startswith("//")


# -- SSRF: connectors aimed inside the network ---------------------------------------------------

FORBIDDEN_URLS = [
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://2852039166/", "cloud metadata"),  # 169.254.169.254 as one decimal number
    ("http://[fe80::1]/npm/", "link-local"),
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://0.0.0.0:4873/", "not a host address"),
    ("http://[::ffff:169.254.169.254]/", "not a host address"),
]


def _cli(data_dir: Path, *args: str, port: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENTREPOT_")}
    if port is not None:
        env["ENTREPOT_PORT"] = str(port)  # what the server's configuration says
    return subprocess.run(
        [str(ENTREPOT), "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def connector_names(api: Api, feed: str = "main") -> list[str]:
    async def names() -> list[str]:
        found = await api.app.meta.get_feed(feed)
        assert found is not None
        return [c.name for c in await api.app.meta.list_connectors(found.id)]

    return api.run(names())


@pytest.mark.parametrize(("url", "reason"), FORBIDDEN_URLS, ids=[u for u, _ in FORBIDDEN_URLS])
def test_connector_add_refuses_internal_addresses_unless_allowed(
    api: Api, url: str, reason: str
) -> None:
    refused = _cli(api.data_dir, "connector", "add", "main", url, "--name", "inside")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert reason in refused.stderr and "--allow-internal" in refused.stderr, refused.stderr
    assert connector_names(api) == []
    allowed = _cli(
        api.data_dir, "connector", "add", "main", url, "--name", "inside", "--allow-internal"
    )
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert connector_names(api) == ["inside"]


def test_connector_add_refuses_this_server_on_loopback(api: Api) -> None:
    port = 4999
    for url in (f"http://127.0.0.1:{port}/npm/main/", f"http://localhost:{port}/npm/main/"):
        refused = _cli(api.data_dir, "connector", "add", "team", url, "--name", "self", port=port)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "this server itself" in refused.stderr, refused.stderr
    # Another port on loopback is another registry (tests use one), and may be added.
    other = _cli(api.data_dir, "connector", "add", "team", "http://127.0.0.1:9/", port=port)
    assert other.returncode == 0, other.stdout + other.stderr
    assert connector_names(api, "team") == ["127.0.0.1"]


# The upstream registries below are stubs behind httpx.MockTransport: nothing leaves the
# process, whatever address a URL names.
UPSTREAM = "http://127.0.0.1:9/up"


class Stub:
    """An upstream registry with one package, ``leftpad@1.0.0``, that records requests."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.tarball = npm_tarball({"name": "leftpad", "version": "1.0.0"})
        doc = publish_body("leftpad", "1.0.0", tarball=self.tarball)
        doc.pop("_attachments")
        doc["versions"]["1.0.0"]["dist"]["tarball"] = f"{UPSTREAM}/leftpad/-/leftpad-1.0.0.tgz"
        self.doc = doc
        #: Where this stub redirects every request to (None: it answers).
        self.redirect: str | None = None

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        url = str(request.url)
        if not url.startswith(UPSTREAM + "/"):
            return httpx.Response(200, text="ami-id\ninstance-id\niam/security-credentials/\n")
        if self.redirect is not None and "/moved/" not in url:
            return httpx.Response(302, headers={"Location": self.redirect})
        if url.endswith(".tgz"):
            return httpx.Response(200, content=self.tarball)
        if request.method == "POST":
            return httpx.Response(200, json={"advisories": "from upstream"})
        return httpx.Response(200, json=self.doc)

    def outside(self) -> list[str]:
        return [str(r.url) for r in self.requests if not str(r.url).startswith(UPSTREAM + "/")]


@pytest.fixture
def stub() -> Stub:
    return Stub()


@pytest.fixture
def connected(tmp_path: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    """The app with connector ``up`` on ``main``, its upstream client built by the app itself
    (redirects followed, as in production) over the stub's transport."""

    class StubbedClient(connectors.UpstreamClient):
        def __init__(self, **options: Any) -> None:
            options.pop("verify", None)
            options.pop("transport", None)  # the stub's transport instead of aiohttp's
            options["trust_env"] = False  # no proxy from the environment around the stub
            super().__init__(transport=httpx.MockTransport(stub.handle), **options)

    monkeypatch.setattr(connectors, "UpstreamClient", StubbedClient)
    runner = asyncio.Runner()
    data_dir = tmp_path / "data"
    api = Api(runner, create_app(load_settings(overrides={"data_dir": data_dir})), data_dir)
    api.run(api._setup())
    api.run(Admin(api.app.meta).add_connector("main", UPSTREAM, name="up"))
    yield api
    api.close()
    runner.close()


def resolving_to(address: str) -> Callable[[str, int], list[Any]]:
    def resolve(host: str, port: int) -> list[Any]:
        return [ipaddress.ip_address(address)]

    return resolve


def test_the_stub_upstream_answers_when_nothing_is_forbidden(connected: Api, stub: Stub) -> None:
    # The refusals below must come from the guard, not from a broken stub.
    assert connected.get("/npm/main/leftpad").json()["versions"]["1.0.0"]["name"] == "leftpad"
    tarball = connected.get("/npm/main/leftpad/-/leftpad-1.0.0.tgz")
    assert tarball.status_code == 200 and tarball.content == stub.tarball
    assert stub.outside() == []


def test_a_host_that_resolves_to_metadata_later_is_refused_at_request_time(
    connected: Api, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DNS rebinding: the name was fine when the connector was added.
    monkeypatch.setattr(netguard, "resolve", resolving_to("169.254.169.254"))
    assert_error(connected.get("/npm/main/leftpad"), 502, "cloud metadata", "--allow-internal")
    assert stub.requests == []


def test_a_tarball_whose_host_starts_resolving_inside_is_refused(
    connected: Api, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert connected.get("/npm/main/leftpad").status_code == 200
    fetched = len(stub.requests)
    monkeypatch.setattr(netguard, "resolve", resolving_to("fe80::1"))
    response = connected.get("/npm/main/leftpad/-/leftpad-1.0.0.tgz")
    assert_error(response, 502, "link-local")
    assert len(stub.requests) == fetched
    assert connected.app.upstreams is not None


def test_audits_are_not_forwarded_to_a_host_that_resolves_inside(
    connected: Api, stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    bulk = {"leftpad": ["1.0.0"]}
    path = "/npm/main/-/npm/v1/security/advisories/bulk"
    assert connected.request("POST", path, json=bulk).json() == {"advisories": "from upstream"}
    forwarded = len(stub.requests)
    monkeypatch.setattr(netguard, "resolve", resolving_to("169.254.169.254"))
    response = connected.request("POST", path, json=bulk)
    assert response.status_code == 200 and response.json() == {}
    assert len(stub.requests) == forwarded


def test_a_connector_to_this_server_is_refused_at_request_time(connected: Api, stub: Stub) -> None:
    # Added by a command that did not know the server's port: the server knows it.
    port = connected.app.settings.port
    admin = Admin(connected.app.meta)
    connected.run(admin.create_feed("loop", private=False))
    connected.run(admin.add_connector("loop", f"http://127.0.0.1:{port}/npm/main"))
    assert_error(connected.get("/npm/loop/leftpad"), 502, "this server itself")
    assert stub.outside() == []


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fe80::1]/",
        "http://0.0.0.0:4880/npm/main/",
    ],
)
def test_redirects_to_internal_addresses_are_not_followed(
    connected: Api, stub: Stub, target: str
) -> None:
    stub.redirect = target
    assert_error(connected.get("/npm/main/leftpad"), 502, "--allow-internal")
    stub.redirect = None
    assert connected.get("/npm/main/leftpad").status_code == 200
    stub.redirect = target
    response = connected.get("/npm/main/leftpad/-/leftpad-1.0.0.tgz")
    assert_error(response, 502, "--allow-internal")
    audit = connected.request(
        "POST", "/npm/main/-/npm/v1/security/advisories/bulk", json={"leftpad": ["1.0.0"]}
    )
    assert audit.json() == {}
    assert stub.outside() == []
    upstreams = connected.app.upstreams
    assert upstreams is not None and not upstreams._tarballs_inflight
    # A redirect within the upstream itself is still followed.
    stub.redirect = f"{UPSTREAM}/moved/leftpad-1.0.0.tgz"
    moved = connected.get("/npm/main/leftpad/-/leftpad-1.0.0.tgz")
    assert moved.status_code == 200 and moved.content == stub.tarball
    assert str(stub.requests[-1].url).endswith("/moved/leftpad-1.0.0.tgz")


def test_the_guard_refuses_at_add_time_in_process_too(api: Api) -> None:
    for url, reason in FORBIDDEN_URLS:
        with pytest.raises(BadRequest, match=reason):
            api.run(Admin(api.app.meta).add_connector("main", url))
    connector: Connector = api.run(
        Admin(api.app.meta).add_connector("main", FORBIDDEN_URLS[0][0], allow_internal=True)
    )
    assert connector.allow_internal
