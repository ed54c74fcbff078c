"""Load: 20 real ``npm install`` loops and 5 publishers against one ``entrepot serve
--workers 2`` for two minutes. No command may fail, every acknowledged publish must be there
afterwards, and ``entrepot fsck`` must find nothing wrong.

The publishers add versions to the very packages the installers install (within their
ranges), so installs keep resolving to versions published a moment before: a packument that
lists a version before its tarball is readable would fail an install.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tests.resilience.harness import (
    NpmClient,
    ServerProcess,
    check_feed,
    client,
    publish,
    running,
)

pytestmark = pytest.mark.resilience

DURATION = 120.0
INSTALLERS = 20
PUBLISHERS = 5
#: A publisher's pause between two publishes, as a CI job's would be: without it five
#: publishers saturate both cores by themselves and the packuments grow to thousands of
#: versions in two minutes.
THINK_TIME = 0.1
#: The tree an install pulls: three direct dependencies, two of them with one of their own.
DEPENDENCIES: dict[str, dict[str, str]] = {
    "load-leaf-d": {},
    "load-leaf-e": {},
    "load-top-a": {"load-leaf-d": "^1.0.0"},
    "load-top-b": {"load-leaf-e": "^1.0.0"},
    "load-top-c": {},
}
PROJECT = {
    "name": "load-app",
    "version": "1.0.0",
    "private": True,
    "dependencies": {"load-top-a": "^1.0.0", "load-top-b": "^1.0.0", "load-top-c": "^1.0.0"},
}


def test_installs_and_publishes_under_load(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    server = ServerProcess(tmp_path / "server", tmp_path / "server" / "data", workers=2)
    with running(server):
        token = server.token()
        with client(server, token) as http:
            for name, dependencies in DEPENDENCIES.items():
                response = publish(http, name, "1.0.0", dependencies=dependencies)
                assert response.status_code == 201, response.text

        failures: list[str] = []
        acknowledged: list[tuple[str, str]] = []
        installs: list[float] = []
        lock = threading.Lock()
        started = time.monotonic()
        deadline = started + DURATION

        def install_loop(index: int) -> None:
            npm = NpmClient(tmp_path / f"npm-{index}", server.registry)
            (npm.project / "package.json").write_text(json.dumps(PROJECT))
            while time.monotonic() < deadline:
                began = time.monotonic()
                done = npm.clean_install()
                took = time.monotonic() - began
                modules = npm.project / "node_modules"
                missing = [n for n in DEPENDENCIES if not (modules / n / "package.json").is_file()]
                with lock:
                    if done.returncode != 0:
                        output = (done.stdout + done.stderr)[-800:]
                        failures.append(f"npm install #{index}: {output}")
                    elif missing:
                        failures.append(f"npm install #{index} succeeded without {missing}")
                    else:
                        installs.append(took)

        def publish_loop(index: int) -> None:
            name = list(DEPENDENCIES)[index % len(DEPENDENCIES)]
            patch = 0
            with client(server, token) as http:
                while time.monotonic() < deadline:
                    patch += 1
                    version = f"1.{index}.{patch}"
                    try:
                        response = publish(http, name, version, dependencies=DEPENDENCIES[name])
                    except httpx.HTTPError as exc:
                        with lock:
                            failures.append(f"publish {name}@{version}: no answer ({exc!r})")
                        time.sleep(THINK_TIME)
                        continue
                    with lock:
                        if response.status_code == 201:
                            acknowledged.append((name, version))
                        else:
                            failures.append(
                                f"publish {name}@{version}: {response.status_code} "
                                f"{response.text[:300]}"
                            )
                    time.sleep(THINK_TIME)

        with ThreadPoolExecutor(INSTALLERS + PUBLISHERS) as pool:
            futures = [pool.submit(install_loop, i) for i in range(INSTALLERS)]
            futures += [pool.submit(publish_loop, i) for i in range(PUBLISHERS)]
            for future in futures:
                future.result(timeout=DURATION + 180)
        elapsed = (time.monotonic() - started) / 60
        rss = server.rss_bytes()
        cpu = server.cpu_seconds()

        installs_per_minute = len(installs) / elapsed
        publishes_per_minute = len(acknowledged) / elapsed
        figures = {
            "installs": len(installs),
            "installs_per_minute": round(installs_per_minute, 1),
            "install_seconds_median": round(sorted(installs)[len(installs) // 2], 2)
            if installs
            else None,
            "publishes": len(acknowledged),
            "publishes_per_minute": round(publishes_per_minute, 1),
            "server_rss_mb": round(rss / 2**20),
            "server_cpu_seconds": round(cpu),
        }
        for key, value in figures.items():
            record_property(key, value)
        print(f"\nload figures: {json.dumps(figures)}")

        assert not failures, f"{len(failures)} failed commands, first ones:\n" + "\n".join(
            failures[:5]
        )
        # Both kinds of client got work done: the figures above measure something.
        assert len(installs) >= INSTALLERS and len(acknowledged) >= PUBLISHERS

        with client(server) as http:
            for name in DEPENDENCIES:
                doc = http.get(f"/npm/main/{name}").json()
                wanted = {v for n, v in acknowledged if n == name}
                lost = wanted - set(doc["versions"])
                assert not lost, f"acknowledged publishes of {name} are missing: {sorted(lost)}"
            # Every tarball of the newest versions, and of a sample of the others, downloads
            # and matches its integrity (fsck checks all of them on the server's side).
            check_feed(http, list(DEPENDENCIES), sample=random.Random(7), per_package=40)
        summary = server.fsck()
        assert f"checked {len(acknowledged) + len(DEPENDENCIES)} versions" in summary
