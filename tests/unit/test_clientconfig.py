"""Tests for entrepot.clientconfig: the editors behind ``entrepot connect``/``disconnect`` and the
npm configuration reader behind ``entrepot doctor``.

The expected nerf darts and ``.npmrc`` readings were taken from npm 11.x's own code
(``@npmcli/config/lib/nerf-dart.js`` and ``ini`` 6) with node; the credential choices follow
``npm-registry-fetch/lib/auth.js``. The tests never run node or npm.
"""

from __future__ import annotations

import copy
import json
import re
import string
import tomllib
from collections.abc import Sequence
from typing import Any

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from entrepot.clientconfig import (
    ClientConfigError,
    ConfigSource,
    CredentialKind,
    ProblemKind,
    manifest_add_scoped_registry,
    manifest_remove_scoped_registry,
    mask_secret,
    nerf_dart,
    normalize_registry_url,
    npm_auth_key,
    npmrc_auth_token_key,
    npmrc_parse,
    npmrc_problems,
    npmrc_registries,
    npmrc_registry_key,
    npmrc_remove,
    npmrc_remove_auth_token,
    npmrc_remove_registry,
    npmrc_set,
    npmrc_set_auth_token,
    npmrc_set_registry,
    upmconfig_parse,
    upmconfig_remove,
    upmconfig_set,
    yarnrc_remove_registry,
    yarnrc_set_registry,
)

REGISTRY = "http://127.0.0.1:4880/npm/main/"
NERF = "//127.0.0.1:4880/npm/main/"
TOKEN = "ent_abcdefghijklmnop"
SLOW = settings(deadline=None)


def _lines(text: str) -> list[str]:
    return re.split(r"\r\n|\r|\n", text.removesuffix("\r\n").removesuffix("\n")) if text else []


def _comments(text: str) -> list[str]:
    return [line for line in _lines(text) if line.lstrip(" \t").startswith(("#", ";"))]


def _is_subsequence(small: Sequence[str], big: Sequence[str]) -> bool:
    items = iter(big)
    return all(any(line == other for other in items) for line in small)


# ----------------------------------------------------------------------------- strategies

eols = st.sampled_from(["\n", "\r\n"])
ports = st.integers(min_value=1024, max_value=65535)
feeds = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
tokens = st.from_regex(r"ent_[A-Za-z0-9_-]{8,40}", fullmatch=True)
comment_text = st.text(
    alphabet=string.ascii_letters + string.digits + " :=-_#;'\"{}[]/.@$", max_size=24
)


@st.composite
def fresh_urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https"]))
    return f"{scheme}://127.0.0.1:{draw(ports)}/npm/{draw(feeds)}/"


def _join(lines: Sequence[str], eol: str, final: bool) -> str:
    if not lines:
        return ""
    return eol.join(lines) + (eol if final else "")


# .npmrc ------------------------------------------------------------------------------------

npmrc_keys = st.from_regex(r"[A-Za-z@/_-][A-Za-z0-9@/:._${}-]{0,24}", fullmatch=True)
npmrc_values = st.text(
    alphabet=string.ascii_letters + string.digits + " =:/@._-${}\"'\\;#", max_size=20
)


@st.composite
def npmrc_line(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["comment", "blank", "pair", "pair", "pair", "spaced"]))
    if kind == "comment":
        return (
            draw(st.sampled_from(["", " ", "  "]))
            + draw(st.sampled_from(";#"))
            + draw(comment_text)
        )
    if kind == "blank":
        return draw(st.sampled_from(["", " ", "\t"]))
    key = draw(npmrc_keys)
    if kind == "spaced":
        return f"  {key} = {draw(npmrc_values)}"
    return f"{key}={draw(npmrc_values)}"


@st.composite
def npmrc_texts(draw: st.DrawFn) -> str:
    lines = draw(st.lists(npmrc_line(), max_size=12))
    if draw(st.booleans()):
        lines += ["[section]", *draw(st.lists(npmrc_line(), max_size=3))]
    return _join(lines, draw(eols), draw(st.booleans()))


# .yarnrc.yml -------------------------------------------------------------------------------

YARN_SCALARS = ["enableTelemetry", "nodeLinker", "cacheFolder", "httpTimeout", "pnpMode"]
yaml_words = st.from_regex(r"[a-z][a-z0-9]{2,8}", fullmatch=True).filter(
    lambda word: word not in ("yes", "no", "on", "off", "null", "true", "false")
)
yaml_values = st.one_of(
    st.sampled_from(["true", "false", "0", "60000"]),
    yaml_words,
    st.text(alphabet=string.ascii_letters + " #:/-", max_size=12).map(json.dumps),
)


def _hosts(draw: st.DrawFn, size: int) -> list[str]:
    numbers = draw(st.lists(st.integers(0, 99), min_size=1, max_size=size, unique=True))
    return [f"host-{number}.test" for number in numbers]


@st.composite
def yarnrc_texts(draw: st.DrawFn, *, with_server: bool = True) -> str:
    unit = draw(st.sampled_from([2, 4]))
    pad = " " * unit

    def comment(indent: int) -> str:
        return " " * indent + "# " + draw(comment_text)

    def noise(indent: int) -> list[str]:
        kinds = draw(st.lists(st.sampled_from(["blank", "comment", "outer"]), max_size=2))
        return [
            "" if kind == "blank" else comment(0 if kind == "outer" else indent) for kind in kinds
        ]

    blocks: dict[str, list[str]] = {}
    names = draw(st.lists(st.sampled_from(YARN_SCALARS), unique=True, max_size=3))
    for name in names:
        trailing = f"  # {draw(comment_text)}" if draw(st.booleans()) else ""
        blocks[name] = [f"{name}: {draw(yaml_values)}{trailing}"]
    if with_server and draw(st.booleans()):
        blocks["npmRegistryServer"] = [f'npmRegistryServer: "https://{_hosts(draw, 1)[0]}/npm/"']
    if draw(st.booleans()):
        lines = ["npmScopes:"]
        for scope in draw(st.lists(yaml_words, min_size=1, max_size=3, unique=True)):
            lines += noise(unit)
            lines += [f"{pad}{scope}:"]
            lines += noise(2 * unit)
            lines += [f'{pad}{pad}npmRegistryServer: "https://{_hosts(draw, 1)[0]}/npm/{scope}/"']
            if draw(st.booleans()):
                lines += [f"{pad}{pad}npmAlwaysAuth: true"]
        blocks["npmScopes"] = lines
    if draw(st.booleans()):
        lines = ["npmRegistries:"]
        for host in _hosts(draw, 3):
            lines += noise(unit)
            lines += [f'{pad}"//{host}/npm/":', f'{pad}{pad}npmAuthToken: "{draw(tokens)}"']
        blocks["npmRegistries"] = lines
    if draw(st.booleans()):
        item_pad = draw(st.sampled_from(["", pad]))
        lines = ["unsafeHttpWhitelist:"]
        for host in _hosts(draw, 3):
            lines += noise(len(item_pad))
            quoted = json.dumps(host) if draw(st.booleans()) else host
            lines += [f"{item_pad}- {quoted}"]
        blocks["unsafeHttpWhitelist"] = lines
    order = draw(st.permutations(list(blocks)))
    out: list[str] = []
    if draw(st.booleans()):
        out.append(comment(0))
    for name in order:
        out += noise(0)
        out += blocks[name]
    out += noise(0)
    return _join(out, draw(eols), draw(st.booleans()))


# .upmconfig.toml ---------------------------------------------------------------------------

toml_values = st.one_of(
    st.booleans().map(lambda value: "true" if value else "false"),
    st.integers(-1000, 1000).map(str),
    st.text(alphabet=string.ascii_letters + " #:/-=[]", max_size=12).map(json.dumps),
)
toml_keys = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)


@st.composite
def upmconfig_texts(draw: st.DrawFn) -> str:
    def comment() -> str:
        return draw(st.sampled_from(["", "  "])) + "# " + draw(comment_text)

    def noise() -> list[str]:
        kinds = draw(st.lists(st.sampled_from(["blank", "comment"]), max_size=2))
        return ["" if kind == "blank" else comment() for kind in kinds]

    def pairs(keys: Sequence[str]) -> list[str]:
        lines: list[str] = []
        for key in keys:
            lines += noise()
            trailing = f"  # {draw(comment_text)}" if draw(st.booleans()) else ""
            lines.append(f"{key} = {draw(toml_values)}{trailing}")
        return lines

    out = noise() + pairs(draw(st.lists(toml_keys, unique=True, max_size=3)))
    tables = draw(st.lists(st.sampled_from(["npmAuth", "other"]), max_size=4))
    if "npmAuth" in tables and draw(st.booleans()):
        out += [*noise(), "[npmAuth]"]
    hosts = iter(_hosts(draw, 6) + [f"extra-{n}.test" for n in range(6)])
    for number, kind in enumerate(tables):
        out += noise()
        if kind == "other":
            out.append(f"[section-{number}]")
            out += pairs(draw(st.lists(toml_keys, unique=True, max_size=3)))
        else:
            slash = "/" if draw(st.booleans()) else ""
            out.append(f'[npmAuth."https://{next(hosts)}/npm/x{slash}"]')
            auth = draw(st.sampled_from(["token", "_auth"]))
            lines = [f'{auth} = "{draw(tokens)}"']
            if draw(st.booleans()):
                lines.append('email = "someone@host.test"')
            if draw(st.booleans()):
                lines.append(f"alwaysAuth = {draw(st.sampled_from(['true', 'false']))}")
            for line in lines:
                out += [*noise(), line]
    out += noise()
    return _join(out, draw(eols), draw(st.booleans()))


# manifest.json -----------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def manifest_texts(draw: st.DrawFn) -> tuple[str, str]:
    entries: list[tuple[str, Any]] = [
        (
            "dependencies",
            draw(
                st.dictionaries(
                    st.from_regex(r"com\.[a-z]{1,6}\.[a-z]{1,6}", fullmatch=True),
                    st.sampled_from(["1.0.0", "2.3.4", "file:../x"]),
                    max_size=4,
                )
            ),
        )
    ]
    extra = draw(
        st.dictionaries(
            st.text(max_size=10).filter(
                lambda key: key not in ("dependencies", "scopedRegistries")
            ),
            json_values,
            max_size=4,
        )
    )
    entries += list(extra.items())
    if draw(st.booleans()):
        registries = [
            {"name": f"Reg {host}", "url": f"https://{host}/npm/x/", "scopes": [f"com.{n}"]}
            for n, host in enumerate(_hosts(draw, 3))
        ]
        entries.append(("scopedRegistries", registries))
    entries = draw(st.permutations(entries))
    indent = draw(st.sampled_from(["  ", "    "]))
    text = json.dumps(dict(entries), indent=indent, ensure_ascii=False)
    eol = draw(eols)
    return text.replace("\n", eol) + draw(st.sampled_from(["", eol])), indent


# ----------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:4880/npm/main/", "//127.0.0.1:4880/npm/main/"),
        # npm resolves "." against the URL: without a trailing slash the last segment goes.
        ("http://127.0.0.1:4880/npm/main", "//127.0.0.1:4880/npm/"),
        ("https://u:p@H.Test:443/a/b/?q=1#f", "//h.test/a/b/"),
        ("http://h.test:80/x/", "//h.test/x/"),
        ("https://h.test:80/x/", "//h.test:80/x/"),
        ("http://h.test", "//h.test/"),
        ("http://h.test/a/../b/", "//h.test/b/"),
        ("http://h.test/./a/%2e%2E/c/", "//h.test/c/"),
        ("http://[0:0::1]:4880/x/", "//[::1]:4880/x/"),
        ("http://h.test/a b/ä/", "//h.test/a%20b/%C3%A4/"),
        ("http://h.test:0080/", "//h.test/"),
        ("HTTP:\\\\h.test\\x\\y", "//h.test/x/"),
        ("http:///h.test/x/", "//h.test/x/"),
        ("http://h.test/a/b/c", "//h.test/a/b/"),
    ],
)
def test_nerf_dart_matches_npm(url: str, expected: str) -> None:
    assert nerf_dart(url) == expected


@pytest.mark.parametrize("url", ["h.test/a", "file:///x/", "git+https://h.test/x/", "http://", ""])
def test_nerf_dart_rejects_what_is_not_an_http_url(url: str) -> None:
    with pytest.raises(ValueError):
        nerf_dart(url)


@given(url=fresh_urls(), extra=st.sampled_from(["", "x", "x/y", "?q=1", "#frag"]))
def test_nerf_dart_keeps_host_and_directory(url: str, extra: str) -> None:
    nerfed = nerf_dart(url + extra)
    assert nerfed.startswith("//127.0.0.1:")
    assert nerfed.endswith("/")
    assert "?" not in nerfed and "#" not in nerfed
    assert nerf_dart("http:" + nerfed) == nerfed
    assert nerf_dart(url) == url.split(":", 1)[1]


def test_normalize_registry_url() -> None:
    assert normalize_registry_url("http://127.0.0.1:4880/npm/main") == REGISTRY
    assert normalize_registry_url(REGISTRY) == REGISTRY
    assert normalize_registry_url("HTTPS://h.test") == "https://h.test/"
    for bad in ("ftp://h.test/", "h.test/npm/", "http://u:p@h.test/", "http://h.test/?a=1"):
        with pytest.raises(ValueError):
            normalize_registry_url(bad)


def test_mask_secret() -> None:
    assert mask_secret("ent_abcdefghijkl") == "ent_…ijkl"
    assert mask_secret("npm_0123456789") == "npm_…6789"
    assert mask_secret("dXNlcjpwYXNzd29yZA==") == "…ZA=="
    assert mask_secret("ent_short") == "ent_…"
    assert mask_secret("") == "…"


# ----------------------------------------------------------------------------- .npmrc


def test_npmrc_parse_reads_like_npm_ini() -> None:
    # Each line's reading was checked against npm's ini 6 decode().
    text = (
        "a = 1\n"
        ' b=" x "\n'
        "c='y'\n"
        "d=foo ; comment\n"
        "e=foo \\; bar\n"
        'f="\n'
        "key with space = v\n"
        "=nokey\n"
        "flag\n"
        "#x=1\n"
        "  ;y=2\n"
        "t=true\n"
        "q='12'\n"
        "h=a\\\\;b\n"
        "list[]=one\n"
        "list[]=two\n"
        "a=2\n"
        "[sec]\n"
        "z=1\n"
    )
    assert npmrc_parse(text) == {
        "a": "2",
        "b": " x ",
        "c": "y",
        "d": "foo",
        "e": "foo ; bar",
        "f": '"',
        "key with space": "v",
        "flag": "true",
        "t": "true",
        "q": "12",
        "h": "a\\",
        "list": "two",
    }


def test_npmrc_parse_keeps_env_references_literally() -> None:
    assert npmrc_parse(f"{NERF}:_authToken=${{NPM_TOKEN}}\r\n") == {
        f"{NERF}:_authToken": "${NPM_TOKEN}"
    }


def test_npmrc_set_appends_and_replaces() -> None:
    assert npmrc_set("", "k", "v") == "k=v\n"
    assert npmrc_set("a=1\n", "k", "v") == "a=1\nk=v\n"
    assert npmrc_set("a=1", "k", "v") == "a=1\nk=v"
    assert npmrc_set("a=1\r\n; c\r\n", "k", "v") == "a=1\r\n; c\r\nk=v\r\n"
    text = "# top\nk = old ; why\nx=1\n  k=older\n"
    assert npmrc_set(text, "k", "new") == "# top\nk=new\nx=1\n"
    assert npmrc_set("a=1\n[section]\nb=2\n", "k", "v") == "a=1\nk=v\n[section]\nb=2\n"
    # removing a last line that has no line break keeps the blank line before it
    assert npmrc_set("k=1\n\nk=2", "k", "v") == "k=v\n\n"
    assert npmrc_remove("a=1\n\nk=2", "k") == "a=1\n\n"


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("${NPM_TOKEN}", "${NPM_TOKEN}"),
        ("dXNlcjpwYXNz==", "dXNlcjpwYXNz=="),
        ("a;b", '"a;b"'),
        ("a#b", '"a#b"'),
        (" padded ", '" padded "'),
        ("'quoted'", "\"'quoted'\""),
        ("back\\slash", '"back\\\\slash"'),
        ("two\nlines", '"two\\nlines"'),
    ],
)
def test_npmrc_set_quotes_values_npm_would_misread(value: str, written: str) -> None:
    text = npmrc_set("", "k", value)
    assert text == f"k={written}\n"
    assert npmrc_parse(text) == {"k": value}


@pytest.mark.parametrize("key", ["", " k", "a=b", "k;x", "[k]", "a\nb", "__proto__"])
def test_npmrc_set_rejects_keys_it_cannot_write(key: str) -> None:
    with pytest.raises(ValueError):
        npmrc_set("", key, "v")


@given(text=npmrc_texts(), url=fresh_urls(), value=st.text())
def test_npmrc_set_then_remove_of_a_fresh_key_gives_back_the_text(
    text: str, url: str, value: str
) -> None:
    key = npmrc_auth_token_key(url)
    assume(key not in npmrc_parse(text))
    written = npmrc_set(text, key, value)
    assert npmrc_parse(written) == {**npmrc_parse(text), key: value}
    assert _is_subsequence(_lines(text), _lines(written))
    assert len(_lines(written)) == len(_lines(text)) + 1
    assert npmrc_remove(written, key) == text


@given(text=npmrc_texts(), data=st.data(), value=npmrc_values)
def test_npmrc_set_is_idempotent_and_keeps_other_lines(
    text: str, data: st.DataObject, value: str
) -> None:
    keys = sorted(npmrc_parse(text))
    key = data.draw(st.sampled_from(keys) if keys else npmrc_keys)
    once = npmrc_set(text, key, value)
    assert npmrc_set(once, key, value) == once
    assert npmrc_parse(once) == {**npmrc_parse(text), key: value}

    def others(lines: list[str]) -> list[str]:
        return [line for line in lines if npmrc_parse(line) == {} or key not in npmrc_parse(line)]

    assert others(_lines(once)) == others(_lines(text))


@given(text=npmrc_texts())
def test_npmrc_edits_keep_crlf(text: str) -> None:
    assume("\r\n" in text)
    written = npmrc_set_auth_token(text, REGISTRY, TOKEN)
    assert "\n" not in written.replace("\r\n", "")


def test_npmrc_connect_entries() -> None:
    user = npmrc_set_auth_token("; mine\n", "http://127.0.0.1:4880/npm/main", TOKEN)
    assert user == f"; mine\n{NERF}:_authToken={TOKEN}\n"
    assert npmrc_set_auth_token(user, REGISTRY, "ent_other12345") == (
        f"; mine\n{NERF}:_authToken=ent_other12345\n"
    )
    assert npmrc_remove_auth_token(user, REGISTRY) == "; mine\n"

    project = npmrc_set_registry("", REGISTRY, scope="acme")
    assert project == f"@acme:registry={REGISTRY}\n"
    project = npmrc_set_registry(project, "http://127.0.0.1:4880/npm/main")
    assert project == f"@acme:registry={REGISTRY}\nregistry={REGISTRY}\n"
    assert npmrc_registry_key(None) == "registry"
    assert npmrc_registry_key("@acme") == "@acme:registry"
    with pytest.raises(ValueError):
        npmrc_registry_key("@")

    # disconnect removes a mapping only where it still points at this registry
    other = "registry=http://127.0.0.1:9999/npm/main/\n"
    assert npmrc_remove_registry(other, REGISTRY) == other
    assert npmrc_remove_registry(project, REGISTRY.rstrip("/"), scope="@acme") == (
        f"registry={REGISTRY}\n"
    )


# ----------------------------------------------------------------------------- .yarnrc.yml


def _yarn_expected(
    data: dict[str, Any], url: str, *, scope: str | None, token: str | None, always_auth: bool
) -> dict[str, Any]:
    expected = copy.deepcopy(data)
    if token is not None:
        entry: dict[str, Any] = {"npmAuthToken": token}
        if always_auth:
            entry["npmAlwaysAuth"] = True
        expected.setdefault("npmRegistries", {})[
            url.removeprefix("http:").removeprefix("https:")
        ] = entry
    elif scope is not None:
        expected.setdefault("npmScopes", {})[scope] = {"npmRegistryServer": url}
    else:
        expected["npmRegistryServer"] = url
    if url.startswith("http:"):
        whitelist = expected.setdefault("unsafeHttpWhitelist", [])
        if "127.0.0.1" not in whitelist:
            whitelist.append("127.0.0.1")
    return expected


yarn_modes = st.sampled_from(["user", "scope", "default"])


@SLOW
@given(data=st.data(), mode=yarn_modes, url=fresh_urls(), token=tokens, always=st.booleans())
def test_yarnrc_set_then_remove_gives_back_the_text(
    data: st.DataObject, mode: str, url: str, token: str, always: bool
) -> None:
    text = data.draw(yarnrc_texts(with_server=mode != "default"))
    original = yaml.safe_load(text) or {}
    scope = "ourscope" if mode == "scope" else None
    secret = token if mode == "user" else None

    written = yarnrc_set_registry(text, url, scope=scope, token=secret, always_auth=always)

    assert yaml.safe_load(written) == _yarn_expected(
        original, url, scope=scope, token=secret, always_auth=always
    )
    assert _comments(written) == _comments(text)
    assert _is_subsequence(_lines(text), _lines(written))
    if "\r\n" in text:
        assert "\n" not in written.replace("\r\n", "")
    assert yarnrc_set_registry(written, url, scope=scope, token=secret, always_auth=always) == (
        written
    )
    assert yarnrc_remove_registry(written, url, scope=scope) == text


def test_yarnrc_user_file_example() -> None:
    text = "# my settings\nenableTelemetry: false\n"
    written = yarnrc_set_registry(text, REGISTRY, token=TOKEN, always_auth=True)
    assert written == (
        "# my settings\n"
        "enableTelemetry: false\n"
        "npmRegistries:\n"
        f'  "{NERF}":\n'
        f'    npmAuthToken: "{TOKEN}"\n'
        "    npmAlwaysAuth: true\n"
        "unsafeHttpWhitelist:\n"
        '  - "127.0.0.1"\n'
    )
    # a new token replaces the old one; always_auth=False drops npmAlwaysAuth
    again = yarnrc_set_registry(written, REGISTRY, token="ent_second-token", always_auth=False)
    assert yaml.safe_load(again)["npmRegistries"] == {NERF: {"npmAuthToken": "ent_second-token"}}
    assert yarnrc_remove_registry(again, REGISTRY) == text


def test_yarnrc_project_file_example() -> None:
    text = (
        "nodeLinker: node-modules\n"
        "npmScopes:\n"
        "    # the vendor's packages\n"
        "    vendor:\n"
        '        npmRegistryServer: "https://host-1.test/npm/"  # keep me\n'
        "\n"
        "# trailing comment\n"
    )
    written = yarnrc_set_registry(text, "https://127.0.0.1:4880/npm/main", scope="@acme")
    assert written == (
        "nodeLinker: node-modules\n"
        "npmScopes:\n"
        "    # the vendor's packages\n"
        "    vendor:\n"
        '        npmRegistryServer: "https://host-1.test/npm/"  # keep me\n'
        "    acme:\n"
        '        npmRegistryServer: "https://127.0.0.1:4880/npm/main/"\n'
        "\n"
        "# trailing comment\n"
    )
    assert yarnrc_remove_registry(written, "https://127.0.0.1:4880/npm/main/", scope="acme") == text


def test_yarnrc_default_registry_replaces_the_server() -> None:
    text = 'npmRegistryServer: "https://host-1.test/npm/"  # old\nnodeLinker: pnp\n'
    written = yarnrc_set_registry(text, REGISTRY)
    assert written == (
        f'npmRegistryServer: "{REGISTRY}"\nnodeLinker: pnp\nunsafeHttpWhitelist:\n  - "127.0.0.1"\n'
    )
    # disconnect leaves a server that points elsewhere alone
    assert yarnrc_remove_registry(text, REGISTRY) == text


def test_yarnrc_updates_an_entry_spelled_without_the_slash() -> None:
    text = (
        "npmRegistries:\n"
        '  "//127.0.0.1:4880/npm/main":\n'
        "    # rotated monthly\n"
        '    npmAuthToken: "ent_old-token-0000"\n'
        "unsafeHttpWhitelist:\n"
        "- 127.0.0.1\n"
    )
    written = yarnrc_set_registry(text, REGISTRY, token=TOKEN, always_auth=True)
    assert written == (
        "npmRegistries:\n"
        '  "//127.0.0.1:4880/npm/main":\n'
        "    # rotated monthly\n"
        f'    npmAuthToken: "{TOKEN}"\n'
        "    npmAlwaysAuth: true\n"
        "unsafeHttpWhitelist:\n"
        "- 127.0.0.1\n"
    )
    removed = yarnrc_remove_registry(written, REGISTRY)
    # the emptied mapping and whitelist go; the comment that was inside stays
    assert removed == "    # rotated monthly\n"
    assert yaml.safe_load(removed) is None


def test_yarnrc_rewrites_flow_style_blocks() -> None:
    text = "npmScopes: {vendor: {npmRegistryServer: 'https://host-1.test/'}}  # flow\nx: 1\n"
    written = yarnrc_set_registry(text, "https://127.0.0.1:4880/npm/main/", scope="acme")
    assert yaml.safe_load(written) == {
        "npmScopes": {
            "vendor": {"npmRegistryServer": "https://host-1.test/"},
            "acme": {"npmRegistryServer": "https://127.0.0.1:4880/npm/main/"},
        },
        "x": 1,
    }
    assert written.endswith("x: 1\n")
    whitelist = "unsafeHttpWhitelist: [localhost]\n"
    assert yaml.safe_load(yarnrc_set_registry(whitelist, REGISTRY))["unsafeHttpWhitelist"] == [
        "localhost",
        "127.0.0.1",
    ]


def test_yarnrc_whitelist_is_shared() -> None:
    text = yarnrc_set_registry("", REGISTRY, scope="a")
    both = yarnrc_set_registry(text, "http://127.0.0.1:4880/npm/other/", scope="b")
    assert yaml.safe_load(both)["unsafeHttpWhitelist"] == ["127.0.0.1"]
    one = yarnrc_remove_registry(both, REGISTRY, scope="a")
    # scope b still reaches the host over http, so the host stays whitelisted
    assert yaml.safe_load(one) == {
        "npmScopes": {"b": {"npmRegistryServer": "http://127.0.0.1:4880/npm/other/"}},
        "unsafeHttpWhitelist": ["127.0.0.1"],
    }
    assert yarnrc_remove_registry(one, "http://127.0.0.1:4880/npm/other/", scope="b") == ""


def test_yarnrc_keeps_a_byte_order_mark_and_a_document_marker() -> None:
    text = "\ufeff---\nnpmScopes:\n  a:\n    npmRegistryServer: x\n"
    written = yarnrc_set_registry(text, "https://127.0.0.1:4880/npm/main/", scope="b")
    assert written == text + '  b:\n    npmRegistryServer: "https://127.0.0.1:4880/npm/main/"\n'
    assert yarnrc_remove_registry(written, "https://127.0.0.1:4880/npm/main/", scope="b") == text


@pytest.mark.parametrize("text", ["a: [1\n", "- a\n- b\n", "just text\n"])
def test_yarnrc_refuses_what_it_cannot_edit(text: str) -> None:
    with pytest.raises(ClientConfigError):
        yarnrc_set_registry(text, REGISTRY, token=TOKEN)


def test_yarnrc_refuses_a_scope_that_is_not_a_mapping() -> None:
    with pytest.raises(ClientConfigError):
        yarnrc_set_registry("npmScopes: [a, b]\n", REGISTRY, scope="acme")


# ----------------------------------------------------------------------------- .upmconfig.toml


def _upm_expected(data: dict[str, Any], url: str, entry: dict[str, Any]) -> dict[str, Any]:
    expected = copy.deepcopy(data)
    auth = expected.setdefault("npmAuth", {})
    for key in [key for key in auth if key.rstrip("/") == url.rstrip("/")]:
        del auth[key]
    auth[url] = entry
    return expected


@SLOW
@given(
    text=upmconfig_texts(),
    url=fresh_urls(),
    slash=st.booleans(),
    token=tokens,
    email=st.none() | st.just("dev@host.test"),
    always=st.booleans(),
)
def test_upmconfig_set_then_remove_gives_back_the_text(
    text: str, url: str, slash: bool, token: str, email: str | None, always: bool
) -> None:
    url = url if slash else url.rstrip("/")
    written = upmconfig_set(text, url, token=token, email=email, always_auth=always)
    entry: dict[str, Any] = {"token": token}
    if email is not None:
        entry["email"] = email
    if always:
        entry["alwaysAuth"] = True
    assert tomllib.loads(written) == _upm_expected(tomllib.loads(text), url, entry)
    assert upmconfig_parse(written)[url] == entry
    assert _comments(written) == _comments(text)
    assert _is_subsequence(_lines(text), _lines(written))
    assert upmconfig_set(written, url, token=token, email=email, always_auth=always) == written
    assert upmconfig_remove(written, url) == text
    # the other spelling of the URL is the same entry
    other = url.rstrip("/") if slash else url + "/"
    respelled = upmconfig_set(written, other, token=token, email=email, always_auth=always)
    assert [key for key in upmconfig_parse(respelled) if key.rstrip("/") == url.rstrip("/")] == [
        other
    ]
    assert upmconfig_remove(respelled, url) == text


@SLOW
@given(text=upmconfig_texts(), data=st.data(), token=tokens)
def test_upmconfig_set_updates_existing_tables_in_place(
    text: str, data: st.DataObject, token: str
) -> None:
    existing = sorted(upmconfig_parse(text))
    assume(existing)
    url = data.draw(st.sampled_from(existing))
    written = upmconfig_set(text, url, auth=token, always_auth=False)
    old = upmconfig_parse(text)[url]
    # an email that connect was not given stays
    entry = {key: value for key, value in old.items() if key not in ("token", "alwaysAuth")}
    entry["_auth"] = token
    assert tomllib.loads(written) == _upm_expected(tomllib.loads(text), url, entry)
    assert _comments(written) == _comments(text)
    assert upmconfig_set(written, url, auth=token, always_auth=False) == written


def test_upmconfig_example() -> None:
    text = "# Unity credentials\r\n"
    written = upmconfig_set(text, "http://127.0.0.1:4880/npm/main", token=TOKEN, email="a@b.test")
    assert written == (
        "# Unity credentials\r\n"
        "\r\n"
        '[npmAuth."http://127.0.0.1:4880/npm/main"]\r\n'
        f'token = "{TOKEN}"\r\n'
        'email = "a@b.test"\r\n'
        "alwaysAuth = true\r\n"
    )
    assert upmconfig_remove(written, REGISTRY) == text


def test_upmconfig_replaces_duplicates_and_keeps_comments_inside() -> None:
    text = (
        '[npmAuth."http://127.0.0.1:4880/npm/main/"]\n'
        "# set up by IT\n"
        '_auth = "dXNlcjpwYXNz"\n'
        "retries = 3\n"
        "\n"
        '[npmAuth."http://127.0.0.1:4880/npm/main"]\n'
        'token = "ent_duplicate-token"\n'
    )
    written = upmconfig_set(text, "http://127.0.0.1:4880/npm/main", token=TOKEN)
    assert written == (
        '[npmAuth."http://127.0.0.1:4880/npm/main"]\n'
        "# set up by IT\n"
        "retries = 3\n"
        f'token = "{TOKEN}"\n'
        "alwaysAuth = true\n"
    )
    assert upmconfig_parse(written) == {
        "http://127.0.0.1:4880/npm/main": {"retries": 3, "token": TOKEN, "alwaysAuth": True}
    }


def test_upmconfig_refuses_what_it_cannot_edit() -> None:
    with pytest.raises(ClientConfigError):
        upmconfig_set("a = \n", REGISTRY, token=TOKEN)
    inline = f'[npmAuth]\n"{REGISTRY}" = {{ token = "x" }}\n'
    with pytest.raises(ClientConfigError):
        upmconfig_set(inline, REGISTRY, token=TOKEN)
    with pytest.raises(ValueError):
        upmconfig_set("", REGISTRY)
    with pytest.raises(ValueError):
        upmconfig_set("", REGISTRY, token=TOKEN, auth="x")
    with pytest.raises(ClientConfigError):
        upmconfig_parse("npmAuth = 1\n")


def test_upmconfig_ignores_brackets_inside_values() -> None:
    text = 'a = [\n  ["npmAuth"],\n]\nb = """\n[npmAuth."http://127.0.0.1:4880/npm/main/"]\n"""\n'
    written = upmconfig_set(text, REGISTRY, token=TOKEN)
    assert written.startswith(text)
    assert upmconfig_remove(written, REGISTRY) == text


# ----------------------------------------------------------------------------- manifest.json


@given(manifest=manifest_texts(), url=fresh_urls(), scopes=st.lists(feeds, min_size=1))
def test_manifest_add_then_remove_gives_back_the_text(
    manifest: tuple[str, str], url: str, scopes: list[str]
) -> None:
    text, indent = manifest
    scopes = [f"com.{scope}" for scope in scopes]
    written = manifest_add_scoped_registry(text, name="Entrepot", url=url, scopes=scopes)
    data = json.loads(text)
    expected = dict(data)
    registry = {"name": "Entrepot", "url": url, "scopes": list(dict.fromkeys(scopes))}
    expected["scopedRegistries"] = [*data.get("scopedRegistries", []), registry]
    assert json.loads(written) == expected
    assert list(json.loads(written)) == list(expected)  # key order
    eol = "\r\n" if "\r\n" in text else "\n"
    dumped = json.dumps(expected, indent=indent, ensure_ascii=False).replace("\n", eol)
    assert written == dumped + text[len(text.rstrip()) :]
    assert manifest_add_scoped_registry(written, name="Entrepot", url=url, scopes=scopes) == written
    assert manifest_remove_scoped_registry(written, url) == text


def test_manifest_merges_scopes_into_the_existing_entry() -> None:
    text = (
        "{\n"
        '    "dependencies": {},\n'
        '    "scopedRegistries": [\n'
        '        {"name": "Old", "url": "http://127.0.0.1:4880/npm/main", "scopes": ["com.a"]}\n'
        "    ],\n"
        '    "testables": []\n'
        "}"
    )
    written = manifest_add_scoped_registry(
        text, name="Entrepot", url=REGISTRY, scopes=["com.b", "com.a"]
    )
    assert written == (
        "{\n"
        '    "dependencies": {},\n'
        '    "scopedRegistries": [\n'
        "        {\n"
        '            "name": "Entrepot",\n'
        f'            "url": "{REGISTRY}",\n'
        '            "scopes": [\n'
        '                "com.a",\n'
        '                "com.b"\n'
        "            ]\n"
        "        }\n"
        "    ],\n"
        '    "testables": []\n'
        "}"
    )
    # nothing to change: the text comes back untouched, odd formatting and all
    assert manifest_add_scoped_registry(
        written, name="Entrepot", url=REGISTRY, scopes=["com.a"]
    ) == (written)
    assert manifest_remove_scoped_registry(written, REGISTRY.rstrip("/")) == (
        '{\n    "dependencies": {},\n    "testables": []\n}'
    )
    assert manifest_remove_scoped_registry(text, "http://127.0.0.1:1/npm/x/") == text


def test_manifest_refuses_bad_input() -> None:
    with pytest.raises(ValueError):
        manifest_add_scoped_registry("{}", name="E", url=REGISTRY, scopes=["@acme"])
    with pytest.raises(ValueError):
        manifest_add_scoped_registry("{}", name="E", url=REGISTRY, scopes=[])
    with pytest.raises(ClientConfigError):
        manifest_add_scoped_registry("[]", name="E", url=REGISTRY, scopes=["com.a"])
    with pytest.raises(ClientConfigError):
        manifest_add_scoped_registry("{,}", name="E", url=REGISTRY, scopes=["com.a"])


# ----------------------------------------------------------------------------- doctor


def _kinds(
    project: str | None, user: str | None, env: dict[str, str] | None = None
) -> set[ProblemKind]:
    return {problem.kind for problem in npmrc_problems(project, user, env or {})}


def test_doctor_approves_what_connect_writes() -> None:
    project = npmrc_set_registry("", REGISTRY)
    user = npmrc_set_auth_token("", REGISTRY, TOKEN)
    assert npmrc_problems(project, user, {}) == []
    [default] = npmrc_registries(project, user, {})
    assert default.registry == REGISTRY
    assert default.registry_source is ConfigSource.PROJECT
    assert default.kind is CredentialKind.TOKEN
    assert default.key == default.publish_key == f"{NERF}:_authToken"
    assert default.source is ConfigSource.USER
    assert default.masked == "ent_…mnop"
    assert default.problems == ()


@given(
    project_text=npmrc_texts(),
    user_text=npmrc_texts(),
    url=fresh_urls(),
    token=tokens,
    scope=st.none() | feeds,
)
def test_doctor_finds_the_credential_connect_wrote(
    project_text: str, user_text: str, url: str, token: str, scope: str | None
) -> None:
    project = npmrc_set_registry(project_text, url, scope=scope)
    user = npmrc_set_auth_token(user_text, url, token)
    registries = npmrc_registries(project, user, {})
    [mine] = [entry for entry in registries if entry.scope == (f"@{scope}" if scope else None)]
    assert mine.registry == url
    assert mine.kind is CredentialKind.TOKEN
    assert mine.key == mine.publish_key == npmrc_auth_token_key(url)
    assert mine.masked == mask_secret(token)


def test_doctor_without_a_registry_setting() -> None:
    [default] = npmrc_registries(None, None, {})
    assert default.registry is None
    assert default.registry_source is ConfigSource.DEFAULT
    assert default.kind is None
    [default] = npmrc_registries(
        None, npmrc_set_auth_token("", REGISTRY, TOKEN), {}, default_registry=REGISTRY
    )
    assert default.kind is CredentialKind.TOKEN


def test_bare_credentials_are_refused_by_npm_11() -> None:
    project = f"registry={REGISTRY}\n"
    problems = npmrc_problems(project, "_authToken=ent_abcdefghijkl\n", {})
    assert [problem.kind for problem in problems] == [ProblemKind.BARE_CREDENTIAL]
    assert "ERR_INVALID_AUTH" in problems[0].message
    assert f"`{NERF}:_authToken`" in problems[0].message
    assert problems[0].source is ConfigSource.USER

    [lonely] = npmrc_problems(project, "username=bob\n", {})
    assert lonely.kind is ProblemKind.BARE_CREDENTIAL
    assert "delete it" in lonely.message
    pair = npmrc_problems(project, "username=bob\n_password=c2VjcmV0\n", {})
    assert [problem.key for problem in pair] == ["username", "_password"]
    assert all("rename it" in problem.message for problem in pair)
    assert _kinds(None, "_auth=dXNlcjpwYXNz\n") == {ProblemKind.BARE_CREDENTIAL}
    assert _kinds(None, "_authToken=\n") == set()


def test_credential_key_without_trailing_slash_works_for_install_only() -> None:
    user = "//127.0.0.1:4880/npm/main:_authToken=ent_abcdefghijkl\n"
    project = f"registry={REGISTRY}\n"
    [problem] = npmrc_problems(project, user, {})
    assert problem.kind is ProblemKind.KEY_WITHOUT_TRAILING_SLASH
    assert f"`{NERF}:_authToken`" in problem.message
    [default] = npmrc_registries(project, user, {})
    assert default.key == "//127.0.0.1:4880/npm/main:_authToken"
    assert default.publish_key is None
    assert default.problems == (problem,)


def test_registry_without_trailing_slash_hides_the_token_from_publish() -> None:
    # Measured with npm 11: `npm whoami` then fails with ENEEDAUTH, installs still work.
    project = "registry=http://127.0.0.1:4880/npm/main\n"
    user = f"{NERF}:_authToken={TOKEN}\n"
    [problem] = npmrc_problems(project, user, {})
    assert problem.kind is ProblemKind.REGISTRY_WITHOUT_TRAILING_SLASH
    assert "`//127.0.0.1:4880/npm/`" in problem.message
    [default] = npmrc_registries(project, user, {})
    assert default.key == f"{NERF}:_authToken"
    assert default.publish_key is None


def test_unset_environment_variable_is_sent_literally() -> None:
    user = f"{NERF}:_authToken=${{NPM_TOKEN}}\n"
    project = f"registry={REGISTRY}\n"
    [problem] = npmrc_problems(project, user, {})
    assert problem.kind is ProblemKind.UNSET_ENV_VAR
    assert "NPM_TOKEN" in problem.message
    [default] = npmrc_registries(project, user, {})
    assert default.masked == "${NPM_TOKEN}"
    assert default.problems == (problem,)

    env = {"NPM_TOKEN": TOKEN}
    assert npmrc_problems(project, user, env) == []
    [default] = npmrc_registries(project, user, env)
    assert default.masked == "ent_…mnop"
    # ${VAR?} is empty when unset: no problem, and no credential either
    optional = f"{NERF}:_authToken=${{NPM_TOKEN?}}\n"
    assert npmrc_problems(project, optional, {}) == []
    assert npmrc_registries(project, optional, {})[0].kind is None
    # an escaped reference is not a reference
    assert _kinds(project, f"{NERF}:_authToken=\\${{NPM_TOKEN}}\n") == set()


def test_scope_mapped_to_two_registries() -> None:
    project = f"@acme:registry={REGISTRY}\n"
    user = "@acme:registry=http://127.0.0.1:9999/npm/main/\n"
    [problem] = npmrc_problems(project, user, {})
    assert problem.kind is ProblemKind.SCOPE_CONFLICT
    assert problem.key == "@acme:registry"
    _, acme = npmrc_registries(project, user, {})
    assert acme.scope == "@acme"
    assert acme.registry == REGISTRY  # the project file wins
    assert acme.problems == (problem,)
    # the same registry with and without the slash is no conflict
    assert _kinds(project, "@acme:registry=http://127.0.0.1:4880/npm/main/\n") == set()


def test_always_auth_is_ignored_by_npm_11() -> None:
    user = f"always-auth=true\n{NERF}:always-auth=true\n"
    problems = npmrc_problems(None, user, {})
    assert [problem.kind for problem in problems] == [ProblemKind.ALWAYS_AUTH_IGNORED] * 2
    assert "yarn 1" in problems[0].message


def test_secret_in_project_file() -> None:
    assert _kinds(f"{NERF}:_authToken={TOKEN}\n", None) == {ProblemKind.SECRET_IN_PROJECT_FILE}
    assert _kinds(f"{NERF}:_authToken=${{NPM_TOKEN}}\n", None, {"NPM_TOKEN": "x"}) == set()


def test_invalid_registry_url() -> None:
    assert _kinds("registry=not a url\n", None) == {ProblemKind.INVALID_REGISTRY_URL}
    [default] = npmrc_registries("registry=not a url\n", None, {})
    assert default.kind is None


def test_environment_overrides_the_files() -> None:
    env = {
        "npm_config_registry": "http://127.0.0.1:5000/npm/x/",
        "NPM_CONFIG_@ACME:REGISTRY": REGISTRY,
    }
    user = f"registry={REGISTRY}\n//127.0.0.1:5000/npm/x/:_authToken={TOKEN}\n"
    default, acme = npmrc_registries(None, user, env)
    assert default.registry == "http://127.0.0.1:5000/npm/x/"
    assert default.registry_source is ConfigSource.ENV
    assert default.kind is CredentialKind.TOKEN
    assert acme.scope == "@acme"
    assert acme.kind is None


def test_credential_kinds_and_precedence() -> None:
    project = f"registry={REGISTRY}\n"
    both = f"{NERF}:_auth=dXNlcjpwYXNzd29yZA==\n{NERF}:_authToken={TOKEN}\n"
    assert npmrc_registries(project, both, {})[0].kind is CredentialKind.TOKEN
    basic = npmrc_registries(project, f"{NERF}:_auth=dXNlcjpwYXNzd29yZA==\n", {})[0]
    assert (basic.kind, basic.masked) == (CredentialKind.AUTH, "…ZA==")
    password = npmrc_registries(
        project, f"{NERF}:username=bob\n{NERF}:_password=c2VjcmV0cGFzcw==\n", {}
    )[0]
    assert password.kind is CredentialKind.PASSWORD
    assert password.masked == "bob / …cw=="
    assert password.publish_key == f"{NERF}:_password"
    # a parent path's token is found by install's walk-up, not by publish's exact lookup
    parent = npmrc_registries(project, f"//127.0.0.1:4880/npm/:_authToken={TOKEN}\n", {})[0]
    assert (parent.key, parent.publish_key) == ("//127.0.0.1:4880/npm/:_authToken", None)
    assert npmrc_registries(project, f"{NERF}:_authToken=false\n", {})[0].kind is None


def test_npm_auth_key_falls_back_to_the_registry_on_the_same_host() -> None:
    config = {"registry": REGISTRY, f"{NERF}:_authToken": TOKEN}
    tarball = "http://127.0.0.1:4880/files/pkg-1.0.0.tgz"
    assert npm_auth_key(REGISTRY + "pkg", config, registry=REGISTRY) == f"{NERF}:_authToken"
    assert npm_auth_key(tarball, config, registry=REGISTRY) == f"{NERF}:_authToken"
    assert npm_auth_key("http://127.0.0.1:4881/npm/main/pkg", config, registry=REGISTRY) is None
