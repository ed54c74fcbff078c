"""Packument and small-tarball answers written to the socket in one piece
(``entrepot.http.wire``), first and remembered alike: on the wire they are what uvicorn
itself sends for the same answer, byte for byte apart from the date,
on kept-alive and pipelined connections, for GET and HEAD; a request that asks to close the
connection gets its answer and then the close. Raw loopback sockets against a real server,
plus uvicorn in-process to see which path answered.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from tests.resilience.harness import ENTREPOT, ServerProcess, client, publish, running

from entrepot import cli
from entrepot.http import app as http_app
from entrepot.http import wire
from entrepot.http.wire import encode_head
from entrepot.settings import load_settings

pytestmark = pytest.mark.resilience


@dataclass
class Answer:
    status_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def without_date(self) -> list[tuple[bytes, bytes]]:
        return [(name, value) for name, value in self.headers if name != b"date"]


class Connection:
    """One kept-alive HTTP/1.1 connection, read answer by answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def send(self, *requests: bytes) -> None:
        self.sock.sendall(b"".join(requests))

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)

    def answer(self, head_only: bool = False) -> Answer:
        while b"\r\n\r\n" not in self.buffer:
            assert self._fill(), f"connection closed mid-answer: {self.buffer[:200]!r}"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.split(b"\r\n")
        headers = [
            (name.lower(), value.strip()) for name, value in (line.split(b":", 1) for line in lines)
        ]
        lengths = [int(value) for name, value in headers if name == b"content-length"]
        assert len(lengths) == 1, headers
        size = 0 if head_only else lengths[0]
        while len(self.buffer) < size:
            assert self._fill(), "connection closed mid-body"
        body, self.buffer = self.buffer[:size], self.buffer[size:]
        return Answer(status_line, headers, body)

    def closed_by_server(self) -> bool:
        """True once the server has closed its side (and sent nothing more)."""
        self.sock.settimeout(5)
        return self.buffer == b"" and self.sock.recv(1) == b""

    def close(self) -> None:
        self.sock.close()


def request(method: str, path: str, port: int, token: str, *extra: str) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Authorization: Bearer {token}",
        "Accept: application/json",
        "Accept-Encoding: gzip",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class Served:
    port: int
    token: str
    #: What each call of ``write_whole`` returned (in-process server only).
    whole: list[bool] = dataclasses.field(default_factory=list)
    #: Set False to make ``write_whole`` step aside: uvicorn's own send answers.
    one_write: list[bool] = dataclasses.field(default_factory=lambda: [True])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("wire")
    server = ServerProcess(root / "server", root / "server" / "data")
    with running(server):
        token = server.token()
        with client(server, token) as http:
            for name in ("wire-pkg", "@wire/scoped"):
                assert publish(http, name, "1.0.0").status_code == 201
        yield Served(server.port, token)


@pytest.fixture
def in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """uvicorn configured as ``entrepot serve`` does, in a thread of this process, with
    ``write_whole`` watched."""
    settings = load_settings(overrides={"data_dir": tmp_path / "data", "port": 0})
    asyncio.run(cli._bootstrap(settings))
    created = subprocess.run(
        [str(ENTREPOT), "--data-dir", str(settings.data_dir), "token", "create", "--user", "admin"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = created.stdout.strip()
    whole: list[bool] = []
    one_write = [True]
    original = wire.write_whole

    def watched(*args: Any) -> bool:
        result = one_write[0] and original(*args)
        whole.append(result)
        return result

    monkeypatch.setattr(http_app, "write_whole", watched)
    sock = cli._bind("127.0.0.1", 0)
    config = uvicorn.Config(http_app.ServerApp(settings, {}), **cli.uvicorn_options(settings))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = sock.getsockname()[1]
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            trust_env=False,
        ) as http:
            assert publish(http, "wire-pkg", "1.0.0").status_code == 201
        yield Served(port, token, whole, one_write)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def test_first_remembered_and_head_answers_agree(served: Served) -> None:
    for path in ("/npm/main/wire-pkg", "/npm/main/@wire%2fscoped"):
        tarball = f"{path}/-/{path.rsplit('/', 1)[-1].split('%2f')[-1]}-1.0.0.tgz"
        for target in (path, tarball):
            conn = Connection(served.port)
            try:
                conn.send(request("GET", target, served.port, served.token))
                first = conn.answer()  # made by the app
                conn.send(request("GET", target, served.port, served.token))
                again = conn.answer()  # remembered
                conn.send(request("HEAD", target, served.port, served.token))
                head = conn.answer(head_only=True)
            finally:
                conn.close()
            assert first.status_line == again.status_line == head.status_line == b"HTTP/1.1 200 OK"
            assert again.headers[0][0] == first.headers[0][0] == b"date"
            assert again.without_date() == first.without_date() == head.without_date()
            assert again.body == first.body and len(first.body) > 0
            assert head.body == b""


def test_one_write_answers_are_what_uvicorn_sends_byte_for_byte(
    in_process: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same answers through uvicorn's own send and in one write, first (made by the
    app) and remembered: the same bytes apart from the date."""
    quiet_uvicorn_access_log(monkeypatch)
    port, token = in_process.port, in_process.token
    for target in ("/npm/main/wire-pkg", "/npm/main/wire-pkg/-/wire-pkg-1.0.0.tgz"):
        answers: list[Answer] = []
        heads: list[Answer] = []
        for one_write, variant in ((False, 'W/"a"'), (True, 'W/"b"')):
            in_process.one_write[0] = one_write
            conn = Connection(port)
            try:
                # An If-None-Match that matches nothing: a 200 filed apart, made anew.
                for _ in range(2):  # made by the app, then remembered
                    conn.send(request("GET", target, port, token, f"If-None-Match: {variant}"))
                    answers.append(conn.answer())
                conn.send(request("HEAD", target, port, token, f"If-None-Match: {variant}"))
                heads.append(conn.answer(head_only=True))
            finally:
                conn.close()
        assert in_process.whole[-6:] == [False] * 3 + [True] * 3
        reference = answers[0]
        assert reference.status_line == b"HTTP/1.1 200 OK" and len(reference.body) > 0
        for answer in (*answers, *heads):
            assert answer.status_line == reference.status_line
            assert answer.headers[0][0] == b"date"
            assert answer.without_date() == reference.without_date()
        assert all(answer.body == reference.body for answer in answers)
        assert all(head.body == b"" for head in heads)


def test_pipelined_requests_get_their_answers_in_order(served: Served) -> None:
    port, token = served.port, served.token
    packument, missing = "/npm/main/wire-pkg", "/npm/main/wire-none-such"
    conn = Connection(port)
    try:
        conn.send(request("GET", packument, port, token))
        expected = conn.answer().body
        conn.send(
            request("GET", packument, port, token),
            request("HEAD", packument, port, token),
            request("GET", missing, port, token),
            request("GET", packument, port, token),
        )
        answers = [conn.answer(), conn.answer(head_only=True), conn.answer(), conn.answer()]
    finally:
        conn.close()
    assert [a.status_line.split()[1] for a in answers] == [b"200", b"200", b"404", b"200"]
    assert answers[0].body == answers[3].body == expected
    assert answers[1].body == b""
    assert b"not found" in answers[2].body


def test_a_request_that_closes_the_connection_gets_its_answer_then_the_close(
    served: Served,
) -> None:
    port, token = served.port, served.token
    conn = Connection(port)
    try:
        conn.send(request("GET", "/npm/main/wire-pkg", port, token))
        expected = conn.answer().body
        conn.send(request("GET", "/npm/main/wire-pkg", port, token, "Connection: close"))
        answer = conn.answer()
        assert answer.body == expected
        assert (b"connection", b"close") in answer.headers
        assert conn.closed_by_server()
    finally:
        conn.close()


def quiet_uvicorn_access_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """As ``entrepot serve`` leaves it: no handler (pytest 9 adds its capture handlers even
    to loggers that do not propagate, which turns uvicorn's access log on)."""
    monkeypatch.setattr(logging.getLogger("uvicorn.access"), "handlers", [])


def test_the_one_write_path_answers_repeats_and_steps_aside_for_a_close(
    in_process: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    quiet_uvicorn_access_log(monkeypatch)
    port, token = in_process.port, in_process.token
    conn = Connection(port)
    try:
        conn.send(request("GET", "/npm/main/wire-pkg", port, token))
        first = conn.answer()
        assert in_process.whole == [True]  # the first answer, made by the app, in one write
        for _ in range(3):
            conn.send(request("GET", "/npm/main/wire-pkg", port, token))
            assert conn.answer().body == first.body
        assert in_process.whole == [True] * 4  # and the remembered ones
        conn.send(request("GET", "/npm/main/wire-pkg", port, token, "Connection: close"))
        assert conn.answer().body == first.body
        assert in_process.whole == [True] * 4 + [False]  # uvicorn closes, as it should
        assert conn.closed_by_server()
    finally:
        conn.close()


def test_uvicorn_logging_access_takes_the_asgi_path(
    in_process: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With uvicorn's access log on, every answer goes through uvicorn's own send, which
    logs it."""
    monkeypatch.setattr(logging.getLogger("uvicorn.access"), "handlers", [logging.NullHandler()])
    port, token = in_process.port, in_process.token
    conn = Connection(port)
    try:
        for _ in range(3):
            conn.send(request("GET", "/npm/main/wire-pkg", port, token))
            assert conn.answer().status_line == b"HTTP/1.1 200 OK"
    finally:
        conn.close()
    assert in_process.whole == [False, False, False]


def test_headers_uvicorn_would_refuse_or_rework_are_left_to_it() -> None:
    good = [(b"Content-Type", b"application/json"), (b"content-length", b"2")]
    assert encode_head(good, 2) == b"content-type: application/json\r\ncontent-length: 2\r\n\r\n"
    assert encode_head(good, 3) is None  # a length that does not match the body
    assert encode_head([(b"content-type", b"application/json")], 2) is None  # no length
    for bad in (
        (b"x-note", b"one\r\nset-cookie: two"),  # a value that would split the header
        (b"x note", b"1"),  # a name uvicorn refuses
        (b"connection", b"close"),  # uvicorn acts on it
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"2"),  # twice
    ):
        assert encode_head([*good, bad], 2) is None, bad


def test_a_cycle_without_the_attributes_it_needs_gets_its_own_send() -> None:
    """A uvicorn whose cycle has changed shape: nothing is written, the caller sends the
    ASGI messages."""
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

    bare = RequestResponseCycle.__new__(RequestResponseCycle)  # no attributes at all
    head = encode_head([(b"content-length", b"2")], 2)
    assert head is not None
    assert wire.write_whole(bare.send, head, b"{}", False) is False
    assert not hasattr(bare, "response_started")  # nothing was set either
