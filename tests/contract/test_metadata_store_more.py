"""The rest of the MetadataStore contract: users' second factor, roles, web sign-in sessions,
connectors and their cache, leases, search and listings, fsck's views, backup dump and load,
schema versions; and the store errors (never a driver's) for duplicates and dangling
references. Every test runs on every backend in ``META_BACKENDS``; the last ones run the same
calls on all backends side by side and compare the answers."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.contract.conftest import META_BACKENDS

from entrepot.storage import postgres, sqlite
from entrepot.storage.base import (
    AlreadyExists,
    Connector,
    MetadataStore,
    Missing,
    NewVersion,
    Package,
    PackageChange,
    SchemaMismatch,
    Token,
    UpstreamDoc,
    User,
    VersionRef,
)

ALICE = {"name": "alice", "email": "alice@example.test"}


def blob_key(name: str, version: str) -> str:
    return hashlib.sha512(f"{name}@{version}".encode()).hexdigest()


def new_version(
    name: str,
    version: str,
    *,
    tag: str = "latest",
    description: str = "",
    keywords: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> NewVersion:
    manifest: dict[str, Any] = {"name": name, "version": version}
    if description:
        manifest["description"] = description
    if keywords:
        manifest["keywords"] = list(keywords)
    manifest.update(extra or {})
    return NewVersion(
        version=version,
        manifest=manifest,
        blob_key=blob_key(name, version),
        size=100,
        tag=tag,
        readme=f"readme of {name}@{version}",
        maintainer=ALICE,
    )


async def publish(store: MetadataStore, feed: int, name: str, *versions: str) -> Package:
    package: Package | None = None
    for version in versions:
        package = await store.publish(feed, name, new_version(name, version))
    assert package is not None
    return package


async def add_user(store: MetadataStore, name: str, *, admin: bool = False) -> User:
    return await store.create_user(name, f"{name}@example.test", f"hash-{name}", admin=admin)


async def add_token(
    store: MetadataStore,
    user_id: int,
    key: str,
    secret_hash: str | None = None,
    *,
    read_only: bool = False,
    feeds: Sequence[str] = (),
    cidrs: Sequence[str] = (),
    expires: float | None = None,
    prefix: str = "",
) -> Token:
    return await store.create_token(
        user_id=user_id,
        key=key,
        secret_hash=secret_hash or f"hash-of-{key}",
        read_only=read_only,
        feeds=feeds,
        cidrs=cidrs,
        expires=expires,
        description=f"token {key}",
        prefix=prefix,
    )


async def add_connector(
    store: MetadataStore,
    feed: int,
    name: str,
    *,
    url: str = "http://127.0.0.1:9/",
    allow_internal: bool = False,
    min_age_hours: float | None = None,
) -> Connector:
    return await store.add_connector(
        feed,
        name=name,
        url=url,
        credential_kind=None,
        credential_env=None,
        allow=[],
        block=[],
        min_age_hours=min_age_hours,
        ttl=300,
        allow_internal=allow_internal,
    )


async def bumps(store: MetadataStore, write: Awaitable[object]) -> None:
    before = await store.seq()
    await write
    assert await store.seq() > before


async def refused(store: MetadataStore, write: Awaitable[object], error: type[Exception]) -> None:
    """The write fails with ``error`` (a store error, not the driver's) and seq stays."""
    before = await store.seq()
    with pytest.raises(error):
        await write
    assert await store.seq() == before


def names(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(e["name"]) for e in entries]


# -- update_user and TOTP steps ------------------------------------------------------------


def test_update_user_changes_the_allowed_fields(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        alice = await add_user(store, "alice")
        bob = await add_user(store, "bob")
        before = await store.seq()
        changed = await store.update_user(
            alice.id,
            {
                "email": "new@example.test",
                "password_hash": "hash-2",
                "admin": True,
                "totp_secret": "JBSWY3DPEHPK3PXP",
                "totp_pending": "PENDINGSECRET234",
                "recovery_hashes": ["r1", "r2"],
            },
        )
        assert await store.seq() > before
        assert changed == User(
            alice.id,
            "alice",
            "new@example.test",
            "hash-2",
            True,
            alice.created,
            totp_secret="JBSWY3DPEHPK3PXP",
            totp_pending="PENDINGSECRET234",
            recovery_hashes=("r1", "r2"),
        )
        assert await store.get_user("alice") == changed
        assert await store.get_user_by_id(alice.id) == changed
        # Only the fields given change; None clears, a tuple is fine as a sequence.
        again = await store.update_user(
            alice.id, {"totp_pending": None, "recovery_hashes": ("r2",), "admin": False}
        )
        assert (again.totp_secret, again.totp_pending) == ("JBSWY3DPEHPK3PXP", None)
        assert (again.recovery_hashes, again.admin, again.email) == (
            ("r2",),
            False,
            "new@example.test",
        )
        emptied = await store.update_user(alice.id, {"recovery_hashes": []})
        assert emptied.recovery_hashes == ()
        assert await store.get_user("bob") == bob
        # No fields: the user as is.
        assert await store.update_user(alice.id, {}) == emptied

    runner.run(body())


def test_update_user_refuses_other_fields_and_missing_users(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        alice = await add_user(store, "alice")
        for fields in ({"name": "mallory"}, {"email": "x@example.test", "id": 99}, {"created": ""}):
            await refused(store, store.update_user(alice.id, fields), ValueError)
        assert await store.get_user("alice") == alice
        assert await store.get_user("mallory") is None
        missing = alice.id + 1000
        await refused(store, store.update_user(missing, {"email": "x@example.test"}), Missing)
        await refused(store, store.update_user(missing, {}), Missing)
        assert await store.list_users() == [alice]

    runner.run(body())


def test_a_totp_step_is_used_once_and_never_an_older_one(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        alice = await add_user(store, "alice")
        bob = await add_user(store, "bob")
        assert await store.use_totp_step(alice.id, 1000) is True
        assert await store.use_totp_step(alice.id, 1000) is False
        assert await store.use_totp_step(alice.id, 999) is False
        assert await store.use_totp_step(alice.id, 1) is False
        assert await store.use_totp_step(alice.id, 1001) is True
        assert await store.use_totp_step(alice.id, 1000) is False
        assert await store.use_totp_step(alice.id, 1003) is True
        assert await store.use_totp_step(alice.id, 1002) is False
        # Per user.
        assert await store.use_totp_step(bob.id, 1000) is True
        assert await store.use_totp_step(alice.id + bob.id + 1000, 5) is False

    runner.run(body())


def test_concurrent_uses_of_one_totp_step_let_exactly_one_through(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        alice = await add_user(store, "alice")
        results = await asyncio.gather(*(store.use_totp_step(alice.id, 5000) for _ in range(12)))
        assert results.count(True) == 1
        # Mixed steps at once: the newest always ends up recorded.
        await asyncio.gather(*(store.use_totp_step(alice.id, s) for s in range(5001, 5011)))
        assert await store.use_totp_step(alice.id, 5010) is False
        assert await store.use_totp_step(alice.id, 5011) is True

    runner.run(body())


# -- roles ---------------------------------------------------------------------------------


def test_roles_are_granted_replaced_and_removed(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        main = await store.create_feed("main", private=True)
        team = await store.create_feed("team", private=True)
        carol = await add_user(store, "carol")
        alice = await add_user(store, "alice")
        bob = await add_user(store, "bob")
        assert await store.list_roles(main.id) == []
        assert await store.get_role(main.id, alice.id) is None
        await bumps(store, store.set_role(main.id, carol.id, "reader"))
        await store.set_role(main.id, alice.id, "owner")
        await store.set_role(main.id, bob.id, "publisher")
        await store.set_role(team.id, bob.id, "reader")
        assert await store.get_role(main.id, carol.id) == "reader"
        assert await store.get_role(team.id, carol.id) is None
        assert await store.list_roles(main.id) == [
            ("alice", "owner"),
            ("bob", "publisher"),
            ("carol", "reader"),
        ]
        assert await store.list_roles(team.id) == [("bob", "reader")]
        # Replace.
        await bumps(store, store.set_role(main.id, carol.id, "owner"))
        assert await store.get_role(main.id, carol.id) == "owner"
        assert len(await store.list_roles(main.id)) == 3
        # Remove (twice is fine).
        await bumps(store, store.set_role(main.id, bob.id, None))
        await store.set_role(main.id, bob.id, None)
        assert await store.get_role(main.id, bob.id) is None
        assert await store.get_role(team.id, bob.id) == "reader"
        assert await store.list_roles(main.id) == [("alice", "owner"), ("carol", "owner")]
        # Not a role.
        for role in ("admin", "Owner", ""):
            await refused(store, store.set_role(main.id, alice.id, role), ValueError)
        assert await store.get_role(main.id, alice.id) == "owner"

    runner.run(body())


def test_roles_go_with_their_feed_or_user(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        main = await store.create_feed("main", private=True)
        other = await store.create_feed("other", private=True)
        alice = await add_user(store, "alice")
        bob = await add_user(store, "bob")
        await store.set_role(main.id, alice.id, "owner")
        await store.set_role(other.id, alice.id, "reader")
        await store.set_role(main.id, bob.id, "publisher")
        await store.delete_feed("main")
        assert await store.list_roles(main.id) == []
        assert await store.get_role(main.id, alice.id) is None
        again = await store.create_feed("main", private=True)
        assert await store.list_roles(again.id) == []
        assert await store.list_roles(other.id) == [("alice", "reader")]
        await store.delete_user("alice")
        assert await store.list_roles(other.id) == []

    runner.run(body())


def test_a_role_for_a_missing_user_or_feed_is_missing(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed = await store.create_feed("main", private=True)
        alice = await add_user(store, "alice")
        await refused(store, store.set_role(feed.id, alice.id + 1000, "reader"), Missing)
        await refused(store, store.set_role(feed.id + 1000, alice.id, "owner"), Missing)
        assert await store.list_roles(feed.id) == []

    runner.run(body())


# -- tokens: duplicates and dangling users -------------------------------------------------


def test_a_duplicate_token_key_or_secret_hash_already_exists(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        alice = await add_user(store, "alice")
        bob = await add_user(store, "bob")
        first = await add_token(store, alice.id, "key-1", "hash-1", prefix="ent_ab")
        assert first.prefix == "ent_ab"
        await refused(store, add_token(store, bob.id, "key-1", "hash-2"), AlreadyExists)
        await refused(store, add_token(store, bob.id, "key-2", "hash-1"), AlreadyExists)
        # Revoked tokens keep their key and hash.
        assert await store.revoke_token("key-1") is True
        await refused(store, add_token(store, alice.id, "key-1", "hash-3"), AlreadyExists)
        await refused(store, add_token(store, alice.id, "key-3", "hash-1"), AlreadyExists)
        found = await store.find_token("hash-1")
        assert found is not None and (found.key, found.user_id) == ("key-1", alice.id)
        assert await store.find_token("hash-2") is None
        assert await store.list_tokens() == []
        # The store still takes new tokens after the refusals.
        assert (await add_token(store, bob.id, "key-2", "hash-2")).user_name == "bob"

    runner.run(body())


def test_a_token_for_a_missing_user_is_missing(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        alice = await add_user(store, "alice")
        await refused(store, add_token(store, alice.id + 1000, "key-1"), Missing)
        assert await store.list_tokens() == []
        assert await store.find_token("hash-of-key-1") is None

    runner.run(body())


def test_a_version_for_a_missing_feed_is_missing(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed = await store.create_feed("main", private=False)
        await refused(
            store, store.publish(feed.id + 1000, "demo", new_version("demo", "1")), Missing
        )
        assert await store.version_refs() == []

    runner.run(body())


# -- web sign-in sessions ------------------------------------------------------------------


def test_a_login_session_is_approved_once_and_taken_once(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        alice = await add_user(store, "alice")
        bob = await add_user(store, "bob")
        expires = time.time() + 600
        await store.create_login_session("login-1", "done-1", expires)
        await store.create_login_session("login-2", "done-2", expires)
        found = await store.find_login_session("login-1")
        assert found is not None and found.user_id is None
        assert found.expires == pytest.approx(expires)
        # Each id finds the session only through its own method.
        assert await store.find_login_session("done-1") is None
        assert await store.take_login_session("login-1") is None
        # Pending: npm polls and sees it unapproved, and it stays.
        for _ in range(2):
            pending = await store.take_login_session("done-1")
            assert pending is not None and (pending.id, pending.user_id) == (found.id, None)
        assert await store.approve_login_session("login-1", alice.id) is True
        assert await store.approve_login_session("login-1", bob.id) is False
        approved = await store.find_login_session("login-1")
        assert approved is not None and approved.user_id == alice.id
        taken = await store.take_login_session("done-1")
        assert taken is not None and (taken.id, taken.user_id) == (found.id, alice.id)
        # Gone once taken: no replay.
        assert await store.take_login_session("done-1") is None
        assert await store.find_login_session("login-1") is None
        assert await store.approve_login_session("login-1", alice.id) is False
        # The other session is untouched.
        other = await store.find_login_session("login-2")
        assert other is not None and other.user_id is None and other.id != found.id
        assert await store.approve_login_session("unknown", alice.id) is False
        assert await store.take_login_session("unknown") is None

    runner.run(body())


def test_expired_login_sessions_are_invisible(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        alice = await add_user(store, "alice")
        await store.create_login_session("old-login", "old-done", time.time() - 1)
        assert await store.find_login_session("old-login") is None
        assert await store.approve_login_session("old-login", alice.id) is False
        assert await store.take_login_session("old-done") is None
        # Approved, then expired before npm came back for it.
        await store.create_login_session("late-login", "late-done", time.time() + 0.5)
        assert await store.approve_login_session("late-login", alice.id) is True
        await asyncio.sleep(1.0)
        assert await store.take_login_session("late-done") is None
        assert await store.find_login_session("late-login") is None

    runner.run(body())


def test_login_sessions_refuse_reused_ids_and_missing_users(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        alice = await add_user(store, "alice")
        expires = time.time() + 600
        await store.create_login_session("login-1", "done-1", expires)
        with pytest.raises(AlreadyExists):
            await store.create_login_session("login-1", "done-x", expires)
        with pytest.raises(AlreadyExists):
            await store.create_login_session("login-x", "done-1", expires)
        assert await store.find_login_session("login-x") is None
        with pytest.raises(Missing):
            await store.approve_login_session("login-1", alice.id + 1000)
        pending = await store.take_login_session("done-1")
        assert pending is not None and pending.user_id is None
        await store.delete_user("alice")
        await store.create_login_session("login-2", "done-2", expires)
        with pytest.raises(Missing):
            await store.approve_login_session("login-2", alice.id)
        assert (await store.find_login_session("login-2") or pytest.fail()).user_id is None

    runner.run(body())


def test_a_users_sessions_go_with_the_user(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        alice = await add_user(store, "alice")
        await store.create_login_session("login-1", "done-1", time.time() + 600)
        assert await store.approve_login_session("login-1", alice.id) is True
        await store.delete_user("alice")
        assert await store.find_login_session("login-1") is None
        assert await store.take_login_session("done-1") is None

    runner.run(body())


# -- connectors, upstream names, upstream cache --------------------------------------------


def test_connectors_are_kept_in_order(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        feed = await store.create_feed("main", private=False)
        other = await store.create_feed("other", private=False)
        assert await store.list_connectors(feed.id) == []
        before = await store.seq()
        first = await store.add_connector(
            feed.id,
            name="public",
            url="http://127.0.0.1:9/registry/",
            credential_kind="token",
            credential_env="NPM_TOKEN",
            allow=["@acme/*", "lodash"],
            block=["evil-*"],
            min_age_hours=72.5,
            ttl=600,
            allow_internal=False,
        )
        assert await store.seq() > before
        assert (first.feed_id, first.name, first.position) == (feed.id, "public", 1)
        assert (first.url, first.credential_kind, first.credential_env) == (
            "http://127.0.0.1:9/registry/",
            "token",
            "NPM_TOKEN",
        )
        assert (first.allow, first.block) == (("@acme/*", "lodash"), ("evil-*",))
        assert (first.min_age_hours, first.ttl, first.allow_internal) == (72.5, 600, False)
        second = await add_connector(store, feed.id, "internal", allow_internal=True)
        third = await add_connector(store, feed.id, "mirror")
        assert (second.position, third.position) == (2, 3)
        assert second.allow_internal is True and second.min_age_hours is None
        assert second.credential_kind is None and second.credential_env is None
        assert second.allow == () and second.block == ()
        assert await store.list_connectors(feed.id) == [first, second, third]
        assert len({first.id, second.id, third.id}) == 3
        # Names are per feed.
        elsewhere = await add_connector(store, other.id, "public")
        assert elsewhere.position == 1 and elsewhere.id != first.id
        assert await store.list_connectors(other.id) == [elsewhere]
        await refused(store, add_connector(store, feed.id, "mirror"), AlreadyExists)
        # Removing one keeps the order of the others; a new one goes last.
        await bumps(store, store.remove_connector(feed.id, "internal"))
        assert await store.list_connectors(feed.id) == [first, third]
        fourth = await add_connector(store, feed.id, "internal")
        assert fourth.position > third.position
        assert [c.name for c in await store.list_connectors(feed.id)] == [
            "public",
            "mirror",
            "internal",
        ]
        await refused(store, store.remove_connector(feed.id, "nope"), Missing)
        await refused(store, store.remove_connector(other.id, "mirror"), Missing)
        # Connectors go with their feed.
        await store.delete_feed("other")
        assert await store.list_connectors(other.id) == []

    runner.run(body())


def test_a_connector_for_a_missing_feed_is_missing(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed = await store.create_feed("main", private=False)
        await refused(store, add_connector(store, feed.id + 1000, "public"), Missing)
        assert await store.list_connectors(feed.id + 1000) == []

    runner.run(body())


def test_upstream_names_are_replaced_as_a_set(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed = await store.create_feed("main", private=False)
        other = await store.create_feed("other", private=False)
        assert await store.upstream_names(feed.id) == []
        await bumps(store, store.set_upstream_names(feed.id, ["lodash", "@acme/*", "lodash"]))
        assert await store.upstream_names(feed.id) == ["@acme/*", "lodash"]
        assert await store.upstream_names(other.id) == []
        await store.set_upstream_names(other.id, ["left-pad"])
        await bumps(store, store.set_upstream_names(feed.id, ["react*"]))
        assert await store.upstream_names(feed.id) == ["react*"]
        await bumps(store, store.set_upstream_names(feed.id, []))
        assert await store.upstream_names(feed.id) == []
        assert await store.upstream_names(other.id) == ["left-pad"]
        await refused(store, store.set_upstream_names(feed.id + 1000, ["x"]), Missing)
        await refused(store, store.set_upstream_names(feed.id + 1000, []), Missing)
        await store.delete_feed("other")
        assert await store.upstream_names(other.id) == []

    runner.run(body())


def test_upstream_cache_is_kept_per_connector_without_seq_bumps(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed = await store.create_feed("main", private=False)
        public_npm = await add_connector(store, feed.id, "public")
        mirror = await add_connector(store, feed.id, "mirror")
        assert await store.get_upstream_doc(public_npm.id, "lodash") is None
        assert await store.upstream_doc_state(public_npm.id, "lodash") is None
        assert await store.get_upstream_tarball(public_npm.id, "lodash", "4.0.0") is None
        seq = await store.seq()
        doc = UpstreamDoc(200, '"etag-1"', 1700000000.25, b'{"name":"lodash"}')
        await store.put_upstream_doc(public_npm.id, "lodash", doc)
        assert await store.get_upstream_doc(public_npm.id, "lodash") == doc
        assert await store.upstream_doc_state(public_npm.id, "lodash") == (200, 1700000000.25)
        assert await store.upstream_doc_state(mirror.id, "lodash") is None
        assert await store.get_upstream_doc(mirror.id, "lodash") is None
        assert await store.get_upstream_doc(public_npm.id, "lodash-es") is None
        # Overwrite: a 404 with no etag and no body.
        gone = UpstreamDoc(404, None, 1700000100.5, b"")
        await store.put_upstream_doc(public_npm.id, "lodash", gone)
        assert await store.get_upstream_doc(public_npm.id, "lodash") == gone
        assert await store.upstream_doc_state(public_npm.id, "lodash") == (404, 1700000100.5)
        binary = UpstreamDoc(200, None, 1.0, bytes(range(256)) * 4)
        await store.put_upstream_doc(mirror.id, "lodash", binary)
        assert await store.get_upstream_doc(mirror.id, "lodash") == binary
        # The abbreviated flag is kept, and overwritten with the rest.
        short = UpstreamDoc(200, '"c"', 2.0, b'{"versions":{}}', abbreviated=True)
        await store.put_upstream_doc(mirror.id, "lodash", short)
        assert await store.get_upstream_doc(mirror.id, "lodash") == short
        await store.put_upstream_doc(mirror.id, "lodash", binary)
        assert await store.get_upstream_doc(mirror.id, "lodash") == binary
        key_1, key_2 = blob_key("lodash", "4.0.0"), blob_key("lodash", "4.0.0-b")
        await store.put_upstream_tarball(public_npm.id, "lodash", "4.0.0", key_1, 1234)
        assert await store.get_upstream_tarball(public_npm.id, "lodash", "4.0.0") == (key_1, 1234)
        assert await store.get_upstream_tarball(public_npm.id, "lodash", "4.0.1") is None
        assert await store.get_upstream_tarball(mirror.id, "lodash", "4.0.0") is None
        await store.put_upstream_tarball(public_npm.id, "lodash", "4.0.0", key_2, 99)
        assert await store.get_upstream_tarball(public_npm.id, "lodash", "4.0.0") == (key_2, 99)
        await store.put_upstream_tarball(mirror.id, "lodash", "4.0.0", key_1, 1234)
        # A cache, not a change: nothing above moved seq.
        assert await store.seq() == seq
        assert await store.referenced_blobs() == {key_1, key_2}
        # Removing a connector drops its cache (and only its cache).
        await store.remove_connector(feed.id, "public")
        assert await store.get_upstream_doc(public_npm.id, "lodash") is None
        assert await store.upstream_doc_state(public_npm.id, "lodash") is None
        assert await store.get_upstream_tarball(public_npm.id, "lodash", "4.0.0") is None
        assert await store.get_upstream_doc(mirror.id, "lodash") == binary
        assert await store.referenced_blobs() == {key_1}
        again = await add_connector(store, feed.id, "public")
        assert await store.get_upstream_doc(again.id, "lodash") is None
        # Deleting the feed drops the rest.
        await store.delete_feed("main")
        assert await store.get_upstream_doc(mirror.id, "lodash") is None
        assert await store.referenced_blobs() == set()

    runner.run(body())


def test_upstream_cache_for_a_missing_connector_is_missing(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed = await store.create_feed("main", private=False)
        connector = await add_connector(store, feed.id, "public")
        ghost = connector.id + 1000
        with pytest.raises(Missing):
            await store.put_upstream_doc(ghost, "lodash", UpstreamDoc(200, None, 1.0, b"{}"))
        with pytest.raises(Missing):
            await store.put_upstream_tarball(ghost, "lodash", "1.0.0", blob_key("l", "1"), 1)
        assert await store.get_upstream_doc(ghost, "lodash") is None
        assert await store.referenced_blobs() == set()

    runner.run(body())


# -- leases --------------------------------------------------------------------------------


def test_a_lease_has_one_holder_at_a_time(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        assert await store.acquire_lease("fetch:lodash", "worker-a", 60) is True
        assert await store.acquire_lease("fetch:lodash", "worker-b", 60) is False
        # The holder renews.
        assert await store.acquire_lease("fetch:lodash", "worker-a", 60) is True
        assert await store.acquire_lease("fetch:lodash", "worker-b", 60) is False
        # Other keys are other leases.
        assert await store.acquire_lease("fetch:react", "worker-b", 60) is True
        # Only the holder releases.
        await store.release_lease("fetch:lodash", "worker-b")
        assert await store.acquire_lease("fetch:lodash", "worker-b", 60) is False
        await store.release_lease("fetch:lodash", "worker-a")
        assert await store.acquire_lease("fetch:lodash", "worker-b", 60) is True
        assert await store.acquire_lease("fetch:lodash", "worker-a", 60) is False
        # Releasing what one does not hold, or what is not there, is fine.
        await store.release_lease("fetch:nothing", "worker-a")
        assert await store.acquire_lease("fetch:react", "worker-a", 60) is False

    runner.run(body())


def test_an_expired_lease_can_be_taken_over(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        assert await store.acquire_lease("fetch:lodash", "worker-a", 0.1) is True
        assert await store.acquire_lease("fetch:lodash", "worker-b", 60) is False
        await asyncio.sleep(0.3)
        assert await store.acquire_lease("fetch:lodash", "worker-b", 60) is True
        assert await store.acquire_lease("fetch:lodash", "worker-a", 60) is False
        # The old holder's late release does not free the new holder's lease.
        await store.release_lease("fetch:lodash", "worker-a")
        assert await store.acquire_lease("fetch:lodash", "worker-c", 60) is False

    runner.run(body())


def test_concurrent_acquires_of_one_lease_let_exactly_one_win(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        results = await asyncio.gather(
            *(store.acquire_lease("fetch:lodash", f"worker-{i}", 60) for i in range(10))
        )
        assert results.count(True) == 1
        winner = f"worker-{results.index(True)}"
        assert await store.acquire_lease("fetch:lodash", winner, 60) is True

    runner.run(body())


# -- scopes, search, listings --------------------------------------------------------------


def test_local_scopes_are_those_ever_published(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed = await store.create_feed("main", private=False)
        other = await store.create_feed("other", private=False)
        assert await store.local_scopes(feed.id) == set()
        await publish(store, feed.id, "@acme/one", "1.0.0")
        await publish(store, feed.id, "@acme/two", "1.0.0")
        await publish(store, feed.id, "@tools/cli", "1.0.0")
        await publish(store, feed.id, "plain", "1.0.0")
        await publish(store, other.id, "@elsewhere/x", "1.0.0")
        assert await store.local_scopes(feed.id) == {"@acme", "@tools"}
        await store.delete_package(feed.id, "@tools/cli", None)
        assert await store.local_scopes(feed.id) == {"@acme", "@tools"}
        assert await store.local_scopes(other.id) == {"@elsewhere"}

    runner.run(body())


SEARCH_PACKAGES: dict[str, dict[str, Any]] = {
    "lodash": {"description": "Utility library", "keywords": ["util"]},
    "lodash-es": {"description": "The same as ES modules"},
    "my-lodash-fork": {"description": "A fork"},
    "underscore": {"description": "Like lodash, but older"},
    "ramda": {"description": "Functional", "keywords": ["lodash-alternative"]},
    "grid": {"description": "Tables", "extra": {"displayName": "Super Grid"}},
    "unrelated": {"description": "Nothing to see"},
}


async def search_feed(store: MetadataStore, name: str = "main") -> tuple[int, int]:
    """A feed of SEARCH_PACKAGES, and another with a package of the same name; their ids."""
    feed = await store.create_feed(name, private=False)
    other = await store.create_feed(f"{name}-other", private=False)
    for name, fields in SEARCH_PACKAGES.items():
        await store.publish(feed.id, name, new_version(name, "1.0.0", **fields))
    await store.publish(
        feed.id, "lodash", new_version("lodash", "1.1.0", **SEARCH_PACKAGES["lodash"])
    )
    await store.publish(other.id, "lodash", new_version("lodash", "9.0.0"))
    return feed.id, other.id


def test_search_ranks_exact_then_prefix_then_contains_then_text(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed, other = await search_feed(store)
        before = await store.seq()
        for query in ("lodash", "LODASH", "  Lodash "):
            entries, total = await store.search(feed, query, size=20, offset=0)
            assert total == 5
            found = names(entries)
            assert found[:3] == ["lodash", "lodash-es", "my-lodash-fork"]
            assert sorted(found[3:]) == ["ramda", "underscore"]
        entries, _ = await store.search(feed, "lodash", size=1, offset=0)
        assert entries[0]["name"] == "lodash"
        assert entries[0]["version"] == "1.1.0"
        assert entries[0]["description"] == "Utility library"
        assert entries[0]["keywords"] == ["util"]
        # Paging through a ranked list, with the total of the whole list.
        page, total = await store.search(feed, "lodash", size=2, offset=1)
        assert (names(page), total) == (["lodash-es", "my-lodash-fork"], 5)
        page, total = await store.search(feed, "lodash", size=5, offset=5)
        assert (page, total) == ([], 5)
        # Every word must match, in any field.
        assert names((await store.search(feed, "lodash fork", size=20, offset=0))[0]) == [
            "my-lodash-fork"
        ]
        assert names((await store.search(feed, "util library", size=20, offset=0))[0]) == ["lodash"]
        assert names((await store.search(feed, "super", size=20, offset=0))[0]) == ["grid"]
        assert names((await store.search(feed, "functional", size=20, offset=0))[0]) == ["ramda"]
        assert await store.search(feed, "lodash nothing", size=20, offset=0) == ([], 0)
        assert await store.search(feed, "zzzzz", size=20, offset=0) == ([], 0)
        # Per feed.
        entries, total = await store.search(other, "lodash", size=20, offset=0)
        assert (names(entries), total) == (["lodash"], 1)
        assert entries[0]["version"] == "9.0.0"
        assert await store.seq() == before

    runner.run(body())


def test_short_and_empty_queries_list_by_name(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed, _ = await search_feed(store)
        everything = sorted(SEARCH_PACKAGES)
        for query in ("", "   "):
            entries, total = await store.search(feed, query, size=50, offset=0)
            assert (names(entries), total) == (everything, 7)
        pages = [await store.search(feed, "", size=3, offset=o) for o in (0, 3, 6, 9)]
        assert [names(p) for p, _ in pages] == [
            everything[0:3],
            everything[3:6],
            everything[6:],
            [],
        ]
        assert {total for _, total in pages} == {7}
        # Words too short for substring search match the start of the name only.
        assert (await store.search(feed, "lo", size=50, offset=0))[1] == 2
        assert names((await store.search(feed, "lo", size=50, offset=0))[0]) == [
            "lodash",
            "lodash-es",
        ]
        assert names((await store.search(feed, "M", size=50, offset=0))[0]) == ["my-lodash-fork"]
        assert await store.search(feed, "od", size=50, offset=0) == ([], 0)
        assert names((await store.search(feed, "u", size=1, offset=1))[0]) == ["unrelated"]

    runner.run(body())


def test_unpublished_packages_leave_search_and_listing(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed, _ = await search_feed(store)
        await store.delete_package(feed, "lodash-es", None)
        await store.change_package(feed, "ramda", PackageChange(deleted=frozenset({"1.0.0"})))
        entries, total = await store.search(feed, "lodash", size=20, offset=0)
        assert total == 3
        assert names(entries)[:2] == ["lodash", "my-lodash-fork"]
        assert names((await store.search(feed, "lo", size=20, offset=0))[0]) == ["lodash"]
        remaining = sorted(set(SEARCH_PACKAGES) - {"lodash-es", "ramda"})
        assert names((await store.search(feed, "", size=20, offset=0))[0]) == remaining
        assert names(await store.listing(feed, None)) == remaining
        # Republishing a new number brings a package back.
        await store.publish(feed, "ramda", new_version("ramda", "2.0.0", description="Back"))
        assert names((await store.search(feed, "ramda", size=20, offset=0))[0]) == ["ramda"]
        assert names((await store.search(feed, "functional", size=20, offset=0))[0]) == []

    runner.run(body())


def test_like_metacharacters_in_queries_are_literal(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed = (await store.create_feed("main", private=False)).id
        for name in (
            "100%done",
            "100xdone",
            "snake_case",
            "snakexcase",
            "back\\slash",
            "backxslash",
            'quo"te',
            "quoxte",
            "a_b",
            "axb",
        ):
            await store.publish(feed, name, new_version(name, "1.0.0", description="plain"))

        async def found(query: str) -> list[str]:
            entries, total = await store.search(feed, query, size=50, offset=0)
            assert total == len(entries)
            return names(entries)

        assert await found("0%d") == ["100%done"]
        assert await found("100%") == ["100%done"]
        assert await found("e_c") == ["snake_case"]
        assert await found("snake_") == ["snake_case"]
        assert await found("k\\s") == ["back\\slash"]
        assert await found("back\\") == ["back\\slash"]
        assert await found('o"t') == ['quo"te']
        # Short queries: a prefix, just as literal.
        assert await found("a_") == ["a_b"]
        assert await found("%") == []
        assert await found("_") == []
        assert await found("10") == ["100%done", "100xdone"]

    runner.run(body())


def test_a_nul_in_a_query_is_a_character(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        feed = (await store.create_feed("main", private=False)).id
        await store.publish(feed, "odd", new_version("odd", "1.0.0", description="one\x00two"))
        await store.publish(feed, "even", new_version("even", "1.0.0", description="one two"))
        for query, expected in (
            ("e\x00t", ["odd"]),
            ("one\x00two", ["odd"]),
            ("x\x00y", []),
            ("\x00", []),
            ("one two", ["even", "odd"]),
        ):
            entries, total = await store.search(feed, query, size=10, offset=0)
            assert (sorted(names(entries)), total) == (expected, len(expected))

    runner.run(body())


def test_listing_all_or_since_a_time(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        feed = await store.create_feed("main", private=False)
        other = await store.create_feed("other", private=False)
        assert await store.listing(feed.id, None) == []
        packages = {}
        for name in ("charlie", "alpha", "bravo"):
            packages[name] = await publish(store, feed.id, name, "1.0.0")
            await asyncio.sleep(0.01)  # distinct modification times (milliseconds)
        await publish(store, other.id, "zulu", "1.0.0")
        everything = await store.listing(feed.id, None)
        assert names(everything) == ["alpha", "bravo", "charlie"]
        alpha = everything[0]
        assert (alpha["version"], alpha["time"]) == (
            "1.0.0",
            {"modified": packages["alpha"].modified},
        )
        assert await store.listing(feed.id, "") == everything
        since = packages["charlie"].modified
        assert names(await store.listing(feed.id, since)) == ["alpha", "bravo"]
        assert names(await store.listing(feed.id, packages["alpha"].modified)) == ["bravo"]
        assert await store.listing(feed.id, packages["bravo"].modified) == []
        # A change is a modification.
        await store.change_package(feed.id, "charlie", PackageChange(dist_tags={"x": "1.0.0"}))
        assert names(await store.listing(feed.id, packages["bravo"].modified)) == ["charlie"]
        assert names(await store.listing(other.id, None)) == ["zulu"]

    runner.run(body())


# -- fsck views ----------------------------------------------------------------------------


def test_version_refs_cover_every_version_and_referenced_blobs_only_live_ones(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        assert await store.version_refs() == []
        assert await store.referenced_blobs() == set()
        main = (await store.create_feed("main", private=False)).id
        team = (await store.create_feed("team", private=False)).id
        integrity = "sha512-" + "A" * 86 + "=="
        await store.publish(
            main,
            "demo",
            new_version("demo", "1.0.0", extra={"dist": {"integrity": integrity}}),
        )
        await store.publish(main, "demo", new_version("demo", "1.1.0"))
        await store.publish(main, "demo", new_version("demo", "1.10.0", extra={"dist": "odd"}))
        await store.publish(team, "alpha", new_version("alpha", "2.0.0"))
        await store.publish(main, "alpha", new_version("alpha", "0.1.0"))
        await store.change_package(main, "demo", PackageChange(deleted=frozenset({"1.1.0"})))
        await store.delete_package(main, "alpha", None)
        connector = await add_connector(store, team, "public")
        await store.put_upstream_tarball(connector.id, "lodash", "4.0.0", blob_key("up", "1"), 5)
        before = await store.seq()
        assert await store.version_refs() == [
            VersionRef("main", "alpha", "0.1.0", blob_key("alpha", "0.1.0"), None, True),
            VersionRef("main", "demo", "1.0.0", blob_key("demo", "1.0.0"), integrity, False),
            VersionRef("main", "demo", "1.1.0", blob_key("demo", "1.1.0"), None, True),
            VersionRef("main", "demo", "1.10.0", blob_key("demo", "1.10.0"), None, False),
            VersionRef("team", "alpha", "2.0.0", blob_key("alpha", "2.0.0"), None, False),
        ]
        assert await store.referenced_blobs() == {
            blob_key("demo", "1.0.0"),
            blob_key("demo", "1.10.0"),
            blob_key("alpha", "2.0.0"),
            blob_key("up", "1"),
        }
        assert await store.seq() == before
        await store.delete_feed("team")
        assert {r.feed for r in await store.version_refs()} == {"main"}
        assert await store.referenced_blobs() == {
            blob_key("demo", "1.0.0"),
            blob_key("demo", "1.10.0"),
        }

    runner.run(body())


def test_count_packages_counts_live_ones(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        feed = (await store.create_feed("main", private=False)).id
        await publish(store, feed, "a", "1.0.0", "2.0.0")
        await publish(store, feed, "b", "1.0.0")
        await publish(store, feed, "c", "1.0.0")
        assert await store.count_packages(feed) == 3
        await store.change_package(feed, "a", PackageChange(deleted=frozenset({"1.0.0"})))
        assert await store.count_packages(feed) == 3
        await store.change_package(feed, "b", PackageChange(deleted=frozenset({"1.0.0"})))
        assert await store.count_packages(feed) == 2
        assert await store.count_packages(feed + 1000) == 0

    runner.run(body())


# -- dump and load -------------------------------------------------------------------------


@pytest.fixture(params=sorted(META_BACKENDS))
def store_pair(
    request: pytest.FixtureRequest, runner: asyncio.Runner, tmp_path: Path
) -> Iterator[tuple[MetadataStore, MetadataStore]]:
    """Two empty stores of one backend: a source and a target for dump and load."""
    stores = []
    try:
        for side in ("source", "target"):
            folder = tmp_path / side
            folder.mkdir()
            stores.append(runner.run(META_BACKENDS[request.param](folder)))
        yield stores[0], stores[1]
    finally:
        for store in stores:
            runner.run(store.close())


async def fill(store: MetadataStore) -> None:
    """A store with a bit of everything a dump holds."""
    team = await store.create_feed("team", private=True)
    main = await store.create_feed("main", private=False)
    await store.set_upstream_names(main.id, ["lodash", "@acme/*"])
    bob = await add_user(store, "bob")
    alice = await add_user(store, "alice", admin=True)
    await store.update_user(
        alice.id, {"totp_secret": "JBSWY3DPEHPK3PXP", "recovery_hashes": ["r1", "r2"]}
    )
    await add_token(
        store,
        alice.id,
        "key-a",
        read_only=True,
        feeds=["team"],
        cidrs=["10.0.0.0/8"],
        expires=1900000000.5,
        prefix="ent_a",
    )
    await add_token(store, bob.id, "key-b")
    await add_token(store, bob.id, "key-old")
    await store.revoke_token("key-old")
    await store.set_role(team.id, bob.id, "publisher")
    await store.set_role(team.id, alice.id, "owner")
    await store.set_role(main.id, bob.id, "reader")
    await store.set_role(main.id, alice.id, "publisher")
    await store.add_connector(
        main.id,
        name="public",
        url="http://127.0.0.1:9/",
        credential_kind="basic",
        credential_env="NPM_AUTH",
        allow=["*"],
        block=["evil"],
        min_age_hours=24.0,
        ttl=60,
    )
    await add_connector(store, main.id, "internal", allow_internal=True)
    await add_connector(store, team.id, "mirror")
    await publish(store, team.id, "secret", "1.0.0")
    await publish(store, main.id, "demo", "1.0.0", "1.1.0", "2.0.0")
    await store.publish(main.id, "demo", new_version("demo", "3.0.0-rc.1", tag="next"))
    await store.change_package(
        main.id,
        "demo",
        PackageChange(
            deleted=frozenset({"1.1.0"}),
            manifests={"1.0.0": {"name": "demo", "version": "1.0.0", "deprecated": "old"}},
        ),
    )
    await publish(store, main.id, "@acme/gone", "1.0.0")
    await store.delete_package(main.id, "@acme/gone", None)


def canonical(dump: Mapping[str, Any]) -> dict[str, Any]:
    """A dump with its lists in name order (rows added in another order get other ids)."""
    out = copy.deepcopy(dict(dump))
    out["roles"] = sorted(out["roles"], key=lambda r: (r["feed"], r["user"]))
    out["connectors"] = sorted(out["connectors"], key=lambda c: (c["feed"], c["position"]))
    out["packages"] = sorted(out["packages"], key=lambda p: (p["feed"], p["name"]))
    return out


def test_dump_is_keyed_by_names(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        await fill(store)
        before = await store.seq()
        dump = await store.dump()
        assert await store.seq() == before
        assert dump["format"] == 1
        feeds = {f["name"]: f for f in dump["feeds"]}
        team = await store.get_feed("team")
        assert team is not None
        assert feeds["team"] == {
            "name": "team",
            "private": True,
            "created": team.created,
            "upstream_names": [],
        }
        assert feeds["main"]["upstream_names"] == ["@acme/*", "lodash"]
        assert [f["name"] for f in dump["feeds"]] == ["main", "team"]
        alice = await store.get_user("alice")
        assert alice is not None
        assert dump["users"][0] == {
            "name": "alice",
            "email": "alice@example.test",
            "password_hash": "hash-alice",
            "admin": True,
            "created": alice.created,
            "totp_secret": "JBSWY3DPEHPK3PXP",
            "totp_pending": None,
            "recovery_hashes": ["r1", "r2"],
        }
        assert [u["name"] for u in dump["users"]] == ["alice", "bob"]
        token = await store.find_token("hash-of-key-a")
        assert token is not None
        assert dump["tokens"][0] == {
            "key": "key-a",
            "user": "alice",
            "secret_hash": "hash-of-key-a",
            "read_only": True,
            "feeds": ["team"],
            "cidrs": ["10.0.0.0/8"],
            "expires": 1900000000.5,
            "created": token.created,
            "description": "token key-a",
            "revoked": False,
            "prefix": "ent_a",
        }
        assert [(t["key"], t["user"], t["revoked"]) for t in dump["tokens"]] == [
            ("key-a", "alice", False),
            ("key-b", "bob", False),
            ("key-old", "bob", True),
        ]
        assert sorted((r["feed"], r["user"], r["role"]) for r in dump["roles"]) == [
            ("main", "alice", "publisher"),
            ("main", "bob", "reader"),
            ("team", "alice", "owner"),
            ("team", "bob", "publisher"),
        ]
        connectors = canonical(dump)["connectors"]
        assert [(c["feed"], c["name"], c["position"]) for c in connectors] == [
            ("main", "public", 1),
            ("main", "internal", 2),
            ("team", "mirror", 1),
        ]
        assert connectors[0] == {
            "feed": "main",
            "name": "public",
            "position": 1,
            "url": "http://127.0.0.1:9/",
            "credential_kind": "basic",
            "credential_env": "NPM_AUTH",
            "allow": ["*"],
            "block": ["evil"],
            "min_age_hours": 24.0,
            "ttl": 60,
            "allow_internal": False,
        }
        assert connectors[1]["allow_internal"] is True
        packages = {(p["feed"], p["name"]): p for p in dump["packages"]}
        assert set(packages) == {("main", "demo"), ("main", "@acme/gone"), ("team", "secret")}
        demo = packages[("main", "demo")]
        stored = await store.get_package((await store.get_feed("main") or pytest.fail()).id, "demo")
        assert stored is not None
        assert {k: demo[k] for k in ("rev", "created", "modified", "readme")} == {
            "rev": stored.rev,
            "created": stored.created,
            "modified": stored.modified,
            "readme": stored.readme,
        }
        assert demo["dist_tags"] == stored.dist_tags == {"latest": "2.0.0", "next": "3.0.0-rc.1"}
        assert demo["maintainers"] == [ALICE]
        versions = {v["version"]: v for v in demo["versions"]}
        assert sorted(versions) == ["1.0.0", "1.1.0", "2.0.0", "3.0.0-rc.1"]
        assert versions["1.0.0"]["manifest"] == {
            "name": "demo",
            "version": "1.0.0",
            "deprecated": "old",
        }
        assert versions["1.0.0"]["deleted"] is None
        assert versions["1.1.0"]["deleted"] is not None
        assert versions["2.0.0"]["blob_key"] == blob_key("demo", "2.0.0")
        assert versions["2.0.0"]["size"] == 100
        assert versions["2.0.0"]["published"] == stored.versions["2.0.0"].published
        gone = packages[("main", "@acme/gone")]
        assert gone["dist_tags"] == {} and gone["versions"][0]["deleted"] is not None

    runner.run(body())


def test_dump_of_some_feeds(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        await fill(store)
        whole = await store.dump()
        dump = await store.dump(["team"])
        assert [f["name"] for f in dump["feeds"]] == ["team"]
        assert [(p["feed"], p["name"]) for p in dump["packages"]] == [("team", "secret")]
        assert {r["feed"] for r in dump["roles"]} == {"team"}
        assert [c["name"] for c in dump["connectors"]] == ["mirror"]
        # Users and tokens are not per feed: all of them, so roles and tokens resolve.
        assert dump["users"] == whole["users"]
        assert dump["tokens"] == whole["tokens"]
        nothing = await store.dump([])
        assert (nothing["feeds"], nothing["packages"], nothing["roles"]) == ([], [], [])

    runner.run(body())


def test_load_into_an_empty_store_reproduces_the_dump(
    store_pair: tuple[MetadataStore, MetadataStore], runner: asyncio.Runner
) -> None:
    async def body() -> None:
        source, target = store_pair
        await fill(source)
        dump = await source.dump()
        before = await target.seq()
        added = await target.load(dump)
        assert added == {
            "feeds": 2,
            "users": 2,
            "tokens": 3,
            "roles": 4,
            "connectors": 3,
            "packages": 3,
            "versions": 6,
        }
        assert await target.seq() > before
        assert canonical(await target.dump()) == canonical(dump)
        # The loaded store answers like the source.
        main = await target.get_feed("main")
        source_main = await source.get_feed("main")
        assert main is not None and source_main is not None
        demo = await target.get_package(main.id, "demo")
        source_demo = await source.get_package(source_main.id, "demo")
        assert demo is not None and source_demo is not None
        assert (demo.versions, demo.reserved, demo.dist_tags, demo.rev) == (
            source_demo.versions,
            source_demo.reserved,
            source_demo.dist_tags,
            source_demo.rev,
        )
        assert demo.seq == await target.package_seq(main.id, "demo")
        assert await target.listing(main.id, None) == await source.listing(source_main.id, None)
        assert await target.search(main.id, "demo", size=5, offset=0) == await source.search(
            source_main.id, "demo", size=5, offset=0
        )
        assert await target.count_packages(main.id) == 1
        assert await target.local_scopes(main.id) == {"@acme"}
        assert await target.version_refs() == await source.version_refs()
        assert await target.referenced_blobs() == await source.referenced_blobs()
        assert await target.list_roles(main.id) == [("alice", "publisher"), ("bob", "reader")]
        alice = await target.get_user("alice")
        assert alice is not None and alice.recovery_hashes == ("r1", "r2")
        token = await target.find_token("hash-of-key-a")
        assert token is not None and (token.user_id, token.feeds) == (alice.id, ("team",))
        assert [c.name for c in await target.list_connectors(main.id)] == ["public", "internal"]
        assert await target.upstream_names(main.id) == ["@acme/*", "lodash"]

    runner.run(body())


def test_loading_twice_adds_nothing(
    store_pair: tuple[MetadataStore, MetadataStore], runner: asyncio.Runner
) -> None:
    async def body() -> None:
        source, target = store_pair
        await fill(source)
        dump = await source.dump()
        await target.load(dump)
        first = await target.dump()
        seq = await target.seq()
        added = await target.load(dump)
        assert set(added.values()) == {0}
        assert await target.seq() == seq
        assert await target.dump() == first
        # Loading a store's own dump into itself adds nothing either.
        seq = await source.seq()
        assert set((await source.load(dump)).values()) == {0}
        assert await source.seq() == seq
        assert await source.dump() == dump

    runner.run(body())


def test_load_merges_by_names_and_keeps_what_exists(
    store_pair: tuple[MetadataStore, MetadataStore], runner: asyncio.Runner
) -> None:
    async def body() -> None:
        source, target = store_pair
        await fill(source)
        dump = await source.dump()
        # The target already has some of it, under other ids and with other contents.
        await target.create_user("zoe", "zoe@example.test", None, admin=False)
        alice = await target.create_user("alice", "old@example.test", None, admin=False)
        await target.create_feed("scratch", private=False)
        main = await target.create_feed("main", private=True)
        await target.set_upstream_names(main.id, ["react"])
        await target.set_role(main.id, alice.id, "owner")
        await add_token(target, alice.id, "key-a", "other-hash")
        await add_token(target, alice.id, "key-mine", "hash-of-key-b")
        await add_connector(target, main.id, "public", url="http://127.0.0.1:8/")
        await target.publish(main.id, "demo", new_version("demo", "0.9.0"))
        local = new_version("demo", "1.0.0", description="local")
        await target.publish(main.id, "demo", local)
        await target.publish(main.id, "local-only", new_version("local-only", "1.0.0"))
        before = await target.get_package(main.id, "demo")
        assert before is not None

        added = await target.load(dump)
        assert added == {
            "feeds": 1,  # team
            "users": 1,  # bob
            "tokens": 1,  # key-old (key-a exists; key-b's hash is taken)
            "roles": 3,  # alice keeps her own role on main
            "connectors": 2,  # internal, mirror
            "packages": 2,  # @acme/gone, secret
            "versions": 5,  # demo 1.1.0, 2.0.0, 3.0.0-rc.1; gone 1.0.0; secret 1.0.0
        }
        kept = await target.get_user("alice")
        assert kept is not None and (kept.id, kept.email, kept.admin) == (
            alice.id,
            "old@example.test",
            False,
        )
        assert (await target.get_feed("main") or pytest.fail()).private is True
        assert await target.upstream_names(main.id) == ["@acme/*", "lodash", "react"]
        assert await target.list_roles(main.id) == [("alice", "owner"), ("bob", "reader")]
        team = await target.get_feed("team")
        assert team is not None
        assert await target.list_roles(team.id) == [("alice", "owner"), ("bob", "publisher")]
        mine = await target.find_token("other-hash")
        assert mine is not None and mine.key == "key-a"
        assert await target.find_token("hash-of-key-a") is None
        taken = await target.find_token("hash-of-key-b")
        assert taken is not None and taken.key == "key-mine"
        old = await target.find_token("hash-of-key-old")
        assert old is not None and old.revoked and old.user_name == "bob"
        connectors = await target.list_connectors(main.id)
        assert [(c.name, c.url) for c in connectors] == [
            ("public", "http://127.0.0.1:8/"),
            ("internal", "http://127.0.0.1:9/"),
        ]
        demo = await target.get_package(main.id, "demo")
        assert demo is not None
        assert demo.reserved == {"0.9.0", "1.0.0", "1.1.0", "2.0.0", "3.0.0-rc.1"}
        assert set(demo.versions) == {"0.9.0", "1.0.0", "2.0.0", "3.0.0-rc.1"}
        assert demo.versions["1.0.0"] == before.versions["1.0.0"]  # the local one stays
        assert demo.versions["1.0.0"].manifest["description"] == "local"
        assert demo.dist_tags == before.dist_tags
        assert demo.seq > before.seq
        assert await target.find_version(main.id, "demo", "2.0.0") is not None
        assert await target.find_version(main.id, "demo", "1.1.0") is None
        hit = (await target.search(main.id, "demo", size=5, offset=0))[0][0]
        assert sorted(hit["versions"]) == ["0.9.0", "1.0.0", "2.0.0", "3.0.0-rc.1"]
        assert names(await target.listing(main.id, None)) == ["demo", "local-only"]
        assert [f.name for f in await target.list_feeds()] == ["main", "scratch", "team"]
        assert [u.name for u in await target.list_users()] == ["alice", "bob", "zoe"]
        # And a second load adds nothing more.
        assert set((await target.load(dump)).values()) == {0}

    runner.run(body())


# -- schema versions -----------------------------------------------------------------------


class _Schema:
    """How a test opens one backend's database and rewrites its schema."""

    def __init__(
        self,
        version: int,
        open_store: Callable[[bool], Coroutine[Any, Any, tuple[MetadataStore, int | None]]],
        execute: Callable[[str, Sequence[Any]], Coroutine[Any, Any, None]],
    ) -> None:
        #: The version this code writes.
        self.version = version
        #: Open with or without ``upgrade``: the store and the version it upgraded from.
        self.open = open_store
        #: Run one SQL statement (``?`` placeholders) outside any store.
        self.execute = execute


@pytest.fixture(params=sorted(META_BACKENDS))
def schema(request: pytest.FixtureRequest, tmp_path: Path) -> _Schema:
    if request.param == "sqlite":
        path = tmp_path / "entrepot.db"

        async def open_sqlite(upgrade: bool) -> tuple[MetadataStore, int | None]:
            store = sqlite.SQLiteMetadataStore(path, upgrade=upgrade)
            return store, store.upgraded_from

        async def run_sqlite(statement: str, args: Sequence[Any]) -> None:
            conn = sqlite3.connect(path)
            try:
                conn.execute(statement, args)
                conn.commit()
            finally:
                conn.close()

        return _Schema(sqlite.SCHEMA_VERSION, open_sqlite, run_sqlite)
    assert request.param == "postgres"
    url = str(request.getfixturevalue("postgres_url"))

    async def open_postgres(upgrade: bool) -> tuple[MetadataStore, int | None]:
        store = await postgres.PostgresMetadataStore.open(url, upgrade=upgrade)
        return store, store.upgraded_from

    async def run_postgres(statement: str, args: Sequence[Any]) -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(statement.replace("?", "%s"), args)

    return _Schema(postgres.SCHEMA_VERSION, open_postgres, run_postgres)


def test_schema_versions_are_checked_and_upgraded(schema: _Schema, runner: asyncio.Runner) -> None:
    """The last two migrations of every backend add the leases table and the abbreviated
    flag of cached upstream documents: a database two versions older refuses to open until
    upgraded, keeps its data through the upgrade and then has both; a newer one is refused,
    upgrade or not."""

    async def body() -> None:
        store, upgraded_from = await schema.open(False)
        assert upgraded_from is None
        await store.create_feed("main", private=False)
        connector = await add_connector(store, (await store.list_feeds())[0].id, "up")
        await store.put_upstream_doc(connector.id, "old", UpstreamDoc(200, '"e"', 1.0, b"{}"))
        await store.close()
        await schema.execute("DROP TABLE leases", ())
        await schema.execute("ALTER TABLE upstream_docs DROP COLUMN abbreviated", ())
        set_version = "UPDATE meta SET value = ? WHERE key = 'schema_version'"
        await schema.execute(set_version, (schema.version - 2,))
        with pytest.raises(SchemaMismatch, match="entrepot db upgrade"):
            await schema.open(False)
        store, upgraded_from = await schema.open(True)
        try:
            assert upgraded_from == schema.version - 2
            assert [f.name for f in await store.list_feeds()] == ["main"]
            assert await store.acquire_lease("k", "me", 60) is True
            assert await store.acquire_lease("k", "you", 60) is False
            old = await store.get_upstream_doc(connector.id, "old")
            assert old == UpstreamDoc(200, '"e"', 1.0, b"{}", abbreviated=False)
            short = UpstreamDoc(200, '"c"', 2.0, b'{"versions":{}}', abbreviated=True)
            await store.put_upstream_doc(connector.id, "new", short)
            assert await store.get_upstream_doc(connector.id, "new") == short
        finally:
            await store.close()
        store, upgraded_from = await schema.open(False)
        assert upgraded_from is None
        await store.close()
        await schema.execute(set_version, (schema.version + 1,))
        for upgrade in (False, True):
            with pytest.raises(SchemaMismatch, match="newer"):
                await schema.open(upgrade)

    runner.run(body())


# -- the backends side by side -------------------------------------------------------------


@pytest.fixture
def all_stores(runner: asyncio.Runner, tmp_path: Path) -> Iterator[dict[str, MetadataStore]]:
    """One empty store of every backend, for tests that compare their answers."""
    stores: dict[str, MetadataStore] = {}
    try:
        for name, opener in sorted(META_BACKENDS.items()):
            folder = tmp_path / name
            folder.mkdir()
            stores[name] = runner.run(opener(folder))
        yield stores
    finally:
        for store in stores.values():
            runner.run(store.close())


def _anonymous(value: Any) -> Any:
    """Answers without what legitimately differs between backends: time stamps and ids."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"<type>": type(value).__name__, **_anonymous(dataclasses.asdict(value))}
    if isinstance(value, dict):
        return {
            k: "<time>"
            if k in {"created", "modified", "published", "date", "deleted"} and isinstance(v, str)
            else _anonymous(v)
            for k, v in value.items()
            if k not in {"id", "feed_id", "user_id"}
        }
    if isinstance(value, list | tuple):
        return [_anonymous(v) for v in value]
    return value


def _ranked(
    answer: tuple[list[dict[str, Any]], int], query: str
) -> tuple[list[dict[str, Any]], int]:
    """A search answer in rank order (exact name, prefix, contains, the rest), checked to be
    in that order already, with ties by name: how a backend orders within "the rest" (its
    own relevance measure) is its own business."""
    phrase = " ".join(query.lower().split())

    def rank(entry: Mapping[str, Any]) -> int:
        name = str(entry["name"])
        return 0 if name == phrase else 1 if name.startswith(phrase) else 2 if phrase in name else 3

    entries, total = answer
    ranks = [rank(e) for e in entries]
    assert ranks == sorted(ranks), f"{query!r}: {names(entries)} are not ranked"
    return sorted(entries, key=lambda e: (rank(e), e["name"])), total


async def _script(store: MetadataStore) -> list[Any]:
    """The same calls for every backend; what they answered, in order."""
    answers: list[Any] = []

    async def ask(call: Awaitable[Any]) -> None:
        try:
            answers.append(await call)
        except Exception as exc:  # the error class is the answer
            answers.append(type(exc).__name__)

    await fill(store)
    feed, _ = await search_feed(store, "search")
    main = (await store.get_feed("main") or pytest.fail()).id
    for query in ("lodash", "lodash fork", "util", "lo", "", "LODASH", "a%", "zzz", "es modules"):
        answers.append(_ranked(await store.search(feed, query, size=50, offset=0), query))
    await ask(store.search(feed, "", size=2, offset=3))
    await ask(store.listing(feed, None))
    await ask(store.newest_packages(main, size=10, offset=0))
    await ask(store.local_scopes(main))
    await ask(store.count_packages(main))
    await ask(store.list_roles(main))
    await ask(store.upstream_names(main))
    await ask(store.version_refs())
    await ask(store.referenced_blobs())
    await ask(store.list_tokens())
    await ask(store.list_users())
    await ask(store.list_feeds())
    await ask(store.get_package(main, "demo"))
    alice = await store.get_user("alice")
    assert alice is not None
    await ask(store.create_feed("main", private=False))
    await ask(store.create_user("alice", "x", None, admin=False))
    await ask(add_token(store, alice.id, "key-a"))
    await ask(add_token(store, alice.id + 1000, "key-z"))
    await ask(store.set_role(main, alice.id + 1000, "reader"))
    await ask(store.set_role(main, alice.id, "boss"))
    await ask(store.update_user(alice.id + 1000, {}))
    await ask(store.update_user(alice.id, {"name": "x"}))
    await ask(add_connector(store, main, "public"))
    await ask(add_connector(store, main + 1000, "public"))
    await ask(store.set_upstream_names(main + 1000, []))
    await ask(store.remove_connector(main, "nope"))
    await ask(store.publish(main, "demo", new_version("demo", "1.1.0")))
    await ask(store.change_package(main, "nope", PackageChange()))
    await ask(store.use_totp_step(alice.id, 10))
    await ask(store.use_totp_step(alice.id, 10))
    await ask(store.acquire_lease("k", "a", 60))
    await ask(store.acquire_lease("k", "b", 60))
    await ask(store.dump())
    return [_anonymous(a) for a in answers]


def test_every_backend_gives_the_same_answers(
    all_stores: dict[str, MetadataStore], runner: asyncio.Runner
) -> None:
    async def body() -> None:
        answers = {name: await _script(store) for name, store in all_stores.items()}
        (first, expected), *others = answers.items()
        for name, got in others:
            for i, (a, b) in enumerate(zip(expected, got, strict=True)):
                assert a == b, f"answer {i}: {first} says {a!r}, {name} says {b!r}"

    runner.run(body())
