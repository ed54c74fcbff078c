"""Backups with real processes: ``entrepot export`` while a publisher keeps publishing, then
``entrepot import`` into an empty data folder and a second server that must serve the same
registry: packages, tags, deprecations, reserved versions, users, passwords, tokens, roles,
connectors. A tampered bundle must be refused whole.

Packages are published over HTTP exactly as npm 11 sends them (the bodies of
``tests/api/conftest.py``), so the test does not depend on npm's timing.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.api.conftest import npm_tarball, publish_body
from tests.e2e.conftest import (
    ENTREPOT,
    HttpResult,
    Server,
    assert_log_has_no_secrets,
    quote_name,
    start_server,
)

pytestmark = pytest.mark.e2e

ALICE_PASSWORD = "alice's backup password"
BOB_PASSWORD = "bob's backup password"
CONFLICT = "cannot publish over the previously published versions"
#: Packages that do not change once set up: (feed, name).
STATIC = [("main", "@acme/widget"), ("main", "plain"), ("team", "@team/secret")]
SNAPSHOT = "entrepot-bundle.json"


def cli(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``entrepot --data-dir D ARGS...``, whatever its exit code."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ENTREPOT_") and not k.lower().startswith("npm_config_")
    }
    return subprocess.run(
        [str(ENTREPOT), "--data-dir", str(data_dir), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def ok(data_dir: Path, *args: str, stdin: str = "") -> str:
    done = cli(data_dir, *args, stdin=stdin)
    assert done.returncode == 0, f"entrepot {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


def basic(user: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()}


def publish(server: Server, feed: str, name: str, version: str, token: str, **kw: Any) -> None:
    result = server.request(
        "PUT", f"/npm/{feed}/{quote_name(name)}", publish_body(name, version, **kw), token=token
    )
    assert result.status == 201, (name, version, result.body)


def write_doc(server: Server, name: str, token: str) -> dict[str, Any]:
    result = server.request("GET", f"/npm/main/{quote_name(name)}?write=true", token=token)
    assert result.status == 200, result.body
    doc: dict[str, Any] = result.body
    return doc


def put_doc(server: Server, name: str, doc: dict[str, Any], token: str) -> None:
    path = f"/npm/main/{quote_name(name)}/-rev/{doc['_rev']}"
    result = server.request("PUT", path, doc, token=token)
    assert result.status == 201, result.body


@dataclasses.dataclass
class Bundle:
    """A bundle file, read back: its metadata and its tarballs by key."""

    path: Path
    snapshot: dict[str, Any]
    blobs: dict[str, bytes]

    @classmethod
    def read(cls, path: Path) -> Bundle:
        snapshot: dict[str, Any] | None = None
        blobs: dict[str, bytes] = {}
        with tarfile.open(path) as archive:
            for member in archive:
                handle = archive.extractfile(member)
                assert handle is not None, member.name
                if member.name == SNAPSHOT:
                    snapshot = orjson.loads(handle.read())
                else:
                    assert member.name.startswith("blobs/"), member.name
                    blobs[member.name.removeprefix("blobs/")] = handle.read()
        assert snapshot is not None
        return cls(path, snapshot, blobs)

    def package(self, feed: str, name: str) -> dict[str, Any]:
        packages: list[dict[str, Any]] = self.snapshot["packages"]
        found = [p for p in packages if (p["feed"], p["name"]) == (feed, name)]
        assert len(found) == 1, (feed, name)
        return found[0]

    def live(self, feed: str, name: str) -> set[str]:
        return {v["version"] for v in self.package(feed, name)["versions"] if not v["deleted"]}


def assert_consistent(bundle: Bundle) -> None:
    """Everything the metadata names is in the bundle, and agrees with it."""
    snap = bundle.snapshot
    assert snap["format"] == 1
    feeds = {f["name"] for f in snap["feeds"]}
    users = {u["name"] for u in snap["users"]}
    referenced: set[str] = set()
    for package in snap["packages"]:
        assert package["feed"] in feeds
        live = {v["version"] for v in package["versions"] if not v["deleted"]}
        for version in package["versions"]:
            assert version["manifest"]["version"] == version["version"]
            if version["deleted"] is not None:
                # An unpublished version's number travels (reserved); its tarball does not.
                continue
            key = version["blob_key"]
            referenced.add(key)
            assert key in bundle.blobs, (package["name"], version["version"])
            data = bundle.blobs[key]
            assert version["size"] == len(data)
            integrity = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
            assert version["manifest"]["dist"]["integrity"] == integrity
        assert set(package["dist_tags"].values()) <= live, package["name"]
        if live:
            assert package["dist_tags"].get("latest") in live, package["name"]
    # Every tarball is the one its name says, and none is there for nothing.
    for key, data in bundle.blobs.items():
        assert hashlib.sha512(data).hexdigest() == key
    assert set(bundle.blobs) == referenced
    for token in snap["tokens"]:
        assert token["user"] in users
        assert set(token["feeds"]) <= feeds | {f for t in snap["tokens"] for f in t["feeds"]}
    for role in snap["roles"]:
        assert role["feed"] in feeds and role["user"] in users
    for connector in snap["connectors"]:
        assert connector["feed"] in feeds


class Publisher(threading.Thread):
    """Publishes ``churn`` 1.0.0, 1.0.1, ... until stopped; remembers what the server took."""

    def __init__(self, server: Server, token: str) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.token = token
        self.stop = threading.Event()
        self.acknowledged: list[str] = []
        self.attempted: list[str] = []
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def run(self) -> None:
        patch = 0
        while not self.stop.is_set() and patch < 5000:
            version = f"1.0.{patch}"
            with self.lock:
                self.attempted.append(version)
            # 32 KiB of incompressible bytes per version: exports have real tarballs to copy.
            noise = b"".join(hashlib.sha512(f"{version}/{i}".encode()).digest() for i in range(512))
            manifest = {"name": "churn", "version": version, "main": "index.js"}
            tarball = npm_tarball(manifest, {"data.bin": noise})
            body = publish_body("churn", version, tarball=tarball)
            result = self.server.request("PUT", "/npm/main/churn", body, token=self.token)
            with self.lock:
                if result.status == 201:
                    self.acknowledged.append(version)
                else:
                    self.failures.append(f"{version}: {result.status} {result.body}")
            patch += 1

    def snapshot(self) -> tuple[list[str], list[str]]:
        with self.lock:
            return list(self.acknowledged), list(self.attempted)


@dataclasses.dataclass
class Origin:
    """The first server, set up, and the bundles exported from it while it was busy."""

    server: Server
    admin_token: str
    alice_token: str
    alice_team_read_only: str
    bob_token: str
    revoked_token: str
    admin_password: str
    bundles: list[Bundle]
    #: For each bundle: churn versions acknowledged before its export started.
    acknowledged_before: list[list[str]]
    attempted: list[str]


@pytest.fixture(scope="module")
def origin(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Origin:
    data = server.data_dir
    admin_password = (data / "initial-admin-password").read_text().strip()
    admin_token = server.token()
    ok(data, "feed", "create", "team", "--private")
    ok(data, "feed", "create", "proxy")
    for user, password in (("alice", ALICE_PASSWORD), ("bob", BOB_PASSWORD)):
        email = f"{user}@example.test"
        ok(data, "user", "add", user, "--email", email, "--password-stdin", stdin=password + "\n")
    server.remember(ALICE_PASSWORD)
    server.remember(BOB_PASSWORD)
    ok(data, "feed", "grant", "main", "alice", "publisher")
    ok(data, "feed", "grant", "team", "alice", "owner")
    ok(data, "feed", "grant", "team", "bob", "reader")
    upstream = ["--name", "upstream", "--token-env", "UPSTREAM_TOKEN", "--ttl", "60"]
    ok(data, "connector", "add", "proxy", "http://127.0.0.1:9/", *upstream)
    alice = server.token(user="alice")
    alice_team_read_only = server.token("--read-only", "--feed", "team", user="alice")
    bob = server.token(user="bob")
    revoked = server.token(user="bob")
    ok(data, "token", "revoke", revoked)

    for version in ("1.0.0", "1.1.0"):
        publish(server, "main", "@acme/widget", version, alice)
    publish(server, "main", "@acme/widget", "2.0.0-beta.1", alice, tag="beta")
    for version in ("1.0.0", "1.0.1", "1.0.2"):
        publish(server, "main", "plain", version, alice)
    publish(server, "team", "@team/secret", "0.1.0", alice)
    tagged = server.request(
        "PUT", "/npm/main/-/package/plain/dist-tags/stable", "1.0.0", token=alice
    )
    assert tagged.status == 201, tagged.body
    doc = write_doc(server, "plain", alice)
    doc["versions"]["1.0.0"]["deprecated"] = "use 1.0.1"
    put_doc(server, "plain", doc, alice)
    # npm unpublish plain@1.0.2: the document without it, then the tarball.
    doc = write_doc(server, "plain", alice)
    del doc["versions"]["1.0.2"]
    put_doc(server, "plain", doc, alice)
    # A package unpublished whole: its name stays, its versions stay reserved.
    publish(server, "main", "gone", "1.0.0", alice)
    rev = write_doc(server, "gone", admin_token)["_rev"]
    assert server.request("DELETE", f"/npm/main/gone/-rev/{rev}", token=admin_token).status == 200

    out = tmp_path_factory.mktemp("bundles")
    publisher = Publisher(server, alice)
    publisher.start()
    bundles: list[Bundle] = []
    before: list[list[str]] = []
    try:
        while len(publisher.snapshot()[0]) < 3 and publisher.is_alive():
            publisher.stop.wait(0.05)
        for i in range(3):
            before.append(publisher.snapshot()[0])
            path = out / f"busy-{i}.tar"
            done = cli(data, "export", "--out", str(path))
            assert done.returncode == 0, done.stdout + done.stderr
            assert done.stderr == "", done.stderr  # no "tarball ... is missing" warning
            bundles.append(Bundle.read(path))
            assert f"{len(bundles[-1].blobs)} tarballs" in done.stdout
    finally:
        publisher.stop.set()
        publisher.join(timeout=60)
    assert not publisher.failures, publisher.failures[:3]
    _, attempted = publisher.snapshot()
    return Origin(
        server=server,
        admin_token=admin_token,
        alice_token=alice,
        alice_team_read_only=alice_team_read_only,
        bob_token=bob,
        revoked_token=revoked,
        admin_password=admin_password,
        bundles=bundles,
        acknowledged_before=before,
        attempted=attempted,
    )


def test_bundles_exported_while_publishing_are_consistent_snapshots(origin: Origin) -> None:
    for bundle, acknowledged in zip(origin.bundles, origin.acknowledged_before, strict=True):
        assert_consistent(bundle)
        churn = bundle.live("main", "churn")
        # Whatever the server had confirmed before the export began is in it; nothing in it
        # was never sent.
        assert set(acknowledged) <= churn, sorted(set(acknowledged) - churn)
        assert churn <= set(origin.attempted)
        assert bundle.package("main", "churn")["dist_tags"]["latest"] == max(
            churn, key=lambda v: int(v.rsplit(".", 1)[1])
        )
    everything = origin.bundles[-1]
    assert {f["name"] for f in everything.snapshot["feeds"]} == {"main", "team", "proxy"}
    assert {u["name"] for u in everything.snapshot["users"]} == {"admin", "alice", "bob"}
    assert everything.live("main", "plain") == {"1.0.0", "1.0.1"}
    assert {v["version"] for v in everything.package("main", "plain")["versions"]} == {
        "1.0.0",
        "1.0.1",
        "1.0.2",
    }
    assert everything.live("main", "gone") == set()


def test_a_bundle_holds_secrets_and_only_its_owner_may_read_it(origin: Origin) -> None:
    bundle = origin.bundles[-1]
    mode = stat.S_IMODE(bundle.path.stat().st_mode)
    assert mode & 0o077 == 0, oct(mode)
    text = bundle.path.read_bytes()
    # Hashes only: no token secret and no password in clear.
    for secret in (origin.alice_token, origin.bob_token, ALICE_PASSWORD, origin.admin_password):
        assert secret.encode() not in text


@dataclasses.dataclass
class Restored:
    server: Server
    bundle: Bundle


@pytest.fixture(scope="module")
def restored(origin: Origin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Restored]:
    """A second server on an empty data folder into which the last busy bundle was imported."""
    root = tmp_path_factory.mktemp("restored")
    data = root / "data"
    bundle = origin.bundles[-1]
    output = ok(data, "import", str(bundle.path))
    assert "imported" in output and "nothing new" not in output, output
    # The admin user came with the bundle, so this server creates no new password file;
    # the start-up helper reads it to know a secret the log must not show.
    shutil.copy(origin.server.data_dir / "initial-admin-password", data)
    servers = start_server(root)
    server = next(servers)
    for secret in (origin.alice_token, origin.bob_token, ALICE_PASSWORD, BOB_PASSWORD):
        server.remember(secret)
    try:
        yield Restored(server, bundle)
    finally:
        with contextlib.suppress(StopIteration):
            next(servers)


def normalized(result: HttpResult, base_url: str) -> Any:
    assert result.status == 200, result.body
    text = json.dumps(result.body, sort_keys=True).replace(base_url, "<server>")
    doc = json.loads(text)
    # The revision counts this store's changes: a new store, a new revision, same content.
    doc.pop("_rev", None)
    return doc


def test_the_restored_server_serves_the_same_packuments_and_tarballs(
    origin: Origin, restored: Restored
) -> None:
    a, b = origin.server, restored.server
    for feed, name in STATIC:
        token = origin.alice_token
        before = normalized(a.packument(name, feed=feed, token=token), a.base_url)
        after = normalized(b.packument(name, feed=feed, token=token), b.base_url)
        assert after == before, name
        for version, manifest in after["versions"].items():
            url = manifest["dist"]["tarball"].replace("<server>", "")
            got = b.request("GET", url, token=token)
            assert got.status == 200, (name, version)
            assert isinstance(got.body, bytes)
            digest = base64.b64encode(hashlib.sha512(got.body).digest()).decode()
            assert manifest["dist"]["integrity"] == "sha512-" + digest
    plain = b.packument("plain").body
    assert plain["dist-tags"] == {"latest": "1.0.1", "stable": "1.0.0"}
    assert plain["versions"]["1.0.0"]["deprecated"] == "use 1.0.1"
    churn = b.packument("churn").body
    assert set(churn["versions"]) == restored.bundle.live("main", "churn")


def test_unpublished_versions_stay_reserved_after_a_restore(
    origin: Origin, restored: Restored
) -> None:
    b = restored.server
    for name, version in (("plain", "1.0.2"), ("gone", "1.0.0")):
        result = b.request(
            "PUT", f"/npm/main/{name}", publish_body(name, version), token=origin.alice_token
        )
        assert result.status == 403, result.body
        assert CONFLICT in result.body["error"]
    assert b.packument("gone").status == 404


def test_users_tokens_passwords_and_roles_survive_a_restore(
    origin: Origin, restored: Restored
) -> None:
    b = restored.server

    def whoami(headers: dict[str, str]) -> HttpResult:
        return b.request("GET", "/npm/main/-/whoami", headers=headers)

    assert whoami({"Authorization": f"Bearer {origin.alice_token}"}).body == {"username": "alice"}
    assert whoami({"Authorization": f"Bearer {origin.bob_token}"}).body == {"username": "bob"}
    assert whoami({"Authorization": f"Bearer {origin.admin_token}"}).body == {"username": "admin"}
    assert whoami(basic("alice", ALICE_PASSWORD)).body == {"username": "alice"}
    assert whoami(basic("admin", origin.admin_password)).body == {"username": "admin"}
    assert whoami(basic("alice", "not her password")).status == 401
    assert whoami({"Authorization": f"Bearer {origin.revoked_token}"}).status == 401
    login = b.request(
        "PUT",
        "/npm/main/-/user/org.couchdb.user:bob",
        {"name": "bob", "password": BOB_PASSWORD},
    )
    assert login.status == 201, login.body
    b.remember(login.body["token"])

    # Roles and token limits: the private feed is private still.
    assert b.packument("@team/secret", feed="team").status == 401
    assert b.packument("@team/secret", feed="team", token=origin.bob_token).status == 200
    narrow = origin.alice_team_read_only
    assert b.packument("@team/secret", feed="team", token=narrow).status == 200
    assert b.packument("plain", token=narrow).status == 404
    members = ok(b.data_dir, "feed", "members", "team")
    assert set(members.splitlines()) == {"alice\towner", "bob\treader"}
    connectors = ok(b.data_dir, "connector", "list", "proxy")
    assert "upstream\thttp://127.0.0.1:9" in connectors
    assert "$UPSTREAM_TOKEN" in connectors


def dump(data_dir: Path, out: Path) -> tuple[dict[str, Any], set[str]]:
    ok(data_dir, "export", "--out", str(out))
    bundle = Bundle.read(out)
    return bundle.snapshot, set(bundle.blobs)


def test_importing_the_same_bundle_twice_changes_nothing(
    restored: Restored, tmp_path: Path
) -> None:
    b = restored.server
    seq = b.request("GET", "/-/health").body["seq"]
    before = dump(b.data_dir, tmp_path / "before.tar")
    output = ok(b.data_dir, "import", str(restored.bundle.path))
    assert "nothing new" in output and "0 tarballs stored" in output, output
    assert b.request("GET", "/-/health").body["seq"] == seq
    assert dump(b.data_dir, tmp_path / "after.tar") == before


def tampered(source: Path, target: Path) -> None:
    """A copy of the bundle with one byte of its last tarball changed."""
    shutil.copy(source, target)
    with tarfile.open(target) as archive:
        last = [m for m in archive.getmembers() if m.name.startswith("blobs/")][-1]
    with target.open("r+b") as handle:
        handle.seek(last.offset_data + last.size // 2)
        byte = handle.read(1)
        handle.seek(-1, io.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_a_tampered_bundle_is_refused_and_imports_nothing(
    origin: Origin, restored: Restored, tmp_path: Path
) -> None:
    bad = tmp_path / "tampered.tar"
    tampered(origin.bundles[-1].path, bad)
    # Into an empty data folder: not a user, not a feed, not one tarball.
    empty = tmp_path / "empty"
    refused = cli(empty, "import", str(bad))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "does not match its hash" in refused.stderr, refused.stderr
    snapshot, blobs = dump(empty, tmp_path / "empty.tar")
    assert (snapshot["feeds"], snapshot["users"], snapshot["packages"]) == ([], [], [])
    assert blobs == set()
    assert [p for p in (empty / "blobs").rglob("*") if p.is_file()] == []
    # Into the restored server's folder: nothing changes there either.
    before = dump(restored.server.data_dir, tmp_path / "before.tar")
    again = cli(restored.server.data_dir, "import", str(bad))
    assert again.returncode == 2 and "does not match its hash" in again.stderr
    assert dump(restored.server.data_dir, tmp_path / "after.tar") == before


def test_export_of_one_feed_holds_that_feed_only(origin: Origin, tmp_path: Path) -> None:
    data = origin.server.data_dir
    ok(data, "export", "team", "--out", str(tmp_path / "team.tar"))
    bundle = Bundle.read(tmp_path / "team.tar")
    assert_consistent(bundle)
    snap = bundle.snapshot
    assert [f["name"] for f in snap["feeds"]] == ["team"]
    assert {(p["feed"], p["name"]) for p in snap["packages"]} == {("team", "@team/secret")}
    assert {(r["feed"], r["user"]) for r in snap["roles"]} == {("team", "alice"), ("team", "bob")}
    assert snap["connectors"] == []
    (secret,) = bundle.package("team", "@team/secret")["versions"]
    assert set(bundle.blobs) == {secret["blob_key"]}

    missing = cli(data, "export", "nosuch", "--out", str(tmp_path / "nosuch.tar"))
    assert missing.returncode == 2 and "no feed named 'nosuch'" in missing.stderr
    assert not (tmp_path / "nosuch.tar").exists()


def test_neither_server_logged_a_secret(origin: Origin, restored: Restored) -> None:
    assert_log_has_no_secrets(origin.server)
    assert_log_has_no_secrets(restored.server)
