"""The admin API (``/-/api/...``) in-process: every endpoint, who may call it, bad input,
and Schemathesis against the served OpenAPI document."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import positive_data_acceptance
from tests.api.conftest import ALICE_PASSWORD, Api, basic, bearer

from entrepot import totp
from entrepot.admin import Admin
from entrepot.http.admin_api import ROUTES, openapi_document

ROOT_PASSWORD = "root's long password"


def make_root(api: Api) -> str:
    """A server administrator ``root``; the Authorization header of a token of theirs."""

    async def create() -> str:
        admin = Admin(api.app.meta)
        await admin.add_user("root", "root@example.test", ROOT_PASSWORD, admin=True)
        secret, _ = await admin.create_token("root", read_only=False, feeds=[], expires_days=None)
        return secret

    return bearer(api.run(create()))


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return str(body["error"])


def post(api: Api, path: str, body: Any, auth: str | None) -> httpx.Response:
    return api.request("POST", path, json=body, auth=auth)


def names(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [str(o["name"]) for o in response.json()["objects"]]


# -- the document ---------------------------------------------------------------------------


def test_openapi_document_is_served_to_anyone_and_lists_every_route(api: Api) -> None:
    response = api.get("/-/api/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc == openapi_document()
    assert doc["openapi"].startswith("3.1")
    served = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert served == {(r.method, f"/-/api/{r.path}") for r in ROUTES}
    for wanted in [
        ("GET", "/-/api/feeds"),
        ("POST", "/-/api/feeds"),
        ("DELETE", "/-/api/feeds/{feed}"),
        ("GET", "/-/api/feeds/{feed}/connectors"),
        ("POST", "/-/api/feeds/{feed}/connectors"),
        ("DELETE", "/-/api/feeds/{feed}/connectors/{name}"),
        ("PUT", "/-/api/feeds/{feed}/members/{user}"),
        ("GET", "/-/api/users"),
        ("POST", "/-/api/tokens"),
        ("DELETE", "/-/api/tokens/{key}"),
        ("GET", "/-/api/feeds/{feed}/packages"),
        ("GET", "/-/api/search"),
    ]:
        assert wanted in served
    # Every $ref points at a schema that exists.
    text = response.text
    for name in doc["components"]["schemas"]:
        assert f'"#/components/schemas/{name}"' in text or name in ("OpenApi",)
    for ref in {part.split('"')[0] for part in text.split("#/components/schemas/")[1:]}:
        assert ref in doc["components"]["schemas"], ref


# -- who may call what ----------------------------------------------------------------------

ADMIN_ONLY: list[tuple[str, str, Any]] = [
    ("POST", "/-/api/feeds", {"name": "x"}),
    ("PATCH", "/-/api/feeds/main", {"private": True}),
    ("DELETE", "/-/api/feeds/main", None),
    ("GET", "/-/api/feeds/main/connectors", None),
    ("POST", "/-/api/feeds/main/connectors", {"url": "feed:team"}),
    ("DELETE", "/-/api/feeds/main/connectors/x", None),
    ("GET", "/-/api/feeds/main/members", None),
    ("GET", "/-/api/feeds/main/members/alice", None),
    ("PUT", "/-/api/feeds/main/members/bob", {"role": "reader"}),
    ("DELETE", "/-/api/feeds/main/members/alice", None),
    ("GET", "/-/api/users", None),
    ("POST", "/-/api/users", {"name": "eve", "email": "eve@example.test"}),
    ("GET", "/-/api/users/alice", None),
    ("PATCH", "/-/api/users/alice", {"password": "a new long password"}),
    ("DELETE", "/-/api/users/alice", None),
]
SIGNED_IN: list[tuple[str, str, Any]] = [
    ("GET", "/-/api/me", None),
    ("GET", "/-/api/tokens", None),
    ("POST", "/-/api/tokens", {}),
    ("DELETE", "/-/api/tokens/abc", None),
    ("POST", "/-/api/me/totp", {"password": "x"}),
    ("POST", "/-/api/me/totp/confirm", {"code": "123456"}),
    ("POST", "/-/api/me/totp/disable", {"password": "x"}),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ONLY + SIGNED_IN)
def test_anonymous_callers_get_401(api: Api, method: str, path: str, body: Any) -> None:
    before = api.snapshot()
    response = api.request(method, path, json=body)
    error_of(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert api.snapshot() == before


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ONLY)
def test_non_admins_get_403_on_admin_endpoints(api: Api, method: str, path: str, body: Any) -> None:
    before = api.snapshot()
    # alice owns feed main, and is still not a server administrator
    assert "administrators" in error_of(api.request(method, path, json=body, auth=api.alice), 403)
    assert api.snapshot() == before


def test_admin_tokens_that_are_read_only_or_feed_limited_cannot_administer(api: Api) -> None:
    make_root(api)

    async def tokens() -> tuple[str, str]:
        admin = Admin(api.app.meta)
        ro, _ = await admin.create_token("root", read_only=True, feeds=[], expires_days=None)
        limited, _ = await admin.create_token(
            "root", read_only=False, feeds=["main"], expires_days=None
        )
        return ro, limited

    for token in api.run(tokens()):
        message = error_of(post(api, "/-/api/feeds", {"name": "nope"}, bearer(token)), 403)
        assert "read-only" in message
    assert api.get("/-/api/feeds/nope").status_code == 404


def test_a_bad_token_is_401_even_where_anonymous_is_allowed(api: Api) -> None:
    error_of(api.get("/-/api/feeds", auth=bearer("ent_not-a-token")), 401)


def test_unknown_paths_and_methods(api: Api) -> None:
    root = make_root(api)
    assert "no such API endpoint" in error_of(api.get("/-/api/nothing", auth=root), 404)
    response = api.request("PUT", "/-/api/feeds", auth=root)
    assert "GET or POST" in error_of(response, 405)
    assert response.headers["allow"] == "GET, POST"


# -- feeds ----------------------------------------------------------------------------------


def test_feeds_list_shows_what_the_caller_may_read_with_counts(api: Api) -> None:
    root = make_root(api)
    api.publish("listed-one", "1.0.0")
    anonymous = api.get("/-/api/feeds")
    assert anonymous.status_code == 200
    assert [f["name"] for f in anonymous.json()] == ["main"]
    main = anonymous.json()[0]
    assert main == {
        "name": "main",
        "private": False,
        "created": main["created"],
        "packages": 1,
        "registry": "http://testserver/npm/main/",
    }
    assert [f["name"] for f in api.get("/-/api/feeds", auth=root).json()] == ["main", "team"]
    assert [f["name"] for f in api.get("/-/api/feeds", auth=api.alice).json()] == ["main"]
    assert api.get("/-/api/feeds/team", auth=root).json()["private"] is True
    error_of(api.get("/-/api/feeds/team"), 401)
    error_of(api.get("/-/api/feeds/team", auth=api.alice), 404)


def test_create_update_and_delete_a_feed(api: Api) -> None:
    root = make_root(api)
    created = post(api, "/-/api/feeds", {"name": "team-b", "private": True}, root)
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "team-b" and created.json()["private"] is True
    assert "already exists" in error_of(post(api, "/-/api/feeds", {"name": "team-b"}, root), 409)
    assert "invalid feed name" in error_of(
        post(api, "/-/api/feeds", {"name": "Bad/Name"}, root), 400
    )
    error_of(post(api, "/-/api/feeds", {"private": True}, root), 400)
    error_of(post(api, "/-/api/feeds", {"name": "x", "private": "yes"}, root), 400)
    error_of(api.request("POST", "/-/api/feeds", content=b"[1]", auth=root), 400)
    error_of(api.request("POST", "/-/api/feeds", content=b"{nope", auth=root), 400)
    # private -> anonymous readers are asked to sign in; public -> they may read
    error_of(api.get("/-/api/feeds/team-b/packages"), 401)
    patched = api.request("PATCH", "/-/api/feeds/team-b", json={"private": False}, auth=root)
    assert patched.status_code == 200 and patched.json()["private"] is False
    assert api.get("/-/api/feeds/team-b/packages").status_code == 200
    assert api.get("/npm/team-b/").status_code == 200
    error_of(api.request("PATCH", "/-/api/feeds/team-b", json={}, auth=root), 400)
    error_of(api.request("PATCH", "/-/api/feeds/gone", json={"private": True}, auth=root), 404)
    deleted = api.delete("/-/api/feeds/team-b", auth=root)
    assert deleted.status_code == 200 and deleted.json() == {"ok": True}
    error_of(api.get("/-/api/feeds/team-b", auth=root), 404)
    error_of(api.delete("/-/api/feeds/team-b", auth=root), 404)


def test_packages_are_listed_newest_first_by_page(api: Api) -> None:
    for name in ("pkg-a", "pkg-b", "pkg-c"):
        api.publish(name, "1.0.0")
        time.sleep(0.002)
    api.publish("pkg-a", "1.1.0")  # a new version: the newest change
    first = api.get("/-/api/feeds/main/packages?size=2")
    assert names(first) == ["pkg-a", "pkg-c"]
    assert first.json()["total"] == 3 and first.json()["page"] == 1 and first.json()["size"] == 2
    item = first.json()["objects"][0]
    assert item["version"] == "1.1.0" and item["publisher"] == "alice"
    assert item["description"] == "pkg-a for tests"
    assert "email" not in str(item)
    assert names(api.get("/-/api/feeds/main/packages?size=2&page=2")) == ["pkg-b"]
    assert names(api.get("/-/api/feeds/main/packages?size=2&page=3")) == []
    for bad in ("page=0", "page=x", "size=0", "size=101", "page=-1"):
        assert "must be a whole number" in error_of(
            api.get(f"/-/api/feeds/main/packages?{bad}"), 400
        )
    error_of(api.get("/-/api/feeds/team/packages"), 401)
    error_of(api.get("/-/api/feeds/team/packages", auth=api.alice), 404)
    error_of(api.get("/-/api/feeds/nope/packages"), 404)


def test_search_uses_the_registry_index(api: Api) -> None:
    api.publish("widget-core", "1.0.0", extra={"keywords": ["gizmo"]})
    api.publish("widget-ui", "2.0.0")
    api.publish("other", "1.0.0", extra={"description": "has a widget inside"})
    found = api.get("/-/api/search?feed=main&q=widget")
    # Names that start with the words come first, then the rest (description, keywords).
    assert sorted(names(found)[:2]) == ["widget-core", "widget-ui"]
    assert names(found)[2] == "other"
    assert found.json()["total"] == 3
    assert names(api.get("/-/api/search?q=gizmo")) == ["widget-core"]
    assert names(api.get("/-/api/search?q=widget&size=1&page=2")) == names(found)[1:2]
    # The same index and order as npm's /-/v1/search.
    npm = api.get("/npm/main/-/v1/search?text=widget").json()
    assert [o["package"]["name"] for o in npm["objects"]] == names(found)
    error_of(api.get("/-/api/search?feed=team&q=x"), 401)
    error_of(api.get("/-/api/search?feed=nope&q=x"), 404)


# -- connectors -----------------------------------------------------------------------------


def test_connectors_add_list_remove(api: Api) -> None:
    root = make_root(api)
    path = "/-/api/feeds/main/connectors"
    added = post(
        api,
        path,
        {"url": "feed:team", "allow": ["@acme/*"], "block": ["evil-*"], "ttl": 60},
        root,
    )
    assert added.status_code == 201, added.text
    assert added.json() == {
        "name": "feed-team",
        "position": 1,
        "url": "feed:team",
        "credential_kind": None,
        "credential_env": None,
        "allow": ["@acme/*"],
        "block": ["evil-*"],
        "min_age_hours": None,
        "ttl": 60,
    }
    second = post(
        api,
        path,
        {"url": "https://npm.example.test/up/", "name": "partner", "token_env": "PARTNER_TOKEN"},
        root,
    )
    assert second.status_code == 201, second.text
    assert second.json()["credential_kind"] == "token"
    listed = api.get(path, auth=root).json()
    assert [(c["name"], c["position"]) for c in listed] == [("feed-team", 1), ("partner", 2)]
    assert "already has a connector" in error_of(post(api, path, {"url": "feed:team"}, root), 400)
    error_of(post(api, path, {"url": "ftp://x.example.test/"}, root), 400)
    error_of(post(api, path, {"url": "https://u:p@x.example.test/"}, root), 400)
    error_of(post(api, path, {"url": "feed:main"}, root), 400)
    error_of(post(api, path, {"url": "feed:nope"}, root), 404)
    error_of(post(api, path, {"url": "feed:team", "name": "t2", "ttl": 1.5}, root), 400)
    error_of(post(api, path, {"url": "feed:team", "name": "t3", "allow": "x"}, root), 400)
    error_of(post(api, path, {}, root), 400)
    error_of(post(api, "/-/api/feeds/nope/connectors", {"url": "feed:team"}, root), 404)
    removed = api.delete(f"{path}/feed-team", auth=root)
    assert removed.status_code == 200 and removed.json() == {"ok": True}
    assert [c["name"] for c in api.get(path, auth=root).json()] == ["partner"]
    error_of(api.delete(f"{path}/feed-team", auth=root), 404)


# -- members --------------------------------------------------------------------------------


def test_members_grant_read_and_revoke(api: Api) -> None:
    root = make_root(api)
    bob = bearer(api.bob_token)
    error_of(api.get("/npm/team/", auth=bob), 404)
    member = "/-/api/feeds/team/members/bob"
    granted = api.put(member, json={"role": "reader"}, auth=root)
    assert granted.status_code == 200 and granted.json() == {"user": "bob", "role": "reader"}
    assert api.get("/npm/team/", auth=bob).status_code == 200
    assert api.get(member, auth=root).json() == {"user": "bob", "role": "reader"}
    assert api.get("/-/api/feeds/team/members", auth=root).json() == [
        {"user": "bob", "role": "reader"}
    ]
    assert "unknown role" in error_of(api.put(member, json={"role": "god"}, auth=root), 400)
    error_of(api.put(member, json={}, auth=root), 400)
    error_of(api.put("/-/api/feeds/team/members/nobody", json={"role": "reader"}, auth=root), 404)
    error_of(api.put("/-/api/feeds/nope/members/bob", json={"role": "reader"}, auth=root), 404)
    assert api.delete(member, auth=root).json() == {"ok": True}
    error_of(api.get("/npm/team/", auth=bob), 404)
    error_of(api.get(member, auth=root), 404)
    error_of(api.delete(member, auth=root), 404)


# -- users ----------------------------------------------------------------------------------


def test_users_add_update_delete(api: Api) -> None:
    root = make_root(api)
    listed = api.get("/-/api/users", auth=root).json()
    assert [u["name"] for u in listed] == ["alice", "bob", "root"]
    assert "password_hash" not in str(listed)
    created = post(
        api,
        "/-/api/users",
        {"name": "carol", "email": "carol@example.test", "password": "carol's password"},
        root,
    )
    assert created.status_code == 201, created.text
    assert created.json() == {
        "name": "carol",
        "email": "carol@example.test",
        "admin": False,
        "created": created.json()["created"],
        "has_password": True,
        "totp": False,
    }
    carol_basic = basic("carol", "carol's password")
    assert api.get("/npm/main/-/whoami", auth=carol_basic).json() == {"username": "carol"}
    body = {"name": "carol", "email": "c@example.test"}
    assert "already exists" in error_of(post(api, "/-/api/users", body, root), 409)
    error_of(post(api, "/-/api/users", {"name": "dave", "email": "not-an-email"}, root), 400)
    error_of(post(api, "/-/api/users", {"name": "Dave!", "email": "d@example.test"}, root), 400)
    short = {"name": "dave", "email": "d@example.test", "password": "short"}
    error_of(post(api, "/-/api/users", short, root), 400)
    # reset the password: the old one stops working at once
    reset = api.request(
        "PATCH", "/-/api/users/carol", json={"password": "another password"}, auth=root
    )
    assert reset.status_code == 200, reset.text
    error_of(api.get("/npm/main/-/whoami", auth=carol_basic), 401)
    patched = api.request("PATCH", "/-/api/users/carol", json={"admin": True}, auth=root)
    assert patched.json()["admin"] is True
    assert api.get("/-/api/users/carol", auth=root).json()["admin"] is True
    error_of(api.request("PATCH", "/-/api/users/carol", json={}, auth=root), 400)
    error_of(api.request("PATCH", "/-/api/users/carol", json={"password": "x"}, auth=root), 400)
    error_of(api.request("PATCH", "/-/api/users/root", json={"admin": False}, auth=root), 400)
    error_of(api.request("PATCH", "/-/api/users/nobody", json={"admin": True}, auth=root), 404)
    # deleting a user ends their tokens at once
    bob = bearer(api.bob_token)
    assert api.get("/-/api/me", auth=bob).status_code == 200
    assert api.delete("/-/api/users/bob", auth=root).json() == {"ok": True}
    error_of(api.get("/-/api/me", auth=bob), 401)
    error_of(api.get("/-/api/users/bob", auth=root), 404)
    error_of(api.delete("/-/api/users/bob", auth=root), 404)
    assert "your own account" in error_of(api.delete("/-/api/users/root", auth=root), 400)


# -- tokens and the caller's account --------------------------------------------------------


def test_me(api: Api) -> None:
    me = api.get("/-/api/me", auth=bearer(api.alice_read_only))
    assert me.status_code == 200
    assert me.json()["name"] == "alice" and me.json()["read_only"] is True
    assert me.json()["admin"] is False and me.json()["feeds"] == []


def test_tokens_create_list_revoke(api: Api) -> None:
    listed = api.get("/-/api/tokens", auth=api.alice)
    assert listed.status_code == 200
    assert len(listed.json()) == 2 and {t["user"] for t in listed.json()} == {"alice"}
    created = post(
        api, "/-/api/tokens", {"description": "ci", "readonly": True, "expires_days": 30}, api.alice
    )
    assert created.status_code == 201, created.text
    new = created.json()
    assert new["token"].startswith("ent_") and new["readonly"] is True and new["name"] == "ci"
    assert new["expires"] > time.time() + 29 * 86400
    assert api.get("/npm/main/-/whoami", auth=bearer(new["token"])).json() == {"username": "alice"}
    keys = [t["key"] for t in api.get("/-/api/tokens", auth=api.alice).json()]
    assert new["key"] in keys
    assert new["token"] not in api.get("/-/api/tokens", auth=api.alice).text
    # never broader than the credential the request came with
    from_read_only = post(api, "/-/api/tokens", {}, bearer(api.alice_read_only)).json()
    assert from_read_only["readonly"] is True
    limited = post(api, "/-/api/tokens", {"feeds": ["main"]}, api.alice).json()
    assert limited["feeds"] == ["main"]
    assert post(api, "/-/api/tokens", {}, bearer(limited["token"])).json()["feeds"] == ["main"]
    error_of(post(api, "/-/api/tokens", {"feeds": ["team"]}, bearer(limited["token"])), 403)
    error_of(post(api, "/-/api/tokens", {"feeds": ["nope"]}, api.alice), 404)
    error_of(post(api, "/-/api/tokens", {"expires_days": 0}, api.alice), 400)
    error_of(post(api, "/-/api/tokens", {"readonly": "yes"}, api.alice), 400)
    error_of(post(api, "/-/api/tokens", {"cidr_whitelist": ["nope"]}, api.alice), 400)
    # bob cannot revoke alice's token; alice can
    bob = bearer(api.bob_token)
    error_of(api.delete(f"/-/api/tokens/{new['key']}", auth=bob), 404)
    assert api.delete(f"/-/api/tokens/{new['key']}", auth=api.alice).json() == {"ok": True}
    error_of(api.get("/npm/main/-/whoami", auth=bearer(new["token"])), 401)
    error_of(api.delete(f"/-/api/tokens/{new['key']}", auth=api.alice), 404)


def test_totp_enrolment_and_disable(api: Api) -> None:
    error_of(post(api, "/-/api/me/totp", {"password": "wrong password"}, api.alice), 401)
    error_of(post(api, "/-/api/me/totp", {}, api.alice), 400)
    error_of(post(api, "/-/api/me/totp/disable", {"password": ALICE_PASSWORD}, api.alice), 400)
    started = post(api, "/-/api/me/totp", {"password": ALICE_PASSWORD}, api.alice)
    assert started.status_code == 200, started.text
    secret = started.json()["secret"]
    assert started.json()["uri"].startswith("otpauth://totp/") and secret in started.json()["uri"]
    assert started.json()["digits"] == 6 and started.json()["period"] == 30
    error_of(post(api, "/-/api/me/totp/confirm", {"code": "000000"}, api.alice), 400)
    code = totp.code_at(secret, int(time.time() // 30))
    confirmed = post(api, "/-/api/me/totp/confirm", {"code": code}, api.alice)
    assert confirmed.status_code == 200, confirmed.text
    assert len(confirmed.json()["recovery_codes"]) == 5
    assert api.get("/-/api/me", auth=api.alice).json()["totp"] is True
    error_of(post(api, "/-/api/me/totp", {"password": ALICE_PASSWORD}, api.alice), 400)
    # turning it off needs the password and a code
    off = {"password": ALICE_PASSWORD}
    assert "one-time password" in error_of(post(api, "/-/api/me/totp/disable", off, api.alice), 401)
    recovery = confirmed.json()["recovery_codes"][0]
    done = post(api, "/-/api/me/totp/disable", {**off, "otp": recovery}, api.alice)
    assert done.status_code == 200 and done.json() == {"ok": True}
    assert api.get("/-/api/me", auth=api.alice).json()["totp"] is False


# -- Schemathesis ---------------------------------------------------------------------------


def test_schemathesis_finds_no_server_errors_and_responses_match_the_schema(api: Api) -> None:
    """Every operation, with generated input, as an administrator: no 5xx, every status
    and body as documented. (Schema-valid input may still be refused by rules JSON Schema
    cannot say, such as "already exists", so that one check is left out.)"""
    root = make_root(api)
    api.publish("fuzzed", "1.0.0")
    schema = schemathesis.openapi.from_asgi("/-/api/openapi.json", api.app)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    # Schemathesis leaves out the operation that serves the document itself.
    covered = {(o.method.upper(), o.path) for o in operations}
    assert covered == {(r.method, f"/-/api/{r.path}") for r in ROUTES} - {
        ("GET", "/-/api/openapi.json")
    }
    headers = {"Authorization": root}
    tried: list[str] = []
    for operation in operations:
        strategy = operation.as_strategy()

        @given(case=strategy)
        @settings(
            max_examples=8,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case[Any]) -> None:
            response = case.call(headers=headers)
            tried.append(f"{case.method} {case.path} {response.status_code}")
            case.validate_response(
                response, headers=headers, excluded_checks=[positive_data_acceptance]
            )

        run()
    assert len(tried) >= len(covered)
    assert not [t for t in tried if t.endswith(("500", "502", "503"))]
