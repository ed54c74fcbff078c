"""Tests for entrepot.npm.packument: full and abbreviated documents from a Package record."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from entrepot.npm.packument import (
    ABBREVIATED_FIELDS,
    abbreviated_document,
    bare_name,
    full_document,
    parse_revision,
    revision,
    tarball_filename,
    tarball_url,
)
from entrepot.storage.base import Package, Version

BASE = "http://127.0.0.1:4880/npm/main/"
Build = Callable[[Package, str], dict[str, Any]]
ALICE = {"name": "alice", "email": "alice@example.test"}


def manifest(name: str, version: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "_id": f"{name}@{version}",
        "dist": {
            "integrity": f"sha512-{version}",
            "shasum": "0" * 40,
            # What npm sends is ignored: the served URL is always rebuilt.
            "tarball": "http://elsewhere.invalid/bogus.tgz",
        },
        **extra,
    }


def package(
    name: str,
    manifests: Mapping[str, Mapping[str, Any]],
    *,
    tags: Mapping[str, str] | None = None,
    reserved: frozenset[str] = frozenset(),
    rev: int = 3,
    seq: int = 42,
    readme: str = "# readme",
) -> Package:
    versions = {
        v: Version(v, m, "ab" * 64, 100, f"2024-01-0{i + 1}T00:00:00.000Z")
        for i, (v, m) in enumerate(manifests.items())
    }
    return Package(
        feed_id=1,
        name=name,
        rev=rev,
        seq=seq,
        created="2024-01-01T00:00:00.000Z",
        modified="2024-02-01T00:00:00.000Z",
        dist_tags=dict(tags) if tags is not None else {"latest": list(manifests)[-1]},
        versions=versions,
        reserved=reserved | frozenset(manifests),
        maintainers=[ALICE],
        readme=readme,
    )


def demo() -> Package:
    return package(
        "demo",
        {
            "1.0.0": manifest("demo", "1.0.0", description="old"),
            "1.1.0": manifest(
                "demo",
                "1.1.0",
                description="the demo",
                license="MIT",
                keywords=["a", "b"],
                homepage="https://example.test/demo",
                readmeFilename="README.md",
                scripts={"test": "true"},
                dependencies={"left-pad": "^1.0.0"},
                engines={"node": ">=18"},
                deprecated="use 2.x",
                _npmUser=ALICE,
                libc=["glibc"],
            ),
        },
        tags={"latest": "1.1.0", "old": "1.0.0"},
    )


def test_full_document_top_level_fields() -> None:
    doc = full_document(demo(), BASE)
    assert doc["_id"] == "demo"
    assert doc["name"] == "demo"
    assert doc["_rev"] == revision(demo())
    assert doc["dist-tags"] == {"latest": "1.1.0", "old": "1.0.0"}
    assert doc["maintainers"] == [ALICE]
    assert doc["readme"] == "# readme"
    assert doc["time"] == {
        "created": "2024-01-01T00:00:00.000Z",
        "modified": "2024-02-01T00:00:00.000Z",
        "1.0.0": "2024-01-01T00:00:00.000Z",
        "1.1.0": "2024-01-02T00:00:00.000Z",
    }


def test_full_document_copies_fields_of_the_latest_version() -> None:
    doc = full_document(demo(), BASE)
    assert doc["description"] == "the demo"
    assert doc["license"] == "MIT"
    assert doc["keywords"] == ["a", "b"]
    assert doc["homepage"] == "https://example.test/demo"
    assert doc["readmeFilename"] == "README.md"
    for absent in ("author", "repository", "bugs", "contributors"):
        assert absent not in doc


def test_full_document_without_a_latest_version_copies_nothing() -> None:
    pkg = package("demo", {"1.0.0": manifest("demo", "1.0.0", description="x")}, tags={})
    doc = full_document(pkg, BASE)
    assert "description" not in doc
    assert doc["dist-tags"] == {}


def test_full_document_version_objects_are_kept_whole() -> None:
    doc = full_document(demo(), BASE)
    version = doc["versions"]["1.1.0"]
    assert version["scripts"] == {"test": "true"}
    assert version["_npmUser"] == ALICE
    assert version["deprecated"] == "use 2.x"
    assert version["dist"]["integrity"] == "sha512-1.1.0"
    assert version["dist"]["shasum"] == "0" * 40


def test_abbreviated_document_has_only_the_install_fields() -> None:
    doc = abbreviated_document(demo(), BASE)
    assert set(doc) == {"name", "modified", "dist-tags", "versions"}
    assert doc["name"] == "demo"
    assert doc["modified"] == "2024-02-01T00:00:00.000Z"
    assert doc["dist-tags"] == {"latest": "1.1.0", "old": "1.0.0"}
    version = doc["versions"]["1.1.0"]
    assert set(version) == {
        "name",
        "version",
        "dist",
        "dependencies",
        "engines",
        "deprecated",
        "libc",
    }
    assert set(version) - {"dist"} <= set(ABBREVIATED_FIELDS)
    assert set(doc["versions"]["1.0.0"]) == {"name", "version", "dist"}


def test_abbreviated_versions_keep_the_whole_dist() -> None:
    dist = abbreviated_document(demo(), BASE)["versions"]["1.0.0"]["dist"]
    assert dist == {
        "integrity": "sha512-1.0.0",
        "shasum": "0" * 40,
        "tarball": BASE + "demo/-/demo-1.0.0.tgz",
    }


@pytest.mark.parametrize("build", [full_document, abbreviated_document])
def test_dist_tarball_is_rewritten_to_the_feed_base(build: Build) -> None:
    base = "https://npm.example.test/prefix/npm/team/"
    doc = build(demo(), base)
    assert doc["versions"]["1.0.0"]["dist"]["tarball"] == base + "demo/-/demo-1.0.0.tgz"
    assert doc["versions"]["1.1.0"]["dist"]["tarball"] == base + "demo/-/demo-1.1.0.tgz"


@pytest.mark.parametrize("build", [full_document, abbreviated_document])
def test_scoped_tarball_url_uses_the_bare_name(build: Build) -> None:
    pkg = package("@acme/widget", {"2.0.0": manifest("@acme/widget", "2.0.0")})
    doc = build(pkg, BASE)
    assert doc["versions"]["2.0.0"]["dist"]["tarball"] == BASE + "@acme/widget/-/widget-2.0.0.tgz"


@pytest.mark.parametrize("build", [full_document, abbreviated_document])
def test_building_does_not_touch_the_stored_manifest(build: Build) -> None:
    pkg = demo()
    build(pkg, BASE)
    assert pkg.versions["1.0.0"].manifest["dist"]["tarball"] == "http://elsewhere.invalid/bogus.tgz"


@pytest.mark.parametrize("build", [full_document, abbreviated_document])
def test_versions_are_in_semver_order(build: Build) -> None:
    order = ["1.10.0", "0.9.0", "1.9.0", "1.2.0", "1.10.0-beta.2", "1.10.0-beta.10", "10.0.0"]
    pkg = package("demo", {v: manifest("demo", v) for v in order}, tags={"latest": "10.0.0"})
    doc = build(pkg, BASE)
    expected = ["0.9.0", "1.2.0", "1.9.0", "1.10.0-beta.2", "1.10.0-beta.10", "1.10.0", "10.0.0"]
    assert list(doc["versions"]) == expected
    if build is full_document:
        assert [k for k in doc["time"] if k not in ("created", "modified")] == expected


def test_deleted_versions_do_not_appear() -> None:
    pkg = package("demo", {"1.0.0": manifest("demo", "1.0.0")}, reserved=frozenset({"0.1.0"}))
    assert list(full_document(pkg, BASE)["versions"]) == ["1.0.0"]
    assert "0.1.0" not in full_document(pkg, BASE)["time"]
    assert list(abbreviated_document(pkg, BASE)["versions"]) == ["1.0.0"]


def test_revision_round_trip() -> None:
    pkg = package("demo", {"1.0.0": manifest("demo", "1.0.0")}, rev=17, seq=12345)
    rev = revision(pkg)
    assert rev.startswith("17-")
    assert parse_revision(rev) == 17


def test_revision_changes_with_seq() -> None:
    one = package("demo", {"1.0.0": manifest("demo", "1.0.0")}, rev=1, seq=5)
    two = package("demo", {"1.0.0": manifest("demo", "1.0.0")}, rev=1, seq=6)
    assert revision(one) != revision(two)


@pytest.mark.parametrize(
    "text", ["", "undefined", "abc-123", "-5", "x1-00", "1" * 19 + "-0", "+1-0"]
)
def test_parse_revision_refuses_what_is_not_ours(text: str) -> None:
    assert parse_revision(text) is None


@pytest.mark.parametrize(("text", "number"), [("0-0", 0), ("5", 5), ("12-abcdef", 12)])
def test_parse_revision_reads_the_number(text: str, number: int) -> None:
    assert parse_revision(text) == number


def test_names_of_tarballs() -> None:
    assert bare_name("@acme/widget") == "widget"
    assert bare_name("demo") == "demo"
    assert tarball_filename("@acme/widget", "1.0.0-rc.1") == "widget-1.0.0-rc.1.tgz"
    assert tarball_url(BASE, "@acme/widget", "1.0.0") == BASE + "@acme/widget/-/widget-1.0.0.tgz"
