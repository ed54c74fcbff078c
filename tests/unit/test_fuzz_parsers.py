"""Property tests over everything that reads client bytes: names, versions and ranges,
tarballs, Authorization headers, paths, query strings and publish bodies.

The pure parsers are fed arbitrary text; the HTTP surface is fed through the ASGI app
in-process (no sockets), with the helpers of ``tests/api/conftest.py``. The one property
everywhere: a client's bytes give a documented error (a 4xx ``{"error": ...}``), never a
crash, a 500 or an exception of another kind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import gzip
import io
import json
import tarfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from tests.api.conftest import Api, basic, bearer, npm_tarball, publish_body, quote_name

from entrepot.auth import parse_authorization
from entrepot.errors import BadRequest, InvalidName, InvalidPublish, InvalidVersion, Unauthorized
from entrepot.http.app import create_app
from entrepot.http.paths import split_path, take_package_name
from entrepot.npm import names, semver
from entrepot.npm.tarball import inspect_tarball
from entrepot.registry import check_package_name, check_tag, clean_version
from entrepot.settings import load_settings

# The app keeps its state between examples on purpose (a registry under a stream of hostile
# requests); the fixture is built once per test, not once per example.
API_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PURE_SETTINGS = settings(max_examples=600, deadline=None)

#: What npm puts in names, and what attackers add: scope marks, separators, escapes.
_NAME_CHARS = "abcxyz019-._~@/%:!*'() AZ\\\x00\n\u00e9\u2603"
_RANGE_CHARS = " \t\u00a0=vV0123456789.-+abcxX<>~^|*"

_json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_json = st.recursive(
    _json_leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


# -- package names ---------------------------------------------------------------------------


@PURE_SETTINGS
@given(st.text(_NAME_CHARS, max_size=40) | st.text(max_size=40))
@example("@scope/name")
@example("@a/b/c")
@example("@/x")
def test_names_only_raise_their_own_error_and_accepted_ones_round_trip(name: str) -> None:
    try:
        names.validate_package_name(name)
    except names.InvalidPackageName as exc:
        assert exc.problems, name
        with pytest.raises(InvalidName):
            check_package_name(name)
        return
    scope, bare = names.split_name(name)
    assert (f"@{scope}/{bare}" if scope is not None else bare) == name
    assert check_package_name(name) == name
    # An accepted name is a safe file name part once split, and survives the HTTP path
    # layer in every spelling clients use.
    assert names.is_safe_path_part(bare)
    for spelling in (quote_name(name), name.replace("/", "%2F"), name):
        segments = split_path(f"/npm/main/{spelling}/-/{bare}-1.0.0.tgz".encode())
        assert take_package_name(segments[2:]) == (name, ["-", f"{bare}-1.0.0.tgz"])


@PURE_SETTINGS
@given(st.text(max_size=60))
def test_split_name_refuses_with_its_own_error_only(name: str) -> None:
    try:
        scope, bare = names.split_name(name)
    except names.InvalidPackageName:
        return
    assert "/" not in bare and bare
    assert scope is None or (scope and "/" not in scope)


# -- versions and ranges ---------------------------------------------------------------------


@PURE_SETTINGS
@given(
    st.text(_RANGE_CHARS, max_size=80) | st.text(max_size=300), st.text(_RANGE_CHARS, max_size=80)
)
@example("1" * 300, "1.2.3")
@example("v1.2.3", "1." * 200)
def test_version_functions_raise_only_their_documented_errors(text: str, other: str) -> None:
    try:
        parsed = semver.parse_version(text)
    except semver.InvalidVersion:
        parsed = None
    cleaned = semver.clean(text)
    assert cleaned is None or str(semver.parse_version(cleaned)) == cleaned
    if parsed is not None:
        assert cleaned == str(parsed)
    # Never raise: these answer None or a bool for anything.
    assert isinstance(semver.is_valid_range(text), bool)
    assert isinstance(semver.satisfies(text, other), bool)
    assert isinstance(semver.satisfies(other, text), bool)
    for pair in ((text, other), (other, text)):
        with contextlib.suppress(semver.InvalidVersion):
            assert semver.compare(*pair) in (-1, 0, 1)
    with contextlib.suppress(semver.InvalidVersion):
        semver.max_version([text, other])


@PURE_SETTINGS
@given(_json)
@example("1.0.0")
@example(" v1.0.0 ")
@example(100)
def test_registry_checks_on_any_json_value_give_a_400(value: Any) -> None:
    try:
        version = clean_version(value)
    except InvalidVersion:
        pass
    else:
        assert semver.clean(version) == version
    try:
        tag = check_tag(value)
    except BadRequest:
        pass
    else:
        assert tag == value and not semver.is_valid_range(tag)


# -- tarballs --------------------------------------------------------------------------------

_LIMIT = 1024 * 1024
_PACKAGE_JSON = orjson.dumps({"name": "demo", "version": "1.0.0", "description": "é"})


def _pax_tarball() -> bytes:
    """An uncompressed tar with pax headers (a long path, non-ASCII), as node-tar writes."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        files = {
            "package/package.json": _PACKAGE_JSON,
            "package/" + "deep/" * 30 + "index.js": b"module.exports = 1\n",
            "package/caf\u00e9.js": b"x",
        }
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000.5
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


_TAR = _pax_tarball()
_TGZ = gzip.compress(_TAR, mtime=0)
_mutations = st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=8)


def _mutate(data: bytes, mutations: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, value in mutations:
        out[position % len(out)] = value
    return bytes(out)


def _inspect_or_refuse(data: bytes) -> None:
    try:
        info = inspect_tarball(data, max_unpacked=_LIMIT)
    except InvalidPublish as exc:
        assert exc.status_code == 400 and exc.message
        return
    assert isinstance(info.package_json, dict)
    assert info.unpacked_size >= 0


def test_the_seed_tarball_is_valid_and_has_pax_headers() -> None:
    assert b"PaxHeader" in _TAR
    info = inspect_tarball(_TGZ, max_unpacked=_LIMIT)
    assert info.file_count == 3 and info.package_json["name"] == "demo"


@PURE_SETTINGS
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_refused_with_invalid_publish(data: bytes) -> None:
    _inspect_or_refuse(data)
    _inspect_or_refuse(b"\x1f\x8b" + data)
    _inspect_or_refuse(gzip.compress(data, mtime=0))


@PURE_SETTINGS
@given(_mutations)
def test_mutated_tarballs_give_invalid_publish_or_a_package(
    mutations: list[tuple[int, int]],
) -> None:
    # Mutating the tar then compressing reaches the header parsers; mutating the gzip
    # stream reaches the inflater and the trailer checks.
    _inspect_or_refuse(gzip.compress(_mutate(_TAR, mutations), mtime=0))
    _inspect_or_refuse(_mutate(_TGZ, mutations))


@settings(max_examples=60, deadline=None)
@given(_mutations, st.integers(1, 64))
def test_mutated_tarballs_are_read_in_bounded_memory(
    mutations: list[tuple[int, int]], copies: int
) -> None:
    # The package's other file repeated: up to 64 MiB unpacked, over the 1 MiB limit.
    body = _mutate(_TAR, mutations)[: len(_TAR) - 1024] + bytes(1 << 20) * copies
    data = gzip.compress(body, compresslevel=1, mtime=0)
    tracemalloc.start()
    try:
        _inspect_or_refuse(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * _LIMIT


def _pax_record(key: bytes, value: bytes) -> bytes:
    """One ``<length> key=value\\n`` record, its length counting itself."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body


@pytest.mark.parametrize(
    ("digits", "message"),
    [(60_000, "implausibly long number"), (200_000, "extended header of")],
)
def test_tarfiles_pax_parser_never_sees_a_hostile_header(
    monkeypatch: pytest.MonkeyPatch, digits: int, message: str
) -> None:
    # tarfile's pax parser is quadratic on long digit runs before Python 3.11.10
    # (CVE-2024-6232): 60,000 digits held it for ~10 s, 1 MB for hours. The reader must
    # refuse such a header before tarfile parses it, and read a huge one not at all.
    calls: list[int] = []
    original = tarfile.TarInfo._proc_pax  # type: ignore[attr-defined]

    def spy(self: tarfile.TarInfo, archive: tarfile.TarFile) -> Any:
        calls.append(self.size)
        return original(self, archive)

    monkeypatch.setattr(tarfile.TarInfo, "_proc_pax", spy)
    record = _pax_record(b"comment", b"7" * digits)
    header = tarfile.TarInfo("././@PaxHeader")
    header.type = tarfile.XHDTYPE
    header.size = len(record)
    raw = header.tobuf(format=tarfile.USTAR_FORMAT) + record
    hostile = raw + bytes(-len(raw) % 512) + _TAR
    with pytest.raises(InvalidPublish, match=message):
        inspect_tarball(gzip.compress(hostile, mtime=0), max_unpacked=_LIMIT)
    assert calls == []
    # An ordinary pax header still goes through tarfile's parser.
    inspect_tarball(_TGZ, max_unpacked=_LIMIT)
    assert calls


# -- Authorization headers -------------------------------------------------------------------


_auth_headers = (
    st.text(max_size=80)
    | st.sampled_from(["Bearer", "Basic", "Token", "bearer", "BASIC", "Digest"]).flatmap(
        lambda scheme: st.text(max_size=60).map(lambda rest: f"{scheme} {rest}")
    )
    | st.binary(max_size=60).map(lambda raw: "Basic " + base64.b64encode(raw).decode())
)


@PURE_SETTINGS
@given(_auth_headers)
@example("Basic " + base64.b64encode(b"\xff\xfe:\x00").decode())
@example("Basic " + base64.b64encode(b"user:").decode())
@example("Bearer ")
def test_authorization_parsing_raises_only_unauthorized(header: str) -> None:
    try:
        parsed = parse_authorization(header)
    except Unauthorized as exc:
        assert exc.status_code == 401 and "WWW-Authenticate" in exc.headers
        return
    assert parsed is not None
    scheme, _, secret = parsed
    assert scheme in ("bearer", "basic") and secret


# -- the HTTP surface, in-process ------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    """The app with alice (owner on ``main``) and ``demo@1.0.0`` published."""
    runner = asyncio.Runner()
    settings_ = load_settings(overrides={"data_dir": tmp_path / "data"})
    made = Api(runner, create_app(settings_), tmp_path / "data")
    made.run(made._setup())
    made.publish("demo", "1.0.0")
    yield made
    made.close()
    runner.close()


def assert_client_error(response: httpx.Response) -> None:
    """A 4xx with npm's error shape."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"} and body["error"], body


def assert_no_server_error(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400 and response.headers.get("content-type") == "application/json":
        assert set(response.json()) == {"error"}, response.text


@API_SETTINGS
@given(_auth_headers.filter(lambda h: h.isascii() and "\n" not in h and "\r" not in h))
def test_any_authorization_header_is_a_401_or_anonymous_never_a_500(api: Api, header: str) -> None:
    response = api.get("/npm/main/demo", headers={"Authorization": header})
    if response.status_code == 200:
        # Only an empty header reads as anonymous; a token never guessed signs nobody in.
        assert not header.strip()
    else:
        assert_client_error(response)
        assert response.status_code in (400, 401), response.text
    whoami = api.get("/npm/main/-/whoami", headers={"Authorization": header})
    assert_client_error(whoami)


_segments = st.text(
    st.characters(codec="latin-1", exclude_characters="?#"), max_size=12
) | st.sampled_from(
    ["%2f", "%252f", "%2e%2e", "@acme%2fwidget", "-", "-rev", "1-0", "demo", "%", "%C2%B2"]
)


@API_SETTINGS
@given(
    st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "POST"]),
    st.lists(_segments, max_size=6),
)
def test_any_path_is_answered_without_a_server_error(
    api: Api, method: str, segments: list[str]
) -> None:
    raw = ("/npm/main/" + "/".join(segments)).encode("latin-1")
    response = api.raw(
        method,
        raw,
        headers=[("authorization", api.alice), ("content-type", "application/json")],
        chunks=[b"{}"] if method in ("PUT", "POST") else [],
    )
    assert response.status < 500, (raw, response.status, response.body)


_numbers = st.text(max_size=8) | st.sampled_from(
    ["\u00b2", "\u0661\u0662", "1\u00b9", "-1", "1e3", " 7 "]
)


@API_SETTINGS
@given(_numbers)
@example("\u00b2")
@example("\x1f7")  # whitespace to str.strip(), not to int()
@example("9" * 5000)  # over int()'s digit limit
def test_numeric_query_parameters_never_cause_a_server_error(api: Api, value: str) -> None:
    quoted = quote(value, safe="")
    for path in (
        f"/npm/main/-/v1/search?text=demo&size={quoted}",
        f"/npm/main/-/v1/search?text=demo&from={quoted}",
        f"/npm/main/-/all/since?startkey={quoted}",
        f"/npm/main/-/npm/v1/tokens?page={quoted}",
        f"/-/api/feeds/main/packages?page={quoted}&size={quoted}",
        f"/-/ui/search?q=demo&page={quoted}",
        f"/-/ui/feed/main?page={quoted}",
    ):
        assert_no_server_error(api.get(path, auth=api.alice))
    for method in ("PUT", "DELETE"):
        response = api.request(
            method, f"/npm/main/demo/-rev/{quoted}-x", auth=api.alice, json={"name": "demo"}
        )
        assert_no_server_error(response)


@API_SETTINGS
@given(st.text(st.characters(codec="latin-1"), max_size=12))
@example("\u00b2")
@example("1\u00b9")
def test_any_content_length_is_answered_without_a_server_error(api: Api, declared: str) -> None:
    assume("\r" not in declared and "\n" not in declared)
    response = api.raw(
        "PUT",
        b"/npm/main/demo",
        headers=[("authorization", api.alice), ("content-length", declared)],
        chunks=[b"{}"],
    )
    assert response.status < 500, (declared, response.status, response.body)


# -- publish bodies --------------------------------------------------------------------------

_BODY = publish_body("demo", "2.0.0")
_VERSION_PATHS: list[tuple[str, ...]] = [
    (),
    ("name",),
    ("_id",),
    ("versions",),
    ("dist-tags",),
    ("dist-tags", "latest"),
    ("_attachments",),
    ("_attachments", "demo-2.0.0.tgz"),
    ("_attachments", "demo-2.0.0.tgz", "data"),
    ("_attachments", "demo-2.0.0.tgz", "length"),
    ("versions", "2.0.0"),
    ("versions", "2.0.0", "name"),
    ("versions", "2.0.0", "version"),
    ("versions", "2.0.0", "dist"),
    ("versions", "2.0.0", "dist", "integrity"),
    ("versions", "2.0.0", "dist", "shasum"),
    ("versions", "2.0.0", "readme"),
    ("versions", "2.0.0", "scripts"),
    ("maintainers",),
    ("_rev",),
]
_edits = st.lists(
    st.tuples(st.sampled_from(_VERSION_PATHS), st.none() | _json | st.just(_BODY)), max_size=3
)


def _edited(body: dict[str, Any], edits: list[tuple[tuple[str, ...], Any]]) -> Any:
    """The body with each path set to a value (None: the key removed)."""
    out: Any = copy.deepcopy(body)
    for path, value in edits:
        if not path:
            out = value
            continue
        parent = out
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        if value is None:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = copy.deepcopy(value)
    return out


@API_SETTINGS
@given(_edits, st.sampled_from(["/npm/main/demo", "/npm/main/demo/-rev/1-0", "/npm/main/other"]))
def test_any_publish_body_is_a_success_or_a_4xx_error(
    api: Api, edits: list[tuple[tuple[str, ...], Any]], path: str
) -> None:
    body = _edited(_BODY, edits)
    # The standard library's encoder: integers past 64 bits and lone surrogates included.
    content = json.dumps(body).encode()
    response = api.put(
        path, auth=api.alice, content=content, headers={"Content-Type": "application/json"}
    )
    if response.status_code < 300:
        assert response.status_code in (200, 201), response.text
        assert response.json()["ok"] is True
    else:
        assert_client_error(response)


@API_SETTINGS
@given(_mutations)
def test_a_publish_of_a_mutated_tarball_is_a_400_or_a_new_version(
    api: Api, mutations: list[tuple[int, int]]
) -> None:
    tarball = _mutate(npm_tarball({"name": "demo", "version": "3.0.0"}), mutations)
    before = api.snapshot("demo")
    response = api.put(
        "/npm/main/demo", auth=api.alice, json=publish_body("demo", "3.0.0", tarball=tarball)
    )
    if response.status_code == 201:
        return
    assert_client_error(response)
    assert response.status_code in (400, 403), response.text
    assert api.snapshot("demo") == before


def test_fuzzed_credentials_never_sign_in(api: Api) -> None:
    # The property tests above must not pass because every request was anonymous.
    assert api.get("/npm/main/-/whoami", auth=bearer(api.alice_token)).json() == {
        "username": "alice"
    }
    assert api.get("/npm/main/-/whoami", auth=basic("alice", api.alice_token)).status_code == 200
    assert api.get("/npm/main/-/whoami", auth=bearer(api.alice_token + "x")).status_code == 401
