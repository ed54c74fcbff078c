"""Slow clients: publish bodies that trickle in a few bytes a second are dropped with 408
after the body idle timeout (3 s here, ``body_idle_timeout``), and 200 clients reading a
large tarball a few KB a second neither stop the server from answering others nor make its
memory grow without bound. Everything over raw loopback sockets, bounded in time.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from tests.resilience.harness import ServerProcess, client, integrity, publish, running

pytestmark = pytest.mark.resilience

IDLE_TIMEOUT = 3
#: The server's resident memory (supervisor and worker) must stay under this.
RSS_CEILING = 400 * 2**20
TRICKLERS = 20
READERS = 200
#: The tarball the slow readers read: above the size the server streams from disk.
LARGE_PADDING = 4 * 2**20


@dataclass
class Served:
    server: ServerProcess
    token: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("slow-clients")
    server = ServerProcess(
        root / "server",
        root / "server" / "data",
        env={"ENTREPOT_BODY_IDLE_TIMEOUT": str(IDLE_TIMEOUT)},
    )
    with running(server):
        yield Served(server, server.token())


@dataclass
class RawClient:
    """One raw HTTP/1.1 connection and everything it has received."""

    sock: socket.socket
    received: bytearray = field(default_factory=bytearray)
    closed: bool = False

    @classmethod
    def connect(cls, port: int, receive_buffer: int | None = None) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            # Before connecting, so that the TCP window stays small: the server must wait.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        return cls(sock)

    def send(self, data: bytes) -> bool:
        """Send without blocking; False once the server has closed the connection."""
        try:
            self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            self.closed = True
            return False
        return True

    def receive(self, limit: int = 65536) -> None:
        try:
            chunk = self.sock.recv(limit)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.closed = True
            return
        if chunk:
            self.received += chunk
        else:
            self.closed = True

    @property
    def status(self) -> int | None:
        head = bytes(self.received).split(b"\r\n", 1)[0]
        parts = head.split()
        return int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/") else None

    def body(self) -> bytes:
        return bytes(self.received).split(b"\r\n\r\n", 1)[-1]

    def close(self) -> None:
        self.sock.close()


def request_head(method: str, path: str, port: int, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def normal_requests_complete(served: Served, name: str, version: str) -> None:
    """What other clients do meanwhile: a ping, a packument, a publish. All must answer."""
    with client(served.server, served.token) as http:
        assert http.get("/npm/main/-/ping").status_code == 200
        packument = http.get(f"/npm/main/{name}")
        assert packument.status_code == 200 and name in packument.text
        published = publish(http, f"{name}-other", version)
        assert published.status_code == 201, published.text


def test_trickling_publish_bodies_are_dropped_with_408(
    served: Served, record_property: Callable[[str, object], None]
) -> None:
    server = served.server
    name = "slow-body-pkg"
    with client(server, served.token) as http:
        assert publish(http, name, "1.0.0").status_code == 201
    head = request_head(
        "PUT",
        f"/npm/main/{name}",
        server.port,
        {
            "Authorization": f"Bearer {served.token}",
            "Content-Type": "application/json",
            "Content-Length": "1000000",
        },
    )
    tricklers = [RawClient.connect(server.port) for _ in range(TRICKLERS)]
    # One more that sends a little, then nothing at all.
    stalled = RawClient.connect(server.port)
    rss: list[int] = [server.rss_bytes()]
    began = time.monotonic()
    try:
        for raw in [*tricklers, stalled]:
            assert raw.send(head + b'{"name"')
        deadline = began + IDLE_TIMEOUT * 6
        checked_others = False
        while time.monotonic() < deadline:
            pending = [raw for raw in tricklers if raw.status is None and not raw.closed]
            for raw in pending:
                raw.send(b" " * 4)
            for raw in [*tricklers, stalled]:
                raw.receive()
            rss.append(server.rss_bytes())
            if not checked_others and time.monotonic() - began > 1:
                normal_requests_complete(served, name, "1.0.1")
                checked_others = True
            if all(raw.status is not None or raw.closed for raw in [*tricklers, stalled]):
                break
            time.sleep(1.0)
        answered_after = time.monotonic() - began
    finally:
        for raw in [*tricklers, stalled]:
            raw.close()
    figures = {"dropped_after_s": round(answered_after, 1), "max_rss_mb": round(max(rss) / 2**20)}
    for key, value in figures.items():
        record_property(f"trickle_{key}", value)
    print(f"\ntrickle figures: {json.dumps(figures)}")
    assert checked_others
    for raw in [*tricklers, stalled]:
        assert raw.status == 408, f"got {bytes(raw.received[:200])!r}"
        assert "stalled" in json.loads(raw.body())["error"]
    assert max(rss) < RSS_CEILING
    with client(server) as http:
        versions = http.get(f"/npm/main/{name}").json()["versions"]
    assert set(versions) == {"1.0.0"}


def test_many_slow_tarball_readers_do_not_block_others(
    served: Served, record_property: Callable[[str, object], None]
) -> None:
    server = served.server
    name = "slow-read-pkg"
    with client(server, served.token) as http:
        published = publish(http, name, "1.0.0", padding=LARGE_PADDING)
        assert published.status_code == 201, published.text
    path = f"/npm/main/{name}/-/{name}-1.0.0.tgz"
    head = request_head("GET", path, server.port, {"Accept": "application/octet-stream"})
    readers: list[RawClient] = []
    rss: list[int] = [server.rss_bytes()]
    try:
        for _ in range(READERS):
            raw = RawClient.connect(server.port, receive_buffer=4096)
            assert raw.send(head)
            readers.append(raw)
        began = time.monotonic()
        checked_others = False
        while time.monotonic() - began < 10:
            for raw in readers:
                raw.receive(1024)  # 1 KB every quarter second: 4 KB/s
            rss.append(server.rss_bytes())
            if not checked_others and time.monotonic() - began > 3:
                normal_requests_complete(served, name, "2.0.0")
                checked_others = True
            time.sleep(0.25)
    finally:
        for raw in readers:
            raw.close()
    record_property("slow_readers_max_rss_mb", round(max(rss) / 2**20))
    print(f"\nslow reader figures: {json.dumps({'max_rss_mb': round(max(rss) / 2**20)})}")
    assert checked_others
    statuses = [raw.status for raw in readers]
    assert statuses.count(200) == READERS, f"not every reader was being served: {statuses}"
    # None of them could have finished: the server had to keep them all waiting.
    assert all(len(raw.received) < LARGE_PADDING for raw in readers)
    assert not any(raw.closed for raw in readers)
    assert max(rss) < RSS_CEILING
    # Still serving after they all went away.
    with client(server) as http:
        assert http.get(path).status_code == 200


def test_large_tarballs_arrive_whole_on_a_reused_connection(served: Served) -> None:
    """Tarballs above the in-memory size are sent from the file (zero-copy where the server
    can): each arrives whole and matching its integrity, GET after GET on one kept-alive
    connection, HEAD sends no body, and a reader that leaves halfway harms no one."""
    server = served.server
    name = "big-whole-pkg"
    with client(server, served.token) as http:
        for version in ("1.0.0", "1.0.1"):
            published = publish(http, name, version, padding=3 * 2**20 + 12345)
            assert published.status_code == 201, published.text
        doc = http.get(f"/npm/main/{name}").json()
    with client(server) as http:  # one connection, kept alive across the requests
        for _ in range(3):
            for version in ("1.0.0", "1.0.1"):
                path = f"/npm/main/{name}/-/{name}-{version}.tgz"
                got = http.get(path)
                assert got.status_code == 200
                assert int(got.headers["content-length"]) == len(got.content) > 3 * 2**20
                assert integrity(got.content) == doc["versions"][version]["dist"]["integrity"]
                head = http.head(path)
                assert head.status_code == 200 and head.content == b""
                assert head.headers["content-length"] == got.headers["content-length"]
        path = f"/npm/main/{name}/-/{name}-1.0.0.tgz"
        leaver = RawClient.connect(server.port)
        assert leaver.send(request_head("GET", path, server.port, {}))
        deadline = time.monotonic() + 10
        while len(leaver.received) < 2**20 and time.monotonic() < deadline:
            leaver.receive()
        assert leaver.status == 200
        leaver.close()  # halfway through
        again = http.get(path)
        assert again.status_code == 200
        assert integrity(again.content) == doc["versions"]["1.0.0"]["dist"]["integrity"]
