"""Scale-out end to end: two real ``entrepot serve --config X`` processes sharing one
PostgreSQL database and one S3 bucket (SeaweedFS), driven by the real npm CLI and by
concurrent raw HTTP publishes.

Both servers of the module start at the same moment on an empty database (as two systemd
units would); tests use distinct package names. Needs PostgreSQL on 127.0.0.1:5432 and the
``weed`` binary: without them the module is skipped, unless ``ENTREPOT_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import functools
import hashlib
import json
import re
import subprocess
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests.api.conftest import npm_tarball, publish_body
from tests.e2e.cluster import (
    blob_url,
    caught_up,
    closed_port,
    entrepot,
    environment,
    launch,
    postgres_database,
    request,
    s3_server,
    stop,
    wait_listening,
    write_config,
)
from tests.e2e.conftest import (
    ENTREPOT,
    HttpResult,
    Npm,
    PackageFactory,
    Server,
    quote_name,
    start_server,
)
from tests.e2e.upstream import ScriptedUpstream
from tests.s3server import S3Server

pytestmark = pytest.mark.e2e

PUBLISH_CONFLICT = "cannot publish over the previously published versions"
T = TypeVar("T")


@dataclass
class Services:
    database_url: str
    s3: S3Server


@dataclass
class Cluster:
    """Servers A and B on one config (PostgreSQL + S3, S3 credentials from the environment)."""

    root: Path
    services: Services
    config: Path
    env: dict[str, str]
    a: Server
    b: Server
    token: str

    @property
    def servers(self) -> tuple[Server, Server]:
        return self.a, self.b

    def cli(self, *args: str, input: str | None = None) -> str:
        """``entrepot --config X ARGS...`` with the servers' environment; its stdout."""
        return entrepot(self.config, *args, env=self.env, input=input).stdout

    def caught_up(self) -> None:
        """Wait until both servers have heard of every write (NOTIFY, about 1 ms)."""
        caught_up(self.a.base_url, self.b.base_url)

    def start(self) -> Server:
        data_dir = self.root / "data"
        return wait_listening(
            launch(self.root, ["--config", str(self.config)], self.env, data_dir=data_dir)
        )


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """A fresh PostgreSQL database and a SeaweedFS S3 server for the module."""
    folder = tmp_path_factory.mktemp("seaweedfs")
    with postgres_database() as url, s3_server(folder) as s3:
        yield Services(url, s3)


@pytest.fixture(scope="module")
def cluster(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cluster")
    env = environment(services.s3.credentials)
    config = write_config(
        root / "entrepot.toml",
        {
            "data_dir": str(root / "data"),
            "database_url": services.database_url,
            "blob_url": blob_url(services.s3, "scale-out"),
        },
    )
    # Both at once on the empty database: each races to create the schema, feed and admin.
    launched = [launch(root, ["--config", str(config)], env, data_dir=root / "data")]
    launched.append(launch(root, ["--config", str(config)], env, data_dir=root / "data"))
    made: Cluster | None = None
    try:
        a, b = (wait_listening(x) for x in launched)
        made = Cluster(root, services, config, env, a, b, token="")
        made.token = made.cli("token", "create", "--user", "admin").strip()
        yield made
    finally:
        for x in launched:
            stop(x.process)
        if made is not None:  # a server restarted by a test
            for server in made.servers:
                stop(server.process)


def npm_client(root: Path, server: Server, token: str | None = None) -> Npm:
    """A real npm with its own HOME, config and (empty) cache, pointed at a server."""
    client = Npm(root, server, server.registry)
    if token is not None:
        client.set_token(token)
    return client


def put_publish(server: Server, token: str, body: dict[str, Any]) -> HttpResult:
    return request(
        server.base_url, "PUT", f"/npm/main/{quote_name(body['name'])}", body, token=token
    )


def all_at_once(jobs: Sequence[Callable[[], T]]) -> list[T]:
    """Run the jobs in threads, released together by a barrier; their results in order."""
    barrier = threading.Barrier(len(jobs))

    def run(job: Callable[[], T]) -> T:
        barrier.wait(timeout=60)
        return job()

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(run, jobs))


def same_document(doc: Any, server: Server, other: Server) -> Any:
    """``doc`` (from ``server``) with ``server``'s URLs turned into ``other``'s."""
    return json.loads(json.dumps(doc).replace(server.base_url, other.base_url))


def semver_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def consumer(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "package.json").write_text(
        json.dumps({"name": "consumer", "version": "0.0.0", "private": True})
    )
    return folder


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


# -- the tests --------------------------------------------------------------------------------


def test_both_servers_are_healthy_on_one_store(cluster: Cluster) -> None:
    answers = [request(s.base_url, "GET", "/-/health") for s in cluster.servers]
    assert [a.status for a in answers] == [200, 200]
    assert all(a.body["status"] == "ok" for a in answers)
    # Started at once on an empty database, they set up exactly one feed and one admin.
    assert cluster.cli("feed", "list").splitlines() == ["main\tpublic\t0 packages"]
    assert cluster.cli("user", "list").splitlines() == ["admin\tadmin@localhost\tadmin"]
    password = (cluster.root / "data" / "initial-admin-password").read_text().strip()
    basic = base64.b64encode(f"admin:{password}".encode()).decode()
    for server in cluster.servers:
        who = request(
            server.base_url,
            "GET",
            "/npm/main/-/whoami",
            headers={"Authorization": f"Basic {basic}"},
        )
        assert (who.status, who.body) == (200, {"username": "admin"})


def test_publish_on_a_install_from_b_at_once(
    cluster: Cluster, make_package: PackageFactory, tmp_path: Path
) -> None:
    publisher = npm_client(tmp_path / "npm-a", cluster.a, cluster.token)
    out = publisher.ok("publish", cwd=make_package("@scale/first", "1.0.0"))
    assert "+ @scale/first@1.0.0" in out

    installer = npm_client(tmp_path / "npm-b", cluster.b, cluster.token)
    project = consumer(tmp_path / "consumer")
    installer.ok("install", "@scale/first@1.0.0", cwd=project)
    manifest = json.loads((project / "node_modules/@scale/first/package.json").read_text())
    assert (manifest["name"], manifest["version"]) == ("@scale/first", "1.0.0")
    lock = json.loads((project / "package-lock.json").read_text())
    resolved = lock["packages"]["node_modules/@scale/first"]["resolved"]
    assert resolved.startswith(cluster.b.registry), resolved


def test_50_versions_published_at_once_over_both_servers(cluster: Cluster) -> None:
    name = "scale-many"
    versions = [f"1.{i // 10}.{i % 10}" for i in range(50)]
    bodies = [publish_body(name, v) for v in versions]
    jobs = [
        functools.partial(put_publish, cluster.servers[i % 2], cluster.token, body)
        for i, body in enumerate(bodies)
    ]
    results = all_at_once(jobs)
    assert [r.status for r in results] == [201] * 50, [r.body for r in results if r.status != 201]

    cluster.caught_up()
    docs = [s.packument(name) for s in cluster.servers]
    assert [d.status for d in docs] == [200, 200]
    for doc in docs:
        assert set(doc.body["versions"]) == set(versions)
        assert set(versions) <= set(doc.body["time"])
    assert same_document(docs[0].body, cluster.a, cluster.b) == docs[1].body
    # Every tarball, through either server, is the one published.
    for i in (0, 17, 49):
        tarball = base64.b64decode(bodies[i]["_attachments"][f"{name}-{versions[i]}.tgz"]["data"])
        for server, doc in zip(cluster.servers, docs, strict=True):
            url = doc.body["versions"][versions[i]]["dist"]["tarball"]
            assert url.startswith(server.registry)
            got = request("", "GET", url)
            assert got.status == 200 and got.body == tarball
    # Every publish tagged latest. npm refuses to tag a version lower than latest, so the
    # only order in which all 50 could have been published one after the other is
    # ascending: latest must be the highest, whatever order the races settled in.
    assert docs[0].body["dist-tags"] == {"latest": max(versions, key=semver_key)}


def test_20_publishes_of_the_same_version_at_once_one_wins(cluster: Cluster) -> None:
    name = "scale-same"
    tarballs = [
        npm_tarball({"name": name, "version": "1.0.0"}, {"index.js": f"// {i}\n".encode()})
        for i in range(20)
    ]
    bodies = [publish_body(name, "1.0.0", t) for t in tarballs]
    jobs = [
        functools.partial(put_publish, cluster.servers[i % 2], cluster.token, body)
        for i, body in enumerate(bodies)
    ]
    results = all_at_once(jobs)
    winners = [i for i, r in enumerate(results) if 200 <= r.status < 300]
    assert len(winners) == 1, [r.status for r in results]
    for i, result in enumerate(results):
        if i != winners[0]:
            assert result.status == 403, result
            assert PUBLISH_CONFLICT in result.body["error"]
    # The stored version is the winner's, whole, on both servers.
    cluster.caught_up()
    for server in cluster.servers:
        doc = server.packument(name).body
        assert list(doc["versions"]) == ["1.0.0"]
        dist = doc["versions"]["1.0.0"]["dist"]
        assert dist["integrity"] == integrity(tarballs[winners[0]])
        assert request("", "GET", dist["tarball"]).body == tarballs[winners[0]]


def test_a_revoked_token_is_refused_by_both_servers_at_once(cluster: Cluster) -> None:
    token = cluster.cli("token", "create", "--user", "admin").strip()
    for server in cluster.servers:
        # Twice: the second answer comes from each server's credential cache.
        for _ in range(2):
            who = request(server.base_url, "GET", "/npm/main/-/whoami", token=token)
            assert (who.status, who.body) == (200, {"username": "admin"})
    assert "revoked token" in cluster.cli("token", "revoke", token)
    for server in cluster.servers:
        who = request(server.base_url, "GET", "/npm/main/-/whoami", token=token)
        assert who.status == 401, (server.base_url, who)
        published = put_publish(server, token, publish_body("scale-revoked", "1.0.0"))
        assert published.status == 401
    assert cluster.a.packument("scale-revoked").status == 404


def test_one_upstream_request_for_50_concurrent_misses_on_two_servers(
    cluster: Cluster,
) -> None:
    ttl = 5
    with ScriptedUpstream() as upstream:
        name = "scale-upstream"
        upstream.packages.add(name, "1.0.0")
        upstream.packages.add(name, "1.1.0")
        cluster.cli("feed", "create", "mirror")
        cluster.cli("connector", "add", "mirror", upstream.url, "--name", "up", "--ttl", str(ttl))

        def burst() -> list[HttpResult]:
            jobs = [
                functools.partial(request, s.base_url, "GET", f"/npm/mirror/{name}")
                for s in cluster.servers * 25
            ]
            return all_at_once(jobs)

        results = burst()
        assert [r.status for r in results] == [200] * 50
        assert all(set(r.body["versions"]) == {"1.0.0", "1.1.0"} for r in results)
        assert len(upstream.packument_requests(name)) == 1

        # Once the copy is older than the TTL, one revalidation for both servers again.
        time.sleep(ttl + 1)
        results = burst()
        assert [r.status for r in results] == [200] * 50
        asked = upstream.packument_requests(name)
        assert len(asked) == 2, [r.headers for r in asked]
        assert "if-none-match" in asked[1].headers

    # Each process reports its own count; together they made the two requests.
    counts = []
    for server in cluster.servers:
        page = request(server.base_url, "GET", "/-/metrics").body
        text = page.decode() if isinstance(page, bytes) else str(page)
        found = re.search(r"^entrepot_upstream_requests_total\S* (\S+)$", text, re.MULTILINE)
        assert found is not None, text
        counts.append(float(found.group(1)))
    assert sum(counts) == 2


def test_sigkill_during_a_publish_loop_loses_nothing_acknowledged(cluster: Cluster) -> None:
    name = "scale-killed"
    acknowledged: list[str] = []
    failed: list[str] = []

    def loop() -> None:
        for i in range(10_000):
            version = f"1.0.{i}"
            try:
                answer = put_publish(cluster.a, cluster.token, publish_body(name, version))
            except (urllib.error.URLError, OSError):
                failed.append(version)
                return
            if answer.status == 201:
                acknowledged.append(version)
            else:
                failed.append(version)
                return

    publisher = threading.Thread(target=loop)
    publisher.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 15 and publisher.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(acknowledged) >= 15, (acknowledged, failed)
    cluster.a.process.kill()
    cluster.a.process.wait(timeout=10)
    publisher.join(timeout=60)
    assert not publisher.is_alive()
    assert failed, "the loop should have been cut off by the kill"

    cluster.a = cluster.start()
    fsck = entrepot(cluster.config, "fsck", env=cluster.env, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert re.search(r"checked \d+ versions: 0 problems", fsck.stdout), fsck.stdout
    for server in cluster.servers:
        doc = server.packument(name)
        assert doc.status == 200
        assert set(acknowledged) <= set(doc.body["versions"])
        # The publish cut off by the kill either landed whole or not at all.
        assert set(doc.body["versions"]) - set(acknowledged) <= {failed[0]}
    # The restarted server takes publishes again.
    after = put_publish(cluster.a, cluster.token, publish_body(name, "2.0.0"))
    assert after.status == 201, after
    assert "2.0.0" in cluster.a.packument(name).body["versions"]
    cluster.caught_up()
    assert "2.0.0" in cluster.b.packument(name).body["versions"]


def test_a_server_without_its_database_exits_with_a_clear_message(
    cluster: Cluster, tmp_path: Path
) -> None:
    port = closed_port()
    config = write_config(
        tmp_path / "broken.toml",
        {
            "data_dir": str(tmp_path / "data"),
            "database_url": f"postgresql://postgres:not-the-password@127.0.0.1:{port}/entrepot",
            "blob_url": blob_url(cluster.services.s3),
        },
    )
    done = subprocess.run(
        [str(ENTREPOT), "serve", "--config", str(config), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cluster.env,
        check=False,
    )
    assert done.returncode != 0
    assert "listening on" not in done.stdout
    assert "cannot open the PostgreSQL database" in done.stderr, done.stderr
    assert str(port) in done.stderr
    assert "Traceback" not in done.stderr
    assert "not-the-password" not in done.stdout + done.stderr
    # The servers on the real database are unaffected.
    for server in cluster.servers:
        assert request(server.base_url, "GET", "/-/health").status == 200


# -- migrating an embedded data dir -----------------------------------------------------------

ALICE_PASSWORD = "alice's migrated password"


def test_migrate_an_embedded_data_dir_into_postgres_and_s3(
    services: Services, make_package: PackageFactory, tmp_path: Path
) -> None:
    source_root = tmp_path / "source"
    source_root.mkdir()
    with contextlib.contextmanager(start_server)(source_root) as source:
        source.admin(
            "user",
            "add",
            "alice",
            "--email",
            "alice@example.test",
            "--password-stdin",
            input=ALICE_PASSWORD + "\n",
        )
        source.admin("feed", "grant", "main", "alice", "publisher")
        source.admin("feed", "create", "team", "--private")
        source.admin("feed", "grant", "team", "alice", "owner")
        alice = source.token(user="alice")
        npm = npm_client(tmp_path / "npm-source", source, alice)
        npm.ok("publish", cwd=make_package("mig-plain", "1.0.0"))
        npm.ok("publish", cwd=make_package("mig-plain", "1.1.0"))
        npm.ok("publish", "--tag", "beta", cwd=make_package("mig-plain", "2.0.0-beta.1"))
        npm.ok("dist-tag", "add", "mig-plain@1.0.0", "stable")
        npm.ok("deprecate", "mig-plain@1.0.0", "use 1.1.0")
        npm.ok("publish", cwd=make_package("@mig/scoped", "1.0.0"))
        scoped = make_package("@mig/scoped", "1.0.1")
        npm.ok("publish", cwd=scoped)
        npm.ok("unpublish", "@mig/scoped@1.0.1")
        private = request(
            source.base_url,
            "PUT",
            "/npm/team/mig-private",
            publish_body("mig-private", "1.0.0"),
            token=alice,
        )
        assert private.status == 201
        paths = ["/npm/main/mig-plain", "/npm/main/@mig%2fscoped", "/npm/team/mig-private"]
        before = {p: request(source.base_url, "GET", p, token=alice) for p in paths}
        assert all(r.status == 200 for r in before.values())
        assert "1.0.1" not in before["/npm/main/@mig%2fscoped"].body["versions"]
        assert before["/npm/main/mig-plain"].body["versions"]["1.0.0"]["deprecated"]
    data_dir = source.data_dir

    with postgres_database() as database_url:
        root = tmp_path / "target"
        root.mkdir()
        env = environment(services.s3.credentials)
        config = write_config(
            root / "entrepot.toml",
            {
                "data_dir": str(root / "data"),
                "database_url": database_url,
                "blob_url": blob_url(services.s3, "migrated"),
            },
        )
        first = entrepot(config, "migrate", "--from-data-dir", str(data_dir), env=env)
        assert "migrated" in first.stdout and "nothing new" not in first.stdout, first.stdout
        target = wait_listening(launch(root, ["--config", str(config)], env, data_dir=root))
        try:
            for path, old in before.items():
                new = request(target.base_url, "GET", path, token=alice)
                assert new.status == 200
                # _rev is "<edits>-<the store's change counter>": the count of edits comes
                # along, the counter is the new store's own.
                old_rev, new_rev = old.body.pop("_rev"), new.body.pop("_rev")
                assert old_rev.split("-")[0] == new_rev.split("-")[0]
                assert same_document(old.body, source, target) == new.body
            # The private feed stayed private.
            assert request(target.base_url, "GET", "/npm/team/mig-private").status == 401
            members = entrepot(config, "feed", "members", "team", env=env).stdout
            assert "alice\towner" in members

            client = npm_client(tmp_path / "npm-target", target, alice)
            assert client.ok("whoami").strip() == "alice"
            # The unpublished version stays reserved (npm gets as far as the PUT).
            refused = client("publish", cwd=scoped)
            assert refused.returncode != 0
            assert "403 Forbidden - PUT" in refused.output, refused.output
            assert PUBLISH_CONFLICT in refused.output
            # The tarballs came along: a fresh npm installs from the target.
            project = consumer(tmp_path / "consumer")
            client.ok("install", "mig-plain@1.1.0", "@mig/scoped@1.0.0", cwd=project)
            assert (project / "node_modules/@mig/scoped/package.json").is_file()
            # Alice's password still signs in (npm login --auth-type=legacy).
            fresh = npm_client(tmp_path / "npm-login", target)
            login = fresh.login_legacy("alice", ALICE_PASSWORD)
            assert login.returncode == 0, login.output
            assert fresh.ok("whoami").strip() == "alice"

            seq = request(target.base_url, "GET", "/-/health").body["seq"]
            again = entrepot(config, "migrate", "--from-data-dir", str(data_dir), env=env)
            assert "nothing new" in again.stdout, again.stdout
            assert re.search(r"\b0 tarballs copied", again.stdout), again.stdout
            assert request(target.base_url, "GET", "/-/health").body["seq"] == seq
        finally:
            stop(target.process)
