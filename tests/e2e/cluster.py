"""Helpers for scale-out tests: a throwaway PostgreSQL database, a SeaweedFS S3 server, a
TOML config naming both, and ``entrepot serve --config X`` processes sharing them.

Without PostgreSQL on 127.0.0.1:5432 or the ``weed`` binary, the tests that need them are
skipped with the reason, or fail when ``ENTREPOT_REQUIRE_SERVICES=1`` (as CI sets it).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import pytest
from psycopg import sql
from tests.e2e.conftest import ENTREPOT, LISTENING, START_DEADLINE, HttpResult, Server
from tests.s3server import REGION, S3Server, S3ServerUnavailable, seaweedfs

REQUIRE_ENV = "ENTREPOT_REQUIRE_SERVICES"
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
BUCKET = "entrepot-e2e"


def unavailable(reason: str) -> NoReturn:
    """Skip the test for a missing service, or fail when services are required."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} (and {REQUIRE_ENV}=1)")
    pytest.skip(reason)


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new empty database on the local PostgreSQL for the ``with`` block; its URL."""
    name = f"entrepot_test_{secrets.token_hex(8)}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextlib.contextmanager
def s3_server(folder: Path) -> Iterator[S3Server]:
    """SeaweedFS on loopback (``tests/s3server.py``) for the ``with`` block."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        context = seaweedfs(folder)
        server = context.__enter__()
    except S3ServerUnavailable as exc:
        unavailable(f"SeaweedFS unavailable: {exc}")
    try:
        yield server
    finally:
        context.__exit__(None, None, None)


def blob_url(s3: S3Server, prefix: str | None = None) -> str:
    """An ``s3://`` URL under a prefix of its own in the test bucket."""
    prefix = prefix or secrets.token_hex(6)
    return f"s3://{BUCKET}/{prefix}?endpoint={s3.endpoint}&region={s3.region or REGION}"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_config(
    path: Path,
    settings: Mapping[str, Any],
    credentials: Mapping[str, str] | None = None,
) -> Path:
    """A TOML config file: top-level settings, then a ``[credentials]`` table if given."""
    lines = [f"{key} = {toml_value(value)}" for key, value in settings.items()]
    if credentials:
        lines += ["", "[credentials]"]
        lines += [f"{key} = {toml_value(value)}" for key, value in credentials.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The machine's environment without npm, Entrepot or AWS settings, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.lower().startswith("npm_config_") and not key.startswith(("ENTREPOT_", "AWS_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class Launched:
    """An ``entrepot serve`` process that may not be listening yet."""

    process: subprocess.Popen[bytes]
    log_path: Path
    data_dir: Path


def launch(
    root: Path,
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    data_dir: Path,
    command: Sequence[str] | None = None,
) -> Launched:
    """Start ``entrepot serve ARGS... --port 0 --host 127.0.0.1`` (or ``command`` as it is),
    its output in a log."""
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / f"server-{secrets.token_hex(3)}.log"
    if command is None:
        command = [str(ENTREPOT), "serve", *args, "--port", "0", "--host", "127.0.0.1"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
        )
    return Launched(process, log_path, data_dir)


def wait_listening(launched: Launched) -> Server:
    """Wait for the ``listening on`` line; the test fails with the log if it never comes."""
    deadline = time.monotonic() + START_DEADLINE
    while True:
        text = launched.log_path.read_text(encoding="utf-8", errors="replace")
        match = LISTENING.search(text)
        if match is not None:
            break
        if launched.process.poll() is not None:
            pytest.fail(
                f"entrepot serve exited with {launched.process.returncode} before listening:\n"
                + text
            )
        if time.monotonic() > deadline:
            stop(launched.process)
            pytest.fail(f"entrepot serve did not listen within {START_DEADLINE} s:\n{text}")
        time.sleep(0.05)
    server = Server(
        base_url=match.group(1),
        port=int(match.group(2)),
        data_dir=launched.data_dir,
        log_path=launched.log_path,
        process=launched.process,
    )
    wait_healthy(server.base_url)
    return server


def wait_healthy(base_url: str) -> None:
    """Wait until ``/-/health`` answers 200 (the stores are opened at start-up)."""
    deadline = time.monotonic() + START_DEADLINE
    last: HttpResult | None = None
    while time.monotonic() < deadline:
        last = request(base_url, "GET", "/-/health")
        if last.status == 200:
            return
        time.sleep(0.1)
    pytest.fail(f"{base_url}/-/health did not answer 200 in time: {last}")


def caught_up(*base_urls: str) -> int:
    """Wait until every server reports the highest change counter any of them reports; it.

    A process learns of another's writes through PostgreSQL's NOTIFY, about a millisecond
    after the commit: a test that reads from B right after writing through A waits here."""
    target = max(request(url, "GET", "/-/health").body["seq"] for url in base_urls)
    deadline = time.monotonic() + 10
    while True:
        seen = [request(url, "GET", "/-/health").body["seq"] for url in base_urls]
        if min(seen) >= target:
            return int(target)
        if time.monotonic() > deadline:
            pytest.fail(f"the servers did not catch up with seq {target}: {seen}")
        time.sleep(0.01)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the process does not exit in 10 s."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def entrepot(
    config: Path,
    *args: str,
    env: Mapping[str, str],
    input: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``entrepot --config CONFIG ARGS...``; with ``check``, the test fails on an error."""
    done = subprocess.run(
        [str(ENTREPOT), "--config", str(config), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(env),
        check=False,
    )
    if check:
        assert done.returncode == 0, (
            f"entrepot {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}"
        )
    return done


def request(
    base_url: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 60,
    context: ssl.SSLContext | None = None,
) -> HttpResult:
    """One HTTP request (no proxy, no redirects followed; ``context`` for https); a JSON body
    is sent and a JSON answer decoded."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base_url + path, data=data, method=method)
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context), _NoRedirect
    )
    try:
        with opener.open(req, timeout=timeout) as response:
            status, raw, got = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, raw, got = exc.code, exc.read(), dict(exc.headers)
    try:
        decoded: Any = json.loads(raw) if raw else None
    except ValueError:
        decoded = raw
    return HttpResult(status, decoded, got)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tool(name: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if found is None:
        unavailable(f"{name} is not installed (apt-get install {name})")
    return found


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (what Let's Encrypt would provide)."""
    cert, key = folder / "fullchain.pem", folder / "privkey.pem"
    subprocess.run(
        [
            tool("openssl"),
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
