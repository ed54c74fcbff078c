"""Failing dependencies: a server on a private PostgreSQL and a private SeaweedFS, under light
load, loses one of them for a few seconds.

While PostgreSQL is down every request fails fast with 503, ``Retry-After`` and a clear
``{"error"}``, and ``/-/health`` says 503. While S3 is down, packuments (metadata) still
read, publishes and tarball reads fail with a clear 503. When the dependency is back, the
same server process recovers by itself, and no acknowledged write is lost.
"""

from __future__ import annotations

import functools
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from tests.resilience.harness import (
    ServerProcess,
    check_feed,
    client,
    integrity,
    publish,
    running,
    wait_until,
)
from tests.resilience.services import (
    PrivatePostgres,
    RestartableSeaweed,
    private_postgres,
    restartable_seaweed,
)

pytestmark = pytest.mark.resilience

#: How long a client in front of the registry (a load balancer's health check, a CI job's
#: HTTP client) waits for an answer during an outage: the server must answer within it,
#: not leave requests hanging on a dependency that is not there.
PROBE_TIMEOUT = 8.0
#: How long the dependency stays down.
OUTAGE = 4.0
RECOVERY_DEADLINE = 20.0
PADDING = 4096


@dataclass
class Stack:
    postgres: PrivatePostgres
    seaweed: RestartableSeaweed
    server: ServerProcess
    token: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("dependencies")
    with private_postgres() as postgres, restartable_seaweed() as seaweed:
        env = {
            "ENTREPOT_DATABASE_URL": postgres.url,
            "ENTREPOT_BLOB_URL": f"s3://entrepot-resilience?endpoint={seaweed.server.endpoint}",
            **seaweed.server.credentials,
        }
        server = ServerProcess(root / "server", root / "server" / "data", workers=2, env=env)
        with running(server):
            yield Stack(postgres, seaweed, server, server.token())


@dataclass
class LightLoad:
    """A publish and a few reads every few tenths of a second, in a thread, recording what
    was acknowledged and every answer that was neither a success nor a clear 503."""

    server: ServerProcess
    token: str
    name: str
    acknowledged: list[str] = field(default_factory=list)
    unavailable: int = 0
    wrong: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> LightLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=120)
        assert not self.thread.is_alive()

    def run(self) -> None:
        rng = random.Random()
        patch = 0
        with client(self.server, self.token) as http:
            while not self.stop.is_set():
                patch += 1
                version = f"2.0.{patch}"
                response = self.send(
                    f"publish {version}",
                    functools.partial(publish, http, self.name, version, padding=PADDING),
                )
                if response is not None and response.status_code == 201:
                    self.acknowledged.append(version)
                self.send("packument", functools.partial(http.get, f"/npm/main/{self.name}"))
                if self.acknowledged:
                    old = rng.choice(self.acknowledged)
                    path = f"/npm/main/{self.name}/-/{self.name}-{old}.tgz"
                    self.send(f"tarball {old}", functools.partial(http.get, path))
                self.stop.wait(0.3)

    def send(self, what: str, request: Callable[[], httpx.Response]) -> httpx.Response | None:
        try:
            response = request()
        except httpx.HTTPError as exc:
            self.wrong.append(f"{what}: no answer ({exc!r})")
            return None
        if not response.is_success:
            if is_clear_503(response):
                self.unavailable += 1
            else:
                self.wrong.append(f"{what}: {response.status_code} {response.text[:200]}")
        return response


def is_clear_503(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return (
        response.status_code == 503
        and isinstance(body, dict)
        and isinstance(body.get("error"), str)
        and bool(body["error"])
    )


def report(
    record: Callable[[str, object], None],
    outage: str,
    answers: list[tuple[str, httpx.Response]],
    recovered_after: float,
) -> None:
    """Record how long the answers took during the outage, and the time to recover."""
    figures: dict[str, object] = {"recovered_after_s": round(recovered_after, 2)}
    for what in sorted({what for what, _ in answers}):
        took = [r.elapsed.total_seconds() for w, r in answers if w == what]
        figures[f"{what}_slowest_s"] = round(max(took), 2)
        figures[f"{what}_answers"] = len(took)
    for key, value in figures.items():
        record(f"{outage}_{key}", value)
    print(f"\n{outage} outage figures: {json.dumps(figures)}")


def healthy(server: ServerProcess) -> bool:
    with client(server) as http:
        try:
            return http.get("/-/health").status_code == 200
        except httpx.HTTPError:
            return False


def publishes(stack: Stack, name: str, version: str) -> bool:
    with client(stack.server, stack.token) as http:
        try:
            return publish(http, name, version).status_code == 201
        except httpx.HTTPError:
            return False


def test_postgres_outage_fails_fast_and_recovers(
    stack: Stack, record_property: Callable[[str, object], None]
) -> None:
    server = stack.server
    wait_until(lambda: healthy(server), RECOVERY_DEADLINE, "a healthy server")
    name = "outage-pg"
    with client(server, stack.token) as http:
        assert publish(http, name, "1.0.0").status_code == 201
    probe = httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=PROBE_TIMEOUT,
        trust_env=False,
    )
    with LightLoad(server, stack.token, name) as load, probe:
        time.sleep(1.5)
        stack.postgres.stop_immediately()
        down_since = time.monotonic()
        answers: list[tuple[str, httpx.Response]] = []
        try:
            while time.monotonic() - down_since < OUTAGE:
                answers.append(("health", probe.get("/-/health")))
                answers.append(("packument", probe.get(f"/npm/main/{name}")))
                answers.append(("tarball", probe.get(f"/npm/main/{name}/-/{name}-1.0.0.tgz")))
                answers.append(("publish", publish(probe, name, f"1.1.{len(answers)}")))
        except httpx.TimeoutException as exc:
            pytest.fail(f"a request hung for {PROBE_TIMEOUT} s while PostgreSQL was down: {exc!r}")
        finally:
            stack.postgres.start()
        back = time.monotonic()
        for what, response in answers:
            if what == "health":
                assert response.status_code == 503, response.text
                assert response.json()["status"] == "unavailable"
            else:
                assert is_clear_503(response), f"{what}: {response.status_code} {response.text}"
                assert response.headers.get("retry-after", "").isdigit()

        # The same server process recovers by itself once PostgreSQL is back.
        wait_until(lambda: healthy(server), RECOVERY_DEADLINE, "/-/health to say 200")
        wait_until(lambda: publishes(stack, name, "3.0.0"), RECOVERY_DEADLINE, "a publish to work")
        report(record_property, "postgres", answers, time.monotonic() - back)
        time.sleep(1.0)
    assert not load.wrong, "answers other than success or a clear 503:\n" + "\n".join(
        load.wrong[:5]
    )
    assert load.unavailable > 0, "the light load never saw the outage"
    with client(server) as http:
        present = check_feed(http, [name])[name]
    lost = set(load.acknowledged) - present
    assert not lost, f"acknowledged publishes lost across the outage: {sorted(lost)}"
    assert {"1.0.0", "3.0.0"} <= present
    server.fsck()


def test_s3_outage_keeps_metadata_reads_and_recovers(
    stack: Stack, record_property: Callable[[str, object], None]
) -> None:
    server = stack.server
    wait_until(lambda: healthy(server), RECOVERY_DEADLINE, "a healthy server")
    name = "outage-s3"
    with client(server, stack.token) as http:
        first = publish(http, name, "1.0.0")
        assert first.status_code == 201, first.text
        before = http.get(f"/npm/main/{name}/-/{name}-1.0.0.tgz")
        assert before.status_code == 200
        # Published, never read: no worker holds it in memory, so only S3 has its bytes.
        unread = publish(http, name, "1.0.1")
        assert unread.status_code == 201, unread.text
    probe = httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {stack.token}"},
        timeout=PROBE_TIMEOUT,
        trust_env=False,
    )
    with LightLoad(server, stack.token, name) as load, probe:
        time.sleep(1.5)
        stack.seaweed.kill()
        down_since = time.monotonic()
        answers: list[tuple[str, httpx.Response]] = []
        try:
            while time.monotonic() - down_since < OUTAGE:
                answers.append(("packument", probe.get(f"/npm/main/{name}")))
                answers.append(("tarball", probe.get(f"/npm/main/{name}/-/{name}-1.0.0.tgz")))
                answers.append(("unread", probe.get(f"/npm/main/{name}/-/{name}-1.0.1.tgz")))
                answers.append(("publish", publish(probe, name, f"1.1.{len(answers)}")))
        except httpx.TimeoutException as exc:
            pytest.fail(f"a request hung for {PROBE_TIMEOUT} s while S3 was down: {exc!r}")
        finally:
            stack.seaweed.start()
        back = time.monotonic()
        for what, response in answers:
            if what == "packument":
                # The metadata is in PostgreSQL: reading it needs no tarball.
                assert response.status_code == 200, response.text
                assert response.json()["name"] == name
            elif what == "tarball" and response.status_code == 200:
                # A worker that served it before keeps small tarballs in memory by content
                # hash (immutable): it may answer from there, with the very same bytes.
                assert response.content == before.content
            else:
                assert is_clear_503(response), f"{what}: {response.status_code} {response.text}"
        assert any(what == "unread" for what, _ in answers)

        wait_until(lambda: publishes(stack, name, "3.0.0"), RECOVERY_DEADLINE, "a publish to work")
        report(record_property, "s3", answers, time.monotonic() - back)
        time.sleep(1.0)
    assert not load.wrong, "answers other than success or a clear 503:\n" + "\n".join(
        load.wrong[:5]
    )
    assert load.unavailable > 0, "the light load never saw the outage"
    with client(server) as http:
        after = http.get(f"/npm/main/{name}/-/{name}-1.0.0.tgz")
        assert after.status_code == 200 and integrity(after.content) == integrity(before.content)
        present = check_feed(http, [name])[name]
    lost = set(load.acknowledged) - present
    assert not lost, f"acknowledged publishes lost across the outage: {sorted(lost)}"
    assert {"1.0.0", "3.0.0"} <= present
    server.fsck()
