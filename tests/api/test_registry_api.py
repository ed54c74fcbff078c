"""The registry's HTTP API, in-process: what npm clients see, and every bad input refused
with a clear ``{"error": ...}`` and nothing changed."""

from __future__ import annotations

import base64
import email.utils
import gzip
import hashlib
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from tests.api.conftest import (
    ALICE_PASSWORD,
    Api,
    ApiFactory,
    basic,
    bearer,
    npm_tarball,
    publish_body,
    quote_name,
)

CORGI = "application/vnd.npm.install-v1+json"
CORGI_ACCEPT = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"
NPM_ERROR = "cannot publish over the previously published versions"


def assert_error(response: httpx.Response, status: int, fragment: str) -> str:
    """The response is ``status`` with a JSON body ``{"error": "...fragment..."}``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str)
    assert fragment.lower() in body["error"].lower(), body["error"]
    return str(body["error"])


def doc(api: Api, name: str, **headers: str) -> dict[str, Any]:
    response = api.get("/npm/main/" + quote_name(name), headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def write_doc(api: Api, name: str) -> dict[str, Any]:
    """The document npm reads before an edit: ``GET /<name>?write=true``."""
    response = api.get(f"/npm/main/{quote_name(name)}?write=true", auth=api.alice)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def path_of(url: str) -> str:
    return httpx.URL(url).raw_path.decode()


# -- publish and packuments ----------------------------------------------------------------


def test_publish_then_full_packument(api: Api) -> None:
    response = api.publish("demo", "1.0.0")
    assert response.json()["ok"] is True
    assert response.json()["id"] == "demo"
    rev = response.json()["rev"]
    full = doc(api, "demo")
    assert full["_id"] == "demo" and full["name"] == "demo"
    assert full["_rev"] == rev
    assert full["dist-tags"] == {"latest": "1.0.0"}
    assert list(full["versions"]) == ["1.0.0"]
    assert set(full["time"]) == {"created", "modified", "1.0.0"}
    assert full["maintainers"] == [{"name": "alice", "email": "alice@example.test"}]
    assert full["description"] == "demo for tests"
    assert full["license"] == "MIT"
    assert full["readme"].startswith("# demo")
    version = full["versions"]["1.0.0"]
    assert version["_npmUser"] == {"name": "alice", "email": "alice@example.test"}
    assert version["main"] == "index.js"
    assert version["dist"]["fileCount"] == 2
    assert version["dist"]["tarball"] == "http://testserver/npm/main/demo/-/demo-1.0.0.tgz"
    for field in ("_attachments", "readme", "access"):
        assert field not in version


def test_abbreviated_packument(api: Api) -> None:
    api.publish("demo", "1.0.0", extra={"dependencies": {"left-pad": "^1.0.0"}})
    response = api.get("/npm/main/demo", headers={"Accept": CORGI_ACCEPT})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(CORGI)
    corgi = response.json()
    assert set(corgi) == {"name", "modified", "dist-tags", "versions"}
    assert corgi["dist-tags"]["latest"] == "1.0.0"
    version = corgi["versions"]["1.0.0"]
    assert set(version) == {"name", "version", "dist", "dependencies"}
    assert version["dist"]["tarball"] == "http://testserver/npm/main/demo/-/demo-1.0.0.tgz"
    full = api.get("/npm/main/demo", headers={"Accept": "application/json"})
    assert full.headers["content-type"].startswith("application/json")
    assert "time" in full.json()
    # npm's ?write=true always gets the full document, whatever it accepts.
    written = api.get("/npm/main/demo?write=true", headers={"Accept": CORGI_ACCEPT})
    assert "_rev" in written.json()


@pytest.mark.parametrize("style", ["@acme%2fwidget", "@acme%2Fwidget", "@acme/widget"])
def test_scoped_names_in_every_spelling(api: Api, style: str) -> None:
    body = publish_body("@acme/widget", "1.0.0")
    assert api.put(f"/npm/main/{style}", auth=api.alice, json=body).status_code == 201
    for spelling in ("@acme%2fwidget", "@acme%2Fwidget", "@acme/widget"):
        full = api.get(f"/npm/main/{spelling}")
        assert full.status_code == 200
        assert full.json()["name"] == "@acme/widget"
        tarball = full.json()["versions"]["1.0.0"]["dist"]["tarball"]
        assert tarball == "http://testserver/npm/main/@acme/widget/-/widget-1.0.0.tgz"
        assert api.get(f"/npm/main/{spelling}/-/widget-1.0.0.tgz").status_code == 200


def test_first_version_published_with_another_tag_is_still_latest(api: Api) -> None:
    api.publish("demo", "1.0.0-beta.1", tag="beta")
    assert doc(api, "demo")["dist-tags"] == {"beta": "1.0.0-beta.1", "latest": "1.0.0-beta.1"}
    api.publish("demo", "1.0.0")
    api.publish("demo", "2.0.0-rc.1", tag="next")
    tags = doc(api, "demo", Accept=CORGI_ACCEPT)["dist-tags"]
    assert tags == {"beta": "1.0.0-beta.1", "latest": "1.0.0", "next": "2.0.0-rc.1"}


def test_versions_are_in_semver_order_and_time_is_kept(api: Api) -> None:
    for version in ("1.10.0", "1.9.0", "1.2.0"):
        api.publish("demo", version)
    full = doc(api, "demo")
    assert list(full["versions"]) == ["1.2.0", "1.9.0", "1.10.0"]
    assert full["time"]["1.10.0"] <= full["time"]["1.9.0"] <= full["time"]["1.2.0"]
    assert full["time"]["modified"] >= full["time"]["1.2.0"]


def test_version_manifest_by_version_and_tag(api: Api) -> None:
    api.publish("demo", "1.0.0")
    api.publish("demo", "1.1.0")
    assert api.get("/npm/main/demo/1.0.0").json()["version"] == "1.0.0"
    assert api.get("/npm/main/demo/latest").json()["version"] == "1.1.0"
    assert_error(api.get("/npm/main/demo/9.9.9"), 404, "not found")


def test_unknown_package_is_404(api: Api) -> None:
    assert_error(api.get("/npm/main/nothing-here"), 404, "not found")
    assert_error(api.get("/npm/main/nothing-here", headers={"Accept": CORGI_ACCEPT}), 404, "")


def test_etag_last_modified_and_304(api: Api) -> None:
    api.publish("demo", "1.0.0")
    first = api.get("/npm/main/demo")
    etag = first.headers["etag"]
    last_modified = email.utils.parsedate_to_datetime(first.headers["last-modified"])
    assert last_modified.year >= 2024
    for header in (etag, etag.removeprefix("W/"), f'"other", {etag}', "*"):
        again = api.get("/npm/main/demo", headers={"If-None-Match": header})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == etag
    assert api.get("/npm/main/demo", headers={"If-None-Match": '"other"'}).status_code == 200
    corgi = api.get("/npm/main/demo", headers={"Accept": CORGI_ACCEPT})
    assert corgi.headers["etag"] != etag
    api.publish("demo", "1.1.0")
    changed = api.get("/npm/main/demo", headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    assert "1.1.0" in changed.json()["versions"]


@pytest.mark.parametrize("accept", ["application/json", CORGI_ACCEPT])
def test_gzip_when_accepted(api: Api, accept: str) -> None:
    dependencies = {f"dependency-number-{i}": f"^{i}.0.0" for i in range(20)}
    api.publish("demo", "1.0.0", extra={"dependencies": dependencies})
    plain = api.raw("GET", b"/npm/main/demo", headers=[("accept", accept)])
    assert "content-encoding" not in plain.headers
    zipped = api.raw(
        "GET", b"/npm/main/demo", headers=[("accept", accept), ("accept-encoding", "gzip, deflate")]
    )
    assert zipped.status == 200
    assert zipped.headers["content-encoding"] == "gzip"
    assert "accept-encoding" in zipped.headers["vary"].lower()
    assert zipped.body[:2] == b"\x1f\x8b"
    assert orjson.loads(gzip.decompress(zipped.body)) == plain.json()
    assert int(zipped.headers["content-length"]) == len(zipped.body)


def test_tarball_get_and_head(api: Api) -> None:
    tarball = npm_tarball({"name": "demo", "version": "1.0.0"}, {"index.js": b"x" * 5000})
    api.publish("demo", "1.0.0", tarball=tarball)
    dist = doc(api, "demo")["versions"]["1.0.0"]["dist"]
    got = api.get(path_of(dist["tarball"]))
    assert got.status_code == 200
    assert got.content == tarball
    assert (
        "sha512-" + base64.b64encode(hashlib.sha512(got.content).digest()).decode()
        == (dist["integrity"])
    )
    assert hashlib.sha1(got.content, usedforsecurity=False).hexdigest() == dist["shasum"]
    head = api.request("HEAD", path_of(dist["tarball"]))
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == len(tarball)
    assert head.content == b""
    assert_error(api.get("/npm/main/demo/-/demo-9.9.9.tgz"), 404, "no tarball")
    assert_error(api.get("/npm/main/demo/-/other-1.0.0.tgz"), 404, "no tarball")


def test_dist_tarball_follows_the_host_header(api: Api) -> None:
    api.publish("demo", "1.0.0")
    full = doc(api, "demo", Host="npm.internal.test:8443")
    url = full["versions"]["1.0.0"]["dist"]["tarball"]
    assert url == "http://npm.internal.test:8443/npm/main/demo/-/demo-1.0.0.tgz"
    corgi = doc(api, "demo", Host="[::1]:4880", Accept=CORGI_ACCEPT)
    assert corgi["versions"]["1.0.0"]["dist"]["tarball"].startswith("http://[::1]:4880/npm/main/")


def test_a_host_header_that_is_not_a_host_is_not_echoed(api: Api) -> None:
    api.publish("demo", "1.0.0")
    full = doc(api, "demo", Host="evil.test/phish?x=")
    url = full["versions"]["1.0.0"]["dist"]["tarball"]
    assert "evil" not in url
    assert url.endswith("/npm/main/demo/-/demo-1.0.0.tgz")


def test_dist_tarball_uses_public_url(make_api: ApiFactory) -> None:
    api = make_api(public_url="https://registry.example.test/base/")
    api.publish("@acme/widget", "1.0.0")
    full = doc(api, "@acme/widget", Host="127.0.0.1:4880")
    assert full["versions"]["1.0.0"]["dist"]["tarball"] == (
        "https://registry.example.test/base/npm/main/@acme/widget/-/widget-1.0.0.tgz"
    )


def test_dist_tags_get_put_delete(api: Api) -> None:
    api.publish("demo", "1.0.0")
    api.publish("demo", "1.1.0")
    tags_path = "/npm/main/-/package/demo/dist-tags"
    assert api.get(tags_path).json() == {"latest": "1.1.0"}
    added = api.put(f"{tags_path}/stable", auth=api.alice, json="1.0.0")
    assert added.status_code == 201
    assert api.get(tags_path).json() == {"latest": "1.1.0", "stable": "1.0.0"}
    moved = api.put(f"{tags_path}/latest", auth=api.alice, json="1.0.0")
    assert moved.status_code == 201
    assert doc(api, "demo")["dist-tags"] == {"latest": "1.0.0", "stable": "1.0.0"}
    assert api.delete(f"{tags_path}/stable", auth=api.alice).status_code == 200
    assert api.get(tags_path).json() == {"latest": "1.0.0"}
    assert api.get("/npm/main/-/package/@acme%2fnothing/dist-tags").status_code == 404


def test_dist_tag_errors(api: Api) -> None:
    api.publish("demo", "1.0.0")
    tags_path = "/npm/main/-/package/demo/dist-tags"
    before = api.snapshot("demo")
    assert_error(api.put(f"{tags_path}/beta", auth=api.alice, json="9.9.9"), 404, "9.9.9")
    assert_error(api.delete(f"{tags_path}/latest", auth=api.alice), 400, "latest")
    assert_error(api.delete(f"{tags_path}/nope", auth=api.alice), 404, "nope")
    assert_error(api.put(f"{tags_path}/beta", json="1.0.0"), 401, "sign in")
    assert_error(api.put(f"{tags_path}/beta", auth=api.alice, json=["1.0.0"]), 400, "version")
    assert api.snapshot("demo") == before


def test_deprecate_and_undeprecate_by_document_put(api: Api) -> None:
    api.publish("demo", "1.0.0")
    api.publish("demo", "1.1.0")
    document = write_doc(api, "demo")
    document["versions"]["1.0.0"]["deprecated"] = "use 1.1.0"
    assert api.put("/npm/main/demo", auth=api.alice, json=document).status_code == 201
    full = doc(api, "demo")
    assert full["versions"]["1.0.0"]["deprecated"] == "use 1.1.0"
    assert "deprecated" not in full["versions"]["1.1.0"]
    corgi = doc(api, "demo", Accept=CORGI_ACCEPT)
    assert corgi["versions"]["1.0.0"]["deprecated"] == "use 1.1.0"
    document = write_doc(api, "demo")
    document["versions"]["1.0.0"]["deprecated"] = ""
    assert api.put("/npm/main/demo", auth=api.alice, json=document).status_code == 201
    assert "deprecated" not in doc(api, "demo")["versions"]["1.0.0"]


def test_document_put_cannot_rewrite_a_published_version(api: Api) -> None:
    api.publish("demo", "1.0.0")
    document = write_doc(api, "demo")
    document["versions"]["1.0.0"]["dependencies"] = {"evil": "*"}
    document["versions"]["1.0.0"]["dist"]["integrity"] = "sha512-forged"
    assert api.put("/npm/main/demo", auth=api.alice, json=document).status_code == 201
    version = doc(api, "demo")["versions"]["1.0.0"]
    assert "dependencies" not in version
    assert version["dist"]["integrity"] != "sha512-forged"


def unpublish_version(api: Api, name: str, version: str, *, send_latest: bool = True) -> None:
    """``npm unpublish name@version``, request by request."""
    document = write_doc(api, name)
    del document["versions"][version]
    tags = {t: v for t, v in document["dist-tags"].items() if v != version}
    if not send_latest:
        tags.pop("latest", None)
    document["dist-tags"] = tags
    path = f"/npm/main/{quote_name(name)}"
    put = api.put(f"{path}/-rev/{document['_rev']}", auth=api.alice, json=document)
    assert put.status_code == 201, put.text
    rev = write_doc(api, name)["_rev"]
    bare = name.rpartition("/")[2]
    deleted = api.delete(f"{path}/-/{bare}-{version}.tgz/-rev/{rev}", auth=api.alice)
    assert deleted.status_code == 200, deleted.text


def test_unpublish_one_version(api: Api) -> None:
    api.publish("@acme/widget", "1.0.0")
    api.publish("@acme/widget", "1.1.0")
    unpublish_version(api, "@acme/widget", "1.1.0")
    full = doc(api, "@acme/widget")
    assert list(full["versions"]) == ["1.0.0"]
    assert full["dist-tags"] == {"latest": "1.0.0"}
    assert "1.1.0" not in full["time"]
    assert api.get("/npm/main/@acme%2fwidget/-/widget-1.1.0.tgz").status_code == 404
    assert api.get("/npm/main/@acme%2fwidget/-/widget-1.0.0.tgz").status_code == 200
    again = api.put(
        "/npm/main/@acme%2fwidget", auth=api.alice, json=publish_body("@acme/widget", "1.1.0")
    )
    assert_error(again, 403, NPM_ERROR)


@pytest.mark.parametrize("how", ["document", "tarball-only"])
def test_latest_moves_to_the_highest_remaining_version(api: Api, how: str) -> None:
    api.publish("demo", "1.0.0")
    api.publish("demo", "2.0.0-rc.1", tag="next")
    api.publish("demo", "1.1.0")
    if how == "document":
        unpublish_version(api, "demo", "1.1.0", send_latest=False)
    else:
        rev = write_doc(api, "demo")["_rev"]
        response = api.delete(f"/npm/main/demo/-/demo-1.1.0.tgz/-rev/{rev}", auth=api.alice)
        assert response.status_code == 200
    # npm's rule: the highest remaining version, prereleases included.
    assert doc(api, "demo")["dist-tags"] == {"latest": "2.0.0-rc.1", "next": "2.0.0-rc.1"}


def test_latest_uses_semver_order_not_string_order(api: Api) -> None:
    for version in ("1.9.0", "1.10.0", "2.0.0"):
        api.publish("demo", version)
    unpublish_version(api, "demo", "2.0.0", send_latest=False)
    assert doc(api, "demo")["dist-tags"]["latest"] == "1.10.0"


def test_delete_package(api: Api) -> None:
    api.publish("demo", "1.0.0")
    api.publish("demo", "1.1.0")
    rev = write_doc(api, "demo")["_rev"]
    response = api.delete(f"/npm/main/demo/-rev/{rev}", auth=api.alice)
    assert response.status_code == 200
    assert_error(api.get("/npm/main/demo"), 404, "not found")
    assert api.get("/npm/main/demo/-/demo-1.0.0.tgz").status_code == 404
    for version in ("1.0.0", "1.1.0"):
        again = api.put("/npm/main/demo", auth=api.alice, json=publish_body("demo", version))
        assert_error(again, 403, NPM_ERROR)
    api.publish("demo", "1.2.0")
    assert list(doc(api, "demo")["versions"]) == ["1.2.0"]


def test_unpublish_of_the_last_version_deletes_the_package(api: Api) -> None:
    api.publish("demo", "1.0.0")
    rev = write_doc(api, "demo")["_rev"]
    response = api.delete(f"/npm/main/demo/-/demo-1.0.0.tgz/-rev/{rev}", auth=api.alice)
    assert response.status_code == 200
    assert api.get("/npm/main/demo").status_code == 404


def test_stale_rev_is_409(api: Api) -> None:
    api.publish("demo", "1.0.0")
    api.publish("demo", "1.1.0")
    stale = write_doc(api, "demo")
    api.publish("demo", "1.2.0")
    before = api.snapshot("demo")
    del stale["versions"]["1.1.0"]
    put = api.put(f"/npm/main/demo/-rev/{stale['_rev']}", auth=api.alice, json=stale)
    assert_error(put, 409, "changed")
    assert_error(api.delete(f"/npm/main/demo/-rev/{stale['_rev']}", auth=api.alice), 409, "")
    assert_error(api.delete("/npm/main/demo/-rev/not-a-rev", auth=api.alice), 409, "revision")
    assert api.snapshot("demo") == before


# -- accounts ------------------------------------------------------------------------------


def login_body(name: str, password: str, email: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "_id": f"org.couchdb.user:{name}",
        "name": name,
        "password": password,
        "type": "user",
        "roles": [],
        "date": "2025-01-01T00:00:00.000Z",
    }
    if email is not None:
        body["email"] = email
    return body


def test_legacy_login(api: Api) -> None:
    response = api.put(
        "/npm/main/-/user/org.couchdb.user:alice", json=login_body("alice", ALICE_PASSWORD)
    )
    assert response.status_code == 201
    assert response.json()["ok"] is True
    token = response.json()["token"]
    whoami = api.get("/npm/main/-/whoami", auth=bearer(token))
    assert whoami.json() == {"username": "alice"}


def test_legacy_login_with_a_wrong_password(api: Api) -> None:
    before = api.snapshot()
    response = api.put(
        "/npm/main/-/user/org.couchdb.user:alice", json=login_body("alice", "wrong password")
    )
    assert_error(response, 401, "incorrect")
    assert response.headers["www-authenticate"].startswith("Basic")
    assert api.snapshot() == before


def test_adduser_is_refused_when_registration_is_off(api: Api) -> None:
    before = api.snapshot()
    response = api.put(
        "/npm/main/-/user/org.couchdb.user:carol",
        json=login_body("carol", "carol's password", "carol@example.test"),
    )
    assert_error(response, 403, "turned off")
    assert api.snapshot() == before
    assert api.run(api.app.meta.get_user("carol")) is None


def test_adduser_creates_the_user_when_registration_is_on(make_api: ApiFactory) -> None:
    api = make_api(allow_registration=True)
    response = api.put(
        "/npm/main/-/user/org.couchdb.user:carol",
        json=login_body("carol", "carol's password", "carol@example.test"),
    )
    assert response.status_code == 201
    user = api.run(api.app.meta.get_user("carol"))
    assert user is not None and user.email == "carol@example.test" and not user.admin
    token = response.json()["token"]
    assert api.get("/npm/main/-/whoami", auth=bearer(token)).json() == {"username": "carol"}
    # A new account can read the public feed, but publishing needs a role.
    denied = api.put(
        "/npm/main/carols-pkg", auth=bearer(token), json=publish_body("carols-pkg", "1.0.0")
    )
    assert_error(denied, 403, "publisher")


def test_whoami(api: Api) -> None:
    assert api.get("/npm/main/-/whoami", auth=api.alice).json() == {"username": "alice"}
    by_password = api.get("/npm/main/-/whoami", auth=basic("alice", ALICE_PASSWORD))
    assert by_password.json() == {"username": "alice"}
    assert_error(api.get("/npm/main/-/whoami"), 401, "not signed in")
    bad = api.get("/npm/main/-/whoami", auth=bearer("ent_not-a-token"))
    assert_error(bad, 401, "not valid")
    assert bad.headers["www-authenticate"].startswith("Bearer")


def test_ping(api: Api) -> None:
    response = api.get("/npm/main/-/ping")
    assert response.status_code == 200
    assert response.json() == {}
    assert_error(api.get("/npm/nope/-/ping"), 404, "no feed")


# -- bad input: every case refused, nothing changed ----------------------------------------


@pytest.fixture
def published(api: Api) -> Api:
    """``demo`` 1.0.0 and 1.1.0 and ``@acme/widget`` 1.0.0 are in feed ``main``."""
    api.publish("demo", "1.0.0")
    api.publish("demo", "1.1.0")
    api.publish("@acme/widget", "1.0.0")
    return api


WATCHED = ("demo", "@acme/widget")


class Unchanged:
    """``with Unchanged(api): ...``: the block must leave seq, packages and blobs alone."""

    def __init__(self, api: Api, *names: str) -> None:
        self.api = api
        self.names = names or WATCHED

    def __enter__(self) -> None:
        self.before = self.api.snapshot(*self.names)
        self.packument = self.api.get("/npm/main/demo").content

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            assert self.api.snapshot(*self.names) == self.before
            assert self.api.get("/npm/main/demo").content == self.packument


@pytest.mark.parametrize(
    "name",
    [
        "Demo",
        "has space",
        ".leading-dot",
        "_leading-underscore",
        "node_modules",
        "favicon.ico",
        "a" * 215,
        "http",
        "fs",
        "@acme/Widget",
        "@acme/.widget",
        "excited!",
        "tilde~",
        " demo",
        "emoji-\u2603",
    ],
)
def test_invalid_package_names_are_refused(published: Api, name: str) -> None:
    body = publish_body(name, "1.0.0")
    with Unchanged(published, "demo", name):
        response = published.put(
            "/npm/main/" + quote_name(name).replace(" ", "%20").replace("\u2603", "%E2%98%83"),
            auth=published.alice,
            json=body,
        )
        assert_error(response, 400, "invalid package name")


def test_a_name_of_214_characters_is_accepted(api: Api) -> None:
    api.publish("a" * 214, "1.0.0")


BAD_PATHS: list[tuple[str, bytes]] = [
    ("GET", b"/npm/../npm/main/demo"),
    ("GET", b"/npm/%2e%2e/main/demo"),
    ("GET", b"/npm/ma%00in/demo"),
    ("GET", b"/npm/ma\\in/demo"),
    ("GET", b"/npm/ma%5cin/demo"),
    ("GET", b"/npm/main/.."),
    ("GET", b"/npm/main/%2e%2e"),
    ("GET", b"/npm/main/%2E%2E/demo"),
    ("GET", b"/npm/main/@acme%2f.."),
    ("GET", b"/npm/main/@acme/.."),
    ("GET", b"/npm/main/de%00mo"),
    ("GET", b"/npm/main/de\\mo"),
    ("GET", b"/npm/main/demo%5c"),
    ("GET", b"/npm/main/demo/-/..%2f..%2fentrepot.db"),
    ("GET", b"/npm/main/demo/-/%2e%2e"),
    ("GET", b"/npm/main/demo/-/demo-1.0.0.tgz%00"),
    ("GET", b"/npm/main/demo/-/..\\demo-1.0.0.tgz"),
    ("GET", b"/npm/main/demo/-/%252e%252e%252fentrepot.db"),
    ("PUT", b"/npm/main/../demo"),
    ("PUT", b"/npm/main/%2e%2e"),
    ("PUT", b"/npm/main/de%00mo"),
    ("PUT", b"/npm/main/demo/-rev/%00"),
    ("PUT", b"/npm/main/-/package/demo/dist-tags/.."),
    ("PUT", b"/npm/main/-/package/demo/dist-tags/be%00ta"),
    ("PUT", b"/npm/main/-/package/demo/dist-tags/be%5cta"),
    ("PUT", b"/npm/main/-/user/..%2forg.couchdb.user:admin"),
    ("PUT", b"/npm/main/-/user/org.couchdb.user:alice/-rev/%2e%2e"),
    ("DELETE", b"/npm/main/demo/-rev/.."),
    ("DELETE", b"/npm/main/demo/-/demo-1.1.0.tgz/-rev/%00"),
    ("DELETE", b"/npm/main/demo/-/..%5cdemo-1.1.0.tgz/-rev/1-0"),
    ("DELETE", b"/npm/main/-/package/demo/dist-tags/%2e%2e"),
]


@pytest.mark.parametrize(("method", "raw_path"), BAD_PATHS, ids=[p.decode() for _, p in BAD_PATHS])
def test_dot_dot_backslash_and_nul_in_any_path_part(
    published: Api, method: str, raw_path: bytes
) -> None:
    body = orjson.dumps(publish_body("demo", "2.0.0")) if method == "PUT" else b""
    with Unchanged(published):
        response = published.raw(
            method,
            raw_path,
            headers=[("authorization", published.alice), ("content-type", "application/json")],
            chunks=[body],
        )
        assert response.status == 400, response.body
        error = response.json()
        assert set(error) == {"error"}
        assert any(
            word in error["error"] for word in ("'..'", "backslash", "control", "double-encoded")
        ), error


def _tarball_of_size(size: int) -> bytes:
    # Incompressible, so the publish body is about 4/3 of this.
    noise = random.Random(size).randbytes(size)
    return npm_tarball({"name": "big", "version": "1.0.0"}, {"blob.bin": noise})


def test_body_over_the_limit_with_content_length(make_api: ApiFactory) -> None:
    api = make_api(max_body_bytes=64 * 1024)
    api.publish("demo", "1.0.0")
    body = orjson.dumps(publish_body("big", "1.0.0", tarball=_tarball_of_size(80 * 1024)))
    assert len(body) > 64 * 1024
    with Unchanged(api, "demo", "big"):
        response = api.put("/npm/main/big", auth=api.alice, content=body)
        assert_error(response, 413, "over the limit")
        raw = api.raw(
            "PUT",
            b"/npm/main/big",
            headers=[("authorization", api.alice), ("content-length", str(len(body)))],
            chunks=[body[i : i + 1024] for i in range(0, len(body), 1024)],
        )
        assert raw.status == 413
        # Refused from the header alone: not one chunk of the body was read.
        assert raw.chunks_read == 0


def test_chunked_body_growing_past_the_limit(make_api: ApiFactory) -> None:
    api = make_api(max_body_bytes=64 * 1024)
    api.publish("demo", "1.0.0")
    body = orjson.dumps(publish_body("big", "1.0.0", tarball=_tarball_of_size(200 * 1024)))
    chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    with Unchanged(api, "demo", "big"):
        raw = api.raw(
            "PUT", b"/npm/main/big", headers=[("authorization", api.alice)], chunks=chunks
        )
        assert raw.status == 413
        assert orjson.loads(raw.body)["error"].startswith("the request body is over the limit")
        # Refused as soon as the body grew past the limit, not after reading all of it.
        assert raw.chunks_read <= 64 * 1024 // 4096 + 1 < len(chunks)

        async def stream() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        response = api.put("/npm/main/big", auth=api.alice, content=stream())
        assert_error(response, 413, "over the limit")


def test_gzip_encoded_body_inflating_past_the_limit(make_api: ApiFactory) -> None:
    api = make_api(max_body_bytes=64 * 1024)
    api.publish("demo", "1.0.0")
    bomb = gzip.compress(b"{" + b" " * (1024 * 1024) + b"}")
    with Unchanged(api, "demo"):
        response = api.put(
            "/npm/main/demo",
            auth=api.alice,
            content=bomb,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )
        assert_error(response, 413, "over")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"name": "demo",}', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"demo"', "must be a JSON object"),
        (b"[" * 10_000 + b"]" * 10_000, "not valid JSON"),
    ],
    ids=["broken", "empty", "trailing-comma", "not-utf8", "array", "string", "deep"],
)
def test_malformed_json(published: Api, body: bytes, message: str) -> None:
    with Unchanged(published):
        for path in ("/npm/main/demo", "/npm/main/newpkg", "/npm/main/demo/-rev/1-0"):
            response = published.put(
                path,
                auth=published.alice,
                content=body,
                headers={"Content-Type": "application/json"},
            )
            assert_error(response, 400, message)


@pytest.mark.parametrize("body", [b"{not json", b'"1.0.0', b"\xff"])
def test_malformed_json_in_a_dist_tag_put(published: Api, body: bytes) -> None:
    with Unchanged(published):
        response = published.put(
            "/npm/main/-/package/demo/dist-tags/beta",
            auth=published.alice,
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert_error(response, 400, "not valid JSON")


def _mismatched(case: str) -> tuple[str, dict[str, Any]]:
    """A publish whose URL, body and tarball do not agree, and the path it is sent to."""
    if case == "url":
        return "/npm/main/other", publish_body("demo", "2.0.0")
    if case == "body-name":
        body = publish_body("demo", "2.0.0")
        body["name"] = "other"
        return "/npm/main/demo", body
    if case == "body-id":
        body = publish_body("demo", "2.0.0")
        body["_id"] = "other"
        return "/npm/main/demo", body
    if case == "version-name":
        body = publish_body("demo", "2.0.0")
        body["versions"]["2.0.0"]["name"] = "other"
        return "/npm/main/demo", body
    if case == "version-key":
        body = publish_body("demo", "2.0.0")
        body["versions"]["2.0.0"]["version"] = "2.0.1"
        return "/npm/main/demo", body
    if case == "tarball-name":
        tarball = npm_tarball({"name": "other", "version": "2.0.0"})
        return "/npm/main/demo", publish_body("demo", "2.0.0", tarball=tarball)
    if case == "tarball-version":
        tarball = npm_tarball({"name": "demo", "version": "2.0.1"})
        return "/npm/main/demo", publish_body("demo", "2.0.0", tarball=tarball)
    if case == "scope":
        return "/npm/main/@other%2fwidget", publish_body("@acme/widget", "2.0.0")
    tarball = npm_tarball({"name": "demo", "version": "2.0.0"})
    body = publish_body("demo", "2.0.0", tarball=tarball)
    body["dist-tags"] = {"latest": "1.1.0"}
    return "/npm/main/demo", body


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("url", "does not match"),
        ("body-name", "does not match"),
        ("body-id", "does not match"),
        ("version-name", "does not match"),
        ("version-key", "does not match"),
        ("tarball-name", "tarball's package.json names"),
        ("tarball-version", "tarball's package.json has version"),
        ("scope", "does not match"),
        ("tag-target", "does not point at the published version"),
    ],
)
def test_publish_whose_parts_disagree(published: Api, case: str, message: str) -> None:
    path, body = _mismatched(case)
    with Unchanged(published, "demo", "other", "@acme/widget", "@other/widget"):
        assert_error(published.put(path, auth=published.alice, json=body), 400, message)


def _attachments(case: str) -> dict[str, Any]:
    body = publish_body("demo", "2.0.0")
    attachment = body["_attachments"]["demo-2.0.0.tgz"]
    if case == "empty-object":
        body["_attachments"] = {}
    elif case == "null":
        body["_attachments"] = None
    elif case == "no-data":
        body["_attachments"] = {"demo-2.0.0.tgz": {"content_type": "application/octet-stream"}}
    elif case == "not-base64":
        attachment["data"] = "***not base64***"
    elif case == "empty-data":
        attachment["data"] = ""
        attachment["length"] = 0
    elif case == "wrong-length":
        attachment["length"] += 1
    elif case == "not-tgz":
        body["_attachments"] = {"demo-2.0.0.zip": attachment}
    elif case == "two":
        body["_attachments"]["demo-2.0.0.sigstore"] = dict(attachment)
    return body


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty-object", "no tarball attachment"),
        ("null", "no tarball attachment"),
        ("no-data", "no base64 data"),
        ("not-base64", "not valid base64"),
        ("empty-data", "empty"),
        ("wrong-length", "length"),
        ("not-tgz", ".tgz"),
        ("two", "exactly one attachment"),
    ],
)
def test_bad_attachments(published: Api, case: str, message: str) -> None:
    body = _attachments(case)
    with Unchanged(published):
        assert_error(published.put("/npm/main/demo", auth=published.alice, json=body), 400, message)


def test_missing_attachment_for_a_new_version(published: Api) -> None:
    body = publish_body("demo", "2.0.0")
    del body["_attachments"]
    with Unchanged(published):
        response = published.put("/npm/main/demo", auth=published.alice, json=body)
        assert_error(response, 400, "without a tarball")


def test_missing_attachment_for_a_new_package(published: Api) -> None:
    # Without "_attachments" the PUT is a document edit (npm deprecate), of nothing here.
    body = publish_body("brand-new", "1.0.0")
    del body["_attachments"]
    with Unchanged(published, "demo", "brand-new"):
        response = published.put("/npm/main/brand-new", auth=published.alice, json=body)
        assert_error(response, 404, "'brand-new' not found")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"integrity": "sha512-" + base64.b64encode(b"\0" * 64).decode()}, "dist.integrity"),
        ({"shasum": "0" * 40}, "dist.shasum"),
        ({"integrity": "sha1-abc", "shasum": None}, "sha512"),
        ({"integrity": None, "shasum": None}, "integrity"),
    ],
    ids=["sha512", "sha1", "no-sha512", "none"],
)
def test_wrong_integrity_or_shasum(published: Api, change: dict[str, Any], message: str) -> None:
    body = publish_body("demo", "2.0.0")
    dist = body["versions"]["2.0.0"]["dist"]
    for key, value in change.items():
        if value is None:
            del dist[key]
        else:
            dist[key] = value
    with Unchanged(published):
        assert_error(published.put("/npm/main/demo", auth=published.alice, json=body), 400, message)


@pytest.mark.parametrize(
    ("tarball", "message"),
    [
        (b"PK\x03\x04 a zip file", "not a gzip"),
        (b"package/package.json plain text", "not a gzip"),
        (gzip.compress(b"gzip of something that is not a tar" * 20), "tarball"),
        (npm_tarball({"name": "demo", "version": "2.0.0"})[:-8], "tarball"),
        (npm_tarball({"name": "demo", "version": "2.0.0"})[:40], "tarball"),
    ],
    ids=["zip", "text", "gzip-not-tar", "no-trailer", "truncated"],
)
def test_tarball_that_is_not_a_gzip_tarball(published: Api, tarball: bytes, message: str) -> None:
    body = publish_body("demo", "2.0.0", tarball=tarball)
    with Unchanged(published):
        assert_error(published.put("/npm/main/demo", auth=published.alice, json=body), 400, message)


def test_gzip_bomb(make_api: ApiFactory) -> None:
    api = make_api(max_unpacked_bytes=100_000)
    api.publish("demo", "1.0.0")
    bomb = npm_tarball({"name": "demo", "version": "2.0.0"}, {"zeros.bin": bytes(2 * 1024 * 1024)})
    assert len(bomb) < 20_000
    with Unchanged(api, "demo"):
        response = api.put(
            "/npm/main/demo", auth=api.alice, json=publish_body("demo", "2.0.0", tarball=bomb)
        )
        assert_error(response, 400, "more than 100000 bytes")


@pytest.mark.parametrize("version", ["1.0", "01.0.0", "1.0.0.0", "latest", "1.0.0-", "v", "x.y.z"])
def test_version_that_is_not_semver(published: Api, version: str) -> None:
    tarball = npm_tarball({"name": "demo", "version": version})
    body = publish_body("demo", version, tarball=tarball)
    with Unchanged(published):
        assert_error(
            published.put("/npm/main/demo", auth=published.alice, json=body), 400, "version"
        )


@pytest.mark.parametrize("tag", ["1.x", "v1", "*", "^1.0.0", ">=1", "1.0.0", "~1"])
def test_dist_tag_that_is_a_semver_range(published: Api, tag: str) -> None:
    with Unchanged(published):
        body = publish_body("demo", "2.0.0", tag=tag)
        response = published.put("/npm/main/demo", auth=published.alice, json=body)
        assert_error(response, 400, "semver range")
        quoted = httpx.URL("http://x/" + tag.replace("^", "%5E").replace(">", "%3E")).raw_path
        tag_path = "/npm/main/-/package/demo/dist-tags" + quoted.decode()
        response = published.put(tag_path, auth=published.alice, json="1.0.0")
        assert_error(response, 400, "semver range")


def test_publish_without_credentials(published: Api) -> None:
    with Unchanged(published, "demo", "newpkg"):
        for name in ("demo", "newpkg"):
            response = published.put(f"/npm/main/{name}", json=publish_body(name, "2.0.0"))
            assert_error(response, 401, "sign in")
            assert "www-authenticate" in response.headers


def test_publish_with_bad_credentials(published: Api) -> None:
    with Unchanged(published):
        body = publish_body("demo", "2.0.0")
        for auth in (bearer("ent_forged"), basic("alice", "wrong password"), "Basic %%%"):
            response = published.put("/npm/main/demo", auth=auth, json=body)
            assert_error(response, 401, "")
            assert "www-authenticate" in response.headers


def test_publish_with_a_read_only_token(published: Api) -> None:
    with Unchanged(published, "demo", "newpkg"):
        for name in ("demo", "newpkg"):
            response = published.put(
                f"/npm/main/{name}",
                auth=bearer(published.alice_read_only),
                json=publish_body(name, "2.0.0"),
            )
            assert_error(response, 403, "read-only")


def test_read_only_token_cannot_change_anything_else(published: Api) -> None:
    auth = bearer(published.alice_read_only)
    with Unchanged(published):
        document = write_doc(published, "demo")
        document["versions"]["1.0.0"]["deprecated"] = "no"
        assert_error(published.put("/npm/main/demo", auth=auth, json=document), 403, "read-only")
        rev = document["_rev"]
        assert_error(published.delete(f"/npm/main/demo/-rev/{rev}", auth=auth), 403, "read-only")
        tags = "/npm/main/-/package/demo/dist-tags/beta"
        assert_error(published.put(tags, auth=auth, json="1.0.0"), 403, "read-only")
        tarball = f"/npm/main/demo/-/demo-1.1.0.tgz/-rev/{rev}"
        assert_error(published.delete(tarball, auth=auth), 403, "read-only")


def test_publish_without_a_role_on_the_feed(published: Api) -> None:
    with Unchanged(published):
        response = published.put(
            "/npm/main/demo", auth=bearer(published.bob_token), json=publish_body("demo", "2.0.0")
        )
        assert_error(response, 403, "publisher role")


def test_unknown_feed(published: Api) -> None:
    with Unchanged(published):
        assert_error(published.get("/npm/nope/demo"), 404, "no feed named 'nope'")
        assert_error(published.get("/npm/nope/demo/-/demo-1.0.0.tgz"), 404, "no feed")
        response = published.put(
            "/npm/nope/demo", auth=published.alice, json=publish_body("demo", "2.0.0")
        )
        assert_error(response, 404, "no feed")
        assert_error(published.get("/npm/nope/-/package/demo/dist-tags"), 404, "no feed")


def test_republishing_an_existing_version(published: Api) -> None:
    tarball = npm_tarball({"name": "demo", "version": "1.1.0", "description": "different"})
    with Unchanged(published):
        for body in (publish_body("demo", "1.1.0"), publish_body("demo", "1.1.0", tarball=tarball)):
            response = published.put("/npm/main/demo", auth=published.alice, json=body)
            assert_error(response, 403, NPM_ERROR)
        # Build metadata does not make a new version: 1.1.0+build is 1.1.0.
        tarball = npm_tarball({"name": "demo", "version": "1.1.0+build.7"})
        body = publish_body("demo", "1.1.0+build.7", tarball=tarball)
        assert_error(
            published.put("/npm/main/demo", auth=published.alice, json=body), 403, NPM_ERROR
        )


def test_republishing_a_deleted_version(published: Api) -> None:
    unpublish_version(published, "demo", "1.1.0")
    with Unchanged(published):
        response = published.put(
            "/npm/main/demo", auth=published.alice, json=publish_body("demo", "1.1.0")
        )
        assert_error(response, 403, NPM_ERROR)
