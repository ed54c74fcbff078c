"""Tests for entrepot.auth: reading Authorization headers, and tokens and passwords checked
against a real SQLite store."""

from __future__ import annotations

import asyncio
import base64
import functools
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entrepot.admin import Admin
from entrepot.auth import (
    TOKEN_PREFIX,
    Authenticator,
    Principal,
    hash_password,
    hash_token,
    parse_authorization,
    verify_password,
)
from entrepot.errors import BadRequest, Unauthorized
from entrepot.storage.base import User
from entrepot.storage.sqlite import SQLiteMetadataStore

PASSWORD = "correct horse battery staple"
EMAIL = "alice@example.test"


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


# -- parse_authorization -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("Bearer ent_abc", ("bearer", "", "ent_abc")),
        ("bearer ent_abc", ("bearer", "", "ent_abc")),
        ("  Bearer   ent_abc  ", ("bearer", "", "ent_abc")),
        ("Token ent_abc", ("bearer", "", "ent_abc")),
        (basic("alice", "ent_T"), ("basic", "alice", "ent_T")),
        (basic("api", "ent_T"), ("basic", "api", "ent_T")),
        (basic(EMAIL, "ent_T"), ("basic", EMAIL, "ent_T")),
        (basic("alice", "pass:with:colons"), ("basic", "alice", "pass:with:colons")),
        (basic("", "ent_T"), ("basic", "", "ent_T")),
        ("BASIC " + base64.b64encode("ünï:cødé".encode()).decode(), ("basic", "ünï", "cødé")),
    ],
)
def test_parse_authorization(header: str, parsed: tuple[str, str, str]) -> None:
    assert parse_authorization(header) == parsed


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Bearer", "empty"),
        ("Bearer    ", "empty"),
        ("Basic !!!not-base64!!!", "not valid base64"),
        ("Basic YWxpY2U6cGFzcw", "not valid base64"),  # padding missing
        ("Basic " + base64.b64encode(b"no-colon-here").decode(), "user:secret"),
        ("Basic " + base64.b64encode(b"alice:").decode(), "user:secret"),
        ("Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(), "not valid base64"),
        ("Basic", "user:secret"),
        ("Basic é", "not valid base64"),
        ("Basic YWxpY2U6\u00e9", "not valid base64"),
        ("Digest username=alice", "unsupported authorization scheme"),
        ("ent_abc", "unsupported authorization scheme"),
        ("", "unsupported authorization scheme"),
    ],
)
def test_parse_authorization_refuses(header: str, message: str) -> None:
    with pytest.raises(Unauthorized, match=message) as caught:
        parse_authorization(header)
    assert "WWW-Authenticate" in caught.value.headers


def test_empty_bearer_challenges_with_bearer() -> None:
    with pytest.raises(Unauthorized) as caught:
        parse_authorization("Bearer ")
    assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")


_HEADER_TEXT = st.text(
    st.characters(codec="latin-1"),  # what an HTTP header can carry, decoded as Starlette does
    max_size=80,
)


@given(
    st.one_of(
        _HEADER_TEXT,
        _HEADER_TEXT.map(lambda t: "Basic " + t),
        _HEADER_TEXT.map(lambda t: "Bearer " + t),
        st.binary(max_size=60).map(lambda b: "Basic " + base64.b64encode(b).decode()),
    )
)
def test_parse_authorization_raises_only_unauthorized(header: str) -> None:
    try:
        parsed = parse_authorization(header)
    except Unauthorized:
        return
    assert parsed is not None
    scheme, _, secret = parsed
    assert scheme in ("bearer", "basic")
    assert secret


# -- passwords and token secrets -----------------------------------------------------------


def test_password_hashing() -> None:
    stored = hash_password(PASSWORD)
    assert PASSWORD not in stored
    assert verify_password(stored, PASSWORD)
    assert not verify_password(stored, PASSWORD + "!")
    assert not verify_password(None, PASSWORD)
    assert not verify_password("not-an-argon2-hash", PASSWORD)


# -- Authenticator against a real store ----------------------------------------------------


@pytest.fixture
def meta(tmp_path: Path) -> Iterator[SQLiteMetadataStore]:
    store = SQLiteMetadataStore(tmp_path / "entrepot.db")
    yield store
    asyncio.run(store.close())


@functools.cache
def password_hash(password: str) -> str:
    # Argon2 is slow on purpose: hash each test password once per run.
    return hash_password(password)


@pytest.fixture
def alice(meta: SQLiteMetadataStore) -> User:
    async def setup() -> User:
        await meta.create_feed("main", private=False)
        await meta.create_feed("other", private=False)
        await meta.create_user(
            "bob", "bob@example.test", password_hash("bob's password"), admin=False
        )
        return await meta.create_user("alice", EMAIL, password_hash(PASSWORD), admin=False)

    return asyncio.run(setup())


def new_token(
    meta: SQLiteMetadataStore,
    *,
    read_only: bool = False,
    feeds: tuple[str, ...] = (),
    cidrs: tuple[str, ...] = (),
) -> str:
    secret, _ = asyncio.run(
        Admin(meta).create_token(
            "alice", read_only=read_only, feeds=list(feeds), cidrs=list(cidrs), expires_days=None
        )
    )
    return secret


def authenticate(
    auth: Authenticator, header: str | None, client_ip: str | None = "127.0.0.1"
) -> Principal | None:
    return asyncio.run(auth.authenticate(header, client_ip))


def refused(auth: Authenticator, header: str, client_ip: str | None = "127.0.0.1") -> Unauthorized:
    with pytest.raises(Unauthorized) as caught:
        authenticate(auth, header, client_ip)
    return caught.value


def test_anonymous(meta: SQLiteMetadataStore) -> None:
    auth = Authenticator(meta, allow_password_auth=True)
    assert authenticate(auth, None) is None
    assert authenticate(auth, "") is None


def test_token_by_bearer(meta: SQLiteMetadataStore, alice: User) -> None:
    secret = new_token(meta)
    assert secret.startswith(TOKEN_PREFIX)
    principal = authenticate(Authenticator(meta, allow_password_auth=True), f"Bearer {secret}")
    assert principal is not None
    assert (principal.user_id, principal.name, principal.email) == (alice.id, "alice", EMAIL)
    assert principal.read_only is False
    assert principal.feeds == ()
    assert principal.token_key is not None
    assert principal.may_use_feed("main") and principal.may_use_feed("anything")


@pytest.mark.parametrize("user", ["api", "alice", EMAIL])
def test_token_by_basic(meta: SQLiteMetadataStore, alice: User, user: str) -> None:
    secret = new_token(meta)
    principal = authenticate(Authenticator(meta, allow_password_auth=True), basic(user, secret))
    assert principal is not None
    assert principal.name == "alice"
    assert principal.token_key is not None


@pytest.mark.parametrize("user", ["bob", "bob@example.test", "Alice", "root", ""])
def test_token_by_basic_with_another_user_name_is_refused(
    meta: SQLiteMetadataStore, alice: User, user: str
) -> None:
    secret = new_token(meta)
    error = refused(Authenticator(meta, allow_password_auth=True), basic(user, secret))
    assert "does not match" in error.message
    assert error.headers["WWW-Authenticate"].startswith("Basic")


def test_unknown_token_is_refused(meta: SQLiteMetadataStore, alice: User) -> None:
    auth = Authenticator(meta, allow_password_auth=True)
    error = refused(auth, f"Bearer {TOKEN_PREFIX}not-a-real-token")
    assert error.headers["WWW-Authenticate"].startswith("Bearer")
    assert (
        refused(auth, basic("alice", TOKEN_PREFIX + "nope"))
        .headers["WWW-Authenticate"]
        .startswith("Basic")
    )


def test_revoked_token_is_refused_at_once(meta: SQLiteMetadataStore, alice: User) -> None:
    secret = new_token(meta)
    auth = Authenticator(meta, allow_password_auth=True)
    assert authenticate(auth, f"Bearer {secret}") is not None  # now cached
    revoked = asyncio.run(Admin(meta).revoke_token(secret))
    assert revoked.user_name == "alice"
    assert "revoked" in refused(auth, f"Bearer {secret}").message
    assert "revoked" in refused(auth, basic("api", secret)).message


def test_revoked_by_key_is_refused(meta: SQLiteMetadataStore, alice: User) -> None:
    secret = new_token(meta)
    auth = Authenticator(meta, allow_password_auth=True)
    principal = authenticate(auth, f"Bearer {secret}")
    assert principal is not None and principal.token_key is not None
    assert asyncio.run(meta.revoke_token(principal.token_key)) is True
    refused(auth, f"Bearer {secret}")


def test_expired_token_is_refused(meta: SQLiteMetadataStore, alice: User) -> None:
    secret = TOKEN_PREFIX + "expired-secret"
    asyncio.run(
        meta.create_token(
            user_id=alice.id,
            key=uuid.uuid4().hex,
            secret_hash=hash_token(secret),
            read_only=False,
            feeds=[],
            cidrs=[],
            expires=time.time() - 1,
            description="",
        )
    )
    assert (
        "expired"
        in refused(Authenticator(meta, allow_password_auth=True), f"Bearer {secret}").message
    )


def test_token_expiring_later_is_accepted(meta: SQLiteMetadataStore, alice: User) -> None:
    secret, token = asyncio.run(
        Admin(meta).create_token("alice", read_only=False, feeds=[], expires_days=1)
    )
    assert token.expires is not None and token.expires > time.time()
    assert authenticate(Authenticator(meta, allow_password_auth=True), f"Bearer {secret}")


@pytest.mark.parametrize(
    ("client_ip", "allowed"),
    [
        ("10.1.2.3", True),
        ("10.255.255.255", True),
        ("192.168.7.9", True),
        ("::1", True),
        ("127.0.0.1", False),
        ("11.0.0.1", False),
        ("192.168.8.1", False),
        ("::2", False),
        (None, False),
        ("not-an-address", False),
    ],
)
def test_token_limited_to_address_ranges(
    meta: SQLiteMetadataStore, alice: User, client_ip: str | None, allowed: bool
) -> None:
    secret = new_token(meta, cidrs=("10.0.0.0/8", "192.168.7.0/24", "::1/128"))
    auth = Authenticator(meta, allow_password_auth=True)
    if allowed:
        assert authenticate(auth, f"Bearer {secret}", client_ip) is not None
    else:
        assert "address" in refused(auth, f"Bearer {secret}", client_ip).message


def test_bad_address_range_is_refused(meta: SQLiteMetadataStore, alice: User) -> None:
    with pytest.raises(BadRequest, match="not an address range"):
        new_token(meta, cidrs=("10.0.0.0/33",))


def test_read_only_token(meta: SQLiteMetadataStore, alice: User) -> None:
    secret = new_token(meta, read_only=True)
    principal = authenticate(Authenticator(meta, allow_password_auth=True), f"Bearer {secret}")
    assert principal is not None
    assert principal.read_only is True


def test_token_limited_to_feeds(meta: SQLiteMetadataStore, alice: User) -> None:
    secret = new_token(meta, feeds=("main",))
    principal = authenticate(Authenticator(meta, allow_password_auth=True), basic("api", secret))
    assert principal is not None
    assert principal.feeds == ("main",)
    assert principal.may_use_feed("main")
    assert not principal.may_use_feed("other")


def test_password_by_basic(meta: SQLiteMetadataStore, alice: User) -> None:
    principal = authenticate(
        Authenticator(meta, allow_password_auth=True), basic("alice", PASSWORD)
    )
    assert principal is not None
    assert (principal.user_id, principal.name) == (alice.id, "alice")
    assert principal.token_key is None
    assert principal.read_only is False


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("alice", PASSWORD + "x"),
        ("alice", "bob's password"),
        ("nobody", PASSWORD),
        (EMAIL, PASSWORD),
    ],
)
def test_wrong_password_is_refused(
    meta: SQLiteMetadataStore, alice: User, user: str, password: str
) -> None:
    error = refused(Authenticator(meta, allow_password_auth=True), basic(user, password))
    assert error.headers["WWW-Authenticate"].startswith("Basic")


def test_wrong_password_is_refused_after_a_right_one(
    meta: SQLiteMetadataStore, alice: User
) -> None:
    auth = Authenticator(meta, allow_password_auth=True)
    assert authenticate(auth, basic("alice", PASSWORD)) is not None
    refused(auth, basic("alice", PASSWORD[:-1]))


def test_password_auth_disabled(meta: SQLiteMetadataStore, alice: User) -> None:
    auth = Authenticator(meta, allow_password_auth=False)
    assert "turned off" in refused(auth, basic("alice", PASSWORD)).message
    secret = new_token(meta)
    principal = authenticate(auth, basic("alice", secret))
    assert principal is not None and principal.name == "alice"


def test_token_secret_is_stored_only_as_a_hash(
    meta: SQLiteMetadataStore, alice: User, tmp_path: Path
) -> None:
    secret = new_token(meta)
    token = asyncio.run(meta.find_token(hash_token(secret)))
    assert token is not None and token.user_name == "alice"
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert secret.encode() not in stored
    assert secret.removeprefix(TOKEN_PREFIX).encode() not in stored
