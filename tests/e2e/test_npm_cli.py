"""The real npm CLI against a real server: publish, install, tags, deprecate, unpublish, view.

Every test uses its own package names, so the tests of this module share one server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.e2e.conftest import (
    NpmFactory,
    PackageFactory,
    Server,
    assert_log_has_no_secrets,
    quote_name,
)

pytestmark = pytest.mark.e2e

PUBLISH_CONFLICT = "cannot publish over the previously published versions"


def bare(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def consumer(tmp_path: Path) -> Path:
    """A fresh, empty npm project to install into."""
    folder = tmp_path / "consumer"
    folder.mkdir()
    (folder / "package.json").write_text(
        json.dumps({"name": "consumer", "version": "0.0.0", "private": True})
    )
    return folder


def installed_version(project: Path, name: str) -> str:
    manifest = json.loads((project / "node_modules" / name / "package.json").read_text())
    assert manifest["name"] == name
    version = manifest["version"]
    assert isinstance(version, str)
    return version


@pytest.mark.parametrize("name", ["@acme/lib", "plain-lib"])
def test_publish_then_install(
    server: Server,
    admin_token: str,
    npm: NpmFactory,
    make_package: PackageFactory,
    tmp_path: Path,
    name: str,
) -> None:
    publisher = npm(token=admin_token)
    for version in ("1.0.0", "1.1.0"):
        out = publisher.ok("publish", cwd=make_package(name, version))
        assert f"+ {name}@{version}" in out

    got = server.packument(name)
    assert got.status == 200
    doc = got.body
    assert doc["name"] == name
    assert doc["dist-tags"]["latest"] == "1.1.0"
    assert sorted(doc["versions"]) == ["1.0.0", "1.1.0"]
    for version, manifest in doc["versions"].items():
        expected = f"{server.registry}{name}/-/{bare(name)}-{version}.tgz"
        assert manifest["dist"]["tarball"] == expected
        assert manifest["dist"]["integrity"].startswith("sha512-")
        tarball = server.request("GET", expected.removeprefix(server.base_url))
        assert tarball.status == 200
        assert tarball.headers["content-type"] == "application/octet-stream"

    project = consumer(tmp_path)
    anonymous = npm()
    anonymous.ok("install", name, cwd=project)
    assert installed_version(project, name) == "1.1.0"
    anonymous.ok("install", f"{name}@1.0.0", cwd=project)
    assert installed_version(project, name) == "1.0.0"
    lock = json.loads((project / "package-lock.json").read_text())
    resolved = lock["packages"][f"node_modules/{name}"]["resolved"]
    assert resolved == f"{server.registry}{name}/-/{bare(name)}-1.0.0.tgz"


@pytest.mark.parametrize("name", ["@acme/lib-immutable", "immutable-lib"])
def test_published_versions_are_immutable(
    server: Server,
    admin_token: str,
    npm: NpmFactory,
    make_package: PackageFactory,
    name: str,
) -> None:
    publisher = npm(token=admin_token)
    publisher.ok("publish", cwd=make_package(name, "1.0.0"))
    publisher.ok("publish", cwd=make_package(name, "1.1.0"))
    first = server.packument(name).body["versions"]["1.0.0"]["dist"]["integrity"]

    # Different bytes under the same number: npm's own pre-publish check refuses it ...
    again = make_package(name, "1.0.0", description="something else")
    refused = publisher("publish", cwd=again)
    assert refused.returncode != 0
    assert PUBLISH_CONFLICT in refused.output
    # ... and with --force npm skips that check, so the server must refuse it.
    forced = publisher("publish", "--force", cwd=again)
    assert forced.returncode != 0
    assert "E403" in forced.output
    assert PUBLISH_CONFLICT in forced.output
    assert server.packument(name).body["versions"]["1.0.0"]["dist"]["integrity"] == first

    publisher.ok("unpublish", f"{name}@1.0.0")
    doc = server.packument(name).body
    assert sorted(doc["versions"]) == ["1.1.0"]
    assert "1.0.0" not in doc["time"]

    # The version is gone from the packument, so npm sends the PUT: the server refuses it.
    republish = publisher("publish", "--tag", "old", cwd=make_package(name, "1.0.0"))
    assert republish.returncode != 0
    assert "E403" in republish.output
    assert PUBLISH_CONFLICT in republish.output
    doc = server.packument(name).body
    assert sorted(doc["versions"]) == ["1.1.0"]
    assert doc["dist-tags"] == {"latest": "1.1.0"}


def test_dist_tags(
    server: Server, admin_token: str, npm: NpmFactory, make_package: PackageFactory
) -> None:
    name = "@acme/lib-tags"
    publisher = npm(token=admin_token)
    publisher.ok("publish", cwd=make_package(name, "1.0.0"))
    publisher.ok("publish", cwd=make_package(name, "1.1.0"))

    publisher.ok("dist-tag", "add", f"{name}@1.0.0", "stable")
    assert server.packument(name).body["dist-tags"] == {"latest": "1.1.0", "stable": "1.0.0"}
    listed = publisher.ok("dist-tag", "ls", name)
    assert "latest: 1.1.0" in listed
    assert "stable: 1.0.0" in listed

    publisher.ok("dist-tag", "add", f"{name}@1.0.0", "latest")
    assert server.packument(name).body["dist-tags"] == {"latest": "1.0.0", "stable": "1.0.0"}
    publisher.ok("dist-tag", "add", f"{name}@1.1.0", "latest")

    publisher.ok("dist-tag", "rm", name, "stable")
    assert server.packument(name).body["dist-tags"] == {"latest": "1.1.0"}
    assert "stable" not in publisher.ok("dist-tag", "ls", name)

    # A tag that is a SemVer range: npm refuses it itself ...
    refused = publisher("dist-tag", "add", f"{name}@1.0.0", "1.x")
    assert refused.returncode != 0
    assert "1.x" in refused.output
    # ... and so does the server, when a client sends it anyway.
    raw = server.request(
        "PUT",
        f"/npm/main/-/package/{quote_name(name)}/dist-tags/1.x",
        "1.0.0",
        token=admin_token,
    )
    assert raw.status == 400
    assert "error" in raw.body
    assert server.packument(name).body["dist-tags"] == {"latest": "1.1.0"}
    tags = server.request("GET", f"/npm/main/-/package/{quote_name(name)}/dist-tags")
    assert tags.status == 200
    assert tags.body == {"latest": "1.1.0"}


def test_deprecate_and_undeprecate(
    server: Server, admin_token: str, npm: NpmFactory, make_package: PackageFactory
) -> None:
    name = "@acme/lib-deprecate"
    message = "use 1.1.0: 1.0.0 leaks memory"
    publisher = npm(token=admin_token)
    publisher.ok("publish", cwd=make_package(name, "1.0.0"))
    publisher.ok("publish", cwd=make_package(name, "1.1.0"))

    publisher.ok("deprecate", f"{name}@1.0.0", message)
    assert publisher.ok("view", f"{name}@1.0.0", "deprecated").strip() == message
    assert publisher.ok("view", f"{name}@1.1.0", "deprecated").strip() == ""
    versions = server.packument(name).body["versions"]
    assert versions["1.0.0"]["deprecated"] == message
    assert "deprecated" not in versions["1.1.0"]

    publisher.ok("deprecate", f"{name}@1.0.0", "")
    assert publisher.ok("view", f"{name}@1.0.0", "deprecated").strip() == ""
    doc = server.packument(name).body
    assert "deprecated" not in doc["versions"]["1.0.0"]
    assert sorted(doc["versions"]) == ["1.0.0", "1.1.0"]


@pytest.mark.parametrize("name", ["@acme/lib-unpublish", "unpublish-lib"])
def test_unpublish_version_then_package(
    server: Server,
    admin_token: str,
    npm: NpmFactory,
    make_package: PackageFactory,
    name: str,
) -> None:
    publisher = npm(token=admin_token)
    # 1.10.0 > 1.9.0: a string comparison would get this wrong.
    for version in ("1.0.0", "1.9.0", "1.10.0", "2.0.0"):
        publisher.ok("publish", cwd=make_package(name, version))
    assert server.packument(name).body["dist-tags"]["latest"] == "2.0.0"

    publisher.ok("unpublish", f"{name}@2.0.0")
    doc = server.packument(name).body
    assert sorted(doc["versions"]) == ["1.0.0", "1.10.0", "1.9.0"]
    assert doc["dist-tags"]["latest"] == "1.10.0"
    gone = f"/npm/main/{quote_name(name)}/-/{bare(name)}-2.0.0.tgz"
    assert server.request("GET", gone).status == 404
    kept = f"/npm/main/{quote_name(name)}/-/{bare(name)}-1.9.0.tgz"
    assert server.request("GET", kept).status == 200

    publisher.ok("unpublish", f"{name}@1.0.0")
    doc = server.packument(name).body
    assert sorted(doc["versions"]) == ["1.10.0", "1.9.0"]
    assert doc["dist-tags"]["latest"] == "1.10.0"

    publisher.ok("unpublish", name, "--force")
    assert server.packument(name).status == 404
    assert server.request("GET", kept).status == 404
    view = publisher("view", name)
    assert view.returncode != 0
    assert "E404" in view.output

    for version in ("1.9.0", "2.0.0"):
        again = publisher("publish", cwd=make_package(name, version, keywords=["again"]))
        assert again.returncode != 0
        assert "E403" in again.output
        assert PUBLISH_CONFLICT in again.output
    assert server.packument(name).status == 404


def test_view_ping_whoami(
    server: Server, admin_token: str, npm: NpmFactory, make_package: PackageFactory
) -> None:
    name = "view-lib"
    publisher = npm(token=admin_token)
    publisher.ok(
        "publish",
        cwd=make_package(name, "3.1.4", keywords=["pi", "e2e"], dependencies={}),
    )

    fields = json.loads(
        publisher.ok("view", name, "name", "version", "description", "keywords", "--json")
    )
    assert fields == {
        "name": name,
        "version": "3.1.4",
        "description": f"{name} for the end-to-end tests",
        "keywords": ["pi", "e2e"],
    }
    tarball = publisher.ok("view", name, "dist.tarball").strip()
    assert tarball == f"{server.registry}{name}/-/{name}-3.1.4.tgz"
    assert publisher.ok("view", name, "dist-tags.latest").strip() == "3.1.4"
    assert publisher.ok("view", f"{name}@3.1.4", "license").strip() == "MIT"
    missing = publisher("view", "no-such-lib-anywhere")
    assert missing.returncode != 0
    assert "E404" in missing.output

    ping = publisher("ping")
    assert ping.returncode == 0, ping.output
    assert "PONG" in ping.output
    assert server.registry in ping.output

    assert publisher.ok("whoami").strip() == "admin"
    # Without a token npm refuses by itself (ENEEDAUTH); a revoked token reaches the server.
    token = server.token()
    holder = npm(token=token)
    assert holder.ok("whoami").strip() == "admin"
    server.admin("token", "revoke", token)
    revoked = holder("whoami")
    assert revoked.returncode != 0
    assert "E401" in revoked.output


def test_build_metadata_is_stripped(
    server: Server, admin_token: str, npm: NpmFactory, make_package: PackageFactory
) -> None:
    name = "build-meta-lib"
    publisher = npm(token=admin_token)
    publisher.ok("publish", cwd=make_package(name, "1.2.0+build.7"))
    doc = server.packument(name).body
    assert list(doc["versions"]) == ["1.2.0"]
    assert doc["versions"]["1.2.0"]["version"] == "1.2.0"
    assert doc["dist-tags"]["latest"] == "1.2.0"
    assert doc["versions"]["1.2.0"]["dist"]["tarball"].endswith(f"/{name}-1.2.0.tgz")

    second = make_package(name, "1.2.0+build.8")
    refused = publisher("publish", cwd=second)
    assert refused.returncode != 0
    assert PUBLISH_CONFLICT in refused.output
    forced = publisher("publish", "--force", cwd=second)
    assert forced.returncode != 0
    assert "E403" in forced.output
    assert PUBLISH_CONFLICT in forced.output
    assert list(server.packument(name).body["versions"]) == ["1.2.0"]


def test_server_log_has_no_secrets(server: Server) -> None:
    """Runs last in this module: nothing above wrote a token or password to the log."""
    assert_log_has_no_secrets(server)
