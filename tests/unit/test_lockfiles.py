"""Tests for entrepot.lockfiles.

The fixtures under lockfiles/ were written by the real clients (npm 11, pnpm 7/8/10/12, yarn 1 and
yarn 4) for one project; lockfiles/README.md says how. The tests never run a client.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entrepot.lockfiles import (
    SUPPORTED_FILENAMES,
    Locked,
    LockfileError,
    parse_lockfile,
)

FIXTURES = Path(__file__).parent / "lockfiles"

# What the fixture project resolves to from the registry. string-width 4.2.3 is there under the
# alias "str-alias", the strip-ansi/ansi-regex/emoji-regex pairs are nested duplicates, ms 2.1.2
# comes from a workspace and is-number is optional. Integrities as the lockfiles record them.
INTEGRITY_BY_SPEC: dict[str, str] = {
    "@types/node@20.11.30": "sha512-dHM6ZxwlmuZaRmUPfv1p+KrdD1Dci04FbdEm/9wEMouFqxYoFl5aMkt0VMAUtYRQDyYvD41WJLukhq/ha3YuTw==",  # noqa: E501
    "ansi-regex@5.0.1": "sha512-quJQXlTSUGL2LH9SUXo8VwsY4soanhgo6LNSm84E1LBcE8s3O0wpdiRzyR9z/ZZJMlMWv37qOOb9pdJlMUEKFQ==",  # noqa: E501
    "ansi-regex@6.6.0": "sha512-XZ5apbzreCbXSKwPjJstu8R0zOi247w3XYwWxtwBXgpZrCyc1Ka7p9/xY0A9/diMewmHbEKz+FIraWaEWjlN5g==",  # noqa: E501
    "eastasianwidth@0.2.0": "sha512-I88TYZWc9XiYHRQ4/3c5rjjfgkjhLyW2luGIheGERbNQ6OY7yTybanSpDXZa8y7VUP9YmDcYa+eyq4ca7iLqWA==",  # noqa: E501
    "emoji-regex@8.0.0": "sha512-MSjYzcWNOA0ewAHpz0MxpYFvwg6yjy1NG3xteoqz644VCo/RPgnr1/GGt+ic3iJTzQ8Eu3TdM14SawnVUmGE6A==",  # noqa: E501
    "emoji-regex@9.2.2": "sha512-L18DaJsXSUk2+42pv8mLs5jJT2hqFkFE4j21wOmgbUqsZ2hL72NsUU785g9RXgo3s0ZNgVl42TiHp3ZtOv/Vyg==",  # noqa: E501
    "is-fullwidth-code-point@3.0.0": "sha512-zymm5+u+sCsSWyD9qNaejV3DFvhCKclKdizYaJUuHA83RLjb7nSuGnddCHGv0hk+KY7BMAlsWeK4Ueg6EV6XQg==",  # noqa: E501
    "is-number@7.0.0": "sha512-41Cifkg6e8TylSpdtTpeLVMqvSBEVzTttHvERD741+pnZ8ANv0004MRL43QKPDlK9cGvNp6NZWZUBlbGXYxxng==",  # noqa: E501
    "js-tokens@4.0.0": "sha512-RdJUflcE3cUzKiMqQgsCu06FPu9UdIJO0beYbPhHN4k6apgJtifcoCtT9bcxOpYBtpD2kCM6Sbzg4CausW/PKQ==",  # noqa: E501
    "loose-envify@1.4.0": "sha512-lyuxPGr/Wfhrlem2CL/UcnUc1zcqKAImBDzukY7Y5F/yQiNdko6+fRLevlw1HgMySw7f611UIY408EtxRSoK3Q==",  # noqa: E501
    "ms@2.1.2": "sha512-sGkPx+VjMtmA6MX27oA4FBFELFCZZ4S4XqeGOXCv68tT+jb3vk/RyaKWP0PTKyWtmLSM0b+adUTEvbs1PEaH2w==",  # noqa: E501
    "ms@2.1.3": "sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA==",  # noqa: E501
    "react@18.2.0": "sha512-/3IjMdb2L9QbBdWiW5e3P2/npwMBaU9mHCSCUzNln0ZCYbcfTsGbTJrU/kGemdH2IWmB2ioZ+zkxtmq6g09fGQ==",  # noqa: E501
    "string-width@4.2.3": "sha512-wKyQRQpjJ0sIp62ErSZdGsjMJWsap5oRNihHhu6G7JVO/9jIB6UyevL+tXuOqrng8j/cxKTWyWUwvSTriiZz/g==",  # noqa: E501
    "string-width@5.1.2": "sha512-HnLOCR3vjcY8beoNLtcjZ5/nxn2afmME6lhrDrebokqMap+XbeW8n9TXpPDOqdGK5qcI3oT0GKTW6wC7EMiVqA==",  # noqa: E501
    "strip-ansi@6.0.1": "sha512-Y38VPSHcqkFrCpFnQ9vuSXmquuv5oXOKpGeT6aGrr3o3Gc9AlVa6JBfUSOCnbxGGZF+/0ooI7KrPuUSztUdU5A==",  # noqa: E501
    "strip-ansi@7.2.0": "sha512-yDPMNjp4WyfYBkHnjIRLfca1i6KMyGCtsVgoKe/z1+6vukgaENdgGBZt+ZmKPc4gavvEZ5OgHfHdrazhgNyG7w==",  # noqa: E501
    "undici-types@5.26.5": "sha512-JlCMO+ehdEIKqlFxk6IfVoAUVmgz7cU7zD/h9XZ0qzeosSHmUJVOzSQvvYSYWXkFXC+IfLKSIffhv0sVZup6pA==",  # noqa: E501
    "use-sync-external-store@1.2.0": "sha512-eEgnFxGQ1Ife9bzYs6VLi8/4X6CObHMw9Qr9tPY43iKwsPw8xE8+EFsf/2cFZ5S3esXgpWgtSCtLNS41F+sKPA==",  # noqa: E501
}
INTEGRITY: dict[tuple[str, str], str] = {
    (spec.rpartition("@")[0], spec.rpartition("@")[2]): sri
    for spec, sri in INTEGRITY_BY_SPEC.items()
}
# npm and pnpm honour tar-dep's bundled ms 2.0.0; yarn 1 and yarn 4 fetch it from the registry.
MS_200 = ("ms", "2.0.0")
MS_200_INTEGRITY = "sha512-Tpp60P6IUJDTuOq/5Z8cdskzJujfwqfOTkrwIwj7IRISpnkJnT6SyJ4PCPnGMoFjC9ddhal5KVIYtAt97ix05A=="  # noqa: E501

EXPECTED = sorted(Locked(name, version, sri) for (name, version), sri in INTEGRITY.items())
EXPECTED_YARN_V1 = sorted([*EXPECTED, Locked(*MS_200, MS_200_INTEGRITY)])
# Yarn berry records its own zip checksum, not an npm integrity; typescript comes in through
# the compat patch yarn applies to it.
EXPECTED_YARN_BERRY = sorted(
    Locked(name, version, None) for name, version in [*INTEGRITY, MS_200, ("typescript", "5.4.5")]
)

# Names of things in the fixture project that no registry serves: the root project, the
# workspace, a file: folder, a git repository, a tarball URL, a link: and a portal: folder,
# and the alias name itself.
NOT_IN_REGISTRY = {
    "lf-fixture",
    "ws-a",
    "localdep",
    "git-dep",
    "tar-dep",
    "link-dep",
    "portal-dep",
    "str-alias",
}

FIXTURE_CASES = [
    ("npm-v1/package-lock.json", EXPECTED),
    ("npm-v2/package-lock.json", EXPECTED),
    ("npm-v3/package-lock.json", EXPECTED),
    ("npm-v3-no-resolved/package-lock.json", EXPECTED),
    ("pnpm-v5.4/pnpm-lock.yaml", EXPECTED),
    ("pnpm-v6/pnpm-lock.yaml", EXPECTED),
    ("pnpm-v9/pnpm-lock.yaml", EXPECTED),
    ("yarn-v1/yarn.lock", EXPECTED_YARN_V1),
    ("yarn-berry/yarn.lock", EXPECTED_YARN_BERRY),
]


def parse_fixture(relative: str) -> list[Locked]:
    path = FIXTURES / relative
    return parse_lockfile(str(path), path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(("relative", "expected"), FIXTURE_CASES)
def test_fixture_gives_exactly_the_registry_packages(relative: str, expected: list[Locked]) -> None:
    assert parse_fixture(relative) == expected


@pytest.mark.parametrize("relative", [relative for relative, _ in FIXTURE_CASES])
def test_fixture_leaves_out_what_no_registry_serves(relative: str) -> None:
    text = (FIXTURES / relative).read_text(encoding="utf-8")
    # The fixture does name them, so their absence below means something.
    for kind in ("localdep", "tar-dep", "str-alias"):
        assert kind in text
    names = {locked.name for locked in parse_fixture(relative)}
    assert names.isdisjoint(NOT_IN_REGISTRY)
    assert {"@types/node", "string-width", "strip-ansi"} <= names


@pytest.mark.parametrize(
    ("relative", "skipped"),
    [
        ("npm-v3/package-lock.json", ['"git+file:', '"inBundle": true', '"node_modules/ws-a"']),
        ("npm-v1/package-lock.json", ['"git+file:', '"bundled": true', '"file:../localdep"']),
        ("pnpm-v6/pnpm-lock.yaml", ["type: git", "type: directory", "{tarball: http", "ws-a"]),
        ("pnpm-v9/pnpm-lock.yaml", ["type: git", "type: directory", "tarball: http", "ws-a"]),
        ("yarn-v1/yarn.lock", ['resolved "git+http:', '"localdep@file:']),
        ("yarn-berry/yarn.lock", ["@workspace:", "@link:", "@portal:", "@file:", "@patch:"]),
    ],
)
def test_fixture_really_holds_the_kinds_to_skip(relative: str, skipped: list[str]) -> None:
    text = (FIXTURES / relative).read_text(encoding="utf-8")
    for marker in skipped:
        assert marker in text


def test_pnpm_two_document_lockfile_gives_both_documents_packages() -> None:
    # pnpm 12 with a config dependency: is-number is only in the leading "env" document.
    assert parse_fixture("pnpm-v9-env/pnpm-lock.yaml") == [
        Locked("is-number", "7.0.0", INTEGRITY["is-number", "7.0.0"]),
        Locked("ms", "2.1.3", INTEGRITY["ms", "2.1.3"]),
    ]


def test_npm_shrinkwrap_reads_like_package_lock() -> None:
    text = (FIXTURES / "npm-v3/package-lock.json").read_text(encoding="utf-8")
    assert parse_lockfile("npm-shrinkwrap.json", text) == EXPECTED


@pytest.mark.parametrize(
    "filename",
    [
        "package-lock.json",
        "/srv/app/package-lock.json",
        "app/package-lock.json",
        r"C:\app\package-lock.json",
    ],
)
def test_dispatch_is_on_the_base_name(filename: str) -> None:
    text = (FIXTURES / "npm-v2/package-lock.json").read_text(encoding="utf-8")
    assert parse_lockfile(filename, text) == EXPECTED


def test_byte_order_mark_is_ignored() -> None:
    text = (FIXTURES / "npm-v3/package-lock.json").read_text(encoding="utf-8")
    assert parse_lockfile("package-lock.json", "\ufeff" + text) == EXPECTED


@pytest.mark.parametrize(
    "filename", ["package.json", "bun.lockb", "Package-Lock.json", "yarn.lock.bak", "", "locks/"]
)
def test_unsupported_file_name_lists_the_supported_ones(filename: str) -> None:
    with pytest.raises(LockfileError) as caught:
        parse_lockfile(filename, "{}")
    for name in SUPPORTED_FILENAMES:
        assert name in str(caught.value)


@pytest.mark.parametrize(
    ("filename", "text", "problem"),
    [
        ("package-lock.json", '{"lockfileVersion": 3, "packages": {', "invalid JSON"),
        ("package-lock.json", "", "invalid JSON"),
        ("package-lock.json", "[1, 2]", "JSON object"),
        ("package-lock.json", '{"lockfileVersion": 3}', '"packages"'),
        ("npm-shrinkwrap.json", '{"lockfileVersion": 3, "packages": []}', '"packages"'),
        (
            "package-lock.json",
            '{"lockfileVersion": 3, "packages": {"node_modules/a": "1.0.0"}}',
            "node_modules/a",
        ),
        ("package-lock.json", '{"lockfileVersion": 1, "dependencies": {"a": 7}}', "'a'"),
        ("pnpm-lock.yaml", "lockfileVersion: '9.0'\npackages: [\n", "invalid YAML"),
        ("pnpm-lock.yaml", "- just\n- a list\n", "YAML mapping"),
        ("pnpm-lock.yaml", "packages: {}\n", "lockfileVersion"),
        ("pnpm-lock.yaml", "", "YAML mapping"),
        ("pnpm-lock.yaml", "---\nlockfileVersion: '9.0'\n---\n- a list\n", "YAML mapping"),
        ("yarn.lock", "__metadata:\n  version: 8\n---\n__metadata: {}\n", "one YAML document"),
        ("pnpm-lock.yaml", "lockfileVersion: '9.0'\npackages: 3\n", '"packages"'),
        ("yarn.lock", "__metadata:\n  version: 8\n  bad: [\n", "invalid YAML"),
        ("yarn.lock", '__metadata:\n  version: 8\n\n"a@npm:^1":\n  version: 1.0.0\n', "resolution"),
        ("yarn.lock", '# yarn lockfile v1\n\na@^1.0.0\n  version "1.0.0"\n', "line 3"),
        ("yarn.lock", '  version "1.0.0"\n', "line 1"),
        ("yarn.lock", 'a@^1.0.0:\n  resolved "x"\n', "no version"),
        ("yarn.lock", 'a@^1.0.0:\n  version "1.0.0\n', "line 2"),
        ("yarn.lock", '"a@^1.0.0:\n  version "1.0.0"\n', "line 1"),
    ],
)
def test_malformed_lockfile_is_a_lockfile_error_naming_the_file(
    filename: str, text: str, problem: str
) -> None:
    path = f"/srv/site/{filename}"
    with pytest.raises(LockfileError) as caught:
        parse_lockfile(path, text)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert isinstance(caught.value, ValueError)


# Hand-written entries, mirroring the real formats, for kinds the fixture project lacks.

REGISTRY = "http://127.0.0.1:4880/npm/main/"


def test_npm_packages_skip_non_registry_resolved_and_keep_other_registries() -> None:
    lock = {
        "lockfileVersion": 3,
        "packages": {
            "": {"name": "app", "version": "1.0.0"},
            "node_modules/from-file": {"version": "1.0.0", "resolved": "file:from-file-1.0.0.tgz"},
            "node_modules/from-git": {
                "version": "1.0.0",
                "resolved": "git+ssh://git@example.invalid/a/b.git#0123abc",
            },
            "node_modules/from-url": {
                "version": "1.0.0",
                "resolved": "https://example.invalid/downloads/from-url.tgz",
                "integrity": "sha512-url",
            },
            "node_modules/not-a-version": {"version": "latest"},
            "node_modules/a/node_modules/@s/b": {
                "version": "2.0.0-rc.1",
                "resolved": f"{REGISTRY}@s/b/-/b-2.0.0-rc.1.tgz",
                "integrity": "sha512-b",
            },
            "node_modules/@s/encoded": {
                "version": "1.0.0",
                "resolved": f"{REGISTRY}@s%2fencoded/-/encoded-1.0.0.tgz",
            },
            "node_modules/other-registry": {
                "version": "3.1.4",
                "resolved": "https://mirror.example.invalid/repo/other-registry/-/other-registry-3.1.4.tgz?x=1",
                "integrity": "sha1-other",
            },
        },
    }
    assert parse_lockfile("package-lock.json", json.dumps(lock)) == [
        Locked("@s/b", "2.0.0-rc.1", "sha512-b"),
        Locked("@s/encoded", "1.0.0", None),
        Locked("other-registry", "3.1.4", "sha1-other"),
    ]


def test_npm_duplicates_collapse_keeping_the_strongest_integrity() -> None:
    lock = {
        "lockfileVersion": 3,
        "packages": {
            "node_modules/a": {"version": "1.0.0"},
            "node_modules/b/node_modules/a": {"version": "1.0.0", "integrity": "sha1-weak"},
            "node_modules/c/node_modules/a": {"version": "1.0.0", "integrity": "sha512-strong"},
            "node_modules/d/node_modules/a": {"version": "1.0.0"},
        },
    }
    assert parse_lockfile("package-lock.json", json.dumps(lock)) == [
        Locked("a", "1.0.0", "sha512-strong")
    ]


def test_npm_v1_alias_and_nested_tree() -> None:
    lock = {
        "lockfileVersion": 1,
        "dependencies": {
            "alias": {
                "version": "npm:@s/real@1.2.3",
                "resolved": f"{REGISTRY}@s/real/-/real-1.2.3.tgz",
                "integrity": "sha512-real",
                "dependencies": {
                    "deep": {"version": "0.0.1", "integrity": "sha512-deep"},
                    "gh": {"version": "github:a/b#0123abc", "from": "github:a/b"},
                },
            },
        },
    }
    assert parse_lockfile("package-lock.json", json.dumps(lock)) == [
        Locked("@s/real", "1.2.3", "sha512-real"),
        Locked("deep", "0.0.1", "sha512-deep"),
    ]


def test_pnpm_v9_peer_suffix_and_registry_tarball_field() -> None:
    text = """\
lockfileVersion: '9.0'
packages:
  '@babel/core@7.24.0':
    resolution: {integrity: sha512-core}
  react-dom@18.2.0(react@18.2.0):
    resolution: {integrity: sha512-dom}
  odd@1.0.0:
    resolution: {integrity: sha512-odd, tarball: http://127.0.0.1:4880/npm/main/odd/-/odd-1.0.0.tgz}
  gh@https://codeload.example.invalid/a/b/tar.gz/0123abc:
    resolution: {tarball: https://codeload.example.invalid/a/b/tar.gz/0123abc}
    version: 1.0.0
  ws@link:../ws:
    resolution: {directory: ../ws, type: directory}
snapshots: {}
"""
    assert parse_lockfile("pnpm-lock.yaml", text) == [
        Locked("@babel/core", "7.24.0", "sha512-core"),
        Locked("odd", "1.0.0", "sha512-odd"),
        Locked("react-dom", "18.2.0", "sha512-dom"),
    ]


def test_pnpm_v6_keys_with_slash_and_peer_suffix() -> None:
    text = """\
lockfileVersion: '6.0'
packages:
  /@babel/core@7.24.0:
    resolution: {integrity: sha512-core}
  /foo@1.0.0(peer@1.0.0)(@s/other@2.0.0):
    resolution: {integrity: sha512-foo}
  /no-integrity@1.0.0:
    resolution: {tarball: http://127.0.0.1:4880/npm/main/no-integrity/-/no-integrity-1.0.0.tgz}
  example.invalid/a/b/0123abc:
    resolution: {tarball: https://example.invalid/a/b/tar.gz/0123abc}
    name: b
    version: 1.0.0
"""
    assert parse_lockfile("pnpm-lock.yaml", text) == [
        Locked("@babel/core", "7.24.0", "sha512-core"),
        Locked("foo", "1.0.0", "sha512-foo"),
        Locked("no-integrity", "1.0.0", None),
    ]


def test_yarn_v1_headers_aliases_and_non_registry_resolved() -> None:
    text = """\
# THIS IS AN AUTOGENERATED FILE. DO NOT EDIT THIS FILE DIRECTLY.
# yarn lockfile v1


"@scope/name@^1.0.0", "@scope/name@^1.1.0":
  version "1.2.3"
  resolved "http://127.0.0.1:4880/npm/main/@scope/name/-/name-1.2.3.tgz#0123abc"
  integrity sha512-scoped
  dependencies:
    dep "^1.0.0"

plain@^2.0.0, "plain@>= 2.1 < 3":
  version "2.2.0"
  resolved "http://127.0.0.1:4880/npm/main/plain/-/plain-2.2.0.tgz"

gh@a/b:
  version "1.0.0"
  resolved "https://codeload.example.invalid/a/b/tar.gz/0123abc"

"alias@npm:real@^3":
  version "3.0.0"
  resolved "http://127.0.0.1:4880/npm/main/real/-/real-3.0.0.tgz#0123abc"
  integrity "sha1-a sha512-b"
"""
    # Old yarn 1 versions wrote no integrity; Windows checkouts may have CRLF line ends.
    assert parse_lockfile("yarn.lock", text.replace("\n", "\r\n")) == [
        Locked("@scope/name", "1.2.3", "sha512-scoped"),
        Locked("plain", "2.2.0", None),
        Locked("real", "3.0.0", "sha1-a sha512-b"),
    ]


def test_yarn_berry_patches_archive_urls_and_skipped_protocols() -> None:
    text = """\
__metadata:
  version: 8
  cacheKey: 10c0

"lodash@npm:^4.17.21":
  version: 4.17.21
  resolution: "lodash@npm:4.17.21"
  checksum: 10c0/abc
  languageName: node
  linkType: hard

"lodash@patch:lodash@npm%3A^4.17.21#./lodash.patch":
  version: 4.17.21
  resolution: "lodash@patch:lodash@npm%3A4.17.21#./lodash.patch::version=4.17.21&hash=1a2b3c"
  languageName: node
  linkType: hard

"left@patch:other@npm%3A2.0.0#./left.patch":
  version: 2.0.0
  resolution: "left@patch:@s/other@npm%3A2.0.0#./left.patch::version=2.0.0&hash=4d5e6f"
  languageName: node
  linkType: hard

"odd@npm:1.0.0":
  version: 1.0.0
  resolution: "odd@npm:1.0.0::__archiveUrl=http%3A%2F%2F127.0.0.1%3A4880%2Ffiles%2Fodd.tgz"
  languageName: node
  linkType: hard

"app@workspace:.":
  version: 0.0.0-use.local
  resolution: "app@workspace:."
  languageName: unknown
  linkType: soft

"built@exec:./gen.js":
  version: 1.0.0
  resolution: "built@exec:./gen.js#./gen.js::hash=0&locator=app%40workspace%3A."
  languageName: node
  linkType: hard

"gh@https://example.invalid/a/b.git":
  version: 1.0.0
  resolution: "gh@https://example.invalid/a/b.git#commit=0123abc"
  languageName: node
  linkType: hard
"""
    assert parse_lockfile("yarn.lock", text) == [
        Locked("@s/other", "2.0.0", None),
        Locked("lodash", "4.17.21", None),
        Locked("odd", "1.0.0", None),
    ]


# Property: any generated v3 lock gives back exactly its registry entries.

_NAMES = st.from_regex(r"(@[a-z][a-z0-9-]{0,6}/)?[a-z][a-z0-9.-]{0,10}", fullmatch=True)
_VERSIONS = st.builds(
    lambda major, minor, patch, pre: f"{major}.{minor}.{patch}{pre}",
    st.integers(0, 30),
    st.integers(0, 30),
    st.integers(0, 300),
    st.sampled_from(["", "-alpha.1", "-rc.0", "-beta"]),
)
_REGISTRY_ENTRY = st.fixed_dictionaries(
    {
        "parents": st.lists(_NAMES, max_size=2),
        "name": _NAMES,
        "version": _VERSIONS,
        "alias": st.none() | _NAMES,
        "with_integrity": st.booleans(),
        "resolved": st.booleans(),
    }
)
# Entries npm writes for things no registry serves; their names (underscore) cannot collide.
_NOISE: list[dict[str, Any]] = [
    {"resolved": "packages/ws", "link": True},
    {"version": "1.0.0", "inBundle": True},
    {"version": "1.0.0", "resolved": "git+ssh://git@example.invalid/a/b.git#0123abc"},
    {"version": "1.0.0", "resolved": "https://example.invalid/files/thing.tgz"},
    {"version": "1.0.0", "resolved": "file:vendor/thing-1.0.0.tgz"},
]


def _integrity(name: str, version: str) -> str:
    digest = hashlib.sha512(f"{name}@{version}".encode()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def _tarball(name: str, version: str) -> str:
    return f"{REGISTRY}{name}/-/{name.rpartition('/')[2]}-{version}.tgz"


@given(st.lists(_REGISTRY_ENTRY, max_size=25), st.lists(st.sampled_from(_NOISE), max_size=5))
def test_generated_v3_lock_round_trips(
    entries: list[dict[str, Any]], noise: list[dict[str, Any]]
) -> None:
    packages: dict[str, dict[str, Any]] = {"": {"name": "root_app", "version": "1.0.0"}}
    packages["packages/ws"] = {"name": "ws_pkg", "version": "0.1.0"}
    real_name: dict[str, tuple[str, str, bool]] = {}
    for entry in entries:
        folder = entry["alias"] or entry["name"]
        key = "".join(f"node_modules/{p}/" for p in entry["parents"]) + f"node_modules/{folder}"
        name, version = entry["name"], entry["version"]
        value: dict[str, Any] = {"version": version}
        if entry["alias"]:
            value["name"] = name
        if entry["resolved"]:
            value["resolved"] = _tarball(name, version)
        if entry["with_integrity"]:
            value["integrity"] = _integrity(name, version)
        packages[key] = value
        real_name[key] = (name, version, entry["with_integrity"])
    for index, value in enumerate(noise):
        packages[f"node_modules/noise_{index}"] = value
    lock = {"name": "root_app", "lockfileVersion": 3, "requires": True, "packages": packages}

    recorded: dict[tuple[str, str], bool] = {}
    for name, version, with_integrity in real_name.values():
        recorded[name, version] = recorded.get((name, version), False) or with_integrity
    expected = sorted(
        Locked(name, version, _integrity(name, version) if has else None)
        for (name, version), has in recorded.items()
    )
    assert parse_lockfile("package-lock.json", json.dumps(lock)) == expected
