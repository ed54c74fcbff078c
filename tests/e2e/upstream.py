"""A scripted upstream npm registry for connector tests.

``UpstreamPackages`` builds packuments and real tarballs (with their ``dist.integrity``) for a
registry at some base URL; it is plain data, so in-process tests can serve it through
``httpx.MockTransport`` too. ``ScriptedUpstream`` serves it over real HTTP on 127.0.0.1 (the OS
picks the port) from a background thread, records every request, and can be switched to fail:
answer 500, be slow, drop the connection, serve tarballs that do not match their integrity, or
answer 304 to any ``If-None-Match``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import gzip
import hashlib
import io
import json
import socket
import tarfile
import threading
import urllib.parse
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Mode(enum.Enum):
    """How the scripted upstream answers."""

    NORMAL = "normal"
    #: Every request gets ``500`` with a JSON error.
    ERROR = "error"
    #: Every request waits ``delay`` seconds, then is answered normally.
    SLOW = "slow"
    #: The connection is closed without any response.
    DROP = "drop"
    #: Tarballs are served with bytes that do not match the packument's integrity.
    CORRUPT = "corrupt"
    #: Any request carrying ``If-None-Match`` gets ``304``, whatever the tag.
    NOT_MODIFIED = "not-modified"


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One request as the upstream received it (header names in lower case)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        data = gzip.decompress(self.body) if self.headers.get("content-encoding") else self.body
        return json.loads(data)


def quote_name(name: str) -> str:
    """A name as it goes in a registry path: ``@scope%2fname``."""
    return urllib.parse.quote(name, safe="@")


def iso(moment: dt.datetime) -> str:
    """A time stamp as npm writes it."""
    utc = moment.astimezone(dt.UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def hours_ago(hours: float) -> str:
    return iso(dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours))


def make_tarball(manifest: Mapping[str, Any], files: Mapping[str, bytes] | None = None) -> bytes:
    """A package tarball as ``npm pack`` makes it: everything under ``package/``, gzipped."""
    out = io.BytesIO()
    entries = {
        "package.json": json.dumps(manifest, indent=2).encode(),
        "index.js": f"module.exports = {json.dumps(manifest['name'])};\n".encode(),
        **(files or {}),
    }
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for path, data in entries.items():
            info = tarfile.TarInfo(f"package/{path}")
            info.size = len(data)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(out.getvalue(), mtime=0)


def integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def corrupted(data: bytes) -> bytes:
    """Other bytes of the same length: what a broken mirror or an attacker might serve."""
    return bytes(b ^ 0x5A for b in data)


class UpstreamPackages:
    """The packuments and tarballs of a fake registry whose URL is ``base_url``."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.base_path = urllib.parse.urlsplit(self.base_url).path
        self._docs: dict[str, dict[str, Any]] = {}
        self._tarballs: dict[str, bytes] = {}
        self._lock = threading.Lock()
        #: Answer ``Accept: application/vnd.npm.install-v1+json`` with the abbreviated
        #: document, as the public registry does (False: always the full one).
        self.abbreviates = True

    def tarball_path(self, name: str, version: str) -> str:
        return f"{self.base_path}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"

    def add(
        self,
        name: str,
        version: str,
        *,
        dependencies: Mapping[str, str] | None = None,
        published: str | None = None,
        tag: str | None = "latest",
        marker: str = "",
    ) -> dict[str, Any]:
        """Publish one version upstream; returns its manifest (with ``dist``)."""
        manifest: dict[str, Any] = {
            "name": name,
            "version": version,
            "description": f"{name} from the scripted upstream {marker}".strip(),
            "main": "index.js",
            "license": "MIT",
        }
        if dependencies:
            manifest["dependencies"] = dict(dependencies)
        data = make_tarball(manifest, {"marker.txt": marker.encode()})
        path = self.tarball_path(name, version)
        full = {
            **manifest,
            "_id": f"{name}@{version}",
            "dist": {
                "integrity": integrity_of(data),
                "shasum": hashlib.sha1(data, usedforsecurity=False).hexdigest(),
                "tarball": urllib.parse.urlsplit(self.base_url)._replace(path=path).geturl(),
            },
        }
        stamp = published or iso(dt.datetime.now(dt.UTC))
        with self._lock:
            doc = self._docs.setdefault(
                name,
                {"_id": name, "name": name, "dist-tags": {}, "versions": {}, "time": {}},
            )
            doc["versions"][version] = full
            doc["time"].setdefault("created", stamp)
            doc["time"][version] = stamp
            doc["time"]["modified"] = stamp
            if tag is not None:
                doc["dist-tags"][tag] = version
            self._tarballs[path] = data
        return full

    def tag(self, name: str, tag: str, version: str) -> None:
        with self._lock:
            self._docs[name]["dist-tags"][tag] = version

    def remove(self, name: str) -> None:
        with self._lock:
            self._docs.pop(name, None)

    def packument(self, name: str) -> bytes | None:
        with self._lock:
            doc = self._docs.get(name)
            return None if doc is None else json.dumps(doc).encode()

    def abbreviated(self, name: str) -> bytes | None:
        """The abbreviated ("corgi") packument: no times, no descriptions, per version only
        what installing needs."""
        with self._lock:
            doc = self._docs.get(name)
            if doc is None:
                return None
            versions = {
                version: {k: v for k, v in manifest.items() if k in CORGI_FIELDS}
                for version, manifest in doc["versions"].items()
            }
            short = {
                "name": name,
                "modified": doc["time"]["modified"],
                "dist-tags": doc["dist-tags"],
                "versions": versions,
            }
            return json.dumps(short).encode()

    def tarball(self, path: str) -> bytes | None:
        with self._lock:
            return self._tarballs.get(path)

    def tarball_of(self, name: str, version: str) -> bytes:
        data = self.tarball(self.tarball_path(name, version))
        assert data is not None, f"no upstream tarball for {name}@{version}"
        return data

    @staticmethod
    def etag(body: bytes) -> str:
        return '"' + hashlib.sha256(body).hexdigest()[:24] + '"'

    def name_of(self, path: str) -> str | None:
        """The package name a packument request path asks for (None: not a packument)."""
        path = urllib.parse.unquote(path.split("?", 1)[0])
        if not path.startswith(self.base_path + "/"):
            return None
        rest = path[len(self.base_path) + 1 :]
        if not rest or rest.startswith("-/") or "/-/" in rest:
            return None
        return rest


Reply = tuple[int, dict[str, str], bytes]

CORGI = "application/vnd.npm.install-v1+json"
#: What the public registry keeps of a version in an abbreviated packument (those the
#: scripted manifests can have).
CORGI_FIELDS = ("name", "version", "dependencies", "dist", "deprecated", "bin", "engines")


def scripted_reply(
    packages: UpstreamPackages,
    mode: Mode,
    method: str,
    path: str,
    headers: Mapping[str, str],
    audit_answer: Any = None,
) -> Reply:
    """What a registry in ``mode`` answers (status, headers, body); ``headers`` in lower case.

    The transport handles ``Mode.DROP`` and ``Mode.SLOW`` itself: here they answer normally.
    """
    if mode is Mode.ERROR:
        return 500, {"Content-Type": "application/json"}, b'{"error": "scripted failure"}'
    if mode is Mode.NOT_MODIFIED and "if-none-match" in headers:
        return 304, {"ETag": headers["if-none-match"]}, b""
    not_found: Reply = 404, {"Content-Type": "application/json"}, b'{"error": "Not found"}'
    if method == "POST":
        if audit_answer is None:
            return not_found
        return 200, {"Content-Type": "application/json"}, json.dumps(audit_answer).encode()
    name = packages.name_of(path)
    if name is not None:
        short = packages.abbreviates and CORGI in headers.get("accept", "")
        doc = packages.abbreviated(name) if short else packages.packument(name)
        if doc is None:
            return not_found
        etag = packages.etag(doc)
        if headers.get("if-none-match") == etag:
            return 304, {"ETag": etag}, b""
        kind = CORGI if short else "application/json"
        return 200, {"ETag": etag, "Content-Type": kind}, doc
    data = packages.tarball(urllib.parse.unquote(path.split("?", 1)[0]))
    if data is None:
        return not_found
    if mode is Mode.CORRUPT:
        data = corrupted(data)
    return 200, {"Content-Type": "application/octet-stream"}, data


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    upstream: ScriptedUpstream


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read ``ScriptedUpstream.requests`` instead."""

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_PUT(self) -> None:
        self._answer()

    def _answer(self) -> None:
        upstream = self.server.upstream
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        upstream.record(Recorded(self.command, self.path, headers, body))
        mode = upstream.mode
        if mode is Mode.DROP:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode is Mode.SLOW:
            upstream.wake.wait(upstream.delay)
        status, reply_headers, reply = scripted_reply(
            upstream.packages, mode, self.command, self.path, headers, upstream.audit_answer
        )
        self._send(status, reply, reply_headers)

    def _send(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD" and status != 304:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a slow answer after its timeout)


class ScriptedUpstream:
    """A real HTTP registry on 127.0.0.1, in a background thread; use as a context manager."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.upstream = self
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self.packages = UpstreamPackages(self.url)
        self.mode = Mode.NORMAL
        #: Seconds a ``Mode.SLOW`` answer waits.
        self.delay = 5.0
        #: What ``POST /-/npm/v1/security/...`` answers (None: 404).
        self.audit_answer: Any = None
        self.wake = threading.Event()
        self._requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="scripted-upstream", daemon=True
        )

    def __enter__(self) -> ScriptedUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wake.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def set(self, mode: Mode, *, delay: float | None = None) -> None:
        self.mode = mode
        if delay is not None:
            self.delay = delay

    def reset(self) -> None:
        """Back to normal answers, with no requests recorded."""
        self.mode = Mode.NORMAL
        self.audit_answer = None
        with self._lock:
            self._requests.clear()

    def record(self, request: Recorded) -> None:
        with self._lock:
            self._requests.append(request)

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def packument_requests(self, name: str) -> list[Recorded]:
        return [r for r in self.requests if self.packages.name_of(r.path) == name]

    def tarball_requests(self, name: str) -> list[Recorded]:
        prefix = f"{self.packages.base_path}/{name}/-/"
        return [r for r in self.requests if urllib.parse.unquote(r.path).startswith(prefix)]
