"""Helpers for the end-to-end authentication tests with real clients.

- the ``.npmrc`` credential forms npm reads (``_authToken``, ``_auth``, ``username`` +
  ``_password``), keyed to one registry URL;
- npm's web sign-in, followed the way a browser does (GET the page, POST the form);
- a pseudo-terminal for npm's interactive prompts (``npm profile enable-2fa``);
- yarn 4, pnpm 10 and bun, installed once per session with npm from whatever registry the
  machine's npm is configured with (the public npm registry, usually).

A plain module, imported as ``from tests.e2e.clients import ...``: the fixtures stay in the
test module that uses them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pty
import re
import select
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

CLIENT_TIMEOUT = 180.0
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LOGIN_URL = re.compile(r"(http://127\.0\.0\.1:\d+/-/web/login/[A-Za-z0-9_-]+)")
_CLIENT_VARIABLES = ("npm_config_", "yarn_", "pnpm_", "bun_", "entrepot_")


def client_environment(home: Path) -> dict[str, str]:
    """The environment for a client with its own HOME and no configuration from the
    machine running the tests (npm, yarn, pnpm, bun or Entrepot variables)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.lower().startswith(_CLIENT_VARIABLES) and not key.startswith("XDG_")
    }
    env["HOME"] = str(home)
    env["NO_UPDATE_NOTIFIER"] = "1"
    env["DO_NOT_TRACK"] = "1"
    # yarn 4 turns on immutable installs when it detects CI (CI=true and the like): a new
    # project without a lockfile would then be refused. Pin the default of a workstation.
    env["YARN_ENABLE_IMMUTABLE_INSTALLS"] = "false"
    return env


def nerf_dart(registry: str) -> str:
    """The key prefix npm matches credentials by: ``//host:port/path/``."""
    return registry.removeprefix("http:").removeprefix("https:")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


#: The ``.npmrc`` credential forms, by the name the tests use.
NPMRC_FORMS = ("authToken", "auth-api-token", "auth-user-password", "username-password-token")


def npmrc_credentials(
    form: str, registry: str, *, user: str, email: str, password: str, token: str
) -> tuple[str, list[str]]:
    """The ``.npmrc`` lines for one credential form, and the encoded secrets they hold."""
    key = nerf_dart(registry)
    if form == "authToken":
        return f"{key}:_authToken={token}\n", []
    if form == "auth-api-token":
        encoded = b64(f"api:{token}")
        return f"{key}:_auth={encoded}\n", [encoded]
    if form == "auth-user-password":
        encoded = b64(f"{user}:{password}")
        return f"{key}:_auth={encoded}\n", [encoded]
    if form == "username-password-token":
        encoded = b64(token)
        lines = f"{key}:username={user}\n{key}:_password={encoded}\n{key}:email={email}\n"
        return lines, [encoded]
    raise ValueError(f"unknown .npmrc form {form!r}")


class Run(NamedTuple):
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run(
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    timeout: float = CLIENT_TIMEOUT,
) -> Run:
    """Run a client to the end; never raises on a failure."""
    done = subprocess.run(
        list(command),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def without_registry_flag(command: Sequence[str]) -> list[str]:
    """An npm command line without ``--registry URL``: npm then takes the registry from
    its config files, as it does in a project with its own ``.npmrc``."""
    out: list[str] = []
    skip = False
    for part in command:
        if skip:
            skip = False
        elif part == "--registry":
            skip = True
        else:
            out.append(part)
    return out


def write_project(folder: Path, dependencies: Mapping[str, str]) -> Path:
    """A consumer project that depends on these packages."""
    folder.mkdir(parents=True)
    manifest = {"name": folder.name, "version": "1.0.0", "private": True}
    (folder / "package.json").write_text(
        json.dumps({**manifest, "dependencies": dict(dependencies)}, indent=2) + "\n"
    )
    return folder


def installed_version(project: Path, name: str) -> str | None:
    """The version of ``name`` in the project's node_modules, or None."""
    manifest = project / "node_modules" / name / "package.json"
    if not manifest.exists():
        return None
    version = json.loads(manifest.read_text())["version"]
    assert isinstance(version, str)
    return version


# -- the browser side of npm's web sign-in ---------------------------------------------------


class Page(NamedTuple):
    status: int
    html: str
    headers: dict[str, str]


def browse(url: str, form: Mapping[str, str] | None = None) -> Page:
    """GET a page, or POST a form to it (``application/x-www-form-urlencoded``)."""
    data = None if form is None else urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=data, method="GET" if form is None else "POST")
    request.add_header("Accept", "text/html")
    if data is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw, headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, raw, headers = exc.code, exc.read(), dict(exc.headers)
    return Page(status, raw.decode("utf-8", errors="replace"), headers)


class WebLogin:
    """A running ``npm login`` (web flow): it prints the sign-in URL and polls the server."""

    def __init__(self, command: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> None:
        self.process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.printed = b""

    def login_url(self, timeout: float = 60.0) -> str:
        """Wait for npm to print where to sign in."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = LOGIN_URL.search(self.printed.decode("utf-8", errors="replace"))
            if found is not None:
                return found.group(1)
            ready, _, _ = select.select([self.process.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(self.process.stdout.fileno(), 4096)
                if not chunk:
                    break
                self.printed += chunk
        self.stop()
        raise AssertionError(f"npm login printed no sign-in URL:\n{self.printed!r}")

    def finish(self, timeout: float = 60.0) -> Run:
        """Wait for npm to see the sign-in and exit."""
        try:
            stdout, stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"npm login did not finish in {timeout} s") from None
        out = (self.printed + stdout).decode("utf-8", errors="replace")
        return Run(self.process.returncode, out, stderr.decode("utf-8", errors="replace"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


# -- a terminal for npm's prompts ------------------------------------------------------------

Answer = Callable[[re.Match[str]], str]


def run_in_terminal(
    command: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    prompts: Sequence[tuple[str, Answer]],
    timeout: float = CLIENT_TIMEOUT,
) -> Run:
    """Run a command on a pseudo-terminal, answering each prompt (a regex over the
    transcript, ANSI codes removed) once, in order. npm reads prompts with the ``read``
    package, which needs a TTY. The transcript is the result's stdout."""
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=dict(env),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
    finally:
        os.close(slave)
    transcript = b""
    answered = 0
    searched_from = 0
    deadline = time.monotonic() + timeout
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
            text = ANSI.sub("", transcript.decode("utf-8", errors="replace"))
            if answered < len(prompts):
                pattern, answer = prompts[answered]
                found = re.compile(pattern).search(text, searched_from)
                if found is not None:
                    os.write(master, answer(found).encode() + b"\r")
                    answered += 1
                    searched_from = found.end()
        else:
            process.kill()
            raise AssertionError(f"{command[:3]} did not finish in {timeout} s:\n{transcript!r}")
        returncode = process.wait(timeout=30)
    finally:
        with contextlib.suppress(OSError):
            os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait()
    return Run(returncode, ANSI.sub("", transcript.decode("utf-8", errors="replace")), "")


# -- yarn 4, pnpm 10, bun --------------------------------------------------------------------


@dataclass(frozen=True)
class JsClients:
    """The package managers installed under ``prefix`` by :func:`install_js_clients`."""

    prefix: Path

    @property
    def yarn(self) -> list[str]:
        return ["node", str(self.prefix / "node_modules/@yarnpkg/cli-dist/bin/yarn.js")]

    @property
    def pnpm(self) -> list[str]:
        return [str(self.prefix / "node_modules/.bin/pnpm")]

    @property
    def bun(self) -> list[str]:
        return [str(self.prefix / "node_modules/.bin/bun")]


def install_js_clients(prefix: Path) -> JsClients:
    """``npm install --prefix PREFIX @yarnpkg/cli-dist@4 pnpm@10 bun`` from the registry the
    machine's npm uses (bun's binary comes in an optional dependency package)."""
    environment = dict(os.environ)
    registry = subprocess.run(
        ["npm", "config", "get", "registry"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert registry.startswith(("http://", "https://")), registry
    done = subprocess.run(
        [
            "npm",
            "install",
            "--prefix",
            str(prefix),
            "--registry",
            registry,
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "@yarnpkg/cli-dist@4",
            "pnpm@10",
            "bun",
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, (
        f"installing yarn, pnpm and bun failed:\n{done.stdout}{done.stderr}"
    )
    return JsClients(prefix)


def yarnrc(registry: str, **settings: str | bool) -> str:
    """A ``.yarnrc.yml`` for yarn 4 against one registry over plain HTTP on loopback.

    ``npmMinimalAgeGate: 0``: recent yarn 4 releases quarantine versions published in the
    last day by default, and every package here is seconds old."""
    values: dict[str, object] = {
        "npmRegistryServer": registry,
        "unsafeHttpWhitelist": ["127.0.0.1"],
        "nodeLinker": "node-modules",
        "enableGlobalCache": False,
        "enableTelemetry": False,
        "npmMinimalAgeGate": 0,
        **settings,
    }
    # JSON scalars and flow lists are valid YAML.
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items())
