"""Crashes: the whole server (supervisor and workers) is SIGKILLed ten times at random
moments while publishers publish, and started again each time on the same port and data.

Afterwards nothing is half there: every packument parses, every version it lists has its
tarball, which matches its integrity; ``entrepot fsck`` finds no problem; every publish the
server acknowledged (201) is present. A publish cut off by a crash is sent again: it must then
either succeed or be refused as already published, never anything else.
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
    ServerProcess,
    check_feed,
    client,
    publish,
    running,
    temp_files,
)

pytestmark = pytest.mark.resilience

KILLS = 10
PUBLISHERS = 3
#: Incompressible bytes in every tarball, so that a publish spends a while writing its blob
#: and kills land in the middle of writes too.
PADDING = 48 * 1024
ALREADY_PUBLISHED = "cannot publish over the previously published versions"


def test_kill_9_during_publishes_loses_nothing(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    server = ServerProcess(tmp_path / "server", tmp_path / "server" / "data", workers=2)
    rng = random.Random()
    names = [f"crash-pkg-{i}" for i in range(PUBLISHERS)]
    with running(server):
        token = server.token()
        acknowledged: set[tuple[str, str]] = set()
        #: Publishes cut off by a crash and refused as already published when sent again:
        #: stored without an acknowledgement, so they must be there too.
        stored_unacknowledged: set[tuple[str, str]] = set()
        #: Publishes that got no answer: refused while the server was down, or cut off by
        #: a kill in flight.
        refused: list[tuple[str, str]] = []
        cut_off: list[tuple[str, str]] = []
        failures: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def publish_loop(name: str) -> None:
            patch = 0
            retrying: str | None = None
            while not stop.is_set():
                if retrying is None:
                    patch += 1
                version = retrying or f"1.0.{patch}"
                # A new connection each time: a crash leaves pooled connections dead.
                try:
                    with client(server, token) as http:
                        response = publish(http, name, version, padding=PADDING)
                except httpx.HTTPError as exc:
                    with lock:
                        lost = refused if isinstance(exc, httpx.ConnectError) else cut_off
                        lost.append((name, version))
                    retrying = version
                    time.sleep(0.05)
                    continue
                with lock:
                    if response.status_code == 201:
                        acknowledged.add((name, version))
                    elif (
                        retrying == version
                        and response.status_code == 403
                        and ALREADY_PUBLISHED in response.text
                    ):
                        stored_unacknowledged.add((name, version))
                    else:
                        failures.append(
                            f"{name}@{version}: {response.status_code} {response.text[:300]}"
                        )
                retrying = None

        with ThreadPoolExecutor(PUBLISHERS) as pool:
            futures = [pool.submit(publish_loop, name) for name in names]
            try:
                for _ in range(KILLS):
                    time.sleep(rng.uniform(0.3, 2.0))
                    server.kill()
                    # Down for a moment: publishers get connection errors meanwhile.
                    time.sleep(rng.uniform(0, 0.3))
                    server.start()
                time.sleep(1.0)
            finally:
                stop.set()
            for future in futures:
                future.result(timeout=120)

        figures = {
            "kills": KILLS,
            "acknowledged": len(acknowledged),
            "refused_while_down": len(refused),
            "cut_off_in_flight": len(cut_off),
            "stored_unacknowledged": len(stored_unacknowledged),
            "leftover_temp_files": len(temp_files(server.data_dir / "blobs")),
        }
        for key, value in figures.items():
            record_property(key, value)
        print(f"\ncrash figures: {json.dumps(figures)}")

        assert server.starts == KILLS + 1
        assert not failures, "unexpected answers:\n" + "\n".join(failures[:5])
        assert len(acknowledged) >= KILLS, "too few publishes got through to prove anything"

        with client(server) as http:
            present = check_feed(http, names)
        for name, version in acknowledged | stored_unacknowledged:
            assert version in present[name], f"{name}@{version} was acknowledged, then lost"
        summary = server.fsck()
        total = sum(len(versions) for versions in present.values())
        assert summary == f"checked {total} versions: 0 problems"
