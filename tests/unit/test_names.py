"""Tests for entrepot.npm.names.

NAME_CASES was produced once by running the real validate-npm-package-name on each name; the
tests compare the port against it and never call node.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entrepot.npm.names import (
    NODE_BUILTIN_MODULES,
    InvalidPackageName,
    is_safe_path_part,
    split_name,
    validate_package_name,
)

# Generated once with validate-npm-package-name 6.0.2 on node 20: errors then warnings.
NAME_CASES: list[tuple[str, list[str]]] = [
    ("some-package", []),
    ("example.com", []),
    ("under_score", []),
    ("period.js", []),
    ("123numeric", []),
    ("crazy!", ['name can no longer contain special characters ("~\'!()*")']),
    ("@npm/thingy", []),
    ("@npm-zors/money!time.js", ['name can no longer contain special characters ("~\'!()*")']),
    ("@npm/.hidden", ["name cannot start with a period"]),
    ("@npm/_under", []),
    ("@.npm/thing", []),
    ("@npm", ["name can only contain URL-friendly characters"]),
    ("@npm/", ["name can only contain URL-friendly characters"]),
    ("@/pkg", ["name can only contain URL-friendly characters"]),
    ("@npm/a/b", ["name can only contain URL-friendly characters"]),
    ("a/b", ["name can only contain URL-friendly characters"]),
    ("", ["name length must be greater than zero"]),
    (".start-with-period", ["name cannot start with a period"]),
    ("_start-with-underscore", ["name cannot start with an underscore"]),
    ("contain:colons", ["name can only contain URL-friendly characters"]),
    (
        " leading-space",
        [
            "name cannot contain leading or trailing spaces",
            "name can only contain URL-friendly characters",
        ],
    ),
    (
        "trailing-space ",
        [
            "name cannot contain leading or trailing spaces",
            "name can only contain URL-friendly characters",
        ],
    ),
    ("s/l/a/s/h/e/s", ["name can only contain URL-friendly characters"]),
    ("node_modules", ["node_modules is not a valid package name"]),
    (
        "NODE_MODULES",
        ["node_modules is not a valid package name", "name can no longer contain capital letters"],
    ),
    ("favicon.ico", ["favicon.ico is not a valid package name"]),
    ("http", ["http is a core module name"]),
    ("HTTP", ["HTTP is a core module name", "name can no longer contain capital letters"]),
    ("fs", ["fs is a core module name"]),
    (
        "fs/promises",
        ["name can only contain URL-friendly characters", "fs/promises is a core module name"],
    ),
    ("child_process", ["child_process is a core module name"]),
    ("sys", ["sys is a core module name"]),
    ("test", []),
    ("process", ["process is a core module name"]),
    ("@scope/http", []),
    ("CAPITAL-LETTERS", ["name can no longer contain capital letters"]),
    ("@Scope/pkg", ["name can no longer contain capital letters"]),
    ("@scope/Pkg", ["name can no longer contain capital letters"]),
    (
        "ifyouwanttogetthesumoftwonumberswherethosetwonumbersarechosenbyfindingthelargestoftwooutofthreenumbersandsquaringthemwhichismultiplyingthembyitselfthenyoushouldinputthreenumbersintothisfunctionanditwilldothatforyou-",
        ["name can no longer contain more than 214 characters"],
    ),
    (
        "ifyouwanttogetthesumoftwonumberswherethosetwonumbersarechosenbyfindingthelargestoftwooutofthreenumbersandsquaringthemwhichismultiplyingthembyitselfthenyoushouldinputthreenumbersintothisfunctionanditwilldothatforyo",
        [],
    ),
    ("~tilde", ['name can no longer contain special characters ("~\'!()*")']),
    ("'quote", ['name can no longer contain special characters ("~\'!()*")']),
    ("paren(s)", ['name can no longer contain special characters ("~\'!()*")']),
    ("star*", ['name can no longer contain special characters ("~\'!()*")']),
    ("@sc!ope/pkg", []),
    ("@scope/pk!g", ['name can no longer contain special characters ("~\'!()*")']),
    ("café", ["name can only contain URL-friendly characters"]),
    (
        "\xa0nbsp",
        [
            "name cannot contain leading or trailing spaces",
            "name can only contain URL-friendly characters",
        ],
    ),
    (
        "tab\t",
        [
            "name cannot contain leading or trailing spaces",
            "name can only contain URL-friendly characters",
        ],
    ),
    ("new\nline", ["name can only contain URL-friendly characters"]),
    ("pkg%20", ["name can only contain URL-friendly characters"]),
    ("pkg+plus", ["name can only contain URL-friendly characters"]),
    ("pkg@1", ["name can only contain URL-friendly characters"]),
    ("pkg#hash", ["name can only contain URL-friendly characters"]),
    ("pkg?q", ["name can only contain URL-friendly characters"]),
    ("pkg space", ["name can only contain URL-friendly characters"]),
    ("-dash-first", []),
    ("1", []),
    ("a", []),
    ("a.b.c", []),
    ("a..b", []),
    ("..", ["name cannot start with a period"]),
    (".", ["name cannot start with a period"]),
    (
        " ",
        [
            "name cannot contain leading or trailing spaces",
            "name can only contain URL-friendly characters",
        ],
    ),
    ("@scope/pkg.js", []),
    ("@scope/-pkg", []),
    ("@scope/~pkg", ['name can no longer contain special characters ("~\'!()*")']),
    ("@@scope/pkg", ["name can only contain URL-friendly characters"]),
    ("@scope//pkg", ["name can only contain URL-friendly characters"]),
]


@pytest.mark.parametrize(("name", "problems"), NAME_CASES)
def test_matches_validate_npm_package_name(name: str, problems: list[str]) -> None:
    if not problems:
        validate_package_name(name)
        return
    with pytest.raises(InvalidPackageName) as raised:
        validate_package_name(name)
    assert list(raised.value.problems) == problems
    assert str(raised.value) == "; ".join(problems)
    assert raised.value.name == name


def test_invalid_package_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="name can no longer contain capital letters"):
        validate_package_name("Foo")


def test_lone_surrogate_is_refused() -> None:
    # encodeURIComponent throws on it; the registry must refuse it too.
    with pytest.raises(InvalidPackageName, match="URL-friendly"):
        validate_package_name("a\ud800")


@pytest.mark.parametrize("name", sorted(NODE_BUILTIN_MODULES))
def test_core_module_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidPackageName, match="is a core module name"):
        validate_package_name(name)


def test_length_limit() -> None:
    validate_package_name("a" * 214)
    with pytest.raises(InvalidPackageName, match="more than 214 characters"):
        validate_package_name("a" * 215)
    validate_package_name("@" + "s" * 100 + "/" + "p" * 112)
    with pytest.raises(InvalidPackageName, match="more than 214 characters"):
        validate_package_name("@" + "s" * 100 + "/" + "p" * 113)


_NAME_CHARS = string.ascii_lowercase + string.digits + "-._"


@given(st.text(_NAME_CHARS, min_size=1, max_size=50), st.text(_NAME_CHARS, min_size=1, max_size=50))
def test_plain_and_scoped_names(scope: str, bare: str) -> None:
    if bare[0] not in "._" and bare not in NODE_BUILTIN_MODULES | {"node_modules", "favicon.ico"}:
        validate_package_name(bare)
    if bare[0] != ".":
        validate_package_name(f"@{scope}/{bare}")
    assert split_name(f"@{scope}/{bare}") == (scope, bare)
    assert split_name(bare) == (None, bare)


@given(st.text(max_size=30))
def test_valid_names_are_url_safe_and_lowercase(name: str) -> None:
    try:
        validate_package_name(name)
    except InvalidPackageName as error:
        assert error.problems
        return
    assert name == name.lower().strip()
    assert set(name) <= set(_NAME_CHARS + "@/~'!()*")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("foo", (None, "foo")),
        ("@scope/foo", ("scope", "foo")),
        ("@scope/foo.js", ("scope", "foo.js")),
        ("@Scope/Foo", ("Scope", "Foo")),
    ],
)
def test_split_name(name: str, expected: tuple[str | None, str]) -> None:
    assert split_name(name) == expected


@pytest.mark.parametrize("name", ["", "@scope", "@scope/", "@/foo", "@scope/a/b", "a/b", "/a"])
def test_split_name_refuses_other_shapes(name: str) -> None:
    with pytest.raises(InvalidPackageName):
        split_name(name)


@pytest.mark.parametrize(
    ("text", "safe"),
    [
        ("foo-1.0.0.tgz", True),
        ("@scope", True),
        ("...", True),
        (".hidden", True),
        ("naïve.tgz", True),
        ("", False),
        (".", False),
        ("..", False),
        ("a/b", False),
        ("/", False),
        ("a\\b", False),
        ("a\x00b", False),
        ("a\nb", False),
        ("a\x1fb", False),
        ("a\x7fb", False),
        ("a\x85b", False),
        ("a\ud800b", False),
    ],
)
def test_is_safe_path_part(text: str, safe: bool) -> None:
    assert is_safe_path_part(text) is safe


@given(st.text(max_size=20))
def test_safe_path_parts_stay_in_their_directory(text: str) -> None:
    if is_safe_path_part(text):
        assert text not in ("", ".", "..")
        assert not set(text) & {"/", "\\", "\x00"}
        assert all(c.isprintable() or c == " " or not c.isascii() for c in text)
