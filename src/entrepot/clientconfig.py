"""Pure editors and readers for the client configuration files ``entrepot connect`` writes.

Every function takes the text of a file and returns text (or a description): no I/O. Editors
change only their own entries and keep every other line, comment and key byte for byte,
including CRLF line endings and a missing final newline. Setting twice gives the result of
setting once, and removing a freshly set entry gives back the original text.

- ``.npmrc`` (npm, pnpm, yarn 1): ``npmrc_set`` / ``npmrc_remove`` / ``npmrc_parse``, read the
  way npm's ``ini`` 6 parser reads them, and the entries connect writes:
  ``//host/path/:_authToken=T`` (user file), ``registry=URL`` / ``@scope:registry=URL``
  (project file).
- ``.yarnrc.yml`` (yarn 4): ``yarnrc_set_registry`` / ``yarnrc_remove_registry`` edit the text
  (a YAML dump would drop the comments) and check the result with a YAML parser.
- ``~/.upmconfig.toml`` (Unity): ``upmconfig_set`` / ``upmconfig_remove`` / ``upmconfig_parse``.
- ``Packages/manifest.json`` (Unity): ``manifest_add_scoped_registry`` /
  ``manifest_remove_scoped_registry``, keeping key order and indentation.
- For ``entrepot doctor``: ``npmrc_registries`` tells which credential npm 11 sends to each
  configured registry, ``npmrc_problems`` what in the files npm 11 rejects or misreads.

A text that cannot be edited safely (invalid syntax, an unexpected structure) raises
``ClientConfigError``; a bad argument (not an http(s) URL, an empty scope) raises
``ValueError``.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import ipaddress
import json
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import yaml

__all__ = [
    "ClientConfigError",
    "ConfigSource",
    "CredentialKind",
    "Problem",
    "ProblemKind",
    "RegistryCredential",
    "manifest_add_scoped_registry",
    "manifest_remove_scoped_registry",
    "mask_secret",
    "nerf_dart",
    "normalize_registry_url",
    "npm_auth_key",
    "npmrc_auth_token_key",
    "npmrc_parse",
    "npmrc_problems",
    "npmrc_registries",
    "npmrc_registry_key",
    "npmrc_remove",
    "npmrc_remove_auth_token",
    "npmrc_remove_registry",
    "npmrc_set",
    "npmrc_set_auth_token",
    "npmrc_set_registry",
    "upmconfig_parse",
    "upmconfig_remove",
    "upmconfig_set",
    "yarnrc_remove_registry",
    "yarnrc_set_registry",
]


class ClientConfigError(ValueError):
    """A configuration text that cannot be read or edited safely; the message says why."""


# --------------------------------------------------------------------------- lines


@dataclasses.dataclass
class _Line:
    text: str
    eol: str  # "\n", "\r\n", "\r", or "" for a last line without a line break


_LINE = re.compile(r"([^\r\n]*)(\r\n|\r|\n|)")


def _split_lines(text: str) -> list[_Line]:
    lines: list[_Line] = []
    pos = 0
    while pos < len(text):
        match = _LINE.match(text, pos)
        assert match is not None
        lines.append(_Line(match.group(1), match.group(2)))
        pos = match.end()
    return lines


def _join(lines: Iterable[_Line]) -> str:
    return "".join(line.text + line.eol for line in lines)


def _eol_of(text: str) -> str:
    match = re.search(r"\r\n|\r|\n", text)
    return match.group(0) if match else "\n"


def _insert(lines: list[_Line], index: int, texts: Sequence[str], eol: str) -> None:
    """Insert ``texts`` as lines before ``index``, keeping a missing final newline missing."""
    new = [_Line(text, eol) for text in texts]
    if not new:
        return
    if index == len(lines) and lines and lines[-1].eol == "":
        lines[-1].eol = eol
        new[-1].eol = ""
    lines[index:index] = new


def _delete(lines: list[_Line], start: int, end: int) -> None:
    """Delete lines ``[start, end)``; the exact inverse of ``_insert``."""
    if start >= end:
        return
    tail = end == len(lines) and lines[end - 1].eol == ""
    del lines[start:end]
    # The file had no final line break: the line now last loses its break, unless it is
    # empty, which would make it disappear (removing "b" from "a\n\nb" keeps the blank line).
    if tail and start > 0 and lines[start - 1].text:
        lines[start - 1].eol = ""


def _replace(lines: list[_Line], start: int, end: int, texts: Sequence[str], eol: str) -> None:
    if start >= end:
        _insert(lines, start, texts, eol)
        return
    last_eol = lines[end - 1].eol
    new = [_Line(text, eol) for text in texts]
    if new:
        new[-1].eol = last_eol
    elif last_eol == "" and start > 0 and lines[start - 1].text:
        lines[start - 1].eol = ""
    lines[start:end] = new


# --------------------------------------------------------------------------- URLs

_SPECIAL_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21}
# The WHATWG path percent-encode set, minus "?" and "#", which end the path.
_PATH_ENCODE = frozenset(' "<>`{}')
_DOT_SEGMENTS = {".", "%2e"}
_DOUBLE_DOT_SEGMENTS = {"..", ".%2e", "%2e.", "%2e%2e"}


@dataclasses.dataclass(frozen=True)
class _Url:
    scheme: str
    hostname: str  # lower case; IPv6 in brackets
    port: str  # "" for the scheme's default port
    path: str  # percent-encoded, dot segments resolved, starts with "/"

    @property
    def host(self) -> str:
        return f"{self.hostname}:{self.port}" if self.port else self.hostname


def _parse_url(url: str) -> _Url:
    """Parse an http(s) URL the way the WHATWG URL parser (Node's ``new URL``) does."""
    text = url.strip(
        "\x00\x01\x02\x03\x04\x05\x06\x07\x08\t\n\x0b\x0c\r\x0e\x0f\x10\x11\x12"
        "\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f "
    )
    text = re.sub(r"[\t\n\r]", "", text)
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", text)
    if match is None or match.group(1).lower() not in _SPECIAL_PORTS:
        raise ValueError(f"not an http or https URL: {url!r}")
    scheme = match.group(1).lower()
    rest = text[match.end() :].replace("\\", "/")
    rest = rest.lstrip("/")
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found != -1:
            end = min(end, found)
    authority, rest = rest[:end], rest[end:]
    authority = authority.rpartition("@")[2]
    if authority.startswith("["):
        close = authority.find("]")
        if close == -1:
            raise ValueError(f"bad IPv6 host in {url!r}")
        try:
            address = ipaddress.IPv6Address(authority[1:close])
        except ValueError as exc:
            raise ValueError(f"bad IPv6 host in {url!r}") from exc
        hostname = f"[{address.compressed}]"
        port_text = authority[close + 1 :]
        if port_text and not port_text.startswith(":"):
            raise ValueError(f"bad host in {url!r}")
        port_text = port_text[1:]
    else:
        hostname, _, port_text = authority.partition(":")
        hostname = urllib.parse.unquote(hostname)
        if not hostname.isascii():
            try:
                hostname = hostname.encode("idna").decode("ascii")
            except UnicodeError as exc:
                raise ValueError(f"bad host in {url!r}") from exc
        hostname = hostname.lower()
        if not hostname or re.search(r"[\x00-\x20#%/:<>?@\[\\\]^|]", hostname):
            raise ValueError(f"bad host in {url!r}")
    port = ""
    if port_text:
        if not port_text.isdigit() or int(port_text) > 65535:
            raise ValueError(f"bad port in {url!r}")
        if int(port_text) != _SPECIAL_PORTS[scheme]:
            port = str(int(port_text))
    path = rest.split("?", 1)[0].split("#", 1)[0]
    return _Url(scheme, hostname, port, _normalize_path(path))


def _normalize_path(path: str) -> str:
    segments: list[str] = []
    parts = path.split("/")[1:] if path else [""]
    for index, raw in enumerate(parts):
        last = index == len(parts) - 1
        lowered = raw.lower()
        if lowered in _DOUBLE_DOT_SEGMENTS:
            if segments:
                segments.pop()
            if last:
                segments.append("")
        elif lowered in _DOT_SEGMENTS:
            if last:
                segments.append("")
        else:
            segments.append(_percent_encode_path(raw))
    return "/" + "/".join(segments)


def _percent_encode_path(segment: str) -> str:
    out: list[str] = []
    for char in segment:
        if char in _PATH_ENCODE or ord(char) < 0x21 or ord(char) > 0x7E:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
        else:
            out.append(char)
    return "".join(out)


def nerf_dart(url: str) -> str:
    """npm's "nerf dart" of a registry URL: the prefix of its credential keys in ``.npmrc``.

    ``http://127.0.0.1:4880/npm/main/`` gives ``//127.0.0.1:4880/npm/main/``. Like
    ``@npmcli/config``'s ``nerf-dart.js`` (``new URL('.', url)``) it drops the scheme, user
    info, query, fragment and a default port, lower-cases the host, and drops the last path
    segment when the URL has no trailing slash: ``http://h/npm/main`` gives ``//h/npm/``. That
    is where npm publish and whoami look for the credentials of such a registry, so write
    registry URLs with the trailing slash (``normalize_registry_url``). Raises ``ValueError``
    for anything but an http(s) URL with a host.
    """
    parsed = _parse_url(url)
    directory = parsed.path[: parsed.path.rfind("/") + 1]
    return f"//{parsed.host}{directory}"


def normalize_registry_url(url: str) -> str:
    """The registry URL as connect writes it: http(s), no credentials, a trailing slash.

    Raises ``ValueError`` for another scheme, a missing host, user info, a query or a fragment.
    """
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"a registry URL is http:// or https:// with a host, not {url!r}")
    if "@" in parts.netloc:
        raise ValueError(f"put credentials in a token, not in the registry URL {url!r}")
    if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):
        raise ValueError(f"a registry URL has no query or fragment: {url!r}")
    _parse_url(url)  # the same checks npm's parser makes
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return urllib.parse.urlunsplit((scheme, parts.netloc, path, "", ""))


def _same_url(a: str, b: str) -> bool:
    return a.removesuffix("/") == b.removesuffix("/")


_SECRET_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9]{0,7}_")


def mask_secret(value: str) -> str:
    """A secret safe to print: ``ent_abcdefghijkl`` gives ``ent_…ijkl``.

    A short type prefix (``ent_``, ``npm_``) stays; of the rest only the last four characters
    are shown, and none when fewer than eight remain.
    """
    match = _SECRET_PREFIX.match(value)
    prefix = match.group(0) if match else ""
    rest = value[len(prefix) :]
    if len(rest) < 8:
        return prefix + "…"
    return prefix + "…" + rest[-4:]


def _validate_npm_scope(scope: str) -> str:
    name = scope.removeprefix("@")
    if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._~-]*", name):
        raise ValueError(f"not an npm scope: {scope!r} (expected @name)")
    return "@" + name


# --------------------------------------------------------------------------- .npmrc

# What JavaScript's \s and String.prototype.trim() treat as white space.
_JS_WS = (
    "\t\n\x0b\x0c\r \xa0\u1680"
    + "".join(chr(code) for code in range(0x2000, 0x200B))
    + "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_JS_WS_CLASS = "[" + re.escape(_JS_WS) + "]"
_INI_SKIP = re.compile(rf"{_JS_WS_CLASS}*(?:[;#]|\Z)")
_INI_SECTION = re.compile(rf"\[([^\]]*)\]{_JS_WS_CLASS}*\Z")
# JavaScript's "." stops at these; a line that needs it to match them is ignored by npm.
_INI_ASSIGN = re.compile(r"([^=]+)(=([^\n\r\u2028\u2029]*))?\Z")


def _js_trim(value: str) -> str:
    return value.strip(_JS_WS)


def _ini_quoted(value: str) -> bool:
    return (value.startswith('"') and value.endswith('"')) or (
        value.startswith("'") and value.endswith("'")
    )


def _js_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, list):
        return ",".join("" if item is None else _js_string(item) for item in value)
    return "[object Object]"


def _reject_constant(name: str) -> Any:
    raise ValueError(name)  # JSON.parse has no NaN or Infinity


def _ini_unsafe(raw: str) -> str:
    """npm's ``ini`` 6 ``unsafe``: unquote, or cut an unescaped ``;``/``#`` comment."""
    value = _js_trim(raw)
    if _ini_quoted(value):
        if value[0] == "'":
            value = value[1:-1]
        try:
            return _js_string(json.loads(value, parse_constant=_reject_constant))
        except ValueError:
            return value
    out: list[str] = []
    escaped = False
    for char in value:
        if escaped:
            out.append(char if char in "\\;#" else "\\" + char)
            escaped = False
        elif char in ";#":
            break
        elif char == "\\":
            escaped = True
        else:
            out.append(char)
    if escaped:
        out.append("\\")
    return _js_trim("".join(out))


@dataclasses.dataclass(frozen=True)
class _IniItem:
    index: int  # line number
    key: str
    value: str


def _ini_items(lines: Sequence[_Line]) -> tuple[list[_IniItem], int]:
    """The top-level assignments (before any ``[section]``) and the first section's line."""
    items: list[_IniItem] = []
    for index, line in enumerate(lines):
        text = line.text
        if _INI_SKIP.match(text):
            continue
        if _INI_SECTION.match(text):
            return items, index
        match = _INI_ASSIGN.match(text)
        if match is None:
            continue
        key = _ini_unsafe(match.group(1))
        if len(key) > 2 and key.endswith("[]"):
            key = key[:-2]  # "key[]=v" appends to a list: its last value is what we report
        value = _ini_unsafe(match.group(3)) if match.group(2) is not None else "true"
        if key == "__proto__":
            continue
        items.append(_IniItem(index, key, value))
    return items, len(lines)


def npmrc_parse(text: str) -> dict[str, str]:
    """The top-level settings of an ``.npmrc``, read the way npm's ``ini`` parser reads them.

    The last assignment of a key wins; keys and values are trimmed; a value in double quotes is
    JSON-decoded, one in single quotes has them removed; an unquoted value ends at an unescaped
    ``;`` or ``#``; a key without ``=`` is ``"true"``. ``${VAR}`` references are kept as
    written. ``key[]=v`` lines make a list in npm; the last value is reported. Keys under a
    ``[section]`` header are not npm settings and are left out.
    """
    items, _ = _ini_items(_split_lines(text))
    return {item.key: item.value for item in items}


def _ini_value(value: str) -> str:
    needs_quotes = (
        value != _js_trim(value)
        or _ini_quoted(value)
        or any(char in value for char in ";#\\\r\n\u2028\u2029")
    )
    return json.dumps(value) if needs_quotes else value


def _check_npmrc_key(key: str) -> None:
    if (
        not key
        or key != _js_trim(key)
        or key == "__proto__"
        or key.startswith("[")
        or _ini_quoted(key)
        or any(char in key for char in "=;#\\\r\n\u2028\u2029")
    ):
        raise ValueError(f"not a key this editor writes to .npmrc: {key!r}")


def npmrc_set(text: str, key: str, value: str) -> str:
    """Set ``key=value`` in an ``.npmrc``, changing nothing else.

    The first top-level assignment of exactly ``key`` is replaced and later ones are removed;
    otherwise the line is added at the end (before the first ``[section]``, if any), after a
    line break if the file lacks its final one. Uses the file's line endings. The value is
    quoted when npm would otherwise misread it (a ``;``, ``#``, ``\\``, surrounding spaces).
    """
    _check_npmrc_key(key)
    lines = _split_lines(text)
    eol = _eol_of(text)
    items, section = _ini_items(lines)
    matching = [item.index for item in items if item.key == key]
    new_line = f"{key}={_ini_value(value)}"
    if not matching:
        _insert(lines, section, [new_line], eol)
        return _join(lines)
    for index in reversed(matching[1:]):
        _delete(lines, index, index + 1)
    lines[matching[0]].text = new_line
    return _join(lines)


def npmrc_remove(text: str, key: str) -> str:
    """Remove every top-level assignment of exactly ``key``; the inverse of ``npmrc_set``."""
    lines = _split_lines(text)
    items, _ = _ini_items(lines)
    for item in reversed(items):
        if item.key == key:
            _delete(lines, item.index, item.index + 1)
    return _join(lines)


def npmrc_auth_token_key(url: str) -> str:
    """``//host/path/:_authToken``, the key of a registry's token (URL normalized first)."""
    return nerf_dart(normalize_registry_url(url)) + ":_authToken"


def npmrc_registry_key(scope: str | None = None) -> str:
    """``registry``, or ``@scope:registry`` for a scope (given with or without the ``@``)."""
    return "registry" if scope is None else _validate_npm_scope(scope) + ":registry"


def npmrc_set_auth_token(text: str, url: str, token: str) -> str:
    """Write ``//host/path/:_authToken=token`` (for the user ``.npmrc``)."""
    return npmrc_set(text, npmrc_auth_token_key(url), token)


def npmrc_remove_auth_token(text: str, url: str) -> str:
    """Remove the registry's ``//host/path/:_authToken`` line(s)."""
    return npmrc_remove(text, npmrc_auth_token_key(url))


def npmrc_set_registry(text: str, url: str, *, scope: str | None = None) -> str:
    """Write ``registry=URL/`` or ``@scope:registry=URL/`` (for the project ``.npmrc``)."""
    return npmrc_set(text, npmrc_registry_key(scope), normalize_registry_url(url))


def npmrc_remove_registry(text: str, url: str, *, scope: str | None = None) -> str:
    """Remove ``registry=`` / ``@scope:registry=`` only where it points at ``url``."""
    key = npmrc_registry_key(scope)
    wanted = normalize_registry_url(url)
    lines = _split_lines(text)
    items, _ = _ini_items(lines)
    for item in reversed(items):
        if item.key == key and _same_url(item.value, wanted):
            _delete(lines, item.index, item.index + 1)
    return _join(lines)


# --------------------------------------------------------------------------- YAML (yarn 4)

_YAML_PRINTABLE = re.compile(
    "[\x09\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)


def _yaml_scalar(value: str | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    out: list[str] = ['"']
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif _YAML_PRINTABLE.fullmatch(char):
            out.append(char)
        elif ord(char) < 0x100:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(f"\\u{ord(char):04x}")
    out.append('"')
    return "".join(out)


_YAML_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_YAML_RESERVED = frozenset({"true", "false", "yes", "no", "on", "off", "null", "y", "n"})


def _yaml_key(key: str) -> str:
    if _YAML_PLAIN_KEY.fullmatch(key) and key.lower() not in _YAML_RESERVED:
        return key
    return _yaml_scalar(key)


@dataclasses.dataclass(frozen=True)
class _Seg:
    """One step of a path into a YAML mapping: the key to write and which keys match it."""

    name: str
    matches: Callable[[str], bool]


def _seg(name: str) -> _Seg:
    return _Seg(name, lambda key: key == name)


@dataclasses.dataclass(frozen=True)
class _Entry:
    start: int  # the key line
    end: int  # after the last line of its value
    indent: int
    key: str
    keytext: str  # the key as written
    inline: str | None  # the value written on the key line, if any


def _quoted_end(text: str) -> int | None:
    quote = text[0]
    index = 1
    while index < len(text):
        char = text[index]
        if quote == '"' and char == "\\":
            index += 2
            continue
        if char == quote:
            if quote == "'" and text[index + 1 : index + 2] == "'":
                index += 2
                continue
            return index + 1
        index += 1
    return None


def _parse_yaml_key_line(text: str) -> tuple[str, str, str | None] | None:
    """``(key, keytext, inline value)`` of a block mapping line, or None."""
    body = text.lstrip(" ")
    if not body:
        return None
    if body[0] in "\"'":
        end = _quoted_end(body)
        if end is None:
            return None
        keytext = body[:end]
        colon = re.match(r"[ \t]*:(?:[ \t]+|\Z)", body[end:])
        if colon is None:
            return None
        try:
            key = yaml.safe_load(keytext)
        except yaml.YAMLError:
            return None
        rest = body[end + colon.end() :]
    else:
        if body[0] in ",[]{}#&*!|>%@`" or (
            body[0] in "?:-" and (len(body) == 1 or body[1] in " \t")
        ):
            return None
        colon = re.search(r":(?:[ \t]+|\Z)", body)
        if colon is None:
            return None
        keytext = body[: colon.start()].rstrip(" \t")
        if re.search(r"[ \t]#", keytext):
            return None
        key = keytext
        rest = body[colon.end() :]
    if not isinstance(key, str):
        return None
    rest = rest.strip(" \t")
    inline = None if not rest or rest.startswith("#") else rest
    return key, keytext, inline


def _indent(text: str) -> int:
    return len(text) - len(text.lstrip(" "))


def _is_yaml_noise(text: str) -> bool:
    stripped = text.strip(" \t")
    return not stripped or stripped.startswith("#")


def _is_sequence_item(text: str) -> bool:
    body = text.lstrip(" ")
    return body == "-" or body.startswith(("- ", "-\t"))


class _YamlDoc:
    """A block-style YAML mapping edited line by line, so that comments survive."""

    def __init__(self, text: str, filename: str) -> None:
        self.filename = filename
        self.bom = "\ufeff" if text.startswith("\ufeff") else ""
        self.lines = _split_lines(text[len(self.bom) :])
        self.eol = _eol_of(text)
        indents = [
            _indent(line.text)
            for line in self.lines
            if not _is_yaml_noise(line.text) and _indent(line.text) > 0
        ]
        self.unit = min(indents) if indents else 2
        self.data = self.load()

    @property
    def text(self) -> str:
        return self.bom + _join(self.lines)

    def load(self) -> dict[str, Any]:
        try:
            data = yaml.safe_load(self.text)
        except yaml.YAMLError as exc:
            raise ClientConfigError(f"{self.filename} is not valid YAML: {exc}") from exc
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ClientConfigError(f"{self.filename} is not a YAML mapping")
        return data

    def entries(self, lo: int, hi: int, parent: int) -> list[_Entry] | None:
        """The entries of the block mapping in lines ``[lo, hi)``, or None if it is not one."""
        found: list[tuple[int, int, str, str, str | None]] = []
        child = None
        for index in range(lo, hi):
            text = self.lines[index].text
            if _is_yaml_noise(text):
                continue
            if parent < 0 and (text.rstrip() == "---" or text.startswith("%")):
                continue
            indent = _indent(text)
            if child is None:
                child = indent
                if child <= parent:
                    return None
            if indent < child:
                return None
            if indent > child:
                continue
            if found and found[-1][4] is None and _is_sequence_item(text):
                continue  # a sequence written at its key's own indentation
            parsed = _parse_yaml_key_line(text)
            if parsed is None:
                return None
            found.append((index, indent, *parsed))
        result: list[_Entry] = []
        for position, (start, indent, key, keytext, inline) in enumerate(found):
            end = found[position + 1][0] if position + 1 < len(found) else hi
            while end > start + 1:
                text = self.lines[end - 1].text
                if text.strip(" \t") and not (_is_yaml_noise(text) and _indent(text) <= indent):
                    break
                end -= 1
            result.append(_Entry(start, end, indent, key, keytext, inline))
        return result

    def walk(self, segs: Sequence[_Seg]) -> list[_Entry]:
        """The entries along ``segs`` as far as they exist as block mappings."""
        chain: list[_Entry] = []
        lo, hi, parent = 0, len(self.lines), -1
        for seg in segs:
            entries = self.entries(lo, hi, parent)
            if entries is None:
                where = ".".join(entry.key for entry in chain) or "the top level"
                raise ClientConfigError(
                    f"{self.filename}: {where} is not a block mapping this tool can edit"
                )
            entry = next((entry for entry in entries if seg.matches(entry.key)), None)
            if entry is None:
                break
            chain.append(entry)
            if entry.inline is not None:
                break
            lo, hi, parent = entry.start + 1, entry.end, entry.indent
        return chain

    def container_end(self, chain: Sequence[_Entry]) -> tuple[int, int]:
        """Where a new child of the last entry of ``chain`` goes, and its indentation."""
        if not chain:
            lo, hi, parent = 0, len(self.lines), -1
        else:
            lo, hi, parent = chain[-1].start + 1, chain[-1].end, chain[-1].indent
        entries = self.entries(lo, hi, parent) or []
        if entries:
            return hi, entries[0].indent
        return hi, 0 if parent < 0 else parent + self.unit

    def reblock(self, chain: Sequence[_Entry]) -> None:
        """Rewrite the inline (flow or null) value of ``chain[-1]`` in block style."""
        entry = chain[-1]
        value = _dig(self.load(), [item.key for item in chain])
        if value is None or value == {} or value == []:
            rendered: list[str] = []
        elif isinstance(value, dict | list):
            dumped = yaml.safe_dump(
                value,
                default_flow_style=False,
                sort_keys=False,
                allow_unicode=True,
                indent=self.unit,
                width=1 << 30,
            )
            pad = " " * (entry.indent + self.unit)
            rendered = [pad + line for line in dumped.splitlines()]
        else:
            dotted = ".".join(item.key for item in chain)
            raise ClientConfigError(f"{self.filename}: {dotted} is not a mapping or a list")
        head = " " * entry.indent + entry.keytext + ":"
        _replace(self.lines, entry.start, entry.end, [head, *rendered], self.eol)

    def set(self, segs: Sequence[_Seg], value: str | bool) -> None:
        while True:
            chain = self.walk(segs)
            if len(chain) == len(segs):
                leaf = chain[-1]
                line = f"{' ' * leaf.indent}{leaf.keytext}: {_yaml_scalar(value)}"
                _replace(self.lines, leaf.start, leaf.end, [line], self.eol)
                return
            if chain and chain[-1].inline is not None:
                self.reblock(chain)
                continue
            at, indent = self.container_end(chain)
            new: list[str] = []
            for depth, seg in enumerate(segs[len(chain) :]):
                pad = " " * (indent + depth * self.unit)
                if len(chain) + depth == len(segs) - 1:
                    new.append(f"{pad}{_yaml_key(seg.name)}: {_yaml_scalar(value)}")
                else:
                    new.append(f"{pad}{_yaml_key(seg.name)}:")
            _insert(self.lines, at, new, self.eol)
            return

    def delete(self, segs: Sequence[_Seg]) -> None:
        """Delete the value at ``segs``, then every ancestor left empty."""
        if _dig_segs(self.load(), segs) is _MISSING:
            return
        while True:
            chain = self.walk(segs)
            if len(chain) == len(segs):
                break
            if chain and chain[-1].inline is not None:
                self.reblock(chain)
                continue
            return
        _delete(self.lines, chain[-1].start, chain[-1].end)
        for depth in range(len(segs) - 1, 0, -1):
            ancestors = self.walk(segs[:depth])
            entry = ancestors[-1]
            if entry.inline is not None or self.entries(entry.start + 1, entry.end, entry.indent):
                return
            # An emptied mapping goes; the comments that were inside it stay.
            _delete(self.lines, entry.start, entry.start + 1)

    def list_add(self, seg: _Seg, item: str) -> None:
        current = _dig_segs(self.load(), [seg])
        if isinstance(current, list) and item in current:
            return
        if current is not _MISSING and current is not None and not isinstance(current, list):
            raise ClientConfigError(f"{self.filename}: {seg.name} is not a list")
        while True:
            chain = self.walk([seg])
            if not chain:
                at, indent = self.container_end([])
                pad = " " * (indent + self.unit)
                line = f"{pad}- {_yaml_scalar(item)}"
                _insert(self.lines, at, [f"{_yaml_key(seg.name)}:", line], self.eol)
                return
            entry = chain[0]
            if entry.inline is not None:
                self.reblock(chain)
                continue
            items = self.sequence_items(entry)
            indent = _indent(self.lines[items[0]].text) if items else entry.indent + self.unit
            line = f"{' ' * indent}- {_yaml_scalar(item)}"
            _insert(self.lines, entry.end, [line], self.eol)
            return

    def list_remove(self, seg: _Seg, item: str) -> None:
        current = _dig_segs(self.load(), [seg])
        if not isinstance(current, list) or item not in current:
            return
        chain = self.walk([seg])
        while chain[0].inline is not None:
            self.reblock(chain)
            chain = self.walk([seg])
        for index in reversed(self.sequence_items(chain[0])):
            body = self.lines[index].text.lstrip(" ")[1:]
            try:
                value = yaml.safe_load(body)
            except yaml.YAMLError:
                continue
            if value == item:
                _delete(self.lines, index, index + 1)
        entry = self.walk([seg])[0]
        if not any(
            not _is_yaml_noise(self.lines[index].text)
            for index in range(entry.start + 1, entry.end)
        ):
            _delete(self.lines, entry.start, entry.start + 1)

    def sequence_items(self, entry: _Entry) -> list[int]:
        body = [
            index
            for index in range(entry.start + 1, entry.end)
            if not _is_yaml_noise(self.lines[index].text)
        ]
        if not body:
            return []
        indent = min(_indent(self.lines[index].text) for index in body)
        items = [
            index
            for index in body
            if _indent(self.lines[index].text) == indent
            and _is_sequence_item(self.lines[index].text)
        ]
        if len(items) != sum(1 for index in body if _indent(self.lines[index].text) == indent):
            raise ClientConfigError(f"{self.filename}: {entry.key} is not a list")
        return items

    def check(self, expected: dict[str, Any]) -> str:
        """The edited text, after checking that it parses to ``expected``."""
        result = self.text
        try:
            actual = yaml.safe_load(result)
        except yaml.YAMLError as exc:  # pragma: no cover - a bug in this module
            raise ClientConfigError(f"could not edit {self.filename} safely: {exc}") from exc
        if (actual or {}) != expected:
            raise ClientConfigError(
                f"could not edit {self.filename} safely (an unusual layout?): edit it by hand"
            )
        return result


class _Missing:
    pass


_MISSING = _Missing()


def _dig(data: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return _MISSING
        data = data[key]
    return data


def _dig_segs(data: Any, segs: Sequence[_Seg]) -> Any:
    for seg in segs:
        if not isinstance(data, dict):
            return _MISSING
        key = next((key for key in data if isinstance(key, str) and seg.matches(key)), None)
        if key is None:
            return _MISSING
        data = data[key]
    return data


def _data_set(data: dict[str, Any], segs: Sequence[_Seg], value: Any) -> None:
    node: Any = data
    for depth, seg in enumerate(segs):
        key = next((key for key in node if isinstance(key, str) and seg.matches(key)), seg.name)
        if depth == len(segs) - 1:
            node[key] = value
            return
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]


def _data_delete(data: dict[str, Any], segs: Sequence[_Seg]) -> None:
    path: list[tuple[dict[str, Any], str]] = []
    node: Any = data
    for seg in segs:
        if not isinstance(node, dict):
            return
        key = next((key for key in node if isinstance(key, str) and seg.matches(key)), None)
        if key is None:
            return
        path.append((node, key))
        node = node[key]
    parent, key = path.pop()
    del parent[key]
    while path and not parent:
        parent, key = path.pop()
        del parent[key]


def _yarn_registry_norm(key: str) -> str:
    # yarn 4 normalizes npmRegistries keys by dropping one trailing slash, and looks a
    # registry up with and without its protocol.
    return re.sub(r"^[a-z]+:", "", key).removesuffix("/")


def _yarn_registry_seg(url: str) -> _Seg:
    key = re.sub(r"^[a-z]+:", "", url)
    wanted = _yarn_registry_norm(key)
    return _Seg(key, lambda candidate: _yarn_registry_norm(candidate) == wanted)


def _yarn_scope(scope: str) -> str:
    return _validate_npm_scope(scope)[1:]


def _http_hostname(url: str) -> str | None:
    parsed = _parse_url(url)
    return parsed.hostname if parsed.scheme == "http" else None


_YARN_REGISTRIES = _seg("npmRegistries")
_YARN_SCOPES = _seg("npmScopes")
_YARN_SERVER = _seg("npmRegistryServer")
_YARN_WHITELIST = _seg("unsafeHttpWhitelist")


def yarnrc_set_registry(
    text: str,
    url: str,
    *,
    scope: str | None = None,
    token: str | None = None,
    always_auth: bool = True,
) -> str:
    """Point yarn 4 at a registry in a ``.yarnrc.yml``, keeping every comment and other key.

    With a ``token`` (the user file, ``~/.yarnrc.yml``) it writes
    ``npmRegistries: {"//host/path/": {npmAuthToken: token, npmAlwaysAuth: true}}``
    (``npmAlwaysAuth`` only with ``always_auth``: yarn 4 sends no credentials on unscoped
    GETs without it). Without one (the project file) it writes ``npmRegistryServer: URL``, or
    ``npmScopes: {scope: {npmRegistryServer: URL}}`` for a scope (``@`` optional). For an
    http URL both add the host to ``unsafeHttpWhitelist``. The URL gets a trailing slash.
    """
    url = normalize_registry_url(url)
    doc = _YamlDoc(text, ".yarnrc.yml")
    expected = copy.deepcopy(doc.data)
    if token is not None:
        registry = _yarn_registry_seg(url)
        token_path = [_YARN_REGISTRIES, registry, _seg("npmAuthToken")]
        always_path = [_YARN_REGISTRIES, registry, _seg("npmAlwaysAuth")]
        doc.set(token_path, token)
        _data_set(expected, token_path, token)
        if always_auth:
            doc.set(always_path, True)
            _data_set(expected, always_path, True)
        else:
            doc.delete(always_path)
            _data_delete(expected, always_path)
    else:
        if scope is not None:
            server_path = [_YARN_SCOPES, _seg(_yarn_scope(scope)), _YARN_SERVER]
        else:
            server_path = [_YARN_SERVER]
        doc.set(server_path, url)
        _data_set(expected, server_path, url)
    hostname = _http_hostname(url)
    if hostname is not None:
        doc.list_add(_YARN_WHITELIST, hostname)
        whitelist = expected.get("unsafeHttpWhitelist")
        if not isinstance(whitelist, list):
            expected["unsafeHttpWhitelist"] = whitelist = []
        if hostname not in whitelist:
            whitelist.append(hostname)
    return doc.check(expected)


def yarnrc_remove_registry(text: str, url: str, *, scope: str | None = None) -> str:
    """Undo ``yarnrc_set_registry`` for ``url`` in either file.

    Removes the registry's ``npmAuthToken`` and ``npmAlwaysAuth`` under ``npmRegistries``,
    ``npmRegistryServer`` (or ``npmScopes.<scope>.npmRegistryServer``) where it points at
    ``url``, mappings left empty, and the host from ``unsafeHttpWhitelist`` when nothing left
    in the file uses that host over http.
    """
    url = normalize_registry_url(url)
    doc = _YamlDoc(text, ".yarnrc.yml")
    expected = copy.deepcopy(doc.data)
    registry = _yarn_registry_seg(url)
    for name in ("npmAuthToken", "npmAlwaysAuth"):
        path = [_YARN_REGISTRIES, registry, _seg(name)]
        doc.delete(path)
        _data_delete(expected, path)
    if scope is not None:
        server_path = [_YARN_SCOPES, _seg(_yarn_scope(scope)), _YARN_SERVER]
    else:
        server_path = [_YARN_SERVER]
    current = _dig_segs(doc.data, server_path)
    if isinstance(current, str) and _same_url(current, url):
        doc.delete(server_path)
        _data_delete(expected, server_path)
    hostname = _http_hostname(url)
    if hostname is not None and hostname not in _yarn_http_hosts(expected):
        doc.list_remove(_YARN_WHITELIST, hostname)
        whitelist = expected.get("unsafeHttpWhitelist")
        if isinstance(whitelist, list) and hostname in whitelist:
            whitelist[:] = [item for item in whitelist if item != hostname]
            if not whitelist:
                del expected["unsafeHttpWhitelist"]
    return doc.check(expected)


def _yarn_http_hosts(data: Mapping[str, Any]) -> set[str]:
    """The hosts a yarn configuration still reaches (or may reach) over http."""
    urls: list[str] = []
    for key in ("npmRegistryServer", "npmPublishRegistry"):
        if isinstance(data.get(key), str):
            urls.append(data[key])
    scopes = data.get("npmScopes")
    if isinstance(scopes, dict):
        for settings in scopes.values():
            if isinstance(settings, dict):
                urls.extend(
                    settings[key]
                    for key in ("npmRegistryServer", "npmPublishRegistry")
                    if isinstance(settings.get(key), str)
                )
    registries = data.get("npmRegistries")
    if isinstance(registries, dict):
        urls.extend(
            "http:" + key if key.startswith("//") else key
            for key in registries
            if isinstance(key, str)
        )
    hosts: set[str] = set()
    for candidate in urls:
        try:
            parsed = _parse_url(candidate)
        except ValueError:
            continue
        if parsed.scheme == "http":
            hosts.add(parsed.hostname)
    return hosts


# --------------------------------------------------------------------------- TOML (Unity)


def _toml_str(value: str) -> str:
    short = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
    short["\r"] = "\\r"
    out: list[str] = ['"']
    for char in value:
        if char in short:
            out.append(short[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _toml_value(value: str | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return _toml_str(value)


@dataclasses.dataclass(frozen=True)
class _TomlStmt:
    start: int
    end: int  # after its last line
    kind: str  # "table", "array", "kv" or "bad"
    path: tuple[str, ...]


_TOML_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(text: str, pos: int) -> tuple[tuple[str, ...], int] | None:
    parts: list[str] = []
    while True:
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos >= len(text):
            return None
        if text[pos] == '"':
            end = pos + 1
            while end < len(text) and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            if end >= len(text):
                return None
            try:
                parts.append(tomllib.loads(f"k = {text[pos : end + 1]}")["k"])
            except tomllib.TOMLDecodeError:
                return None
            pos = end + 1
        elif text[pos] == "'":
            end = text.find("'", pos + 1)
            if end == -1:
                return None
            parts.append(text[pos + 1 : end])
            pos = end + 1
        else:
            match = _TOML_BARE.match(text, pos)
            if match is None:
                return None
            parts.append(match.group(0))
            pos = match.end()
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        return tuple(parts), pos


class _TomlDoc:
    """A TOML file as statements over lines, to edit tables without losing comments."""

    def __init__(self, text: str) -> None:
        self.lines = _split_lines(text)
        self.eol = _eol_of(text)

    @property
    def text(self) -> str:
        return _join(self.lines)

    def statements(self) -> list[_TomlStmt]:
        stmts: list[_TomlStmt] = []
        index = 0
        while index < len(self.lines):
            text = self.lines[index].text
            body = text.lstrip(" \t")
            if not body or body.startswith("#"):
                index += 1
                continue
            if body.startswith("["):
                array = body.startswith("[[")
                opened = 2 if array else 1
                parsed = _toml_key(body, opened)
                close = "]]" if array else "]"
                if parsed is not None and body.startswith(close, parsed[1]):
                    tail = body[parsed[1] + len(close) :].strip(" \t")
                    if not tail or tail.startswith("#"):
                        stmts.append(
                            _TomlStmt(index, index + 1, "array" if array else "table", parsed[0])
                        )
                        index += 1
                        continue
                stmts.append(_TomlStmt(index, index + 1, "bad", ()))
                index += 1
                continue
            parsed = _toml_key(body, 0)
            if parsed is None or not body.startswith("=", parsed[1]):
                stmts.append(_TomlStmt(index, index + 1, "bad", ()))
                index += 1
                continue
            end = self._value_end(index, len(text) - len(body) + parsed[1] + 1)
            stmts.append(_TomlStmt(index, end, "kv", parsed[0]))
            index = end
        return stmts

    def _value_end(self, index: int, col: int) -> int:
        """The line after the end of the value that starts at ``(index, col)``."""
        depth = 0
        string: str | None = None  # the open string's delimiter
        while index < len(self.lines):
            text = self.lines[index].text
            pos = col
            while pos < len(text):
                char = text[pos]
                if string is not None:
                    if char == "\\" and string in ('"', '"""'):
                        pos += 2
                        continue
                    if text.startswith(string, pos):
                        pos += len(string)
                        string = None
                        continue
                    pos += 1
                    continue
                if char == "#":
                    break
                if text.startswith('"""', pos) or text.startswith("'''", pos):
                    string = text[pos : pos + 3]
                    pos += 3
                    continue
                if char in "\"'":
                    string = char
                elif char in "[{":
                    depth += 1
                elif char in "]}":
                    depth -= 1
                pos += 1
            if string in ('"', "'"):
                string = None  # a one-line string cannot go on; the parser will complain
            index += 1
            col = 0
            if string is None and depth <= 0:
                return index
        return index

    def table_end(self, stmts: Sequence[_TomlStmt], position: int) -> int:
        """The end of the table whose header is ``stmts[position]``, before trailing noise."""
        start = stmts[position].start
        end = next(
            (stmt.start for stmt in stmts[position + 1 :] if stmt.kind in ("table", "array")),
            len(self.lines),
        )
        while end > start + 1 and self._noise(end - 1):
            end -= 1
        return end

    def _noise(self, index: int) -> bool:
        body = self.lines[index].text.strip(" \t")
        return not body or body.startswith("#")

    def delete_table(self, stmts: Sequence[_TomlStmt], position: int) -> None:
        start = stmts[position].start
        end = self.table_end(stmts, position)
        if start > 0 and not self.lines[start - 1].text.strip(" \t"):
            start -= 1  # the blank line that separated it
        _delete(self.lines, start, end)


_UPM_MANAGED = ("token", "_auth", "email", "alwaysAuth")


def _toml_load(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClientConfigError(f".upmconfig.toml is not valid TOML: {exc}") from exc


def _npm_auth_tables(doc: _TomlDoc, url: str) -> tuple[list[_TomlStmt], list[int]]:
    stmts = doc.statements()
    positions = [
        position
        for position, stmt in enumerate(stmts)
        if stmt.kind == "table"
        and len(stmt.path) == 2
        and stmt.path[0] == "npmAuth"
        and _same_url(stmt.path[1], url)
    ]
    return stmts, positions


def _check_upm_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or url != url.strip():
        raise ValueError(f"a registry URL is http:// or https:// with a host, not {url!r}")


def _upm_auth_map(data: dict[str, Any]) -> dict[str, Any]:
    auth = data.setdefault("npmAuth", {})
    if not isinstance(auth, dict):
        raise ClientConfigError(".upmconfig.toml: npmAuth is not a table")
    return auth


def _upm_check(result: str, expected: dict[str, Any]) -> str:
    actual = _toml_load(result)
    for data in (actual, expected):
        if data.get("npmAuth") == {}:
            del data["npmAuth"]
    if actual != expected:
        raise ClientConfigError(
            ".upmconfig.toml defines this registry in a form this tool does not edit "
            "(an inline table or dotted keys?): edit it by hand"
        )
    return result


def upmconfig_set(
    text: str,
    url: str,
    *,
    token: str | None = None,
    auth: str | None = None,
    email: str | None = None,
    always_auth: bool = True,
) -> str:
    """Write Unity's credentials for ``url`` into a ``~/.upmconfig.toml``.

    The table is ``[npmAuth."URL"]`` with ``token = "..."`` (Bearer) or ``_auth = "..."``
    (Basic; give exactly one), an optional ``email`` and ``alwaysAuth = true`` (removed when
    ``always_auth`` is false). Unity matches the URL exactly against the manifest's, so it is
    written as given; a table for the same URL with or without a trailing slash is updated in
    place (other keys, an ``email`` when none is given, and comments stay) and any further
    duplicates are removed. A new table goes at the end.
    """
    if (token is None) == (auth is None):
        raise ValueError("give exactly one of token and auth")
    _check_upm_url(url)
    data = _toml_load(text)
    desired: list[tuple[str, str | bool]] = [
        ("token", token) if token is not None else ("_auth", auth or "")
    ]
    if email is not None:
        desired.append(("email", email))
    if always_auth:
        desired.append(("alwaysAuth", True))

    expected = copy.deepcopy(data)
    auth_map = _upm_auth_map(expected)
    same = [key for key in auth_map if _same_url(key, url)]
    old = auth_map[same[0]] if same and isinstance(auth_map[same[0]], dict) else {}
    for key in same:
        del auth_map[key]
    managed = {"token", "_auth", "alwaysAuth"} | ({"email"} if email is not None else set())
    entry = {key: value for key, value in old.items() if key not in managed}
    entry.update(desired)
    auth_map[url] = entry

    doc = _TomlDoc(text)
    stmts, positions = _npm_auth_tables(doc, url)
    if not positions:
        new = [f"[npmAuth.{_toml_str(url)}]"]
        new += [f"{key} = {_toml_value(value)}" for key, value in desired]
        _insert(doc.lines, len(doc.lines), ["", *new] if doc.lines else new, doc.eol)
        return _upm_check(doc.text, expected)
    for position in reversed(positions[1:]):
        doc.delete_table(stmts, position)
    header = stmts[positions[0]]
    if header.path[1] != url:
        doc.lines[header.start].text = f"[npmAuth.{_toml_str(url)}]"
    values = dict(desired)
    for name in _UPM_MANAGED:
        if name not in managed:
            continue
        replaced = False
        while True:
            stmts = doc.statements()
            position = next(i for i, stmt in enumerate(stmts) if stmt.start == header.start)
            end = doc.table_end(stmts, position)
            body = [stmt for stmt in stmts[position + 1 :] if stmt.start < end]
            found = [stmt for stmt in body if stmt.kind == "kv" and stmt.path == (name,)]
            if name in values and found:
                first = found[0]
                pad = doc.lines[first.start].text[: _indent_ws(doc.lines[first.start].text)]
                line = f"{pad}{name} = {_toml_value(values.pop(name))}"
                _replace(doc.lines, first.start, first.end, [line], doc.eol)
                replaced = True
                continue
            extra = found[1:] if replaced else found
            if extra:
                _delete(doc.lines, extra[-1].start, extra[-1].end)
                continue
            if name in values:
                at = body[-1].end if body else header.start + 1
                _insert(doc.lines, at, [f"{name} = {_toml_value(values.pop(name))}"], doc.eol)
            break
    return _upm_check(doc.text, expected)


def _indent_ws(text: str) -> int:
    return len(text) - len(text.lstrip(" \t"))


def upmconfig_remove(text: str, url: str) -> str:
    """Remove every ``[npmAuth."URL"]`` table for ``url`` (with or without a trailing slash)."""
    data = _toml_load(text)
    expected = copy.deepcopy(data)
    auth_map = expected.get("npmAuth")
    if isinstance(auth_map, dict):
        for key in [key for key in auth_map if _same_url(key, url)]:
            del auth_map[key]
    doc = _TomlDoc(text)
    stmts, positions = _npm_auth_tables(doc, url)
    for position in reversed(positions):
        doc.delete_table(stmts, position)
    return _upm_check(doc.text, expected)


def upmconfig_parse(text: str) -> dict[str, dict[str, Any]]:
    """The ``npmAuth`` tables of a ``.upmconfig.toml``: URL to its settings."""
    auth_map = _toml_load(text).get("npmAuth", {})
    if not isinstance(auth_map, dict) or not all(
        isinstance(entry, dict) for entry in auth_map.values()
    ):
        raise ClientConfigError(".upmconfig.toml: npmAuth is not a table of tables")
    return {url: dict(entry) for url, entry in auth_map.items()}


# --------------------------------------------------------------------------- manifest.json


@dataclasses.dataclass(frozen=True)
class _JsonLayout:
    bom: str
    indent: str
    eol: str
    trailing: str


def _load_manifest(text: str) -> tuple[dict[str, Any], _JsonLayout]:
    bom = "\ufeff" if text.startswith("\ufeff") else ""
    body = text[len(bom) :]
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ClientConfigError(f"manifest.json is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ClientConfigError("manifest.json is not a JSON object")
    match = re.search(r"\n([ \t]+)\S", body)
    indent = match.group(1) if match else "  "
    eol = "\r\n" if "\r\n" in body else "\n"
    stripped = body.rstrip()
    return data, _JsonLayout(bom, indent, eol, body[len(stripped) :])


def _dump_manifest(data: dict[str, Any], layout: _JsonLayout) -> str:
    dumped = json.dumps(data, indent=layout.indent, ensure_ascii=False)
    return layout.bom + dumped.replace("\n", layout.eol) + layout.trailing


def _check_upm_scopes(scopes: Sequence[str]) -> list[str]:
    if isinstance(scopes, str) or not scopes:
        raise ValueError("give at least one scope, e.g. ['com.company']")
    for scope in scopes:
        if not scope or scope != scope.strip() or scope.startswith("@"):
            raise ValueError(
                f"Unity scopes are reverse-DNS package name prefixes such as com.company, "
                f"not npm @scopes: {scope!r}"
            )
    return list(dict.fromkeys(scopes))


def manifest_add_scoped_registry(text: str, *, name: str, url: str, scopes: list[str]) -> str:
    """Add or update the ``scopedRegistries`` entry for ``url`` in a Unity ``manifest.json``.

    An entry with the same URL (with or without a trailing slash) gets ``name`` and ``url``
    as given and the union of its scopes and ``scopes`` (old first, no duplicates); further
    entries with that URL are folded into it. Other keys keep their order, the file its
    indentation, line endings and final newline; an unchanged manifest is returned as is.
    """
    _check_upm_url(url)
    wanted = _check_upm_scopes(scopes)
    data, layout = _load_manifest(text)
    registries = data.get("scopedRegistries")
    if registries is None:
        registries = data["scopedRegistries"] = []
    if not isinstance(registries, list):
        raise ClientConfigError("manifest.json: scopedRegistries is not a list")
    same = [
        entry
        for entry in registries
        if isinstance(entry, dict)
        and isinstance(entry.get("url"), str)
        and _same_url(entry["url"], url)
    ]
    if not same:
        registries.append({"name": name, "url": url, "scopes": wanted})
    else:
        first = same[0]
        merged: list[Any] = []
        for entry in same:
            old = entry.get("scopes")
            merged.extend(old if isinstance(old, list) else [])
        merged.extend(wanted)
        before = copy.deepcopy(first)
        first["name"] = name
        first["url"] = url
        first["scopes"] = list(dict.fromkeys(merged))
        registries[:] = [entry for entry in registries if entry is first or entry not in same]
        if first == before and len(same) == 1:
            return text
    return _dump_manifest(data, layout)


def manifest_remove_scoped_registry(text: str, url: str) -> str:
    """Remove the ``scopedRegistries`` entries for ``url``, and the list if that empties it."""
    data, layout = _load_manifest(text)
    registries = data.get("scopedRegistries")
    if not isinstance(registries, list):
        return text
    kept = [
        entry
        for entry in registries
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("url"), str)
            and _same_url(entry["url"], url)
        )
    ]
    if len(kept) == len(registries):
        return text
    if kept:
        data["scopedRegistries"] = kept
    else:
        del data["scopedRegistries"]
    return _dump_manifest(data, layout)


# --------------------------------------------------------------------------- doctor


class ConfigSource(enum.Enum):
    """Where npm took a setting from; later members override earlier ones."""

    DEFAULT = "default"
    USER = "user"
    PROJECT = "project"
    ENV = "environment"


class CredentialKind(enum.Enum):
    TOKEN = "token"  # noqa: S105 (:_authToken, sent as Bearer)
    AUTH = "auth"  # :_auth, sent as Basic as is
    PASSWORD = "password"  # noqa: S105 (:username + :_password, sent as Basic)
    CLIENT_CERT = "client-cert"  # :certfile + :keyfile, mutual TLS


class ProblemKind(enum.Enum):
    BARE_CREDENTIAL = "bare-credential"
    KEY_WITHOUT_TRAILING_SLASH = "key-without-trailing-slash"
    REGISTRY_WITHOUT_TRAILING_SLASH = "registry-without-trailing-slash"
    UNSET_ENV_VAR = "unset-env-var"
    SCOPE_CONFLICT = "scope-conflict"
    ALWAYS_AUTH_IGNORED = "always-auth-ignored"
    SECRET_IN_PROJECT_FILE = "secret-in-project-file"  # noqa: S105
    INVALID_REGISTRY_URL = "invalid-registry-url"


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something in the npm configuration that npm 11 rejects or misreads."""

    kind: ProblemKind
    message: str  # one sentence: what is wrong and how to fix it
    source: ConfigSource | None  # the file (or the environment) it is in
    key: str | None  # the key as written


@dataclasses.dataclass(frozen=True)
class RegistryCredential:
    """What npm 11 sends to one configured registry."""

    scope: str | None  # "@scope", or None for the default registry
    registry: str | None  # the URL, ${VAR}s expanded; None: npm's built-in default
    registry_source: ConfigSource
    kind: CredentialKind | None  # None: npm sends no credentials
    key: str | None  # the key npm install uses (found by walking up the registry's path)
    source: ConfigSource | None  # where that key is set
    masked: str | None  # its value, masked (a literal ${VAR} is shown as is)
    publish_key: str | None  # the key npm publish/whoami use (exact nerf-dart), if any
    problems: tuple[Problem, ...] = ()


@dataclasses.dataclass(frozen=True)
class _Setting:
    key: str  # ${VAR}s expanded
    raw_key: str
    raw: str
    value: str  # ${VAR}s expanded
    source: ConfigSource


_ENV_EXPR = re.compile(r"(?<!\\)(\\*)\$\{([^${}?]+)(\?)?\}")


def _env_replace(text: str, env: Mapping[str, str]) -> str:
    """``@npmcli/config``'s ``env-replace``: ``${VAR}`` and ``${VAR?}``, ``\\`` escapes."""

    def substitute(match: re.Match[str]) -> str:
        escapes, name, optional = match.group(1), match.group(2), match.group(3)
        if len(escapes) % 2:
            return match.group(0)[(len(escapes) + 1) // 2 :]
        fallback = "" if optional else "${" + name + "}"
        return escapes[len(escapes) // 2 :] + env.get(name, fallback)

    return _ENV_EXPR.sub(substitute, text)


def _unset_vars(text: str, env: Mapping[str, str]) -> list[str]:
    return [
        match.group(2)
        for match in _ENV_EXPR.finditer(text)
        if len(match.group(1)) % 2 == 0 and not match.group(3) and match.group(2) not in env
    ]


def _file_settings(
    text: str | None, source: ConfigSource, env: Mapping[str, str]
) -> list[_Setting]:
    if text is None:
        return []
    items, _ = _ini_items(_split_lines(text))
    return [
        _Setting(
            _env_replace(item.key, env), item.key, item.value, _env_replace(item.value, env), source
        )
        for item in items
    ]


def _env_settings(env: Mapping[str, str]) -> list[_Setting]:
    settings: list[_Setting] = []
    for name, value in env.items():
        if not re.match(r"npm_config_", name, re.IGNORECASE) or value == "":
            continue
        key = name[len("npm_config_") :]
        if not key.startswith("//"):
            key = re.sub(r"(?!^)_", "-", key).lower()
        settings.append(
            _Setting(_env_replace(key, env), key, value, _env_replace(value, env), ConfigSource.ENV)
        )
    return settings


def _truthy(setting: _Setting | None) -> bool:
    # npm turns these literal values into false/null/undefined before expanding ${VAR}s.
    return (
        setting is not None
        and setting.raw not in ("false", "null", "undefined")
        and bool(setting.value.strip())
    )


def _auth_at(reg_key: str, config: Mapping[str, _Setting]) -> tuple[str, CredentialKind] | None:
    """npm-registry-fetch's ``hasAuth``: which credential key exists for ``reg_key``."""
    if _truthy(config.get(f"{reg_key}:_authToken")):
        return f"{reg_key}:_authToken", CredentialKind.TOKEN
    if _truthy(config.get(f"{reg_key}:_auth")):
        return f"{reg_key}:_auth", CredentialKind.AUTH
    if _truthy(config.get(f"{reg_key}:username")) and _truthy(config.get(f"{reg_key}:_password")):
        return f"{reg_key}:_password", CredentialKind.PASSWORD
    if _truthy(config.get(f"{reg_key}:certfile")) and _truthy(config.get(f"{reg_key}:keyfile")):
        return f"{reg_key}:certfile", CredentialKind.CLIENT_CERT
    return None


def _walk_up(uri: str, config: Mapping[str, _Setting]) -> tuple[str, CredentialKind] | None:
    parsed = _parse_url(uri)
    reg_key = f"//{parsed.host}{parsed.path}"
    while len(reg_key) > 2:
        found = _auth_at(reg_key, config)
        if found is not None:
            return found
        reg_key = re.sub(r"(?:[^/]+|/)$", "", reg_key)
    return None


def _as_settings(config: Mapping[str, str]) -> dict[str, _Setting]:
    return {
        key: _Setting(key, key, value, value, ConfigSource.USER) for key, value in config.items()
    }


def npm_auth_key(uri: str, config: Mapping[str, str], *, registry: str) -> str | None:
    """The config key whose credential npm 11 sends with a request to ``uri``, or None.

    ``config`` is the merged configuration (``${VAR}``s expanded); ``registry`` the registry
    selected for the package (its scope's, or the default). As npm-registry-fetch does, this
    walks up from ``//host/path`` one segment or trailing slash at a time; failing that, a
    request on the registry's host and port gets the registry's own credential.
    """
    settings = _as_settings(config)
    found = _walk_up(uri, settings)
    if found is None and uri != registry and _parse_url(uri).host == _parse_url(registry).host:
        found = _walk_up(registry, settings)
    return found[0] if found else None


def _publish_key(url: str, config: Mapping[str, _Setting]) -> str | None:
    """``getCredentialsByURI``: the exact nerf-dart keys npm publish and whoami use."""
    nerfed = nerf_dart(url)
    if _truthy(config.get(f"{nerfed}:_authToken")):
        return f"{nerfed}:_authToken"
    if _truthy(config.get(f"{nerfed}:username")) and _truthy(config.get(f"{nerfed}:_password")):
        return f"{nerfed}:_password"
    if _truthy(config.get(f"{nerfed}:_auth")):
        return f"{nerfed}:_auth"
    return None


_CREDENTIAL_SUFFIXES = ("_authToken", "_auth", "username", "_password", "certfile", "keyfile")
_SECRET_SUFFIXES = ("_authToken", "_auth", "_password")
_FILE_NAMES = {
    ConfigSource.USER: "the user .npmrc",
    ConfigSource.PROJECT: "the project .npmrc",
    ConfigSource.ENV: "the environment",
    ConfigSource.DEFAULT: "npm's defaults",
}


@dataclasses.dataclass(frozen=True)
class _Analysis:
    registries: list[RegistryCredential]
    problems: list[Problem]


def _analyse(
    project_text: str | None,
    user_text: str | None,
    env: Mapping[str, str],
    default_registry: str | None,
) -> _Analysis:
    user = _file_settings(user_text, ConfigSource.USER, env)
    project = _file_settings(project_text, ConfigSource.PROJECT, env)
    from_env = _env_settings(env)
    config: dict[str, _Setting] = {}
    for setting in (*user, *project, *from_env):
        config[setting.key] = setting
    problems: list[Problem] = []

    registry_setting = config.get("registry")
    default_url = registry_setting.value if registry_setting else default_registry
    try:
        default_nerf = nerf_dart(default_url) if default_url else "//HOST/PATH/"
    except ValueError:
        default_nerf = "//HOST/PATH/"

    for setting in (*user, *project):
        problems.extend(
            _setting_problems(
                setting, user if setting.source is ConfigSource.USER else project, env, default_nerf
            )
        )

    problems.extend(_scope_conflicts((*user, *project, *from_env), config))

    targets: list[tuple[str | None, _Setting | None]] = [(None, registry_setting)]
    seen: set[str] = set()
    for setting in (*user, *project, *from_env):
        key = setting.key
        if key.startswith("@") and key.endswith(":registry") and key not in seen:
            seen.add(key)
            targets.append((key.removesuffix(":registry"), config[key]))

    registries: list[RegistryCredential] = []
    for scope, target in targets:
        url = target.value if target else default_registry
        source = target.source if target else ConfigSource.DEFAULT
        registries.append(_describe(scope, url, source, config, problems))
    return _Analysis(registries, _dedupe(problems))


def _dedupe(problems: Iterable[Problem]) -> list[Problem]:
    return list(dict.fromkeys(problems))


def _setting_problems(
    setting: _Setting, same_file: Sequence[_Setting], env: Mapping[str, str], default_nerf: str
) -> list[Problem]:
    found: list[Problem] = []
    where = _FILE_NAMES[setting.source]
    key = setting.raw_key
    if key in ("_authToken", "_auth", "username", "_password"):
        partner = {"username": "_password", "_password": "username"}.get(key)
        if partner is not None and not any(
            other.key == partner and _truthy(other) for other in same_file
        ):
            fix = f"delete it (it is useless without `{partner}`)"
        else:
            fix = f"rename it to `{default_nerf}:{key}` (or run `entrepot connect`)"
        if _truthy(setting):
            found.append(
                Problem(
                    ProblemKind.BARE_CREDENTIAL,
                    f"{where} sets a bare `{key}`, which npm 11 refuses on every command "
                    f"(ERR_INVALID_AUTH): {fix}.",
                    setting.source,
                    key,
                )
            )
    elif key in ("_authtoken", "-authtoken") and _truthy(setting):
        found.append(
            Problem(
                ProblemKind.BARE_CREDENTIAL,
                f"{where} sets `{key}`, which npm 11 refuses on every command (ERR_INVALID_AUTH): "
                f"delete it and set `{default_nerf}:_authToken` instead.",
                setting.source,
                key,
            )
        )
    if key.startswith("//"):
        prefix, _, suffix = setting.key.rpartition(":")
        if suffix in _CREDENTIAL_SUFFIXES and prefix.startswith("//") and not prefix.endswith("/"):
            fixed = f"{prefix}/:{suffix}"
            found.append(
                Problem(
                    ProblemKind.KEY_WITHOUT_TRAILING_SLASH,
                    f"`{key}` in {where} has no slash before `:{suffix}`: npm install finds it by "
                    f"walking up the path, but npm publish and npm whoami look up `{fixed}` and "
                    f"fail with ENEEDAUTH; rename it to `{fixed}`.",
                    setting.source,
                    key,
                )
            )
        if (
            suffix in _SECRET_SUFFIXES
            and setting.source is ConfigSource.PROJECT
            and ("${" not in setting.raw and _truthy(setting))
        ):
            found.append(
                Problem(
                    ProblemKind.SECRET_IN_PROJECT_FILE,
                    f"{where} holds a literal `{key}`, which gets committed with the project: "
                    f"move it to the user .npmrc (`entrepot connect` does) or write "
                    f"`{key}=${{NPM_TOKEN}}`.",
                    setting.source,
                    key,
                )
            )
    if setting.key == "registry" or (
        setting.key.startswith("@") and setting.key.endswith(":registry")
    ):
        try:
            short, full = nerf_dart(setting.value), nerf_dart(setting.value.rstrip("/") + "/")
        except ValueError:
            found.append(
                Problem(
                    ProblemKind.INVALID_REGISTRY_URL,
                    f"`{key}={setting.raw}` in {where} is not an http(s) URL, so npm cannot "
                    f"use it; set it to the registry's URL, e.g. `{key}=http://HOST:PORT/npm/FEED/`.",
                    setting.source,
                    key,
                )
            )
        else:
            if short != full:
                found.append(
                    Problem(
                        ProblemKind.REGISTRY_WITHOUT_TRAILING_SLASH,
                        f"`{key}={setting.raw}` in {where} has no trailing slash, so npm "
                        f"publish and npm whoami look for credentials under `{short}` "
                        f"instead of `{full}`; add the trailing slash.",
                        setting.source,
                        key,
                    )
                )
    if key == "always-auth" or key.endswith(":always-auth"):
        found.append(
            Problem(
                ProblemKind.ALWAYS_AUTH_IGNORED,
                f'`{key}` in {where} is ignored by npm 11 (it warns "Unknown user config" '
                f"and sends credentials whenever a key matches): delete it, unless yarn 1 "
                f"reads this file, which needs it to authenticate unscoped installs.",
                setting.source,
                key,
            )
        )
    for name in dict.fromkeys(_unset_vars(setting.raw_key + "=" + setting.raw, env)):
        found.append(
            Problem(
                ProblemKind.UNSET_ENV_VAR,
                f"`{key}` in {where} uses ${{{name}}}, which is not set, so npm would use the "
                f"literal text `${{{name}}}` (as the token, for a credential): set {name} in the "
                f"environment, or write `${{{name}?}}` if empty is meant.",
                setting.source,
                key,
            )
        )
    return found


def _scope_conflicts(settings: Sequence[_Setting], config: Mapping[str, _Setting]) -> list[Problem]:
    by_scope: dict[str, list[_Setting]] = {}
    for setting in settings:
        if setting.key.startswith("@") and setting.key.endswith(":registry"):
            by_scope.setdefault(setting.key, []).append(setting)
    problems: list[Problem] = []
    for key, mappings in by_scope.items():
        urls = {setting.value.rstrip("/") + "/" for setting in mappings}
        if len(urls) < 2:
            continue
        winner = config[key]
        scope = key.removesuffix(":registry")
        described = " and ".join(
            f"`{setting.value}` in {_FILE_NAMES[setting.source]}" for setting in mappings
        )
        problems.append(
            Problem(
                ProblemKind.SCOPE_CONFLICT,
                f"{scope} is mapped to {described}; npm uses `{winner.value}` (from "
                f"{_FILE_NAMES[winner.source]}): keep only one `{key}` line.",
                None,
                key,
            )
        )
    return problems


def _describe(
    scope: str | None,
    url: str | None,
    source: ConfigSource,
    config: Mapping[str, _Setting],
    problems: Sequence[Problem],
) -> RegistryCredential:
    registry_key = "registry" if scope is None else f"{scope}:registry"
    related = {registry_key}
    kind: CredentialKind | None = None
    key: str | None = None
    masked: str | None = None
    publish_key: str | None = None
    key_source: ConfigSource | None = None
    if url is not None:
        try:
            found = _walk_up(url.rstrip("/") + "/", config)
            publish_key = _publish_key(url, config)
        except ValueError:
            found = None
        if found is not None:
            key, kind = found
            prefix = key.rpartition(":")[0]
            used = config[key]
            key_source = used.source
            masked = _masked(used)
            if kind is CredentialKind.PASSWORD:
                masked = f"{config[prefix + ':username'].value} / {masked}"
            elif kind is CredentialKind.CLIENT_CERT:
                masked = used.value
            related.update(
                config[f"{prefix}:{suffix}"].raw_key
                for suffix in _CREDENTIAL_SUFFIXES
                if f"{prefix}:{suffix}" in config
            )
        if publish_key is not None:
            related.add(config[publish_key].raw_key)
    own = tuple(problem for problem in problems if problem.key in related)
    return RegistryCredential(
        scope=scope,
        registry=url,
        registry_source=source,
        kind=kind,
        key=key,
        source=key_source,
        masked=masked,
        publish_key=publish_key,
        problems=own,
    )


def _masked(setting: _Setting) -> str:
    if _ENV_EXPR.search(setting.value):
        return setting.value  # an unexpanded ${VAR} is no secret, and shows the mistake
    return mask_secret(setting.value)


def npmrc_registries(
    project_text: str | None,
    user_text: str | None,
    env: Mapping[str, str],
    *,
    default_registry: str | None = None,
) -> list[RegistryCredential]:
    """Which credential npm 11 sends to the default registry and to each ``@scope:registry``.

    ``project_text`` and ``user_text`` are the two ``.npmrc`` files (None when absent);
    ``env`` the environment (for ``${VAR}`` and ``npm_config_*``, which override the files,
    as the project file overrides the user file). ``default_registry`` is npm's built-in
    default, used when nothing sets ``registry``. The default registry comes first, then the
    scopes in the order they first appear (user file, project file, environment).
    """
    return _analyse(project_text, user_text, env, default_registry).registries


def npmrc_problems(
    project_text: str | None,
    user_text: str | None,
    env: Mapping[str, str],
    *,
    default_registry: str | None = None,
) -> list[Problem]:
    """Everything in the two ``.npmrc`` files that npm 11 rejects or misreads, with the fix."""
    return _analyse(project_text, user_text, env, default_registry).problems
