"""Fixtures for the API tests: the ASGI app in-process, on a fresh data folder per test.

``Api`` is a small synchronous face over ``httpx.AsyncClient`` + ``httpx.ASGITransport``:
each call runs on the test's own event loop. ``Api.raw`` talks ASGI directly, for the paths
httpx would tidy up (``..`` segments) and for bodies whose arrival the test must watch.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import gzip
import hashlib
import io
import tarfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest

from entrepot.admin import Admin
from entrepot.auth import hash_password
from entrepot.http.app import EntrepotApp, create_app
from entrepot.settings import load_settings
from entrepot.storage.base import Package

T = TypeVar("T")

BASE_URL = "http://testserver"
ALICE_PASSWORD = "alice's long password"
BOB_PASSWORD = "bob's long password"


@functools.cache
def password_hash(password: str) -> str:
    # Argon2 is slow on purpose: hash each test password once per run.
    return hash_password(password)


def quote_name(name: str) -> str:
    """A package name as npm puts it in a path: ``@scope%2fname``."""
    return name.replace("/", "%2f")


def bearer(token: str) -> str:
    return f"Bearer {token}"


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def npm_tarball(package_json: Mapping[str, Any], files: Mapping[str, bytes] | None = None) -> bytes:
    """A tarball as ``npm pack`` makes it: everything under ``package/``, gzipped."""
    out = io.BytesIO()
    entries = {"package.json": orjson.dumps(package_json), **(files or {})}
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue(), mtime=0)


def publish_body(
    name: str,
    version: str,
    tarball: bytes | None = None,
    *,
    tag: str = "latest",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The body of ``PUT /<name>`` as npm 11 sends it (libnpmpublish), for a real tarball."""
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "description": f"{name} for tests",
        "main": "index.js",
        "license": "MIT",
        **(extra or {}),
    }
    if tarball is None:
        tarball = npm_tarball(manifest, {"index.js": b"module.exports = 42\n"})
    sha512 = hashlib.sha512(tarball).digest()
    attachment = f"{name}-{version}.tgz"  # npm keeps the scope in it: "@s/n-1.0.0.tgz"
    return {
        "_id": name,
        "name": name,
        "description": manifest["description"],
        "dist-tags": {tag: version},
        "versions": {
            version: {
                **manifest,
                "readme": f"# {name}\n\nThe readme of {name}, long enough to be gzipped.\n",
                "_id": f"{name}@{version}",
                "_nodeVersion": "20.20.2",
                "_npmVersion": "11.19.1",
                "dist": {
                    "integrity": "sha512-" + base64.b64encode(sha512).decode(),
                    "shasum": hashlib.sha1(tarball, usedforsecurity=False).hexdigest(),
                    "tarball": f"http://reg/{name}/-/{attachment}",
                },
            }
        },
        "access": None,
        "_attachments": {
            attachment: {
                "content_type": "application/octet-stream",
                "data": base64.b64encode(tarball).decode(),
                "length": len(tarball),
            }
        },
    }


@dataclasses.dataclass
class RawResponse:
    """What the app sent, untouched: no decompression, no HEAD body dropping."""

    status: int
    headers: dict[str, str]
    body: bytes
    #: How many body chunks the app pulled from the request before answering.
    chunks_read: int

    def json(self) -> Any:
        return orjson.loads(self.body)


class Api:
    """The app, in-process, with users and tokens ready:

    - ``alice``: owner on feed ``main``; ``alice_token`` (read-write), ``alice_read_only``;
    - ``bob``: no role anywhere (may read the public feed, nothing more); ``bob_token``.
    """

    def __init__(self, runner: asyncio.Runner, app: EntrepotApp, data_dir: Path) -> None:
        self.runner = runner
        self.app = app
        self.data_dir = data_dir
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL)
        self.alice_token = ""
        self.alice_read_only = ""
        self.bob_token = ""

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    async def _setup(self) -> None:
        admin = Admin(self.app.meta)
        await admin.create_feed("main", private=False)
        await admin.create_feed("team", private=True)
        meta = self.app.meta
        await meta.create_user(
            "alice", "alice@example.test", password_hash(ALICE_PASSWORD), admin=False
        )
        await meta.create_user("bob", "bob@example.test", password_hash(BOB_PASSWORD), admin=False)
        await admin.grant("main", "alice", "owner")
        self.alice_token, _ = await admin.create_token(
            "alice", read_only=False, feeds=[], expires_days=None
        )
        self.alice_read_only, _ = await admin.create_token(
            "alice", read_only=True, feeds=[], expires_days=None
        )
        self.bob_token, _ = await admin.create_token(
            "bob", read_only=False, feeds=[], expires_days=None
        )

    def close(self) -> None:
        self.run(self.client.aclose())
        upstreams = getattr(self.app, "upstreams", None)  # connectors, when the app has them
        if upstreams is not None:
            self.run(upstreams.close())
        self.run(self.app.meta.close())

    # -- requests ---------------------------------------------------------------------------

    @property
    def alice(self) -> str:
        """Alice's Authorization header (read-write token)."""
        return bearer(self.alice_token)

    def request(
        self,
        method: str,
        path: str,
        *,
        auth: str | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | AsyncIterator[bytes] | None = None,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if auth is not None:
            all_headers["Authorization"] = auth
        if json is not None:
            content = orjson.dumps(json)
            all_headers.setdefault("Content-Type", "application/json")
        return self.run(self.client.request(method, path, headers=all_headers, content=content))

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)

    def publish(self, name: str, version: str, **kwargs: Any) -> httpx.Response:
        """Publish a real tarball as alice; the test fails unless the server accepts it."""
        response = self.put(
            "/npm/main/" + quote_name(name),
            auth=self.alice,
            json=publish_body(name, version, **kwargs),
        )
        assert response.status_code == 201, response.text
        return response

    def snapshot(self, *names: str) -> tuple[int, list[Package | None], list[str]]:
        """What a refused request must leave alone: seq, the packages, the stored blobs."""

        async def take() -> tuple[int, list[Package | None], list[str]]:
            feed = await self.app.meta.get_feed("main")
            assert feed is not None
            packages = [await self.app.meta.get_package(feed.id, n) for n in names]
            return await self.app.meta.seq(), packages, sorted(await self.app.blobs.keys())

        return self.run(take())

    def raw(
        self,
        method: str,
        raw_path: bytes,
        *,
        headers: Iterable[tuple[str, str]] = (),
        chunks: Iterable[bytes] = (),
    ) -> RawResponse:
        """One request straight through ASGI: ``raw_path`` exactly as a client sent it."""
        return self.run(self._raw(method, raw_path, list(headers), iter(chunks)))

    async def _raw(
        self,
        method: str,
        raw_path: bytes,
        headers: list[tuple[str, str]],
        chunks: Iterator[bytes],
    ) -> RawResponse:
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": raw_path.decode("latin-1"),
            "raw_path": raw_path,
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver")]
            + [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            "server": ("testserver", 80),
            "client": ("127.0.0.1", 50000),
        }
        pulled = 0
        pending = next(chunks, None)
        started: dict[str, Any] = {}
        body: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal pulled, pending
            if pending is None:
                return {"type": "http.disconnect"} if pulled else _last(b"")
            chunk = pending
            pending = next(chunks, None)
            pulled += 1
            return {"type": "http.request", "body": chunk, "more_body": pending is not None}

        async def send(message: Mapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.update(message)
            elif message["type"] == "http.response.body":
                body.append(bytes(message.get("body", b"")))

        await self.app(scope, receive, send)
        response_headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in started["headers"]
        }
        return RawResponse(started["status"], response_headers, b"".join(body), pulled)


def _last(body: bytes) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": False}


ApiFactory = Callable[..., Api]


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[ApiFactory]:
    """Build an ``Api`` whose settings take these overrides (``max_body_bytes=...``)."""
    made: list[Api] = []
    runner = asyncio.Runner()

    def make(**overrides: Any) -> Api:
        data_dir = tmp_path / f"data{len(made)}"
        settings = load_settings(overrides={"data_dir": data_dir, **overrides})
        api = Api(runner, create_app(settings), data_dir)
        made.append(api)
        api.run(api._setup())
        return api

    yield make
    for api in made:
        api.close()
    runner.close()


@pytest.fixture
def api(make_api: ApiFactory) -> Api:
    return make_api()
