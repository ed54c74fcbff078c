"""Tests for entrepot.http.paths: request paths as npm clients send them, and as attackers do."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entrepot.errors import BadRequest
from entrepot.http.paths import MAX_PATH, decode_segment, split_path, take_package_name


@pytest.mark.parametrize(
    "raw",
    [
        b"/npm/main/@acme%2fwidget",
        b"/npm/main/@acme%2Fwidget",
        b"/npm/main/@acme%2fWIDGET"[:-6] + b"widget",
    ],
)
def test_encoded_slash_in_a_scoped_name(raw: bytes) -> None:
    segments = split_path(raw)
    assert segments == ["npm", "main", "@acme/widget"]
    assert take_package_name(segments[2:]) == ("@acme/widget", [])


def test_literal_slash_in_a_scoped_name() -> None:
    segments = split_path(b"/npm/main/@acme/widget")
    assert segments == ["npm", "main", "@acme", "widget"]
    assert take_package_name(segments[2:]) == ("@acme/widget", [])


@pytest.mark.parametrize(
    "raw",
    [
        b"/@acme%2fwidget/-/widget-1.0.0.tgz",
        b"/@acme%2Fwidget/-/widget-1.0.0.tgz",
        b"/@acme/widget/-/widget-1.0.0.tgz",
    ],
)
def test_tarball_paths_of_scoped_packages(raw: bytes) -> None:
    assert take_package_name(split_path(raw)) == ("@acme/widget", ["-", "widget-1.0.0.tgz"])


def test_unscoped_name_and_rest() -> None:
    assert take_package_name(split_path(b"/demo/-rev/3-abc")) == ("demo", ["-rev", "3-abc"])


@pytest.mark.parametrize(
    "rest",
    [[], [""], ["@acme"], ["@acme", ""], ["@acme/"], ["@acme/a/b"], ["a/b"]],
)
def test_take_package_name_refuses_incomplete_names(rest: list[str]) -> None:
    with pytest.raises(BadRequest):
        take_package_name(rest)


def test_percent_encoded_utf8_is_decoded() -> None:
    assert split_path(b"/npm/main/caf%C3%A9") == ["npm", "main", "café"]


def test_trailing_slash_gives_an_empty_segment() -> None:
    assert split_path(b"/npm/main/") == ["npm", "main", ""]


@pytest.mark.parametrize(
    "raw",
    [
        b"/npm/main/..",
        b"/npm/../main",
        b"/npm/main/.",
        b"/npm/main/%2e%2e",
        b"/npm/main/%2E%2E",
        b"/npm/main/.%2e",
        b"/npm/main/%2e",
        b"/npm/main/@acme%2f..",
        b"/npm/main/..%2fetc",
        b"/npm/main/demo/-/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    ],
)
def test_dot_segments_are_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest, match=r"'\.' and '\.\.'"):
        split_path(raw)


@pytest.mark.parametrize("raw", [b"/npm/main/a\\b", b"/npm/main/%5c", b"/npm/main/..%5C..%5Cx"])
def test_backslashes_are_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="backslash"):
        split_path(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"/npm/main/%00",
        b"/npm/main/demo%00.tgz",
        b"/npm/main/%0a",
        b"/npm/main/%0D%0ASet-Cookie:x",
        b"/npm/main/%1b",
        b"/npm/main/%7f",
        b"/npm/main/a\x00b",
        b"/npm/main/a\tb",
        b"/npm/main/a\x7fb",
    ],
)
def test_nul_and_control_characters_are_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="control characters"):
        split_path(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"/npm/main/%252f",
        b"/npm/main/@acme%252fwidget",
        b"/npm/main/%252e%252e",
        b"/x/%255c",
        b"/x/%2500",
    ],
)
def test_double_encoding_is_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="double-encoded"):
        split_path(raw)


@pytest.mark.parametrize(
    "raw", ["/npm/main/café".encode(), b"/npm/main/\xff", b"/npm/\xc0\xae\xc0\xae"]
)
def test_raw_non_ascii_is_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="ASCII"):
        split_path(raw)


@pytest.mark.parametrize(
    "raw", [b"/npm/main/%ff", b"/npm/main/%c0%ae%c0%ae", b"/npm/main/%ed%a0%80"]
)
def test_percent_encoded_invalid_utf8_is_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="UTF-8"):
        split_path(raw)


def test_too_long_is_refused() -> None:
    split_path(b"/" + b"a" * (MAX_PATH - 1))
    with pytest.raises(BadRequest, match="too long"):
        split_path(b"/" + b"a" * MAX_PATH)


@pytest.mark.parametrize("raw", [b"npm/main", b"*", b"npm/../x"])
def test_must_start_with_a_slash(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="start with /"):
        split_path(raw)


def test_lone_percent_is_left_alone() -> None:
    assert decode_segment("100%") == "100%"
    assert decode_segment("%zz") == "%zz"


_TRICKY = st.sampled_from(
    [
        "%2f",
        "%2F",
        "%2e",
        "%2E",
        "%5c",
        "%5C",
        "%00",
        "%25",
        "%0a",
        "%ff",
        "%c3%a9",
        "%",
        ".",
        "/",
        "\\",
        "@",
        "a",
        "-",
    ]
)


def _check(segments: list[str]) -> None:
    for segment in segments:
        assert segment not in (".", "..")
        assert ".." not in segment.split("/")
        assert "\\" not in segment
        assert "\x00" not in segment
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in segment)


@given(st.lists(_TRICKY, max_size=30).map(lambda parts: "/" + "".join(parts)))
def test_split_path_never_returns_a_dangerous_segment(path: str) -> None:
    try:
        segments = split_path(path.encode())
    except BadRequest:
        return
    _check(segments)


@given(st.binary(max_size=200))
def test_split_path_on_arbitrary_bytes_only_raises_bad_request(raw: bytes) -> None:
    try:
        segments = split_path(b"/" + raw)
    except BadRequest:
        return
    _check(segments)
