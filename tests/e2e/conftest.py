"""Fixtures for end-to-end tests: a real ``entrepot serve`` process and the real npm CLI.

One server runs per test module (tests in a module use distinct package names); every npm
client gets its own HOME, user config and cache, so nothing from the machine's npm setup
(registry, tokens) leaks into a test.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pytest

ENTREPOT = Path(sys.executable).parent / "entrepot"
START_DEADLINE = 30.0
NPM_TIMEOUT = 120.0
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:(\d+))")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _clean_environment() -> dict[str, str]:
    """The environment without npm or Entrepot configuration from the machine running tests."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.lower().startswith("npm_config_") and not key.startswith("ENTREPOT_")
    }


def quote_name(name: str) -> str:
    """A package name as npm puts it in a URL path: ``@scope%2fname``."""
    return urllib.parse.quote(name, safe="@")


@dataclass
class HttpResult:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass
class Server:
    """A running ``entrepot serve`` and what tests need to talk to it."""

    base_url: str
    port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    #: Every token and password a test used: none of them may appear in the log.
    secrets: list[str] = field(default_factory=list)

    @property
    def registry(self) -> str:
        """The ``main`` feed's registry URL, with its trailing slash."""
        return self.feed_url("main")

    def feed_url(self, feed: str) -> str:
        return f"{self.base_url}/npm/{feed}/"

    def remember(self, secret: str) -> str:
        self.secrets.append(secret)
        return secret

    def admin(self, *args: str, input: str | None = None) -> str:
        """Run ``entrepot --data-dir D ARGS...``; returns its stdout, fails on an error."""
        done = subprocess.run(
            [str(ENTREPOT), "--data-dir", str(self.data_dir), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            env=_clean_environment(),
            check=False,
        )
        assert done.returncode == 0, (
            f"entrepot {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
        return done.stdout

    def token(self, *options: str, user: str = "admin") -> str:
        """A new token from ``entrepot token create --user USER OPTIONS...``."""
        secret = self.admin("token", "create", "--user", user, *options).strip()
        assert secret and "\n" not in secret
        return self.remember(secret)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> HttpResult:
        """One HTTP request to ``base_url + path``; the JSON body (if any) is decoded."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, raw, got = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            status, raw, got = exc.code, exc.read(), dict(exc.headers)
        try:
            decoded: Any = json.loads(raw) if raw else None
        except ValueError:
            decoded = raw
        return HttpResult(status, decoded, got)

    def packument(self, name: str, *, feed: str = "main", token: str | None = None) -> HttpResult:
        """GET the full packument of ``name``."""
        return self.request("GET", f"/npm/{feed}/{quote_name(name)}", token=token)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def start_server(root: Path) -> Iterator[Server]:
    data_dir = root / "data"
    log_path = root / "server.log"
    env = _clean_environment()
    env["PYTHONUNBUFFERED"] = "1"
    # The most verbose log, with the access log: the secrets test then checks everything
    # the server may write, request paths included (npm logout puts its token in the path).
    env["ENTREPOT_LOG_LEVEL"] = "debug"
    env["ENTREPOT_ACCESS_LOG"] = "true"
    with log_path.open("wb") as log:
        # stdout and stderr go straight to a file: no pipe that could fill up and block it.
        process = subprocess.Popen(
            [
                str(ENTREPOT),
                "serve",
                "--data-dir",
                str(data_dir),
                "--port",
                "0",
                "--host",
                "127.0.0.1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + START_DEADLINE
        match = None
        while match is None:
            match = LISTENING.search(log_path.read_text(encoding="utf-8", errors="replace"))
            if match is not None:
                break
            if process.poll() is not None:
                pytest.fail(
                    f"entrepot serve exited with {process.returncode} before listening:\n"
                    + log_path.read_text(encoding="utf-8", errors="replace")
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"entrepot serve did not print its listening line in {START_DEADLINE} s:\n"
                    + log_path.read_text(encoding="utf-8", errors="replace")
                )
            time.sleep(0.05)
        server = Server(
            base_url=match.group(1),
            port=int(match.group(2)),
            data_dir=data_dir,
            log_path=log_path,
            process=process,
        )
        server.remember((data_dir / "initial-admin-password").read_text().strip())
        yield server
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server per test module, on a free loopback port and an empty data dir."""
    yield from start_server(tmp_path_factory.mktemp("entrepot"))


@pytest.fixture(scope="module")
def admin_token(server: Server) -> str:
    """A read-write token of the bootstrap ``admin`` user, valid on every feed."""
    return server.token()


class NpmResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Npm:
    """The real ``npm`` with its own HOME, user config and cache, pointed at one registry."""

    def __init__(self, root: Path, server: Server, registry: str) -> None:
        self.server = server
        self.registry = registry
        self.home = root / "home"
        self.cache = root / "cache"
        self.userconfig = root / "npmrc"
        self.home.mkdir(parents=True)
        self.cache.mkdir()
        self.userconfig.write_text("")

    def auth_line(self, token: str, registry: str | None = None) -> str:
        """The ``.npmrc`` line for a token: ``//host:port/npm/feed/:_authToken=T``."""
        url = registry or self.registry
        return f"{url.removeprefix('http:')}:_authToken={token}"

    def saved_config(self) -> str:
        """The user config's text; npm deletes the file when ``npm logout`` empties it."""
        return self.userconfig.read_text() if self.userconfig.exists() else ""

    def set_token(self, token: str, registry: str | None = None) -> None:
        self.userconfig.write_text(self.auth_line(token, registry) + "\n")

    def command(self, args: Sequence[str], registry: str | None = None) -> list[str]:
        return [
            "npm",
            *args,
            "--registry",
            registry or self.registry,
            "--userconfig",
            str(self.userconfig),
            "--cache",
            str(self.cache),
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "--color=false",
            "--progress=false",
            # A server error then fails at once instead of after npm's 10 s to 60 s backoff.
            "--fetch-retries=0",
        ]

    def environment(self) -> dict[str, str]:
        env = _clean_environment()
        env["HOME"] = str(self.home)
        env["NO_UPDATE_NOTIFIER"] = "1"
        return env

    def __call__(
        self, *args: str, cwd: Path | None = None, registry: str | None = None
    ) -> NpmResult:
        """Run ``npm ARGS...`` (in ``cwd``, default HOME); never raises on a failure."""
        done = subprocess.run(
            self.command(args, registry),
            cwd=cwd or self.home,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
            check=False,
        )
        return NpmResult(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, cwd: Path | None = None, registry: str | None = None) -> str:
        """Run npm and insist it succeeds; returns its stdout."""
        result = self(*args, cwd=cwd, registry=registry)
        assert result.returncode == 0, f"npm {' '.join(args)} failed:\n{result.output}"
        return result.stdout

    def login_legacy(self, username: str, password: str) -> NpmResult:
        """``npm login --auth-type=legacy``, answering its prompts on a pseudo-terminal.

        npm 11 reads the prompts with the ``read`` package, which loses the password line
        when stdin is a pipe (npm then dies with "Exit handler never called!"), so a TTY it is.
        The result has the whole terminal transcript as stdout and an empty stderr.
        """
        master, slave = pty.openpty()
        try:
            process = subprocess.Popen(
                self.command(["login", "--auth-type=legacy"]),
                cwd=self.home,
                env=self.environment(),
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
            )
        finally:
            os.close(slave)
        transcript = b""
        answered: set[str] = set()
        deadline = time.monotonic() + NPM_TIMEOUT
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([master], [], [], 0.2)
                if not ready:
                    if process.poll() is not None:
                        break
                    continue
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: every process holding the terminal has exited
                    break
                if not chunk:
                    break
                transcript += chunk
                for prompt, answer in (("Username:", username), ("Password:", password)):
                    if prompt not in answered and prompt.encode() in transcript:
                        os.write(master, answer.encode() + b"\r")
                        answered.add(prompt)
            else:
                process.kill()
                pytest.fail(f"npm login did not finish in {NPM_TIMEOUT} s:\n{transcript!r}")
            returncode = process.wait(timeout=30)
        finally:
            with contextlib.suppress(OSError):
                os.close(master)
            if process.poll() is None:
                process.kill()
                process.wait()
        text = ANSI.sub("", transcript.decode("utf-8", errors="replace"))
        return NpmResult(returncode, text, "")


NpmFactory = Callable[..., Npm]


@pytest.fixture
def npm(server: Server, tmp_path: Path) -> NpmFactory:
    """``npm(token=None, feed="main")`` gives a fresh npm client for the module's server."""
    count = 0

    def make(token: str | None = None, feed: str = "main") -> Npm:
        nonlocal count
        count += 1
        client = Npm(tmp_path / f"npm-{count}", server, server.feed_url(feed))
        if token is not None:
            client.set_token(token)
        return client

    return make


PackageFactory = Callable[..., Path]


@pytest.fixture
def make_package(tmp_path: Path) -> PackageFactory:
    """``make_package(name, version, **fields)`` writes a package folder and returns it."""
    made: list[Path] = []

    def make(name: str, version: str, **fields: Any) -> Path:
        folder = tmp_path / "packages" / f"{len(made)}-{name.replace('/', '+')}-{version}"
        made.append(folder)
        folder.mkdir(parents=True)
        manifest: dict[str, Any] = {
            "name": name,
            "version": version,
            "description": f"{name} for the end-to-end tests",
            "main": "index.js",
            "license": "MIT",
            **fields,
        }
        (folder / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (folder / "index.js").write_text(
            f"module.exports = {{ name: {json.dumps(name)}, version: {json.dumps(version)} }};\n"
        )
        (folder / "README.md").write_text(f"# {name}\n\nVersion {version}.\n")
        return folder

    return make


def assert_log_has_no_secrets(server: Server) -> None:
    """The server's log must not contain any token or password a test used."""
    log = server.log()
    assert f"listening on {server.base_url}" in log, "the log is not this server's log"
    assert len(server.secrets) > 1, "no secrets were recorded: the check would prove nothing"
    leaked = [secret[:6] + "..." for secret in server.secrets if secret in log]
    assert not leaked, f"secrets found in the server log {server.log_path}: {leaked}"
