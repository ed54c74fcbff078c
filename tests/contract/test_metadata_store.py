"""The MetadataStore contract: every backend in ``META_BACKENDS`` must pass all of it."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable

import pytest

from entrepot.storage.base import (
    AlreadyExists,
    MetadataStore,
    Missing,
    NewVersion,
    Package,
    PackageChange,
    StaleRevision,
    User,
)

ALICE = {"name": "alice", "email": "alice@example.test"}
BOB = {"name": "bob", "email": "bob@example.test"}


def blob_key(name: str, version: str) -> str:
    return hashlib.sha512(f"{name}@{version}".encode()).hexdigest()


def new_version(
    name: str,
    version: str,
    *,
    tag: str = "latest",
    readme: str = "",
    maintainer: dict[str, str] | None = None,
) -> NewVersion:
    return NewVersion(
        version=version,
        manifest={"name": name, "version": version, "dist": {"shasum": "0" * 40}},
        blob_key=blob_key(name, version),
        size=123,
        tag=tag,
        readme=readme or f"readme of {version}",
        maintainer=maintainer or ALICE,
    )


async def feed_id(store: MetadataStore, name: str = "main") -> int:
    return (await store.create_feed(name, private=False)).id


async def publish_all(store: MetadataStore, feed: int, name: str, *versions: str) -> Package:
    package: Package | None = None
    for version in versions:
        package = await store.publish(feed, name, new_version(name, version))
    assert package is not None
    return package


async def bumps(store: MetadataStore, write: Awaitable[object]) -> None:
    before = await store.seq()
    await write
    assert await store.seq() > before


async def unchanged(store: MetadataStore, write: Awaitable[object], error: type[Exception]) -> None:
    """The write is refused with ``error`` and leaves no trace: seq does not move."""
    before = await store.seq()
    with pytest.raises(error):
        await write
    assert await store.seq() == before


# -- seq -----------------------------------------------------------------------------------


def test_seq_increases_on_every_write(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        await bumps(store, store.create_feed("main", private=False))
        feed = await store.get_feed("main")
        assert feed is not None
        await bumps(store, store.create_user("alice", "alice@example.test", None, admin=False))
        await bumps(store, store.set_password("alice", "hash-2"))
        user = await store.get_user("alice")
        assert user is not None
        await bumps(
            store,
            store.create_token(
                user_id=user.id,
                key="k1",
                secret_hash="h1",
                read_only=False,
                feeds=[],
                cidrs=[],
                expires=None,
                description="",
            ),
        )
        await bumps(store, store.revoke_token("k1"))
        await bumps(store, store.publish(feed.id, "demo", new_version("demo", "1.0.0")))
        await bumps(store, store.publish(feed.id, "demo", new_version("demo", "1.1.0")))
        await bumps(store, store.change_package(feed.id, "demo", PackageChange()))
        await bumps(
            store,
            store.change_package(feed.id, "demo", PackageChange(deleted=frozenset({"1.0.0"}))),
        )
        await bumps(store, store.delete_package(feed.id, "demo", None))
        await bumps(store, store.delete_feed("main"))

    runner.run(body())


def test_seq_never_moves_on_reads(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        feed = await feed_id(store)
        user = await store.create_user("alice", "alice@example.test", "hash", admin=True)
        await store.create_token(
            user_id=user.id,
            key="k1",
            secret_hash="h1",
            read_only=False,
            feeds=["main"],
            cidrs=[],
            expires=None,
            description="",
        )
        await publish_all(store, feed, "demo", "1.0.0")
        before = await store.seq()
        for _ in range(2):
            await store.get_feed("main")
            await store.get_feed("nope")
            await store.list_feeds()
            await store.count_packages(feed)
            await store.get_user("alice")
            await store.get_user_by_id(user.id)
            await store.list_users()
            await store.find_token("h1")
            await store.list_tokens()
            await store.list_tokens(user.id)
            await store.get_package(feed, "demo")
            await store.get_package(feed, "nope")
            await store.find_version(feed, "demo", "1.0.0")
            await store.package_seq(feed, "demo")
            await store.referenced_blobs()
            assert await store.seq() == before

    runner.run(body())


def test_seq_does_not_move_on_refused_writes(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed = await feed_id(store)
        await store.create_user("alice", "alice@example.test", None, admin=False)
        package = await publish_all(store, feed, "demo", "1.0.0", "1.1.0")
        await unchanged(store, store.create_feed("main", private=True), AlreadyExists)
        await unchanged(store, store.delete_feed("nope"), Missing)
        await unchanged(store, store.create_user("alice", "x@y.z", None, admin=True), AlreadyExists)
        await unchanged(store, store.set_password("nobody", "h"), Missing)
        await unchanged(
            store, store.publish(feed, "demo", new_version("demo", "1.0.0")), AlreadyExists
        )
        stale = PackageChange(expected_rev=package.rev - 1, deleted=frozenset({"1.0.0"}))
        await unchanged(store, store.change_package(feed, "demo", stale), StaleRevision)
        await unchanged(store, store.change_package(feed, "nope", PackageChange()), Missing)
        await unchanged(store, store.delete_package(feed, "demo", package.rev + 5), StaleRevision)
        await unchanged(store, store.delete_package(feed, "nope", None), Missing)
        before = await store.seq()
        assert await store.revoke_token("no-such-key") is False
        assert await store.seq() == before

    runner.run(body())


# -- feeds ---------------------------------------------------------------------------------


def test_feeds(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        assert await store.list_feeds() == []
        main = await store.create_feed("main", private=False)
        team = await store.create_feed("team", private=True)
        alpha = await store.create_feed("alpha", private=False)
        assert (main.name, main.private) == ("main", False)
        assert (team.name, team.private) == ("team", True)
        assert len({main.id, team.id, alpha.id}) == 3
        assert main.created
        assert await store.get_feed("main") == main
        assert await store.get_feed("team") == team
        assert await store.get_feed("nope") is None
        assert await store.get_feed("MAIN") is None
        assert [f.name for f in await store.list_feeds()] == ["alpha", "main", "team"]
        await store.delete_feed("team")
        assert await store.get_feed("team") is None
        assert [f.name for f in await store.list_feeds()] == ["alpha", "main"]
        with pytest.raises(Missing):
            await store.delete_feed("team")

    runner.run(body())


def test_duplicate_feed_is_refused(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        first = await meta_store.create_feed("main", private=False)
        with pytest.raises(AlreadyExists):
            await meta_store.create_feed("main", private=True)
        assert await meta_store.get_feed("main") == first
        assert len(await meta_store.list_feeds()) == 1

    runner.run(body())


def test_deleting_a_feed_deletes_its_packages(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        old = await feed_id(store)
        other = await feed_id(store, "other")
        await publish_all(store, old, "demo", "1.0.0")
        await publish_all(store, other, "demo", "2.0.0")
        await store.delete_feed("main")
        assert await store.get_package(old, "demo") is None
        assert await store.find_version(old, "demo", "1.0.0") is None
        again = await feed_id(store)
        assert await store.get_package(again, "demo") is None
        # The reuse rule is per feed: a new feed of the same name starts empty.
        await publish_all(store, again, "demo", "1.0.0")
        assert set((await store.get_package(other, "demo") or pytest.fail()).versions) == {"2.0.0"}

    runner.run(body())


def test_count_packages(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        feed = await feed_id(store)
        other = await feed_id(store, "other")
        assert await store.count_packages(feed) == 0
        await publish_all(store, feed, "a", "1.0.0", "1.1.0")
        await publish_all(store, feed, "b", "1.0.0")
        await publish_all(store, other, "c", "1.0.0")
        assert await store.count_packages(feed) == 2
        await store.delete_package(feed, "b", None)
        assert await store.count_packages(feed) == 1
        assert await store.count_packages(other) == 1

    runner.run(body())


# -- users ---------------------------------------------------------------------------------


def test_users(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        assert await store.list_users() == []
        bob = await store.create_user("bob", "bob@example.test", "hash-b", admin=False)
        alice = await store.create_user("alice", "alice@example.test", None, admin=True)
        assert isinstance(alice, User)
        assert (alice.name, alice.email, alice.password_hash, alice.admin) == (
            "alice",
            "alice@example.test",
            None,
            True,
        )
        assert (bob.password_hash, bob.admin) == ("hash-b", False)
        assert alice.id != bob.id
        assert await store.get_user("alice") == alice
        assert await store.get_user_by_id(bob.id) == bob
        assert await store.get_user("carol") is None
        assert await store.get_user_by_id(max(alice.id, bob.id) + 100) is None
        assert [u.name for u in await store.list_users()] == ["alice", "bob"]
        await store.set_password("alice", "hash-a")
        changed = await store.get_user("alice")
        assert changed is not None and changed.password_hash == "hash-a"
        assert changed.id == alice.id and changed.email == alice.email
        with pytest.raises(Missing):
            await store.set_password("carol", "x")

    runner.run(body())


def test_duplicate_user_is_refused(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        first = await meta_store.create_user("alice", "alice@example.test", "h", admin=False)
        with pytest.raises(AlreadyExists):
            await meta_store.create_user("alice", "other@example.test", None, admin=True)
        assert await meta_store.get_user("alice") == first

    runner.run(body())


# -- tokens --------------------------------------------------------------------------------


def test_tokens(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        alice = await store.create_user("alice", "alice@example.test", None, admin=False)
        bob = await store.create_user("bob", "bob@example.test", None, admin=False)
        expires = time.time() + 3600
        t1 = await store.create_token(
            user_id=alice.id,
            key="key-1",
            secret_hash="hash-1",
            read_only=True,
            feeds=["main", "team"],
            cidrs=["10.0.0.0/8"],
            expires=expires,
            description="ci",
        )
        assert (t1.key, t1.user_id, t1.user_name) == ("key-1", alice.id, "alice")
        assert (t1.read_only, t1.feeds, t1.cidrs) == (True, ("main", "team"), ("10.0.0.0/8",))
        assert t1.expires == pytest.approx(expires)
        assert (t1.description, t1.revoked) == ("ci", False)
        assert t1.created
        t2 = await store.create_token(
            user_id=bob.id,
            key="key-2",
            secret_hash="hash-2",
            read_only=False,
            feeds=[],
            cidrs=[],
            expires=None,
            description="",
        )
        assert (t2.feeds, t2.cidrs, t2.expires) == ((), (), None)
        assert await store.find_token("hash-1") == t1
        assert await store.find_token("hash-2") == t2
        assert await store.find_token("hash-3") is None
        assert [t.key for t in await store.list_tokens()] == ["key-1", "key-2"]
        assert [t.key for t in await store.list_tokens(alice.id)] == ["key-1"]
        assert [t.key for t in await store.list_tokens(bob.id)] == ["key-2"]

        assert await store.revoke_token("key-1") is True
        assert await store.revoke_token("key-1") is False
        assert await store.revoke_token("key-404") is False
        revoked = await store.find_token("hash-1")
        assert revoked is not None and revoked.revoked is True and revoked.key == "key-1"
        assert [t.key for t in await store.list_tokens()] == ["key-2"]
        assert await store.list_tokens(alice.id) == []

    runner.run(body())


# -- packages ------------------------------------------------------------------------------


def test_publish_then_read(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        feed = await feed_id(store)
        assert await store.get_package(feed, "demo") is None
        assert await store.package_seq(feed, "demo") is None
        assert await store.find_version(feed, "demo", "1.0.0") is None
        published = await store.publish(feed, "demo", new_version("demo", "1.0.0", readme="hi"))
        assert published.name == "demo" and published.feed_id == feed
        assert set(published.versions) == {"1.0.0"}
        assert published.reserved == frozenset({"1.0.0"})
        assert published.dist_tags == {"latest": "1.0.0"}
        assert list(published.maintainers) == [ALICE]
        assert published.readme == "hi"
        assert published.seq == await store.seq()
        assert published.created and published.modified
        assert await store.get_package(feed, "demo") == published
        assert await store.package_seq(feed, "demo") == published.seq

        version = await store.find_version(feed, "demo", "1.0.0")
        assert version is not None
        assert version == published.versions["1.0.0"]
        assert version.manifest == {
            "name": "demo",
            "version": "1.0.0",
            "dist": {"shasum": "0" * 40},
        }
        assert (version.blob_key, version.size) == (blob_key("demo", "1.0.0"), 123)
        assert version.published
        assert await store.find_version(feed, "demo", "1.0.1") is None
        assert await store.find_version(feed + 1000, "demo", "1.0.0") is None

    runner.run(body())


def test_every_change_moves_rev_and_package_seq(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed = await feed_id(store)
        one = await publish_all(store, feed, "demo", "1.0.0")
        await publish_all(store, feed, "other", "1.0.0")
        assert await store.package_seq(feed, "demo") == one.seq  # others' writes do not count
        two = await publish_all(store, feed, "demo", "1.1.0")
        three = await store.change_package(feed, "demo", PackageChange(dist_tags={"x": "1.0.0"}))
        assert one.rev < two.rev < three.rev
        assert one.seq < two.seq < three.seq
        assert await store.package_seq(feed, "demo") == three.seq

    runner.run(body())


def test_packages_are_per_feed(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        main = await feed_id(store)
        team = await feed_id(store, "team")
        await publish_all(store, main, "demo", "1.0.0")
        await publish_all(store, team, "demo", "1.0.0", "2.0.0")
        main_pkg = await store.get_package(main, "demo")
        team_pkg = await store.get_package(team, "demo")
        assert main_pkg is not None and team_pkg is not None
        assert set(main_pkg.versions) == {"1.0.0"}
        assert set(team_pkg.versions) == {"1.0.0", "2.0.0"}

    runner.run(body())


def test_publishing_an_existing_version_is_refused(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed = await feed_id(store)
        before = await publish_all(store, feed, "demo", "1.0.0")
        again = new_version("demo", "1.0.0", tag="beta", readme="changed")
        with pytest.raises(AlreadyExists):
            await store.publish(feed, "demo", again)
        assert await store.get_package(feed, "demo") == before

    runner.run(body())


def test_a_deleted_version_stays_reserved(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed = await feed_id(store)
        await publish_all(store, feed, "demo", "1.0.0", "1.1.0")
        after = await store.change_package(
            feed, "demo", PackageChange(deleted=frozenset({"1.1.0"}))
        )
        assert set(after.versions) == {"1.0.0"}
        assert after.reserved == frozenset({"1.0.0", "1.1.0"})
        assert await store.find_version(feed, "demo", "1.1.0") is None
        with pytest.raises(AlreadyExists):
            await store.publish(feed, "demo", new_version("demo", "1.1.0"))
        assert await store.get_package(feed, "demo") == after
        # The number stays reserved; the tarball is free for gc (a leaked secret goes).
        assert blob_key("demo", "1.1.0") not in await store.referenced_blobs()
        assert blob_key("demo", "1.0.0") in await store.referenced_blobs()

    runner.run(body())


def test_delete_package_reserves_every_version(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed = await feed_id(store)
        package = await publish_all(store, feed, "demo", "1.0.0", "1.1.0", "2.0.0-rc.1")
        await store.delete_package(feed, "demo", package.rev)
        after = await store.get_package(feed, "demo")
        assert after is not None
        assert after.versions == {}
        assert after.dist_tags == {}
        assert after.reserved == frozenset({"1.0.0", "1.1.0", "2.0.0-rc.1"})
        for version in ("1.0.0", "1.1.0", "2.0.0-rc.1"):
            assert await store.find_version(feed, "demo", version) is None
            with pytest.raises(AlreadyExists):
                await store.publish(feed, "demo", new_version("demo", version))
        referenced = await store.referenced_blobs()
        assert not {blob_key("demo", v) for v in after.reserved} & referenced
        # A number never used before is still free, and becomes latest.
        revived = await store.publish(feed, "demo", new_version("demo", "3.0.0", tag="beta"))
        assert set(revived.versions) == {"3.0.0"}
        assert revived.dist_tags["latest"] == "3.0.0"

    runner.run(body())


def test_stale_expected_rev_is_refused(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        feed = await feed_id(store)
        old = await publish_all(store, feed, "demo", "1.0.0")
        current = await publish_all(store, feed, "demo", "1.1.0")
        for change in (
            PackageChange(expected_rev=old.rev, deleted=frozenset({"1.0.0"})),
            PackageChange(expected_rev=old.rev, dist_tags={"latest": "1.0.0"}),
            PackageChange(expected_rev=current.rev + 1, maintainers=[BOB]),
        ):
            with pytest.raises(StaleRevision):
                await store.change_package(feed, "demo", change)
        with pytest.raises(StaleRevision):
            await store.delete_package(feed, "demo", old.rev)
        assert await store.get_package(feed, "demo") == current
        done = await store.change_package(
            feed, "demo", PackageChange(expected_rev=current.rev, deleted=frozenset({"1.0.0"}))
        )
        assert set(done.versions) == {"1.1.0"}

    runner.run(body())


def test_change_or_delete_of_a_missing_package(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        feed = await feed_id(meta_store)
        with pytest.raises(Missing):
            await meta_store.change_package(feed, "nope", PackageChange())
        with pytest.raises(Missing):
            await meta_store.delete_package(feed, "nope", None)

    runner.run(body())


def test_dist_tags_on_publish(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        feed = await feed_id(store)
        first = await store.publish(feed, "demo", new_version("demo", "1.0.0-beta.1", tag="beta"))
        # The first version is latest whatever its tag: clients need dist-tags.latest.
        assert first.dist_tags == {"beta": "1.0.0-beta.1", "latest": "1.0.0-beta.1"}
        second = await store.publish(feed, "demo", new_version("demo", "1.0.0"))
        assert second.dist_tags == {"beta": "1.0.0-beta.1", "latest": "1.0.0"}
        third = await store.publish(feed, "demo", new_version("demo", "2.0.0-rc.1", tag="next"))
        assert third.dist_tags == {"beta": "1.0.0-beta.1", "latest": "1.0.0", "next": "2.0.0-rc.1"}

    runner.run(body())


def test_readme_follows_latest(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        feed = await feed_id(store)
        await store.publish(feed, "demo", new_version("demo", "1.0.0", readme="one"))
        beta = await store.publish(
            feed, "demo", new_version("demo", "2.0.0-beta.1", tag="beta", readme="beta")
        )
        assert beta.readme == "one"
        latest = await store.publish(feed, "demo", new_version("demo", "1.1.0", readme="two"))
        assert latest.readme == "two"

    runner.run(body())


def test_maintainers_are_added_once(meta_store: MetadataStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = meta_store
        feed = await feed_id(store)
        await store.publish(feed, "demo", new_version("demo", "1.0.0"))
        await store.publish(feed, "demo", new_version("demo", "1.1.0", maintainer=BOB))
        package = await store.publish(feed, "demo", new_version("demo", "1.2.0"))
        assert list(package.maintainers) == [ALICE, BOB]
        changed = await store.change_package(feed, "demo", PackageChange(maintainers=[BOB]))
        assert list(changed.maintainers) == [BOB]

    runner.run(body())


def test_dist_tags_pointing_at_deleted_versions_are_dropped(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed = await feed_id(store)
        await publish_all(store, feed, "demo", "1.0.0", "1.1.0")
        await store.publish(feed, "demo", new_version("demo", "2.0.0-beta.1", tag="beta"))
        tagged = await store.change_package(
            feed,
            "demo",
            PackageChange(dist_tags={"latest": "1.1.0", "beta": "2.0.0-beta.1", "old": "1.0.0"}),
        )
        assert tagged.dist_tags == {"latest": "1.1.0", "beta": "2.0.0-beta.1", "old": "1.0.0"}
        after = await store.change_package(
            feed, "demo", PackageChange(deleted=frozenset({"2.0.0-beta.1", "1.0.0"}))
        )
        assert after.dist_tags == {"latest": "1.1.0"}
        # Tags sent with the same change that point at a deleted version are dropped too.
        sent = await store.change_package(
            feed,
            "demo",
            PackageChange(dist_tags={"latest": "1.1.0", "gone": "1.0.0"}),
        )
        assert sent.dist_tags == {"latest": "1.1.0"}

    runner.run(body())


def test_change_replaces_manifests_of_live_versions_only(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed = await feed_id(store)
        await publish_all(store, feed, "demo", "1.0.0", "1.1.0")
        await store.change_package(feed, "demo", PackageChange(deleted=frozenset({"1.1.0"})))
        deprecated = {"name": "demo", "version": "1.0.0", "deprecated": "use 2"}
        after = await store.change_package(
            feed,
            "demo",
            PackageChange(manifests={"1.0.0": deprecated, "1.1.0": {"name": "demo"}}),
        )
        assert after.versions["1.0.0"].manifest == deprecated
        assert "1.1.0" not in after.versions
        found = await store.find_version(feed, "demo", "1.0.0")
        assert found is not None and found.manifest == deprecated
        assert found.blob_key == blob_key("demo", "1.0.0")

    runner.run(body())


def test_concurrent_publishes_of_one_version_let_exactly_one_win(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        store = meta_store
        feed = await feed_id(store)
        results = await asyncio.gather(
            *(store.publish(feed, "demo", new_version("demo", "1.0.0")) for _ in range(8)),
            return_exceptions=True,
        )
        assert sum(isinstance(r, Package) for r in results) == 1
        assert all(isinstance(r, Package | AlreadyExists) for r in results)

    runner.run(body())
