"""Connectors end to end: real ``entrepot serve`` processes reading through each other and
through a scripted upstream, and the real npm CLI installing through them.

Server B (``ENTREPOT_UPSTREAM_TIMEOUT=2``) serves the whole module; each test has its own
feed on it. Server A, the upstream of the first test, is stopped halfway through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.e2e.conftest import (
    ENTREPOT,
    LISTENING,
    START_DEADLINE,
    Npm,
    PackageFactory,
    Server,
    quote_name,
)
from tests.e2e.upstream import Mode, ScriptedUpstream, corrupted

pytestmark = pytest.mark.e2e

#: How long a test waits for the server to notice that its upstream is down.
STALE_DEADLINE = 20.0


def _environment(extra: dict[str, str]) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.lower().startswith("npm_config_") and not key.startswith("ENTREPOT_")
    }
    env.update(PYTHONUNBUFFERED="1", ENTREPOT_ACCESS_LOG="true", **extra)
    return env


def stop(server: Server) -> None:
    process = server.process
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@contextlib.contextmanager
def running_server(root: Path, **extra_env: str) -> Iterator[Server]:
    """``entrepot serve --port 0`` on a fresh data dir, with extra ``ENTREPOT_*`` variables."""
    root.mkdir(parents=True, exist_ok=True)
    data_dir, log_path = root / "data", root / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(ENTREPOT), "serve", "--data-dir", str(data_dir), "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_environment(extra_env),
        )
    server: Server | None = None
    try:
        deadline = time.monotonic() + START_DEADLINE
        while server is None:
            text = log_path.read_text(encoding="utf-8", errors="replace")
            match = LISTENING.search(text)
            if match is not None:
                server = Server(match.group(1), int(match.group(2)), data_dir, log_path, process)
            elif process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"entrepot serve did not start:\n{text}")
            else:
                time.sleep(0.05)
        yield server
    finally:
        if server is None:
            process.kill()
            process.wait(timeout=5)
        else:
            stop(server)


@pytest.fixture(scope="module")
def scripted() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as upstream:
        yield upstream


@pytest.fixture
def upstream(scripted: ScriptedUpstream) -> Iterator[ScriptedUpstream]:
    """The module's scripted upstream, answering normally and with no requests recorded."""
    scripted.reset()
    yield scripted
    scripted.reset()


@pytest.fixture(scope="module")
def server_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("server-b"), ENTREPOT_UPSTREAM_TIMEOUT="2"
    ) as server:
        yield server


def npm_for(server: Server, feed: str, root: Path) -> Npm:
    return Npm(root, server, server.feed_url(feed))


def project(root: Path, dependencies: dict[str, str]) -> Path:
    folder = root / "project"
    folder.mkdir(parents=True)
    (folder / "package.json").write_text(
        json.dumps(
            {"name": "consumer", "version": "0.0.0", "private": True, "dependencies": dependencies}
        )
    )
    return folder


def installed(folder: Path, name: str) -> str:
    manifest = json.loads((folder / "node_modules" / name / "package.json").read_text())
    assert manifest["name"] == name
    return str(manifest["version"])


def resolved_urls(folder: Path) -> dict[str, str]:
    lock = json.loads((folder / "package-lock.json").read_text())
    return {
        path.removeprefix("node_modules/"): entry["resolved"]
        for path, entry in lock["packages"].items()
        if path
    }


def header(result_headers: dict[str, str], name: str) -> str | None:
    lowered = {k.lower(): v for k, v in result_headers.items()}
    return lowered.get(name.lower())


def error_of(server: Server, path: str) -> tuple[int, str]:
    result = server.request("GET", path)
    assert isinstance(result.body, dict) and set(result.body) == {"error"}, result.body
    return result.status, str(result.body["error"])


# -- (a) one server reading through another -------------------------------------------------

TREE = {
    "@ctree/core": {},
    "ctree-util": {"@ctree/core": "^1.0.0"},
    "ctree-mid": {"ctree-util": "^1.0.0"},
    "ctree-app": {"ctree-mid": "^1.0.0", "@ctree/core": "^1.0.0"},
}


def test_install_through_another_server_and_after_it_stops(
    server_b: Server, make_package: PackageFactory, tmp_path: Path
) -> None:
    with running_server(tmp_path / "server-a") as server_a:
        publisher = npm_for(server_a, "main", tmp_path / "npm-a")
        publisher.set_token(server_a.token())
        for name, dependencies in TREE.items():
            folder = make_package(name, "1.0.0", dependencies=dependencies)
            publisher.ok("publish", "--access", "public", cwd=folder)

        # TTL 1 s: once A is gone, B must fall back on its copies, and say so.
        server_b.admin("feed", "create", "mirror")
        server_b.admin(
            "connector", "add", "mirror", server_a.registry, "--name", "server-a", "--ttl", "1"
        )
        listed = server_b.admin("connector", "list", "mirror")
        assert "server-a" in listed and server_a.registry.rstrip("/") in listed

        app = project(tmp_path / "first", {"ctree-app": "^1.0.0"})
        client = npm_for(server_b, "mirror", tmp_path / "npm-b")
        client.ok("install", cwd=app)
        for name in TREE:
            assert installed(app, name) == "1.0.0"
        mirror = server_b.feed_url("mirror")
        for name, url in resolved_urls(app).items():
            assert url.startswith(mirror), (name, url)
        for name in TREE:
            served = server_b.packument(name, feed="mirror")
            assert served.status == 200
            tarball = served.body["versions"]["1.0.0"]["dist"]["tarball"]
            assert tarball == f"{mirror}{name}/-/{name.rsplit('/', 1)[-1]}-1.0.0.tgz"
            original = server_a.packument(name).body["versions"]["1.0.0"]["dist"]
            assert served.body["versions"]["1.0.0"]["dist"]["integrity"] == original["integrity"]

    assert server_a.process.poll() is not None, "server A is still running"

    # A is down: a clean install (empty npm cache, no node_modules, no lockfile) still works.
    again = project(tmp_path / "second", {"ctree-app": "^1.0.0"})
    offline = npm_for(server_b, "mirror", tmp_path / "npm-b-again")
    offline.ok("install", cwd=again)
    for name in TREE:
        assert installed(again, name) == "1.0.0"
    assert all(url.startswith(mirror) for url in resolved_urls(again).values())

    # ... and B says the copies are stale once a refresh has failed.
    deadline = time.monotonic() + STALE_DEADLINE
    stale = None
    while stale is None and time.monotonic() < deadline:
        result = server_b.packument("ctree-app", feed="mirror")
        assert result.status == 200
        stale = header(result.headers, "X-Entrepot-Stale")
        if stale is None:
            time.sleep(0.2)
    assert stale is not None and "server-a" in stale, "B never marked its copy stale"

    # Publishing into the feed works while its upstream is down.
    local = npm_for(server_b, "mirror", tmp_path / "npm-b-publish")
    local.set_token(server_b.token())
    local.ok("publish", cwd=make_package("mirror-local", "1.0.0"))
    with_local = project(tmp_path / "third", {"mirror-local": "1.0.0", "ctree-util": "^1.0.0"})
    local.ok("install", cwd=with_local)
    assert installed(with_local, "mirror-local") == "1.0.0"
    assert installed(with_local, "@ctree/core") == "1.0.0"


# -- (b) a scripted upstream that fails -----------------------------------------------------


@pytest.fixture(scope="module")
def scripted_feed(server_b: Server, scripted: ScriptedUpstream) -> str:
    server_b.admin("feed", "create", "scripted")
    server_b.admin("connector", "add", "scripted", scripted.url, "--name", "scripted")
    return "scripted"


@pytest.mark.parametrize(
    ("mode", "status", "fragment"),
    [
        (Mode.ERROR, 502, "answered HTTP 500"),
        (Mode.DROP, 502, "unreachable"),
        (Mode.SLOW, 504, "timed out"),
    ],
)
def test_an_upstream_failure_is_a_clear_error_for_an_uncached_name(
    server_b: Server,
    scripted_feed: str,
    upstream: ScriptedUpstream,
    mode: Mode,
    status: int,
    fragment: str,
) -> None:
    name = f"uncached-{mode.value}"
    upstream.packages.add(name, "1.0.0")
    upstream.set(mode, delay=6)  # ENTREPOT_UPSTREAM_TIMEOUT is 2 s
    got_status, message = error_of(server_b, f"/npm/{scripted_feed}/{quote_name(name)}")
    assert got_status == status, message
    assert "scripted" in message and fragment in message and name in message, message
    assert len(upstream.packument_requests(name)) == 1


def test_a_tarball_with_the_wrong_integrity_fails_the_install_and_is_not_kept(
    server_b: Server, scripted_feed: str, upstream: ScriptedUpstream, tmp_path: Path
) -> None:
    upstream.packages.add("tampered-tgz", "1.0.0")
    good = upstream.packages.tarball_of("tampered-tgz", "1.0.0")
    bad = corrupted(good)
    upstream.set(Mode.CORRUPT)

    app = project(tmp_path / "bad", {"tampered-tgz": "1.0.0"})
    client = npm_for(server_b, scripted_feed, tmp_path / "npm")
    result = client("install", cwd=app)
    assert result.returncode != 0, result.output
    assert not (app / "node_modules" / "tampered-tgz" / "package.json").exists()
    assert len(upstream.tarball_requests("tampered-tgz")) >= 1

    bad_key = hashlib.sha512(bad).hexdigest()
    kept = [
        path
        for path in server_b.data_dir.rglob("*")
        if path.is_file() and (path.name == bad_key or path.read_bytes() == bad)
    ]
    assert kept == [], kept

    # Fixed upstream: B fetches the tarball again (it kept nothing), and the install works.
    upstream.set(Mode.NORMAL)
    before = len(upstream.tarball_requests("tampered-tgz"))
    path = f"/npm/{scripted_feed}/tampered-tgz/-/tampered-tgz-1.0.0.tgz"
    fetched = server_b.request("GET", path)
    assert fetched.status == 200
    assert fetched.body == good
    assert len(upstream.tarball_requests("tampered-tgz")) == before + 1
    shutil.rmtree(client.cache)
    client.cache.mkdir()
    client.ok("install", cwd=app)
    assert installed(app, "tampered-tgz") == "1.0.0"


def test_a_tarball_whose_client_went_away_is_still_fetched_and_kept(
    server_b: Server, scripted_feed: str, upstream: ScriptedUpstream
) -> None:
    upstream.packages.add("abandoned-tgz", "1.0.0")
    good = upstream.packages.tarball_of("abandoned-tgz", "1.0.0")
    path = f"/npm/{scripted_feed}/abandoned-tgz/-/abandoned-tgz-1.0.0.tgz"
    assert server_b.request("GET", f"/npm/{scripted_feed}/abandoned-tgz").status == 200
    upstream.set(Mode.SLOW, delay=1)
    # A client asks for the tarball and hangs up while the upstream is still answering.
    with socket.create_connection(("127.0.0.1", server_b.port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        time.sleep(0.3)
    # The upstream goes down; the request in flight there is answered as it started.
    upstream.set(Mode.ERROR)
    fetched = server_b.request("GET", path)
    assert fetched.status == 200, fetched.body
    assert fetched.body == good
    assert len(upstream.tarball_requests("abandoned-tgz")) == 1


# -- (c) the public npm registry, opt-in ----------------------------------------------------


@pytest.mark.skipif(
    os.environ.get("ENTREPOT_TEST_PUBLIC_UPSTREAM") != "1",
    reason="reads the public npm registry: set ENTREPOT_TEST_PUBLIC_UPSTREAM=1 to run it",
)
def test_install_a_real_tree_through_the_public_registry(tmp_path: Path) -> None:
    # The URL comes from npm itself, as the docs tell users to do.
    public = subprocess.run(
        ["npm", "config", "get", "registry"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert public.startswith(("http://", "https://")), public
    with running_server(tmp_path / "server") as server:
        server.admin("feed", "create", "public", "--upstream", public)
        app = project(tmp_path / "app", {"express": "^4.0.0"})
        client = npm_for(server, "public", tmp_path / "npm")
        client.ok("install", cwd=app)
        assert installed(app, "express").startswith("4.")
        urls = resolved_urls(app)
        assert len(urls) > 20
        feed = server.feed_url("public")
        assert all(url.startswith(feed) for url in urls.values()), urls
        served = server.packument("express", feed="public").body
        assert all(
            manifest["dist"]["tarball"].startswith(feed) for manifest in served["versions"].values()
        )
