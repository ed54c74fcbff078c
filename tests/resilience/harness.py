"""Helpers for the resilience tests: a real ``entrepot serve`` that can be killed and started
again on the same port and data, raw publishes, end-to-end checks of what a feed serves, the
server's memory, and the real npm CLI with a folder of its own.

Everything is bounded in time: every subprocess and HTTP call has a timeout, every wait a
deadline.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api.conftest import npm_tarball, publish_body

ENTREPOT = Path(sys.executable).parent / "entrepot"
START_DEADLINE = 30.0
LISTENING = re.compile(rb"listening on (http://127\.0\.0\.1:(\d+))")
#: What every test client waits for an answer at most; a request that gets no answer in
#: this long counts as failed.
CLIENT_TIMEOUT = 30.0


def clean_environment() -> dict[str, str]:
    """The environment without npm, AWS or Entrepot configuration from the machine."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.lower().startswith("npm_config_") and not key.startswith(("ENTREPOT_", "AWS_"))
    }


def quote_name(name: str) -> str:
    return name.replace("/", "%2f")


@dataclass
class ServerProcess:
    """``entrepot serve`` in a process group of its own (workers included), so that a test
    can SIGKILL the whole server at once and start it again on the same port and data."""

    root: Path
    data_dir: Path
    workers: int = 1
    #: ``ENTREPOT_*`` and ``AWS_*`` variables for the server and the admin commands.
    env: Mapping[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def registry(self) -> str:
        return f"{self.base_url}/npm/main/"

    def environment(self) -> dict[str, str]:
        env = clean_environment()
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        return env

    def start(self) -> None:
        """Start the server (on the port it had before, if any); returns once it listens."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.root.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        args = [str(ENTREPOT), "serve", "--data-dir", str(self.data_dir)]
        args += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
            )
        self.starts += 1
        deadline = time.monotonic() + START_DEADLINE
        while True:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                match = LISTENING.search(log.read())
            if match is not None:
                self.port = int(match.group(2))
                break
            if self.process.poll() is not None:
                pytest.fail(f"entrepot serve exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"entrepot serve did not listen within {START_DEADLINE} s")
            time.sleep(0.05)
        # With several workers the line comes from the supervisor: wait until one answers.
        wait_until(self.answers, 30, "the server to answer /-/ping")

    def answers(self) -> bool:
        try:
            response = httpx.get(f"{self.registry}-/ping", timeout=5, trust_env=False)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def kill(self) -> None:
        """SIGKILL the supervisor and every worker at once: a crash, no clean-up."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._wait_group_gone()

    def stop(self) -> None:
        """A graceful stop (SIGTERM), then SIGKILL if it does not exit in 10 s."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._wait_group_gone()

    def _wait_group_gone(self) -> None:
        """Workers are reaped by their parent, which is gone: wait until none is left."""
        assert self.process is not None
        deadline = time.monotonic() + 10
        while self.group_pids() and time.monotonic() < deadline:
            time.sleep(0.05)

    def group_pids(self) -> list[int]:
        """The live (not zombie) processes of the server's process group."""
        if self.process is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command may hold spaces or parentheses: fields follow the last ")".
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == self.process.pid and fields[0] != "Z":
                found.append(int(entry.name))
        return found

    def rss_bytes(self) -> int:
        """The resident memory of the supervisor and all its workers together."""
        total = 0
        for pid in self.group_pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server's live processes have used so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.group_pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks
        return total

    def log(self) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return text[-6000:]

    def run_admin(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``entrepot --data-dir D ARGS...`` with the server's settings; never raises."""
        return subprocess.run(
            [str(ENTREPOT), "--data-dir", str(self.data_dir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def admin(self, *args: str) -> str:
        done = self.run_admin(*args)
        assert done.returncode == 0, f"entrepot {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def token(self) -> str:
        secret = self.admin("token", "create", "--user", "admin").strip()
        assert secret and "\n" not in secret
        return secret

    def fsck(self) -> str:
        """``entrepot fsck``; fails the test unless it reports 0 problems. Its summary line."""
        done = self.run_admin("fsck", timeout=300)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"entrepot fsck found problems:\n{output[-4000:]}"
        summary = re.search(r"checked (\d+) versions: 0 problems", output)
        assert summary is not None, f"unexpected fsck output:\n{output[-2000:]}"
        return summary.group(0)


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(check: Any, timeout: float, what: str) -> None:
    """Poll ``check()`` every 0.1 s until it is true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def client(server: ServerProcess, token: str | None = None) -> httpx.Client:
    """An HTTP client for the server (no proxies from the environment)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        base_url=server.base_url, headers=headers, timeout=CLIENT_TIMEOUT, trust_env=False
    )


def tarball(
    name: str, version: str, *, padding: int = 0, dependencies: Mapping[str, str] | None = None
) -> bytes:
    """A real npm tarball; ``padding`` adds that many incompressible bytes."""
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "description": f"{name} for the resilience tests",
        "main": "index.js",
        "license": "MIT",
    }
    if dependencies:
        manifest["dependencies"] = dict(dependencies)
    files = {"index.js": f"module.exports = {json.dumps(f'{name}@{version}')};\n".encode()}
    if padding:
        files["padding.bin"] = os.urandom(padding)
    return npm_tarball(manifest, files)


def publish(
    http: httpx.Client,
    name: str,
    version: str,
    *,
    padding: int = 0,
    dependencies: Mapping[str, str] | None = None,
    feed: str = "main",
) -> httpx.Response:
    """PUT a new version as npm publish does (raises httpx errors: no answer)."""
    data = tarball(name, version, padding=padding, dependencies=dependencies)
    extra = {"dependencies": dict(dependencies)} if dependencies else None
    body = publish_body(name, version, data, extra=extra)
    return http.put(f"/npm/{feed}/{quote_name(name)}", json=body)


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def check_feed(
    http: httpx.Client,
    names: Sequence[str],
    feed: str = "main",
    *,
    sample: random.Random | None = None,
    per_package: int = 0,
) -> dict[str, set[str]]:
    """Every packument parses, and every version it lists has a tarball that downloads and
    matches its ``dist.integrity`` (with ``sample``: the tagged versions and ``per_package``
    others picked at random). Returns the versions of each package."""
    found: dict[str, set[str]] = {}
    for name in names:
        response = http.get(f"/npm/{feed}/{quote_name(name)}")
        assert response.status_code == 200, f"{name}: {response.status_code} {response.text}"
        doc = response.json()
        assert doc["name"] == name
        versions = doc["versions"]
        tagged = set(doc["dist-tags"].values())
        assert tagged <= set(versions), f"{name}: a tag points nowhere"
        checked = sorted(versions)
        if sample is not None and len(checked) > per_package:
            checked = sorted(tagged | set(sample.sample(checked, per_package)))
        for version in checked:
            manifest = versions[version]
            got = http.get(urllib.parse.urlsplit(manifest["dist"]["tarball"]).path)
            assert got.status_code == 200, f"{name}@{version}: tarball {got.status_code}"
            assert integrity(got.content) == manifest["dist"]["integrity"], (
                f"{name}@{version}: the tarball does not match its integrity"
            )
        found[name] = set(versions)
    return found


def temp_files(folder: Path) -> list[Path]:
    """Files a blob store writes first and renames into place (``.tmp-*``)."""
    return [p for p in folder.rglob(".tmp-*") if p.is_file()]


@dataclass
class NpmClient:
    """The real npm CLI with its own HOME, user config, cache and project folder."""

    root: Path
    registry: str
    token: str | None = None

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.project.mkdir(parents=True, exist_ok=True)
        line = ""
        if self.token:
            line = f"{self.registry.removeprefix('http:')}:_authToken={self.token}\n"
        self.userconfig.write_text(line)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def project(self) -> Path:
        return self.root / "project"

    @property
    def userconfig(self) -> Path:
        return self.root / "npmrc"

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = clean_environment()
        env["HOME"] = str(self.home)
        env["NO_UPDATE_NOTIFIER"] = "1"
        command = [
            "npm",
            *args,
            "--registry",
            self.registry,
            "--userconfig",
            str(self.userconfig),
            "--cache",
            str(self.cache),
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "--color=false",
            "--progress=false",
            # Any server error fails the command at once: no retry hides it.
            "--fetch-retries=0",
        ]
        try:
            return subprocess.run(
                command,
                cwd=self.project,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(command, -1, "", f"timed out after {exc.timeout} s")

    def clean_install(self) -> subprocess.CompletedProcess[str]:
        """``npm install`` from nothing: no node_modules, no lockfile, an empty cache."""
        for path in (self.project / "node_modules", self.cache):
            shutil.rmtree(path, ignore_errors=True)
        (self.project / "package-lock.json").unlink(missing_ok=True)
        return self.run("install")
