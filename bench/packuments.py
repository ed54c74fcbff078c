"""Side-by-side throughput of Entrepot and Verdaccio 6 (and nginx, the physical limit).

Run from the repository root::

    .venv/bin/python bench/packuments.py               # one round (about 4 minutes)
    .venv/bin/python bench/packuments.py --repeat 3 --wait-idle 20    # docs/benchmarks.md
    .venv/bin/python bench/packuments.py --duration 3 --warmup 1      # a quick run

The script installs what it needs (``wrk`` and ``nginx`` with apt-get, Verdaccio with npm into
``bench/.work/verdaccio``), generates real npm tarballs, publishes the same PUT bodies to every
server over HTTP, checks one response of every workload (status, ``Content-Encoding``, content),
then runs ``wrk`` against each server in turn and prints the requests per second, the ratios and
the resident memory of the servers. Every server it starts is stopped on exit. Only loopback
addresses are used. Working files live in ``bench/.work`` and are recreated on each run.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import gzip
import hashlib
import http.client
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
LOOPBACK = "127.0.0.1"

SMALL = "bench-small"
BIG = "bench-big"
BLOB = "bench-blob"
TARBALL_TARGET = 25 * 1024

TARGETS = {"small": 5.0, "big": 30.0}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# -- small helpers ----------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, flush=True)


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy (all CPUs), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def wait_for_idle(limit: float, threshold: float = 0.25) -> float:
    """Wait (at most ``limit`` s) until the machine is nearly idle; the busy CPU last seen."""
    deadline = time.monotonic() + limit
    while True:
        start, busy = time.monotonic(), busy_seconds()
        time.sleep(2.0)
        used = (busy_seconds() - busy) / (time.monotonic() - start)
        if used <= threshold or time.monotonic() >= deadline:
            return used
        say(f"  (waiting: other processes use {used:.2f} CPU)")


def children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class HttpResult:
    status: int
    headers: dict[str, str]
    body: bytes


def http_request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> HttpResult:
    """One request on a fresh connection; only loopback URLs are accepted."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname not in (LOOPBACK, "localhost"):
        raise ValueError(f"refusing a non-loopback URL: {url}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        data = response.read()
        return HttpResult(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()


def run(cmd: Sequence[str], cwd: Path | None = None) -> str:
    done = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"command failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


def apt_install(packages: Sequence[str]) -> bool:
    """``apt-get install`` (after one ``apt-get update``); False when it cannot be done."""
    if shutil.which("apt-get") is None:
        return False
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        done = subprocess.run([*prefix, *cmd], capture_output=True, text=True, check=False, env=env)
        if done.returncode != 0:
            say(f"  {' '.join(cmd)} failed: {done.stderr.strip()[-300:]}")
            return False
    return True


def ensure_tool(name: str, package: str, required: bool) -> str | None:
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if path is None:
        say(f"{name} is missing: installing the {package} package with apt-get")
        apt_install([package])
        path = shutil.which(name) or (
            f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
        )
    if path is None and required:
        raise SystemExit(f"{name} is needed and could not be installed")
    return path


# -- content ---------------------------------------------------------------------------------

WORDS = (
    "registry",
    "package",
    "module",
    "install",
    "version",
    "semver",
    "tarball",
    "publish",
    "dependency",
    "feed",
    "token",
    "cache",
    "stream",
    "buffer",
    "parse",
    "render",
    "request",
    "response",
    "header",
    "client",
    "server",
    "config",
    "option",
    "promise",
    "async",
    "value",
    "record",
    "index",
    "route",
    "handler",
    "plugin",
    "build",
    "bundle",
    "export",
    "import",
    "test",
    "fast",
    "small",
    "simple",
    "robust",
    "typed",
    "modern",
    "legacy",
    "stable",
    "update",
    "patch",
    "minor",
    "major",
    "release",
)
DEPENDENCIES = {
    "debug": "^4.3.4",
    "semver": "^7.6.0",
    "ms": "^2.1.3",
    "minimist": "^1.2.8",
    "chalk": "^5.3.0",
    "commander": "^12.0.0",
    "uuid": "^9.0.1",
    "picomatch": "^4.0.2",
}


@dataclass(frozen=True)
class Release:
    """One version: its package.json (as npm publishes it) and its tarball."""

    name: str
    version: str
    manifest: dict[str, Any]
    tarball: bytes

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.tgz"

    def publish_body(self) -> bytes:
        """The ``PUT /<name>`` body, as npm 11 sends it."""
        return json.dumps(
            {
                "_id": self.name,
                "name": self.name,
                "description": self.manifest.get("description", ""),
                "dist-tags": {"latest": self.version},
                "versions": {self.version: self.manifest},
                "access": None,
                "_attachments": {
                    self.filename: {
                        "content_type": "application/octet-stream",
                        "data": base64.b64encode(self.tarball).decode(),
                        "length": len(self.tarball),
                    }
                },
            }
        ).encode()


def sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + "."


def readme(rng: random.Random, name: str, version: str, size: int) -> str:
    parts = [f"# {name}\n", f"Version {version}.\n", "## Usage\n"]
    parts.append(f"```js\nconst lib = require('{name}');\nlib.run({{ fast: true }});\n```\n")
    while sum(len(p) for p in parts) < size:
        parts.append("\n".join(sentence(rng, 14) for _ in range(3)) + "\n")
    return "\n".join(parts)[:size]


def make_tarball(files: Mapping[str, bytes]) -> bytes:
    """A reproducible npm tarball: ustar entries under ``package/``, gzip with mtime 0."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(f"package/{path}")
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 499162500  # what npm pack writes (1985-10-26)
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def make_release(
    rng: random.Random, name: str, version: str, extra: Mapping[str, bytes] | None = None
) -> Release:
    deps = dict(rng.sample(sorted(DEPENDENCIES.items()), rng.randint(2, 4)))
    text = readme(rng, name, version, 2048)
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "description": sentence(rng, 10),
        "main": "index.js",
        "scripts": {"test": "node --test"},
        "repository": {"type": "git", "url": f"git+https://git.example.com/bench/{name}.git"},
        "keywords": rng.sample(WORDS, 5),
        "author": "Bench Author <bench@example.com>",
        "license": "MIT",
        "bugs": {"url": f"https://git.example.com/bench/{name}/issues"},
        "homepage": f"https://git.example.com/bench/{name}#readme",
        "dependencies": deps,
        "devDependencies": {"typescript": "^5.4.0", "eslint": "^9.0.0"},
        "engines": {"node": ">=18"},
    }
    package_json = json.dumps(manifest, indent=2).encode() + b"\n"
    files = {
        "package.json": package_json,
        "index.js": f"'use strict';\nmodule.exports = {{ version: '{version}' }};\n".encode(),
        "README.md": text.encode(),
        **(extra or {}),
    }
    tarball = make_tarball(files)
    manifest.update(
        {
            "readme": text,
            "readmeFilename": "README.md",
            "gitHead": hashlib.sha1(
                f"{name}@{version}".encode(), usedforsecurity=False
            ).hexdigest(),
            "_id": f"{name}@{version}",
            "_nodeVersion": "20.20.2",
            "_npmVersion": "11.19.1",
            "dist": {
                "integrity": "sha512-"
                + base64.b64encode(hashlib.sha512(tarball).digest()).decode(),
                "shasum": hashlib.sha1(tarball, usedforsecurity=False).hexdigest(),
                "tarball": f"http://{LOOPBACK}/{name}/-/{name}-{version}.tgz",
                "fileCount": len(files),
                "unpackedSize": sum(len(v) for v in files.values()),
            },
        }
    )
    return Release(name, version, manifest, tarball)


def versions(count: int) -> Iterator[str]:
    for i in range(count):
        yield f"{1 + i // 100}.{(i // 10) % 10}.{i % 10}"


def make_blob(noise_bytes: int) -> Release:
    rng = random.Random(7)
    noise = base64.b64encode(rng.randbytes(noise_bytes)).decode()
    payload = f"module.exports = '{noise}';\n".encode()
    return make_release(rng, BLOB, "1.0.0", {"data.js": payload})


def make_content(big_versions: int) -> dict[str, list[Release]]:
    rng = random.Random(20240601)
    small = [make_release(rng, SMALL, v) for v in ("1.0.0", "1.1.0", "2.0.0")]
    big = [make_release(rng, BIG, v) for v in versions(big_versions)]
    # Base64 of random bytes has about 6 bits of entropy per character, so gzip cannot shrink
    # it below the size of the random bytes: size them so the tarball is close to the target.
    size = TARBALL_TARGET
    blob = make_blob(size)
    for _ in range(2):
        size += TARBALL_TARGET - len(blob.tarball)
        blob = make_blob(size)
    return {SMALL: small, BIG: big, BLOB: [blob]}


# -- processes -------------------------------------------------------------------------------


@dataclass
class Server:
    """A server process in its own process group, stopped by :meth:`stop`."""

    label: str
    process: subprocess.Popen[bytes]
    log: Path
    base: str = ""  # the registry URL, ending with "/"
    token: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # what a benchmark notes about it

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _group(self) -> list[Path]:
        """The /proc entries of the processes in the server's process group."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[2] == str(self.process.pid):
                found.append(entry)
        return found

    def cpu_seconds(self) -> float:
        """User + system CPU time of the processes in the server's process group."""
        ticks = 0
        for entry in self._group():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
            except (OSError, ValueError, IndexError):
                continue
        return ticks / CLOCK_TICKS

    def rss_kib(self) -> dict[int, int]:
        """VmRSS (KiB) of every process in the server's process group."""
        found: dict[int, int] = {}
        for entry in self._group():
            try:
                for line in (entry / "status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        found[int(entry.name)] = int(line.split()[1])
            except (OSError, ValueError, IndexError):
                continue
        return found


def start(label: str, cmd: Sequence[str], log: Path, cwd: Path | None = None) -> Server:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return Server(label, process, log)


def wait_until(server: Server, ready: str, timeout: float = 60.0) -> None:
    """Wait until GET ``ready`` answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.label} exited:\n{server.log.read_text()[-3000:]}")
        try:
            if http_request(ready, timeout=2.0).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{server.label} did not answer {ready} in {timeout:.0f} s")


def entrepot_command() -> str:
    local = Path(sys.executable).parent / "entrepot"
    found = str(local) if local.exists() else shutil.which("entrepot")
    if found is None:
        raise SystemExit("the entrepot command is not installed: run ./run first")
    return found


def start_entrepot(label: str, data: Path, workers: int) -> Server:
    cmd = [entrepot_command(), "serve", "--data-dir", str(data), "--host", LOOPBACK, "--port", "0"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    server = start(label, cmd, WORK / "logs" / f"{label.replace(' ', '-')}.log")
    deadline = time.monotonic() + 60
    pattern = re.compile(rb"listening on (http://\S+)")
    while time.monotonic() < deadline:
        match = pattern.search(server.log.read_bytes())
        if match:
            origin = match.group(1).decode().rstrip("/")
            server.base = f"{origin}/npm/main/"
            wait_until(server, f"{origin}/-/health")
            return server
        if server.process.poll() is not None:
            break
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{label} did not start:\n{server.log.read_text()[-3000:]}")


def ensure_verdaccio() -> tuple[Path, str]:
    """Install Verdaccio 6 with npm (the registry npm is configured with) if needed."""
    home = WORK / "verdaccio"
    entry = home / "node_modules" / "verdaccio" / "bin" / "verdaccio"
    if not entry.exists():
        say("installing Verdaccio 6 with npm into bench/.work/verdaccio ...")
        home.mkdir(parents=True, exist_ok=True)
        # verdaccio-audit asks for node-fetch by a dist-tag ("cjs") that some registry
        # mirrors do not carry; node-fetch 2 is what that tag points to.
        (home / "package.json").write_text(
            json.dumps(
                {
                    "name": "entrepot-bench-verdaccio",
                    "private": True,
                    "overrides": {"node-fetch": "^2.7.0"},
                }
            )
        )
        run(
            ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "verdaccio@6"],
            cwd=home,
        )
    meta = json.loads((home / "node_modules" / "verdaccio" / "package.json").read_text())
    return entry, str(meta["version"])


def start_verdaccio(entry: Path, legacy_tokens: bool) -> Server:
    """Verdaccio on a free loopback port, local packages only.

    With ``legacy_tokens`` (Verdaccio's default) an API token is the user's password,
    AES-encrypted, and every request that carries it runs the htpasswd check (bcrypt) again;
    otherwise the tokens are JWTs (``security.api.jwt``), verified with an HMAC per request.
    """
    storage = WORK / "verdaccio-storage"
    config = WORK / "verdaccio-config.yaml"
    (WORK / "verdaccio-plugins").mkdir(parents=True, exist_ok=True)
    security = (
        ""
        if legacy_tokens
        else "security:\n  api:\n    legacy: false\n    jwt:\n      sign:\n        expiresIn: 29d\n"
    )
    rules = "    access: $all\n    publish: $authenticated\n    unpublish: $authenticated\n"
    config.write_text(
        f"storage: {storage}\n"
        f"plugins: {WORK / 'verdaccio-plugins'}\n"
        "web:\n  enable: false\n"
        "auth:\n  htpasswd:\n"
        f"    file: {storage / 'htpasswd'}\n"
        "    max_users: 1000\n"
        "# no uplinks: Verdaccio serves its local packages only\n"
        f"packages:\n  '@*/*':\n{rules}  '**':\n{rules}"
        "max_body_size: 100mb\n"
        "server:\n  keepAliveTimeout: 60\n"
        "log: { type: stdout, format: pretty, level: warn }\n"
        f"{security}"
    )
    port = free_port()
    server = start(
        "Verdaccio",
        ["node", str(entry), "--config", str(config), "--listen", f"{LOOPBACK}:{port}"],
        WORK / "logs" / "verdaccio.log",
        cwd=WORK,
    )
    server.base = f"http://{LOOPBACK}:{port}/"
    wait_until(server, f"{server.base}-/ping")
    return server


def verdaccio_token(server: Server) -> str:
    """Register a user (htpasswd) the way ``npm adduser`` does and keep its token."""
    name = "bench"
    body = {
        "_id": f"org.couchdb.user:{name}",
        "name": name,
        "password": "bench-password-1",
        "email": "bench@example.com",
        "type": "user",
        "roles": [],
        "date": datetime.now(UTC).isoformat(),
    }
    result = http_request(
        f"{server.base}-/user/org.couchdb.user:{name}",
        "PUT",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    if result.status != 201:
        raise RuntimeError(f"Verdaccio adduser: {result.status} {result.body[:300]!r}")
    token: str = json.loads(result.body)["token"]
    return token


def start_nginx(nginx: str, files: Mapping[str, bytes]) -> Server:
    """nginx serving the exact bytes (pre-gzipped packuments) from disk: the physical limit."""
    root = WORK / "nginx"
    www = root / "www"
    for path, data in files.items():
        target = www / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "".join(
        f"  {kind}_temp_path {root / 'tmp' / sub};\n"
        for kind, sub in (
            ("client_body", "body"),
            ("proxy", "proxy"),
            ("fastcgi", "fastcgi"),
            ("uwsgi", "uwsgi"),
            ("scgi", "scgi"),
        )
    )
    conf = root / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\ndaemon off;\npid {root / 'nginx.pid'};\n"
        f"error_log {root / 'error.log'} warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n"
        "  keepalive_timeout 65;\n  keepalive_requests 100000000;\n"
        f"{temp}"
        "  types { }\n"
        "  server {\n"
        f"    listen {LOOPBACK}:{port};\n"
        f"    root {www};\n"
        "    location /pkg/ { default_type application/json;"
        " add_header Content-Encoding gzip; }\n"
        "    location /tgz/ { default_type application/octet-stream; }\n"
        "  }\n}\n"
    )
    server = start("nginx", [nginx, "-p", str(root), "-c", str(conf)], root / "nginx.log")
    server.base = f"http://{LOOPBACK}:{port}/"
    wait_until(server, f"{server.base}tgz/{BLOB}.tgz")
    return server


# -- publishing and checks -------------------------------------------------------------------


def publish(server: Server, content: Mapping[str, list[Release]]) -> float:
    started = time.monotonic()
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {server.token}",
        "npm-command": "publish",
    }
    for name, releases in content.items():
        for i, release in enumerate(releases, 1):
            result = http_request(f"{server.base}{name}", "PUT", release.publish_body(), headers)
            if result.status not in (200, 201):
                raise RuntimeError(
                    f"{server.label}: publishing {name}@{release.version} gave "
                    f"{result.status}: {result.body[:300]!r}"
                )
            if i % 50 == 0 or i == len(releases):
                elapsed = time.monotonic() - started
                say(f"  {server.label}: {name} {i}/{len(releases)} published ({elapsed:.1f} s)")
    return time.monotonic() - started


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    path: str  # under the registry URL
    nginx_path: str
    headers: dict[str, str]
    gzip: bool
    expect_versions: int | None = None  # a packument with this many versions
    expect_bytes: bytes | None = None  # a tarball with exactly these bytes


@dataclass(frozen=True)
class Sample:
    encoding: str  # Content-Encoding, "" for none
    wire_bytes: int
    plain_bytes: int
    body: bytes


def check(url: str, workload: Workload, headers: Mapping[str, str]) -> Sample:
    """Fetch once and verify that this is the content wanted, not an error page."""
    result = http_request(url, headers=headers)
    if result.status != 200:
        raise RuntimeError(f"GET {url}: status {result.status}: {result.body[:300]!r}")
    encoding = result.headers.get("content-encoding", "")
    if workload.gzip and encoding != "gzip":
        raise RuntimeError(f"GET {url}: wanted Content-Encoding gzip, got {encoding!r}")
    plain = gzip.decompress(result.body) if encoding == "gzip" else result.body
    if workload.expect_versions is not None:
        doc = json.loads(plain)
        count = len(doc.get("versions", {}))
        if count != workload.expect_versions:
            raise RuntimeError(f"GET {url}: {count} versions, wanted {workload.expect_versions}")
        if not all("readme" not in v or v["readme"] == "" for v in doc["versions"].values()):
            say(f"  note: {url} keeps a readme in every version")
    if workload.expect_bytes is not None and plain != workload.expect_bytes:
        raise RuntimeError(f"GET {url}: the tarball differs from the one published")
    return Sample(encoding, len(result.body), len(plain), result.body)


# -- wrk -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    rps: float
    requests: int
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    transfer: str
    server_cores: float = float("nan")  # CPU used by the server's processes, in cores
    other_cores: float = float("nan")  # CPU used by everything but the server and wrk

    @property
    def per_cpu(self) -> float:
        """Requests per CPU-second of the server: little moved by other load on the machine."""
        return self.rps / self.server_cores if self.server_cores > 0 else float("nan")

    @property
    def clean(self) -> bool:
        return self.non_2xx == 0 and self.socket_errors == 0 and self.requests > 0


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        return float("nan")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[match.group(2)]
    return float(match.group(1)) * scale


def parse_wrk(output: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    p50 = re.search(r"^\s*50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s*99%\s+(\S+)", output, re.MULTILINE)
    transfer = re.search(r"Transfer/sec:\s+(\S+)", output)
    if rps is None or total is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    return WrkResult(
        rps=float(rps.group(1)),
        requests=int(total.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
        p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
        p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
        transfer=transfer.group(1) if transfer else "?",
    )


def wrk(
    url: str,
    headers: Mapping[str, str],
    seconds: float,
    threads: int,
    connections: int,
    log: Path | None = None,
) -> WrkResult:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    cmd += ["--timeout", "10s", "--latency"]
    for key, value in headers.items():
        cmd += ["-H", f"{key}: {value}"]
    output = run([*cmd, url])
    if log is not None:
        with log.open("a") as out:
            out.write(f"$ {' '.join(cmd)} {url}\n{output}\n")
    return parse_wrk(output)


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Row:
    workload: Workload
    runs: dict[str, list[WrkResult]] = field(default_factory=dict)
    sizes: dict[str, Sample] = field(default_factory=dict)

    @property
    def results(self) -> dict[str, WrkResult]:
        """The median run of each server (by requests per second)."""
        return {
            label: sorted(runs, key=lambda r: r.rps)[(len(runs) - 1) // 2]
            for label, runs in self.runs.items()
            if runs
        }

    def per_cpu(self, label: str) -> float | None:
        """The median over rounds of requests per server CPU-second."""
        values = sorted(run.per_cpu for run in self.runs.get(label, []) if run.server_cores > 0)
        return values[(len(values) - 1) // 2] if values else None


def machine() -> dict[str, str]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": mem,
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "node": run(["node", "--version"]).strip(),
        "wrk": _wrk_version(),
        "entrepot": _revision(),
    }


def _revision() -> str:
    """The commit of the code measured (read-only git commands), "?" outside a clone."""
    repo = HERE.parent
    head = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if head.returncode != 0:
        return "?"
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
        check=False,
    )
    return head.stdout.strip() + (" + local changes in src/" if dirty.stdout.strip() else "")


def _wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).splitlines()
    return first[0].split(" [")[0] if first else "?"


def fmt_rps(row: Row, label: str) -> str:
    """The median requests/s; "(!)" if any round saw errors or non-2xx answers."""
    runs = row.runs.get(label)
    if not runs:
        return "-"
    text = f"{row.results[label].rps:,.0f}"
    return text if all(run.clean for run in runs) else f"{text} (!)"


def ratio(a: WrkResult | None, b: WrkResult | None) -> float | None:
    if a is None or b is None or b.rps <= 0:
        return None
    return a.rps / b.rps


def cpu_ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


def table(rows: Sequence[Row], labels: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    head = ["Workload", "Entrepot req/s", "Verdaccio req/s", "Entrepot / Verdaccio"]
    head += ["Entrepot / Verdaccio per CPU-s"]
    if "Entrepot x2" in labels:
        head += ["Entrepot 2 workers req/s"]
    if "nginx" in labels:
        head += ["nginx req/s", "Entrepot / nginx"]
    body: list[list[str]] = []
    for row in rows:
        r = row.results
        line = [
            row.workload.title,
            fmt_rps(row, "Entrepot"),
            fmt_rps(row, "Verdaccio"),
            fmt_ratio(ratio(r.get("Entrepot"), r.get("Verdaccio"))),
            fmt_ratio(cpu_ratio(row.per_cpu("Entrepot"), row.per_cpu("Verdaccio"))),
        ]
        if "Entrepot x2" in labels:
            line += [fmt_rps(row, "Entrepot x2")]
        if "nginx" in labels:
            line += [fmt_rps(row, "nginx"), fmt_ratio(ratio(r.get("Entrepot"), r.get("nginx")))]
        body.append(line)
    return head, body


def render_text(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(c[i]) for c in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def render_markdown(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per workload")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per workload")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds over all cells; the median is reported"
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each cell, wait up to this long for other processes to leave the CPUs",
    )
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--versions", type=int, default=300, help="versions of the big package")
    parser.add_argument("--no-nginx", action="store_true", help="skip the nginx baseline")
    parser.add_argument("--no-workers2", action="store_true", help="skip Entrepot --workers 2")
    parser.add_argument(
        "--anonymous", action="store_true", help="send no Authorization header on reads"
    )
    parser.add_argument(
        "--verdaccio-legacy-tokens",
        action="store_true",
        help="keep Verdaccio's default legacy tokens (a bcrypt check on every request) "
        "instead of JWT tokens",
    )
    return parser.parse_args(argv)


def make_workloads(content: Mapping[str, list[Release]]) -> list[Workload]:
    json_headers = {"Accept": "application/json", "Accept-Encoding": "gzip"}
    blob = content[BLOB][0]
    return [
        Workload(
            "small",
            f"{SMALL} packument ({len(content[SMALL])} versions), full, gzip",
            SMALL,
            "pkg/small",
            json_headers,
            gzip=True,
            expect_versions=len(content[SMALL]),
        ),
        Workload(
            "big",
            f"{BIG} packument ({len(content[BIG])} versions), full, gzip",
            BIG,
            "pkg/big",
            json_headers,
            gzip=True,
            expect_versions=len(content[BIG]),
        ),
        Workload(
            "tarball",
            f"{BLOB} tarball ({len(blob.tarball) / 1024:.0f} KB)",
            f"{BLOB}/-/{blob.filename}",
            f"tgz/{BLOB}.tgz",
            {"Accept-Encoding": "gzip"},
            gzip=False,
            expect_bytes=blob.tarball,
        ),
    ]


@dataclass
class Outcome:
    rows: list[Row]
    labels: list[str]
    memory: dict[str, dict[int, int]]
    publish_seconds: dict[str, float]
    load_before: str


def request_headers(workload: Workload, server: Server, anonymous: bool) -> dict[str, str]:
    headers = dict(workload.headers)
    if not anonymous and server.token:
        headers["Authorization"] = f"Bearer {server.token}"
    return headers


def measure(
    args: argparse.Namespace,
    content: Mapping[str, list[Release]],
    verdaccio_entry: Path,
    nginx: str | None,
    servers: list[Server],
) -> Outcome:
    """Start the servers (appended to ``servers`` for the caller to stop), publish, run wrk."""
    data = WORK / "entrepot"
    entrepot = start_entrepot("Entrepot", data, workers=1)
    servers.append(entrepot)
    created = run(
        [entrepot_command(), "--data-dir", str(data), "token", "create", "--user", "admin"]
    )
    entrepot.token = created.strip().splitlines()[-1]
    verdaccio = start_verdaccio(verdaccio_entry, args.verdaccio_legacy_tokens)
    servers.append(verdaccio)
    verdaccio.token = verdaccio_token(verdaccio)
    publish_seconds = {}
    for server in (entrepot, verdaccio):
        say(f"publishing to {server.label} ({server.base}) ...")
        publish_seconds[server.label] = publish(server, content)
    measured = [entrepot]
    if not args.no_workers2:
        twin = start_entrepot("Entrepot x2", data, workers=2)
        twin.token = entrepot.token
        servers.append(twin)
        measured.append(twin)
    measured.append(verdaccio)

    rows = [Row(w) for w in make_workloads(content)]
    for row in rows:
        for server in measured:
            headers = request_headers(row.workload, server, args.anonymous)
            row.sizes[server.label] = check(server.base + row.workload.path, row.workload, headers)
    if nginx is not None:
        ngx = start_nginx(nginx, {r.workload.nginx_path: r.sizes["Entrepot"].body for r in rows})
        servers.append(ngx)
        measured.append(ngx)
        for row in rows:
            row.sizes["nginx"] = check(ngx.base + row.workload.nginx_path, row.workload, {})

    say("\nresponse sizes (bytes on the wire / decoded, content-encoding):")
    for row in rows:
        sizes = ", ".join(
            f"{label} {s.wire_bytes:,}/{s.plain_bytes:,} {s.encoding or 'identity'}"
            for label, s in row.sizes.items()
        )
        say(f"  {row.workload.key}: {sizes}")

    load_before = Path("/proc/loadavg").read_text().split(" ", 3)[:3]
    say(
        f"\nwrk: {args.threads} threads, {args.connections} connections, "
        f"{args.warmup:g} s warm-up + {args.duration:g} s per workload and server "
        f"(load average before: {' '.join(load_before)})"
    )
    log = WORK / "logs" / "wrk.log"
    for attempt in range(1, args.repeat + 1):
        if args.repeat > 1:
            say(f"round {attempt}/{args.repeat}")
        for row in rows:
            for server in measured:
                nginx_side = server.label == "nginx"
                headers = request_headers(row.workload, server, args.anonymous or nginx_side)
                url = server.base + (row.workload.nginx_path if nginx_side else row.workload.path)
                if args.wait_idle > 0:
                    wait_for_idle(args.wait_idle)
                if args.warmup > 0:
                    wrk(url, headers, args.warmup, args.threads, args.connections)
                before = (
                    time.monotonic(),
                    busy_seconds(),
                    server.cpu_seconds(),
                    children_seconds(),
                )
                result = wrk(url, headers, args.duration, args.threads, args.connections, log)
                after = (time.monotonic(), busy_seconds(), server.cpu_seconds(), children_seconds())
                wall, busy, own, tool = (b - a for a, b in zip(before, after, strict=True))
                result = dataclasses.replace(
                    result, server_cores=own / wall, other_cores=max(0.0, busy - own - tool) / wall
                )
                row.runs.setdefault(server.label, []).append(result)
                flag = ""
                if not result.clean:
                    flag = f"  (!) {result.non_2xx} non-2xx, {result.socket_errors} socket errors"
                say(
                    f"  {row.workload.key:8} {server.label:12} {result.rps:>10,.0f} req/s  "
                    f"p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms  "
                    f"{result.transfer}/s  server {result.server_cores:.2f} CPU "
                    f"({result.per_cpu:,.0f} req/CPU-s), "
                    f"others {result.other_cores:.2f} CPU{flag}"
                )
    return Outcome(
        rows=rows,
        labels=[s.label for s in measured],
        memory={s.label: s.rss_kib() for s in measured},
        publish_seconds=publish_seconds,
        load_before=" ".join(load_before),
    )


def report(
    args: argparse.Namespace, info: Mapping[str, str], verdaccio_version: str, out: Outcome
) -> None:
    head, body = table(out.rows, out.labels)
    verdicts: list[str] = []
    for row in out.rows:
        target = TARGETS.get(row.workload.key)
        if target is None:
            continue
        value = ratio(row.results.get("Entrepot"), row.results.get("Verdaccio"))
        clean = all(run.clean for runs in row.runs.values() for run in runs)
        met = value is not None and value >= target and clean
        verdicts.append(
            f"- {row.workload.title}: target >= {target:g}x Verdaccio, "
            f"measured {fmt_ratio(value)}: {'MET' if met else 'NOT MET'}"
        )
    mem_lines = []
    for label, procs in out.memory.items():
        total = sum(procs.values()) / 1024
        parts = " + ".join(f"{kib / 1024:.0f}" for kib in procs.values())
        detail = f" ({len(procs)} processes: {parts})" if len(procs) > 1 else ""
        mem_lines.append(f"- {label}: {total:.0f} MiB{detail}")
    if args.repeat > 1:
        say("\nall rounds: req/s (requests per server CPU-second, CPU used by others):")
        for row in out.rows:
            for label, runs in row.runs.items():
                spread = ", ".join(
                    f"{run.rps:,.0f} ({run.per_cpu:,.0f}/CPU-s, others {run.other_cores:.2f})"
                    for run in runs
                )
                say(f"  {row.workload.key:8} {label:12} {spread}")
    say("\n" + render_text(head, body))
    say("\nTargets:\n" + "\n".join(verdicts))
    say("\nResident memory after the run (VmRSS):\n" + "\n".join(mem_lines))

    others = [run.other_cores for row in out.rows for runs in row.runs.values() for run in runs]
    noise = (
        f"Other processes on the machine used {sum(others) / len(others):.2f} CPU on average "
        f"(at most {max(others):.2f}) during the measured cells."
        if others
        else ""
    )
    say(noise)
    auth = "anonymous reads" if args.anonymous else "reads with a Bearer token"
    tokens = "legacy (default)" if args.verdaccio_legacy_tokens else "JWT"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    markdown = "\n".join(
        [
            f"Run {stamp} of Entrepot {info['entrepot']}: {info['nproc']} CPUs "
            f"({info['cpu']}), Python {info['python']}, "
            f"node {info['node']}, Verdaccio {verdaccio_version} ({tokens} tokens), "
            f"{info['wrk']}; wrk -t{args.threads} -c{args.connections}, {args.warmup:g} s "
            f"warm-up + {args.duration:g} s per cell"
            + (f", median of {args.repeat} rounds" if args.repeat > 1 else "")
            + f", {auth}; load average before the "
            f"measurements: {out.load_before}.",
            "",
            render_markdown(head, body),
            "",
            *verdicts,
            "",
            "Resident memory (VmRSS) after the run:",
            "",
            *mem_lines,
            "",
            "Publishing time (sequential PUTs): "
            + ", ".join(f"{k} {v:.1f} s" for k, v in out.publish_seconds.items())
            + ".",
            "",
            noise,
        ]
    )
    say("\nMarkdown:\n\n" + markdown)
    (WORK / "results.md").write_text(markdown + "\n")
    results = {
        row.workload.key: {
            label: {
                "rps": r.rps,
                "rps_all_rounds": [run.rps for run in row.runs[label]],
                "requests": r.requests,
                "non_2xx": r.non_2xx,
                "socket_errors": r.socket_errors,
                "p50_ms": r.p50_ms,
                "p99_ms": r.p99_ms,
                "server_cores": r.server_cores,
                "requests_per_cpu_second": row.per_cpu(label),
                "other_cores_all_rounds": [run.other_cores for run in row.runs[label]],
                "wire_bytes": row.sizes[label].wire_bytes,
                "plain_bytes": row.sizes[label].plain_bytes,
                "content_encoding": row.sizes[label].encoding,
            }
            for label, r in row.results.items()
        }
        for row in out.rows
    }
    document = {
        "date": stamp,
        "machine": dict(info),
        "verdaccio": verdaccio_version,
        "args": vars(args),
        "load_before": out.load_before,
        "results": results,
        "rss_kib": out.memory,
        "publish_seconds": out.publish_seconds,
    }
    (WORK / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    say(f"\n(written to {WORK / 'results.md'} and {WORK / 'results.json'})")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    ensure_tool("wrk", "wrk", required=True)
    nginx = None if args.no_nginx else ensure_tool("nginx", "nginx", required=False)
    if not args.no_nginx and nginx is None:
        say("nginx is not available: the nginx baseline is skipped")
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise SystemExit("node and npm are needed for Verdaccio")
    entry, verdaccio_version = ensure_verdaccio()
    for stale in ("entrepot", "verdaccio-storage", "verdaccio-plugins", "nginx", "logs"):
        shutil.rmtree(WORK / stale, ignore_errors=True)
    info = machine()
    say(f"machine: {info['nproc']} CPUs, {info['cpu']}, {info['memory']}")
    say(f"Verdaccio {verdaccio_version}, node {info['node']}, {info['wrk']}")
    say(f"Entrepot at commit {info['entrepot']}")
    say("generating content ...")
    content = make_content(args.versions)
    say(
        f"  {SMALL}: {len(content[SMALL])} versions, {BIG}: {len(content[BIG])} versions, "
        f"{BLOB}: tarball of {len(content[BLOB][0].tarball):,} bytes"
    )
    servers: list[Server] = []
    try:
        outcome = measure(args, content, entry, nginx, servers)
    finally:
        for server in reversed(servers):
            server.stop()
    report(args, info, verdaccio_version, outcome)
    return 0


if __name__ == "__main__":
    sys.exit(main())
