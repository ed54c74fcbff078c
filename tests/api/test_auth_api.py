"""Authentication and authorization over HTTP, in-process: every credential form, the roles
matrix on a public and a private feed, npm's token API, logout, expiry and revocation, web
login, the TOTP second factor and the limit on failed sign-ins.

Every refusal is checked twice: the status and message, and that nothing changed.
"""

from __future__ import annotations

import dataclasses
import time
import types
import urllib.parse
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from tests.api.conftest import (
    ALICE_PASSWORD,
    BASE_URL,
    BOB_PASSWORD,
    Api,
    ApiFactory,
    basic,
    bearer,
    publish_body,
    quote_name,
)

from entrepot import totp
from entrepot.admin import Admin
from entrepot.auth import hash_token
from entrepot.settings import load_settings
from entrepot.storage.base import Package
from entrepot.storage.open import open_local_stores

BASIC_CHALLENGE = 'Basic realm="entrepot"'
BEARER_CHALLENGE = 'Bearer realm="entrepot"'

#: The role each action needs; reading a public feed needs none.
NEEDS = {
    "read": "reader",
    "publish": "publisher",
    "dist-tag": "publisher",
    "deprecate": "publisher",
    "unpublish": "publisher",
    "delete": "owner",
}
RANK = {"anonymous": -1, "stranger": 0, "reader": 1, "publisher": 2, "owner": 3, "admin": 4}
ROLE_USERS = {"reader": "rita", "publisher": "paul", "owner": "olga"}


#: Argon2 at the lowest cost: the same algorithm and code path as the production cost, which
#: takes about half a second per check, and these tests check passwords dozens of times.
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def with_cheap_passwords(api: Api) -> Api:
    """Re-hash alice's and bob's passwords at the lowest Argon2 cost."""

    async def rehash() -> None:
        for name, password in (("alice", ALICE_PASSWORD), ("bob", BOB_PASSWORD)):
            user = await api.app.meta.get_user(name)
            assert user is not None
            await api.app.meta.update_user(user.id, {"password_hash": CHEAP_HASHER.hash(password)})

    api.run(rehash())
    return api


@pytest.fixture
def api(make_api: ApiFactory) -> Api:
    return with_cheap_passwords(make_api())


def assert_error(response: httpx.Response, status: int, fragment: str, context: str = "") -> str:
    """The response is ``status`` with a JSON body ``{"error": "...fragment..."}``."""
    assert response.status_code == status, f"{context}: {response.status_code} {response.text}"
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, f"{context}: {body}"
    message = str(body["error"])
    assert fragment.lower() in message.lower(), f"{context}: {message!r} lacks {fragment!r}"
    return message


def whoami(api: Api, auth: str | None) -> httpx.Response:
    return api.get("/npm/main/-/whoami", auth=auth)


def assert_user(api: Api, auth: str, name: str) -> None:
    response = whoami(api, auth)
    assert response.status_code == 200, response.text
    assert response.json() == {"username": name}


def request_from(
    api: Api,
    address: str,
    method: str,
    path: str,
    *,
    auth: str | None = None,
    json: Any = None,
) -> httpx.Response:
    """One request that reaches the app from another client address."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=api.app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            headers = {"Authorization": auth} if auth is not None else {}
            return await client.request(method, path, headers=headers, json=json)

    return api.run(send())


def feed_state(
    api: Api, feed: str, names: tuple[str, ...]
) -> tuple[int, list[Package | None], list[str]]:
    """What a refused request must leave alone: seq, the packages, the stored blobs."""

    async def take() -> tuple[int, list[Package | None], list[str]]:
        found = await api.app.meta.get_feed(feed)
        assert found is not None
        packages = [await api.app.meta.get_package(found.id, n) for n in names]
        return await api.app.meta.seq(), packages, sorted(await api.app.blobs.keys())

    return api.run(take())


def user_id(api: Api, name: str) -> int:
    user = api.run(api.app.meta.get_user(name))
    assert user is not None
    return user.id


def live_tokens(api: Api, name: str) -> list[str]:
    """The keys of a user's live tokens, straight from the store."""
    return [t.key for t in api.run(api.app.meta.list_tokens(user_id(api, name)))]


def token_key(api: Api, secret: str) -> str:
    token = api.run(api.app.meta.find_token(hash_token(secret)))
    assert token is not None
    return token.key


def new_token(api: Api, user: str, **options: Any) -> str:
    secret, _ = api.run(
        Admin(api.app.meta).create_token(
            user,
            read_only=options.get("read_only", False),
            feeds=options.get("feeds", []),
            expires_days=options.get("expires_days"),
        )
    )
    return secret


def publish(api: Api, feed: str, auth: str | None, name: str, version: str) -> httpx.Response:
    return api.put(f"/npm/{feed}/{quote_name(name)}", auth=auth, json=publish_body(name, version))


def document(api: Api, feed: str, auth: str, name: str) -> dict[str, Any]:
    response = api.get(f"/npm/{feed}/{quote_name(name)}?write=true", auth=auth)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


# -- credentials -----------------------------------------------------------------------------


CREDENTIAL_FORMS: dict[str, Callable[[Api], str]] = {
    "bearer": lambda api: bearer(api.alice_token),
    "token-scheme": lambda api: f"token {api.alice_token}",
    "basic-name-token": lambda api: basic("alice", api.alice_token),
    "basic-api-token": lambda api: basic("api", api.alice_token),
    "basic-email-token": lambda api: basic("alice@example.test", api.alice_token),
    "basic-password": lambda api: basic("alice", ALICE_PASSWORD),
}


@pytest.mark.parametrize("form", list(CREDENTIAL_FORMS))
def test_every_credential_form_signs_in_and_publishes(api: Api, form: str) -> None:
    auth = CREDENTIAL_FORMS[form](api)
    assert_user(api, auth, "alice")
    response = publish(api, "main", auth, "demo", "1.0.0")
    assert response.status_code == 201, response.text
    manifest = api.get("/npm/main/demo").json()["versions"]["1.0.0"]
    assert manifest["_npmUser"] == {"name": "alice", "email": "alice@example.test"}


BAD_CREDENTIALS: dict[str, tuple[Callable[[Api], str], str, str]] = {
    # name: (header, message fragment, challenge scheme)
    "unknown-bearer": (lambda api: bearer("ent_no-such-token"), "not valid", "Bearer"),
    "password-as-bearer": (lambda api: bearer(ALICE_PASSWORD), "not valid", "Bearer"),
    "token-with-another-user": (
        lambda api: basic("bob", api.alice_token),
        "does not match",
        "Basic",
    ),
    "token-with-another-email": (
        lambda api: basic("bob@example.test", api.alice_token),
        "does not match",
        "Basic",
    ),
    "token-with-unknown-user": (
        lambda api: basic("nobody", api.alice_token),
        "does not match",
        "Basic",
    ),
    "unknown-token-as-basic": (lambda api: basic("api", "ent_forged"), "not valid", "Basic"),
    "wrong-password": (lambda api: basic("alice", BOB_PASSWORD), "incorrect", "Basic"),
    "unknown-user": (lambda api: basic("nobody", BOB_PASSWORD), "incorrect", "Basic"),
    "bad-base64": (lambda api: "Basic %%not-base64%%", "base64", "Basic"),
    "no-colon": (lambda api: "Basic " + "YWxpY2U=", "user:secret", "Basic"),  # "alice"
    "other-scheme": (lambda api: "Digest username=alice", "unsupported", "Basic"),
    "empty-bearer": (lambda api: "Bearer ", "empty", "Bearer"),
}


@pytest.mark.parametrize("case", list(BAD_CREDENTIALS))
def test_bad_credentials_are_refused_and_change_nothing(api: Api, case: str) -> None:
    header, fragment, scheme = BAD_CREDENTIALS[case]
    auth = header(api)
    api.publish("demo", "1.0.0")
    before = feed_state(api, "main", ("demo",))
    response = whoami(api, auth)
    assert_error(response, 401, fragment, case)
    assert response.headers["www-authenticate"] == f'{scheme} realm="entrepot"'
    refused = publish(api, "main", auth, "demo", "2.0.0")
    assert_error(refused, 401, fragment, case)
    # Bad credentials are refused even where anonymous reading is allowed: no silent fallback.
    assert_error(api.get("/npm/main/demo", auth=auth), 401, fragment, case)
    assert feed_state(api, "main", ("demo",)) == before


def test_password_sign_in_can_be_turned_off(make_api: ApiFactory) -> None:
    api = with_cheap_passwords(make_api(allow_password_auth=False))
    response = whoami(api, basic("alice", ALICE_PASSWORD))
    assert_error(response, 401, "password sign-in is turned off")
    assert response.headers["www-authenticate"] == BASIC_CHALLENGE
    assert_error(publish(api, "main", basic("alice", ALICE_PASSWORD), "demo", "1.0.0"), 401, "")
    assert api.get("/npm/main/demo").status_code == 404
    # Tokens still work, in every form.
    assert_user(api, basic("alice", api.alice_token), "alice")
    assert_user(api, basic("api", api.alice_token), "alice")
    assert_user(api, bearer(api.alice_token), "alice")


# -- roles -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Cast:
    """Who acts in the roles matrix, by their Authorization header (None: anonymous)."""

    auth: dict[str, str | None]

    @property
    def admin(self) -> str:
        header = self.auth["admin"]
        assert header is not None
        return header


def make_cast(api: Api) -> Cast:
    """rita, paul and olga hold reader, publisher and owner on both feeds; adam is an admin
    with no role anywhere; bob (from the fixture) has no role."""

    async def setup() -> dict[str, str | None]:
        admin = Admin(api.app.meta)
        auth: dict[str, str | None] = {"anonymous": None, "stranger": bearer(api.bob_token)}
        for role, name in ROLE_USERS.items():
            await api.app.meta.create_user(name, f"{name}@example.test", None, admin=False)
            for feed in ("main", "team"):
                await admin.grant(feed, name, role)
        await api.app.meta.create_user("adam", "adam@example.test", None, admin=True)
        for who, name in (*ROLE_USERS.items(), ("admin", "adam")):
            secret, _ = await admin.create_token(name, read_only=False, feeds=[], expires_days=None)
            auth[who] = bearer(secret)
        return auth

    return Cast(api.run(setup()))


def expected(private: bool, who: str, action: str) -> tuple[int, str]:
    """The status (and error fragment) for one cell of the matrix."""
    need = NEEDS[action]
    if (action == "read" and not private) or RANK[who] >= RANK[need]:
        return 200, ""
    if who == "anonymous":
        return 401, "sign in"
    if private and who == "stranger":
        return 404, "no feed named 'team'"
    return 403, f"you need the {need} role"


def attempt(
    api: Api, feed: str, action: str, name: str, auth: str | None, admin: str
) -> list[httpx.Response]:
    """Do one action as ``auth``; the documents to edit are read as the admin (a refused
    caller could not read them), as a client that read them earlier would send them."""
    path = f"/npm/{feed}/{quote_name(name)}"
    if action == "read":
        return [api.get(path, auth=auth), api.get(f"{path}/-/{name}-1.0.0.tgz", auth=auth)]
    if action == "publish":
        return [publish(api, feed, auth, name, "2.0.0")]
    if action == "dist-tag":
        tag = f"/npm/{feed}/-/package/{quote_name(name)}/dist-tags/beta"
        return [api.put(tag, auth=auth, json="1.0.0")]
    if action == "deprecate":
        doc = document(api, feed, admin, name)
        doc["versions"]["1.0.0"]["deprecated"] = "use 1.1.0"
        return [api.put(f"{path}/-rev/{doc['_rev']}", auth=auth, json=doc)]
    if action == "unpublish":
        doc = document(api, feed, admin, name)
        del doc["versions"]["1.1.0"]
        doc["dist-tags"] = {"latest": "1.0.0"}
        put = api.put(f"{path}/-rev/{doc['_rev']}", auth=auth, json=doc)
        rev = document(api, feed, admin, name)["_rev"]
        return [put, api.delete(f"{path}/-/{name}-1.1.0.tgz/-rev/{rev}", auth=auth)]
    assert action == "delete"
    rev = document(api, feed, admin, name)["_rev"]
    return [api.delete(f"{path}/-rev/{rev}", auth=auth)]


def check_effect(api: Api, feed: str, action: str, name: str, admin: str) -> None:
    response = api.get(f"/npm/{feed}/{quote_name(name)}", auth=admin)
    if action == "delete":
        assert response.status_code == 404, response.text
        return
    doc = response.json()
    if action == "read":
        assert list(doc["versions"]) == ["1.0.0", "1.1.0"]
    elif action == "publish":
        assert doc["dist-tags"]["latest"] == "2.0.0"
    elif action == "dist-tag":
        assert doc["dist-tags"]["beta"] == "1.0.0"
    elif action == "deprecate":
        assert doc["versions"]["1.0.0"]["deprecated"] == "use 1.1.0"
    else:
        assert list(doc["versions"]) == ["1.0.0"]


@pytest.mark.parametrize("feed", ["main", "team"], ids=["public", "private"])
@pytest.mark.parametrize("who", list(RANK))
def test_roles_matrix(api: Api, feed: str, who: str) -> None:
    cast = make_cast(api)
    names = tuple(f"pkg-{action}" for action in NEEDS)
    for name in names:
        for version in ("1.0.0", "1.1.0"):
            response = publish(api, feed, cast.admin, name, version)
            assert response.status_code == 201, response.text
    for action, name in zip(NEEDS, names, strict=True):
        context = f"{who} {action} on {feed}"
        status, fragment = expected(feed == "team", who, action)
        before = feed_state(api, feed, names)
        responses = attempt(api, feed, action, name, cast.auth[who], cast.admin)
        if status == 200:
            for response in responses:
                assert response.status_code in (200, 201), f"{context}: {response.text}"
            check_effect(api, feed, action, name, cast.admin)
            continue
        for response in responses:
            assert_error(response, status, fragment, context)
            if status == 401:
                assert response.headers["www-authenticate"] == BASIC_CHALLENGE, context
        assert feed_state(api, feed, names) == before, context


def test_removing_the_last_version_needs_the_owner(api: Api) -> None:
    cast = make_cast(api)
    api.publish("solo", "1.0.0")
    publisher = cast.auth["publisher"]
    doc = document(api, "main", cast.admin, "solo")
    doc["versions"] = {}
    doc["dist-tags"] = {}
    rev = doc["_rev"]
    with_all_gone = api.put(f"/npm/main/solo/-rev/{rev}", auth=publisher, json=doc)
    before = feed_state(api, "main", ("solo",))
    assert_error(with_all_gone, 403, "you need the owner role")
    tarball = api.delete(f"/npm/main/solo/-/solo-1.0.0.tgz/-rev/{rev}", auth=publisher)
    assert_error(tarball, 403, "you need the owner role")
    assert feed_state(api, "main", ("solo",)) == before
    owner = api.delete(f"/npm/main/solo/-/solo-1.0.0.tgz/-rev/{rev}", auth=cast.auth["owner"])
    assert owner.status_code == 200, owner.text
    assert api.get("/npm/main/solo").status_code == 404


def test_private_feed_hides_itself(api: Api) -> None:
    cast = make_cast(api)
    assert publish(api, "team", cast.admin, "hidden", "1.0.0").status_code == 201
    stranger = bearer(api.bob_token)
    for path in ("/npm/team/", "/npm/team/hidden", "/npm/team/hidden/-/hidden-1.0.0.tgz"):
        anonymous = api.get(path)
        assert_error(anonymous, 401, "private", path)
        assert anonymous.headers["www-authenticate"] == BASIC_CHALLENGE
        hidden = assert_error(api.get(path, auth=stranger), 404, "no feed named 'team'", path)
        absent = assert_error(
            api.get(path.replace("/team/", "/gone/"), auth=stranger), 404, "no feed", path
        )
        # The refusal reads exactly as for a feed that does not exist.
        assert hidden == absent.replace("'gone'", "'team'")
    reader = cast.auth["reader"]
    assert reader is not None
    assert api.get("/npm/team/hidden", auth=reader).status_code == 200
    # The feed list shows a private feed only to those who may read it.
    assert "team" not in api.get("/").json()["feeds"]
    assert "team" not in api.get("/", auth=stranger).json()["feeds"]
    assert "team" in api.get("/", auth=reader).json()["feeds"]
    assert "team" in api.get("/", auth=cast.admin).json()["feeds"]


def test_grant_and_revoke_take_effect_at_once(api: Api) -> None:
    cast = make_cast(api)
    assert publish(api, "team", cast.admin, "hidden", "1.0.0").status_code == 201
    bob = bearer(api.bob_token)
    admin = Admin(api.app.meta)
    assert_error(api.get("/npm/team/hidden", auth=bob), 404, "no feed")
    api.run(admin.grant("team", "bob", "reader"))
    assert api.get("/npm/team/hidden", auth=bob).status_code == 200
    assert_error(publish(api, "team", bob, "hidden", "2.0.0"), 403, "publisher role")
    api.run(admin.grant("team", "bob", "publisher"))
    assert publish(api, "team", bob, "hidden", "2.0.0").status_code == 201
    api.run(admin.revoke("team", "bob"))
    assert_error(api.get("/npm/team/hidden", auth=bob), 404, "no feed")
    assert_error(publish(api, "team", bob, "hidden", "3.0.0"), 404, "no feed")


def test_read_only_token_on_a_feed_it_owns(api: Api) -> None:
    api.publish("demo", "1.0.0")
    api.publish("demo", "1.1.0")
    auth = bearer(api.alice_read_only)
    assert api.get("/npm/main/demo", auth=auth).status_code == 200
    before = feed_state(api, "main", ("demo",))
    assert_error(publish(api, "main", auth, "demo", "2.0.0"), 403, "read-only")
    tag = "/npm/main/-/package/demo/dist-tags/beta"
    assert_error(api.put(tag, auth=auth, json="1.0.0"), 403, "read-only")
    rev = document(api, "main", api.alice, "demo")["_rev"]
    assert_error(api.delete(f"/npm/main/demo/-rev/{rev}", auth=auth), 403, "read-only")
    assert feed_state(api, "main", ("demo",)) == before


def test_token_limited_to_feeds(api: Api) -> None:
    cast = make_cast(api)
    assert publish(api, "team", cast.admin, "hidden", "1.0.0").status_code == 201
    api.publish("demo", "1.0.0")
    main_only = bearer(new_token(api, "olga", feeds=["main"]))
    team_only = bearer(new_token(api, "olga", feeds=["team"]))
    # olga owns both feeds, but each token opens only its own.
    assert publish(api, "main", main_only, "demo", "1.1.0").status_code == 201
    assert_error(api.get("/npm/team/hidden", auth=main_only), 404, "no feed named 'team'")
    assert_error(publish(api, "team", main_only, "hidden", "2.0.0"), 404, "no feed")
    assert api.get("/npm/team/hidden", auth=team_only).status_code == 200
    # Even a public feed looks absent to a token limited to another one.
    assert_error(api.get("/npm/main/demo", auth=team_only), 404, "no feed named 'main'")
    assert_error(publish(api, "main", team_only, "demo", "2.0.0"), 404, "no feed")
    assert list(api.get("/npm/main/demo").json()["versions"]) == ["1.0.0", "1.1.0"]
    assert list(api.get("/npm/team/hidden", auth=cast.admin).json()["versions"]) == ["1.0.0"]


# -- npm's token API -------------------------------------------------------------------------

TOKENS = "/npm/main/-/npm/v1/tokens"


def create_token(api: Api, auth: str | None, **body: Any) -> httpx.Response:
    return api.request("POST", TOKENS, auth=auth, json=body)


def test_token_list_never_shows_secrets(api: Api) -> None:
    assert_error(api.get(TOKENS), 401, "sign in")
    response = api.get(TOKENS, auth=api.alice)
    assert response.status_code == 200
    listed = response.json()
    assert listed["total"] == 2
    objects = listed["objects"]
    assert sorted(t["key"] for t in objects) == sorted(live_tokens(api, "alice"))
    assert sorted(t["readonly"] for t in objects) == [False, True]
    for token in objects:
        assert token["token"].startswith("ent_") and len(token["token"]) < 12
    for secret in (api.alice_token, api.alice_read_only, api.bob_token):
        assert secret not in response.text
    bobs = api.get(TOKENS, auth=bearer(api.bob_token)).json()["objects"]
    assert [t["key"] for t in bobs] == live_tokens(api, "bob")


def test_token_create_needs_the_password(api: Api) -> None:
    before = live_tokens(api, "alice")
    assert_error(create_token(api, None, password=ALICE_PASSWORD), 401, "sign in")
    assert_error(create_token(api, api.alice), 400, "password")
    assert_error(create_token(api, api.alice, password=""), 400, "password")
    wrong = create_token(api, api.alice, password=BOB_PASSWORD)
    assert_error(wrong, 401, "incorrect")
    # Someone else's password does not help either.
    assert_error(create_token(api, bearer(api.bob_token), password=ALICE_PASSWORD), 401, "")
    assert live_tokens(api, "alice") == before

    created = create_token(api, api.alice, password=ALICE_PASSWORD, name="ci")
    assert created.status_code == 200, created.text
    body = created.json()
    secret = body["token"]
    assert secret.startswith("ent_")
    assert body["readonly"] is False
    assert body["key"] in live_tokens(api, "alice")
    assert_user(api, bearer(secret), "alice")
    assert publish(api, "main", bearer(secret), "demo", "1.0.0").status_code == 201
    listed = api.get(TOKENS, auth=api.alice).json()["objects"]
    assert [t["name"] for t in listed if t["key"] == body["key"]] == ["ci"]


def test_token_create_read_only_and_narrowing(api: Api) -> None:
    api.publish("demo", "1.0.0")
    created = create_token(api, api.alice, password=ALICE_PASSWORD, readonly=True)
    assert created.status_code == 200, created.text
    assert created.json()["readonly"] is True
    read_only = bearer(created.json()["token"])
    assert api.get("/npm/main/demo", auth=read_only).status_code == 200
    assert_error(publish(api, "main", read_only, "demo", "2.0.0"), 403, "read-only")
    # npm's other spelling of the same thing.
    other = create_token(
        api, api.alice, password=ALICE_PASSWORD, packages_and_scopes_permission="read-only"
    )
    assert other.json()["readonly"] is True
    # A token made with a read-only token, or a feed-limited one, is never broader.
    narrowed = create_token(
        api, bearer(api.alice_read_only), password=ALICE_PASSWORD, readonly=False
    )
    assert narrowed.status_code == 200, narrowed.text
    assert narrowed.json()["readonly"] is True
    assert_error(publish(api, "main", bearer(narrowed.json()["token"]), "demo", "2.0.0"), 403, "")
    limited = bearer(new_token(api, "alice", feeds=["main"]))
    child = create_token(api, limited, password=ALICE_PASSWORD)
    assert child.json()["feeds"] == ["main"]
    assert list(api.get("/npm/main/demo").json()["versions"]) == ["1.0.0"]


def test_token_create_expiry(api: Api) -> None:
    for bad in (0, -1, "7", True):
        response = create_token(api, api.alice, password=ALICE_PASSWORD, expires=bad)
        assert_error(response, 400, "expires", repr(bad))
    created = create_token(api, api.alice, password=ALICE_PASSWORD, expires=2)
    expires = created.json()["expires"]
    assert abs(expires - (time.time() + 2 * 86400)) < 600


def test_token_create_with_address_ranges(api: Api) -> None:
    bad = create_token(api, api.alice, password=ALICE_PASSWORD, cidr_whitelist=["not-a-range"])
    assert_error(bad, 400, "not an address range")
    assert_error(
        create_token(api, api.alice, password=ALICE_PASSWORD, cidr_whitelist="10.0.0.0/8"),
        400,
        "cidr_whitelist",
    )
    created = create_token(api, api.alice, password=ALICE_PASSWORD, cidr_whitelist=["10.1.0.0/16"])
    assert created.status_code == 200, created.text
    assert created.json()["cidr_whitelist"] == ["10.1.0.0/16"]
    auth = bearer(created.json()["token"])
    inside = request_from(api, "10.1.2.3", "GET", "/npm/main/-/whoami", auth=auth)
    assert inside.status_code == 200 and inside.json() == {"username": "alice"}
    for address in ("10.2.0.1", "127.0.0.1"):
        outside = request_from(api, address, "GET", "/npm/main/-/whoami", auth=auth)
        assert_error(outside, 401, "address", address)
    before = feed_state(api, "main", ("demo",))
    refused = request_from(
        api, "192.0.2.7", "PUT", "/npm/main/demo", auth=auth, json=publish_body("demo", "1.0.0")
    )
    assert_error(refused, 401, "address")
    assert feed_state(api, "main", ("demo",)) == before
    allowed = request_from(
        api, "10.1.200.9", "PUT", "/npm/main/demo", auth=auth, json=publish_body("demo", "1.0.0")
    )
    assert allowed.status_code == 201, allowed.text


def test_revoke_by_key_and_by_secret(api: Api) -> None:
    first = create_token(api, api.alice, password=ALICE_PASSWORD).json()
    second = create_token(api, api.alice, password=ALICE_PASSWORD).json()
    assert_user(api, bearer(first["token"]), "alice")  # now in the authenticator's cache
    gone = api.delete(f"{TOKENS}/token/{first['key']}", auth=api.alice)
    assert gone.status_code == 204
    assert_error(whoami(api, bearer(first["token"])), 401, "not valid")
    assert first["key"] not in live_tokens(api, "alice")

    assert_user(api, bearer(second["token"]), "alice")
    by_secret = api.delete(f"{TOKENS}/token/{second['token']}", auth=api.alice)
    assert by_secret.status_code == 204
    assert_error(whoami(api, bearer(second["token"])), 401, "not valid")
    # Revoked twice, or never existed.
    assert_error(api.delete(f"{TOKENS}/token/{second['token']}", auth=api.alice), 404, "")
    assert_error(api.delete(f"{TOKENS}/token/{'0' * 32}", auth=api.alice), 404, "no such token")
    assert_error(api.delete(f"{TOKENS}/token/{'0' * 32}"), 401, "sign in")


def test_revoking_someone_elses_token(api: Api) -> None:
    cast = make_cast(api)
    key = token_key(api, api.alice_token)
    bob = bearer(api.bob_token)
    for target in (key, api.alice_token):
        assert_error(api.delete(f"{TOKENS}/token/{target}", auth=bob), 404, "no such token")
        assert_error(api.delete(f"/npm/main/-/user/token/{target}", auth=bob), 404, "")
    assert_user(api, api.alice, "alice")
    # An admin may revoke anyone's token.
    assert api.delete(f"{TOKENS}/token/{key}", auth=cast.admin).status_code == 204
    assert_error(whoami(api, api.alice), 401, "not valid")


def test_logout_revokes_the_token_it_used(api: Api) -> None:
    token = api.alice_token
    path = "/npm/main/-/user/token/" + urllib.parse.quote(token, safe="")
    response = api.delete(path, auth=bearer(token))
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert_error(whoami(api, bearer(token)), 401, "not valid")
    assert_error(api.delete(path, auth=bearer(token)), 401, "not valid")
    assert token_key(api, token) not in live_tokens(api, "alice")
    assert_user(api, bearer(api.alice_read_only), "alice")  # her other tokens live on


def test_expired_tokens_are_refused(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    alice = api.run(api.app.meta.get_user("alice"))
    assert alice is not None
    expired, _ = api.run(api.app.auth.issue_token(alice, expires_days=-1))
    response = whoami(api, bearer(expired))
    assert_error(response, 401, "expired")
    assert response.headers["www-authenticate"] == BEARER_CHALLENGE
    as_basic = whoami(api, basic("api", expired))
    assert_error(as_basic, 401, "expired")
    assert as_basic.headers["www-authenticate"] == BASIC_CHALLENGE
    assert_error(publish(api, "main", bearer(expired), "demo", "1.0.0"), 401, "expired")

    created = create_token(api, api.alice, password=ALICE_PASSWORD, expires=1).json()
    later = bearer(created["token"])
    assert_user(api, later, "alice")
    real = time.time
    monkeypatch.setattr(
        "entrepot.auth.time", types.SimpleNamespace(time=lambda: real() + 2 * 86400)
    )
    assert_error(whoami(api, later), 401, "expired")
    assert_user(api, api.alice, "alice")  # tokens without an expiry are not affected


def test_revocation_from_another_process_takes_effect_at_once(api: Api) -> None:
    secret = new_token(api, "alice")
    assert_user(api, bearer(secret), "alice")  # cached by the authenticator
    settings = load_settings(overrides={"data_dir": api.data_dir})
    other, _ = open_local_stores(settings)  # as `entrepot token revoke` opens them

    async def revoke() -> None:
        try:
            await Admin(other).revoke_token(secret)
        finally:
            await other.close()

    api.run(revoke())
    assert_error(whoami(api, bearer(secret)), 401, "not valid")
    assert_error(publish(api, "main", bearer(secret), "demo", "1.0.0"), 401, "not valid")


# -- web login -------------------------------------------------------------------------------


def path_of(url: str) -> str:
    assert url.startswith(BASE_URL + "/"), url
    return url.removeprefix(BASE_URL)


def submit(api: Api, login_path: str, address: str = "127.0.0.1", **fields: str) -> httpx.Response:
    """POST the sign-in form as a browser does."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=api.app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            return await client.post(login_path, data=fields)

    return api.run(send())


def start_login(api: Api, feed: str = "main") -> tuple[str, str]:
    started = api.request("POST", f"/npm/{feed}/-/v1/login", json={})
    assert started.status_code == 200, started.text
    urls = started.json()
    assert urls["loginUrl"].startswith(f"{BASE_URL}/-/web/login/")
    assert urls["doneUrl"].startswith(f"{BASE_URL}/npm/{feed}/-/v1/done/")
    return path_of(urls["loginUrl"]), path_of(urls["doneUrl"])


def test_web_login_end_to_end(api: Api) -> None:
    login, done = start_login(api)
    waiting = api.get(done)
    assert waiting.status_code == 202
    assert int(waiting.headers["retry-after"]) >= 1

    page = api.get(login)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["x-frame-options"] == "DENY"
    for field in ("name=name", "name=password", "name=otp", "method=post"):
        assert field in page.text, field

    wrong = submit(api, login, name="alice", password=BOB_PASSWORD)
    assert wrong.status_code == 401
    assert "Incorrect user name or password" in wrong.text
    assert "name=password" in wrong.text  # the form again
    assert BOB_PASSWORD not in wrong.text
    assert api.get(done).status_code == 202

    signed_in = submit(api, login, name="alice", password=ALICE_PASSWORD)
    assert signed_in.status_code == 200
    assert "signed in as <b>alice</b>" in signed_in.text
    assert api.get(login).status_code == 404  # the link works once

    finished = api.get(done)
    assert finished.status_code == 200
    token = finished.json()["token"]
    assert token.startswith("ent_")
    assert_user(api, bearer(token), "alice")
    assert publish(api, "main", bearer(token), "demo", "1.0.0").status_code == 201
    assert_error(api.get(done), 404, "expired")


def test_web_login_works_on_a_private_feed_and_refuses_unknown_ids(api: Api) -> None:
    login, done = start_login(api, "team")
    assert submit(api, login, name="bob", password=BOB_PASSWORD).status_code == 200
    token = api.get(done).json()["token"]
    assert_user(api, bearer(token), "bob")
    assert api.get("/-/web/login/not-a-real-id").status_code == 404
    assert submit(api, "/-/web/login/not-a-real-id", name="bob", password="x").status_code == 404
    assert_error(api.get("/npm/main/-/v1/done/not-a-real-id"), 404, "")
    assert_error(api.request("POST", "/npm/nope/-/v1/login", json={}), 404, "no feed")


# -- TOTP ------------------------------------------------------------------------------------

PROFILE = "/npm/main/-/npm/v1/user"


def now_step() -> int:
    return int(time.time() // totp.STEP)


def wrong_code(secret: str) -> str:
    """A code that no step near now accepts."""
    valid = {totp.code_at(secret, now_step() + d) for d in range(-2, 3)}
    return next(c for c in ("123456", "654321", "000000", "999999") if c not in valid)


def enrol(api: Api) -> tuple[str, list[str]]:
    """alice enrols an authenticator (npm profile enable-2fa auth-and-writes)."""
    start = {"tfa": {"password": ALICE_PASSWORD, "mode": "auth-and-writes"}}
    refused = api.request(
        "POST", PROFILE, auth=api.alice, json={"tfa": {"password": BOB_PASSWORD, "mode": "x"}}
    )
    assert_error(refused, 401, "incorrect")
    response = api.request("POST", PROFILE, auth=api.alice, json=start)
    assert response.status_code == 200, response.text
    uri = response.json()["tfa"]
    assert uri.startswith("otpauth://totp/")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)
    secret = query["secret"][0]
    assert api.get(PROFILE, auth=api.alice).json()["tfa"] == {
        "pending": True,
        "mode": "auth-and-writes",
    }
    # Pending is not enrolled: publishing needs no code yet.
    assert publish(api, "main", api.alice, "demo", "1.0.0").status_code == 201
    bad = api.request("POST", PROFILE, auth=api.alice, json={"tfa": [wrong_code(secret)]})
    assert_error(bad, 400, "does not match")
    # The previous step's code (still accepted) confirms: it then counts as used, and the
    # tests below have the current step's code free.
    confirm = {"tfa": [totp.code_at(secret, now_step() - 1)]}
    confirmed = api.request("POST", PROFILE, auth=api.alice, json=confirm)
    assert confirmed.status_code == 200, confirmed.text
    recovery = confirmed.json()["tfa"]
    assert isinstance(recovery, list) and len(recovery) == 5
    assert api.get(PROFILE, auth=api.alice).json()["tfa"] == {
        "pending": False,
        "mode": "auth-and-writes",
    }
    return secret, recovery


def test_the_enrolment_code_cannot_authorize_a_publish(api: Api) -> None:
    secret, _ = enrol(api)
    used = totp.code_at(secret, now_step() - 1)
    before = feed_state(api, "main", ("demo",))
    replay = api.put(
        "/npm/main/demo",
        auth=api.alice,
        json=publish_body("demo", "2.0.0"),
        headers={"npm-otp": used},
    )
    assert_error(replay, 401, "already used")
    assert feed_state(api, "main", ("demo",)) == before


def test_totp_enrolment_then_publish_needs_a_code(api: Api) -> None:
    secret, _ = enrol(api)
    before = feed_state(api, "main", ("demo",))
    missing = publish(api, "main", api.alice, "demo", "2.0.0")
    assert_error(missing, 401, "one-time password")
    assert missing.headers["www-authenticate"] == "OTP"
    wrong = api.put(
        "/npm/main/demo",
        auth=api.alice,
        json=publish_body("demo", "2.0.0"),
        headers={"npm-otp": wrong_code(secret)},
    )
    assert_error(wrong, 401, "not valid")
    assert wrong.headers["www-authenticate"] == "OTP"
    assert feed_state(api, "main", ("demo",)) == before

    code = totp.code_at(secret, now_step())
    ok = api.put(
        "/npm/main/demo",
        auth=api.alice,
        json=publish_body("demo", "2.0.0"),
        headers={"npm-otp": code},
    )
    assert ok.status_code == 201, ok.text
    before = feed_state(api, "main", ("demo",))
    replay = api.put(
        "/npm/main/demo",
        auth=api.alice,
        json=publish_body("demo", "3.0.0"),
        headers={"npm-otp": code},
    )
    assert_error(replay, 401, "already used")
    assert replay.headers["www-authenticate"] == "OTP"
    assert feed_state(api, "main", ("demo",)) == before
    # Reading needs no code.
    assert_user(api, api.alice, "alice")
    assert api.get("/npm/main/demo", auth=api.alice).status_code == 200


def test_totp_guards_token_create_and_legacy_login(api: Api) -> None:
    secret, recovery = enrol(api)
    missing = create_token(api, api.alice, password=ALICE_PASSWORD)
    assert_error(missing, 401, "one-time password")
    assert missing.headers["www-authenticate"] == "OTP"
    tokens = live_tokens(api, "alice")
    created = api.request(
        "POST",
        TOKENS,
        auth=api.alice,
        json={"password": ALICE_PASSWORD},
        headers={"npm-otp": totp.code_at(secret, now_step())},
    )
    assert created.status_code == 200, created.text
    assert len(live_tokens(api, "alice")) == len(tokens) + 1

    login = "/npm/main/-/user/org.couchdb.user:alice"
    body = {"name": "alice", "password": ALICE_PASSWORD}
    no_code = api.put(login, json=body)
    assert_error(no_code, 401, "one-time password")
    assert no_code.headers["www-authenticate"] == "OTP"
    tokens = live_tokens(api, "alice")
    with_recovery = api.put(login, json=body, headers={"npm-otp": recovery[0]})
    assert with_recovery.status_code == 201, with_recovery.text
    assert_user(api, bearer(with_recovery.json()["token"]), "alice")
    again = api.put(login, json=body, headers={"npm-otp": recovery[0]})
    assert_error(again, 401, "not valid")
    assert len(live_tokens(api, "alice")) == len(tokens) + 1

    # The web sign-in asks for the code too; another recovery code works there, once.
    page, done = start_login(api)
    asked = submit(api, page, name="alice", password=ALICE_PASSWORD)
    assert asked.status_code == 401
    assert "Enter the one-time password" in asked.text
    used = submit(api, page, name="alice", password=ALICE_PASSWORD, otp=recovery[0])
    assert used.status_code == 401
    assert submit(api, page, name="alice", password=ALICE_PASSWORD, otp=recovery[1]).is_success
    assert_user(api, bearer(api.get(done).json()["token"]), "alice")


# -- limits on failed sign-ins ---------------------------------------------------------------

LIMIT = 10


def test_failed_sign_ins_are_limited_per_user(api: Api) -> None:
    for attempt_number in range(LIMIT):
        address = f"10.0.0.{attempt_number + 1}"
        response = request_from(
            api,
            address,
            "GET",
            "/npm/main/-/whoami",
            auth=basic("alice", f"guess {attempt_number}"),
        )
        assert_error(response, 401, "incorrect", address)
    # The right password from a fresh address is refused too, until the window passes.
    locked = request_from(
        api, "10.0.1.1", "GET", "/npm/main/-/whoami", auth=basic("alice", ALICE_PASSWORD)
    )
    assert_error(locked, 429, "too many failed sign-ins")
    assert 1 <= int(locked.headers["retry-after"]) <= 300
    login = "/npm/main/-/user/org.couchdb.user:alice"
    body = {"name": "alice", "password": ALICE_PASSWORD}
    assert_error(request_from(api, "10.0.1.2", "PUT", login, json=body), 429, "too many")
    page, _ = start_login(api)
    form = submit(api, page, "10.0.1.3", name="alice", password=ALICE_PASSWORD)
    assert form.status_code == 429
    assert 1 <= int(form.headers["retry-after"]) <= 300
    # Other users, and alice's tokens, are not affected.
    other = request_from(
        api, "10.0.1.1", "GET", "/npm/main/-/whoami", auth=basic("bob", BOB_PASSWORD)
    )
    assert other.status_code == 200, other.text
    assert_user(api, api.alice, "alice")


def test_failed_sign_ins_are_limited_per_address(api: Api) -> None:
    # Failures for any user names from one address: here bob's and unknown ones.
    names = ["bob"] * (LIMIT - 1) + ["nobody"]
    for number, name in enumerate(names):
        response = request_from(
            api, "10.9.9.9", "GET", "/npm/main/-/whoami", auth=basic(name, f"guess {number}")
        )
        assert_error(response, 401, "incorrect")
    locked = request_from(
        api, "10.9.9.9", "GET", "/npm/main/-/whoami", auth=basic("alice", ALICE_PASSWORD)
    )
    assert_error(locked, 429, "too many")
    assert 1 <= int(locked.headers["retry-after"]) <= 300
    elsewhere = request_from(
        api, "10.9.9.10", "GET", "/npm/main/-/whoami", auth=basic("alice", ALICE_PASSWORD)
    )
    assert elsewhere.status_code == 200, elsewhere.text
