"""Parsing request paths the way npm clients send them.

Paths are split on ``/`` before percent-decoding, so ``@scope%2fname`` (npm, yarn, bun),
``@scope%2Fname`` (pnpm) and ``@scope/name`` all name the same package, while a decoded
segment can never smuggle in ``..``, a backslash, NUL or other control characters.
"""

from __future__ import annotations

import dataclasses
import re
from urllib.parse import unquote

from entrepot.errors import BadRequest

MAX_PATH = 4096


@dataclasses.dataclass(frozen=True)
class NpmPath:
    """A request under ``/npm/<feed>/``: the feed and the remaining decoded segments."""

    feed: str
    rest: tuple[str, ...]


#: Segments made only of these need no decoding and no further checks (the hot path).
_PLAIN = re.compile(r"[A-Za-z0-9_~@!$&'()*+,;=:-][A-Za-z0-9._~@!$&'()*+,;=:-]*")


def decode_segment(raw: str) -> str:
    """Percent-decode one path segment and refuse the dangerous results."""
    if _PLAIN.fullmatch(raw) and raw != "..":
        return raw
    text = unquote(raw, errors="strict") if "%" in raw else raw
    # "@s%2f.." decodes to one segment whose last part is "..": refuse that too.
    if any(part in (".", "..") for part in text.split("/")):
        raise BadRequest("path segments '.' and '..' are not allowed")
    if "\\" in text:
        raise BadRequest("backslashes are not allowed in paths")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise BadRequest("control characters are not allowed in paths")
    if "%" in text and any(
        text[i + 1 : i + 3].lower() in ("2f", "2e", "5c", "00")
        for i, c in enumerate(text)
        if c == "%"
    ):
        raise BadRequest("double-encoded path characters are not allowed")
    return text


def split_path(raw_path: bytes) -> list[str]:
    """The raw path's segments, decoded; leading empty segment dropped."""
    if len(raw_path) > MAX_PATH:
        raise BadRequest("the path is too long")
    try:
        text = raw_path.decode("ascii")
    except UnicodeDecodeError:
        raise BadRequest("the path must be ASCII (percent-encode other characters)") from None
    parts = text.split("/")
    if parts[0] != "":
        raise BadRequest("the path must start with /")
    try:
        return [decode_segment(p) for p in parts[1:]]
    except UnicodeDecodeError:
        raise BadRequest("the path is not valid UTF-8 after percent-decoding") from None


def take_package_name(rest: list[str]) -> tuple[str, list[str]]:
    """Split ``[@scope, name, ...]`` or ``[@scope/name, ...]`` or ``[name, ...]``."""
    if not rest or not rest[0]:
        raise BadRequest("no package name in the path")
    first = rest[0]
    if first.startswith("@"):
        if "/" in first:
            bare = first.partition("/")[2]
            if not bare or "/" in bare:
                raise BadRequest(f"invalid scoped package name {first[:100]!r}")
            return first, rest[1:]
        if len(rest) < 2 or not rest[1] or "/" in rest[1]:
            raise BadRequest(f"invalid scoped package name {first[:100]!r}")
        return f"{first}/{rest[1]}", rest[2:]
    if "/" in first:
        raise BadRequest(f"invalid package name {first[:100]!r}")
    return first, rest[1:]
