"""PostgreSQL under concurrency: many store instances (each with its own connection pool, as
separate server processes would have) writing to one database at once."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from entrepot.auth import Authenticator, hash_token, new_token_secret
from entrepot.errors import Unauthorized
from entrepot.npm.semver import parse_version
from entrepot.storage import postgres as postgres_store
from entrepot.storage.base import (
    AlreadyExists,
    NewVersion,
    Package,
    SchemaMismatch,
    UpstreamDoc,
    tags_after_publish,
)
from entrepot.storage.postgres import SCHEMA_VERSION, PostgresMetadataStore


def new_version(version: str, tag: str = "latest") -> NewVersion:
    return NewVersion(
        version=version,
        manifest={"name": "demo", "version": version},
        blob_key=f"{version:0>128}",
        size=1,
        tag=tag,
        readme=f"readme of {version}",
        maintainer={"name": "alice", "email": "alice@example.test"},
    )


async def open_many(url: str, count: int) -> list[PostgresMetadataStore]:
    # All at once on an empty database: they race to create the schema too.
    return list(
        await asyncio.gather(
            *(PostgresMetadataStore.open(url, min_size=1, max_size=2) for _ in range(count))
        )
    )


async def close_all(stores: list[PostgresMetadataStore]) -> None:
    await asyncio.gather(*(store.close() for store in stores))


def test_one_version_published_from_20_stores_at_once_wins_once(
    postgres_url: str, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        stores = await open_many(postgres_url, 20)
        try:
            feed = (await stores[0].create_feed("main", private=False)).id
            before = await stores[0].seq()
            results = await asyncio.gather(
                *(store.publish(feed, "demo", new_version("1.0.0")) for store in stores),
                return_exceptions=True,
            )
            winners = [r for r in results if isinstance(r, Package)]
            assert len(winners) == 1
            assert all(isinstance(r, AlreadyExists) for r in results if r is not winners[0])
            # The refused publishes left no trace: one bump, one version, rev 1.
            assert await stores[-1].seq() == before + 1
            package = await stores[-1].get_package(feed, "demo")
            assert package == winners[0]
            assert package.rev == 1 and set(package.versions) == {"1.0.0"}
        finally:
            await close_all(stores)

    runner.run(body())


def test_50_versions_published_through_2_stores_at_once_all_land(
    postgres_url: str, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        stores = await open_many(postgres_url, 2)
        try:
            feed = (await stores[0].create_feed("main", private=False)).id
            tag_of = {f"1.0.{i}": "latest" if i % 2 == 0 else f"t{i}" for i in range(50)}
            results = await asyncio.gather(
                *(
                    stores[i % 2].publish(feed, "demo", new_version(version, tag))
                    for i, (version, tag) in enumerate(tag_of.items())
                )
            )
            final = await stores[1].get_package(feed, "demo")
            assert final is not None
            assert set(final.versions) == set(tag_of)
            assert final.rev == 50

            # Publishes were applied one after the other, each seeing every earlier one: the
            # k-th to commit saw k versions. Replaying them in commit order gives the tags,
            # none lost to a concurrent read-modify-write.
            in_order = sorted(results, key=lambda p: p.seq)
            assert len({p.seq for p in in_order}) == 50
            tags: dict[str, str] = {}
            seen: set[str] = set()
            for k, package in enumerate(in_order, start=1):
                assert len(package.versions) == k and package.rev == k
                (added,) = set(package.versions) - seen
                seen.add(added)
                tags = tags_after_publish(tags, tag_of[added], added, only_live=k == 1)
                assert package.dist_tags == tags
            assert final.dist_tags == tags
            # Racing publishes never move latest down: it ends on the highest tagged latest.
            assert tags["latest"] == max(
                (v for v, t in tag_of.items() if t == "latest"), key=parse_version
            )
            assert final.readme == f"readme of {tags['latest']}"
            assert final.seq == in_order[-1].seq == await stores[0].seq()
        finally:
            await close_all(stores)

    runner.run(body())


def test_every_committed_write_notifies_its_seq(postgres_url: str, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = await PostgresMetadataStore.open(postgres_url)
        listener = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
        try:
            await listener.execute("LISTEN entrepot_seq")
            feed = await store.create_feed("main", private=False)
            with pytest.raises(AlreadyExists):
                await store.create_feed("main", private=True)
            connector = await store.add_connector(
                feed.id,
                name="up",
                url="http://127.0.0.1:9/",
                credential_kind=None,
                credential_env=None,
                allow=[],
                block=[],
                min_age_hours=None,
                ttl=300,
            )
            # Cache writes are not changes: no bump, so no notification either.
            await store.put_upstream_doc(connector.id, "x", UpstreamDoc(404, None, 1.0, b""))
            await store.put_upstream_tarball(connector.id, "x", "1.0.0", "k", 1)
            await store.create_user("alice", "alice@example.test", None, admin=False)
            assert await store.seq() == 3
            payloads = [n.payload async for n in listener.notifies(timeout=10.0, stop_after=3)]
            assert payloads == ["1", "2", "3"]
        finally:
            await listener.close()
            await store.close()

    runner.run(body())


def test_a_newer_schema_is_refused(postgres_url: str, runner: asyncio.Runner) -> None:
    async def body() -> None:
        store = await PostgresMetadataStore.open(postgres_url)
        await store.close()
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            await conn.execute(
                "UPDATE meta SET value = %s WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,)
            )
        with pytest.raises(SchemaMismatch, match="newer"):
            await PostgresMetadataStore.open(postgres_url)

    runner.run(body())


def test_connections_the_server_closed_are_replaced_without_an_error(
    postgres_url: str, runner: asyncio.Runner
) -> None:
    """After a server restart or failover every pooled connection is dead: the next read
    and the next write still succeed (on fresh connections)."""

    async def body() -> None:
        store = await PostgresMetadataStore.open(postgres_url, min_size=3, max_size=3)
        database = postgres_url.rsplit("/", 1)[1]
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:

            async def backends() -> list[int]:
                cur = await admin.execute(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (database,),
                )
                return [row[0] for row in await cur.fetchall()]

            async def kill_the_pool() -> None:
                # Wait for the pool to be full (no connection still on its way), end every
                # connection, and wait for those to be gone.
                while len(pids := await backends()) < 3:
                    await asyncio.sleep(0.01)
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM unnest(%s) AS pid", (pids,)
                )
                while set(pids) & set(await backends()):
                    await asyncio.sleep(0.01)

            try:
                feed = await store.create_feed("main", private=False)
                await kill_the_pool()
                assert await store.get_feed("main") == feed
                await kill_the_pool()
                user = await store.create_user("alice", "alice@example.test", None, admin=False)
                assert await store.get_user("alice") == user
                await kill_the_pool()
                # A write to the caches runs as one statement, outside a transaction.
                assert await store.acquire_lease("lease", "me", 30)
                assert not await store.acquire_lease("lease", "someone else", 30)
                assert await store.seq() == 2
            finally:
                await store.close()

    runner.run(body())


def test_a_token_revoked_through_one_store_is_refused_by_another_at_once(
    postgres_url: str, runner: asyncio.Runner
) -> None:
    """Two stores stand for two server processes. B has the token cached; A revokes it (an
    admin command, say) and returns. B's very next check refuses it, before B's listening
    connection has had a chance to hear of the change."""

    async def body() -> None:
        a, b = await open_many(postgres_url, 2)
        try:
            user = await a.create_user("alice", "alice@example.test", None, admin=False)
            secret = new_token_secret()
            token = await a.create_token(
                user_id=user.id,
                key="k1",
                secret_hash=hash_token(secret),
                read_only=False,
                feeds=[],
                cidrs=[],
                expires=None,
                description="",
            )
            auth = Authenticator(b, allow_password_auth=False)
            for _ in range(2):  # the second answer comes from the cache
                principal = await auth.authenticate(f"Bearer {secret}", "127.0.0.1")
                assert principal is not None and principal.name == "alice"
            # Let B's follower hear of every change so far: its cache is as warm as can be.
            while await b.seq() < await a.seq():
                await asyncio.sleep(0.01)
            await auth.authenticate(f"Bearer {secret}", "127.0.0.1")
            # Then hold B's notifications back (how late they come is up to the network and
            # the scheduler): B still believes the seq it last heard.
            assert b._follower is not None
            await b._follower.stop()
            assert await a.revoke_token(token.key)
            with pytest.raises(Unauthorized, match="revoked"):
                await auth.authenticate(f"Bearer {secret}", "127.0.0.1")
        finally:
            await close_all([a, b])

    runner.run(body())


def test_fresh_reads_survive_losing_their_connection(
    postgres_url: str, runner: asyncio.Runner
) -> None:
    """``seq(fresh=True)`` reads on a connection of its own. When the server ends it, the
    read in progress is answered through the pool instead, and a new connection is made
    a second later."""

    async def body() -> None:
        store = await PostgresMetadataStore.open(postgres_url)
        try:
            async with await psycopg.AsyncConnection.connect(
                postgres_url, autocommit=True
            ) as admin:

                async def readers() -> list[int]:
                    cur = await admin.execute(
                        "SELECT pid FROM pg_stat_activity WHERE application_name = 'entrepot-seq'"
                    )
                    return [row[0] for row in await cur.fetchall()]

                await store.create_feed("main", private=False)
                assert await store.seq(fresh=True) == 1
                pids = await readers()
                assert len(pids) == 1
                await admin.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
                while await readers():
                    await asyncio.sleep(0.01)
                await admin.execute("UPDATE meta SET value = value + 1 WHERE key = 'seq'")
                assert await store.seq(fresh=True) == 2  # through the pool
                assert await readers() == []
                await asyncio.sleep(1.1)
                await admin.execute("UPDATE meta SET value = value + 1 WHERE key = 'seq'")
                assert await store.seq(fresh=True) == 3
                assert len(await readers()) == 1  # connected again
        finally:
            await store.close()

    runner.run(body())


async def _listening(store: PostgresMetadataStore) -> None:
    assert store._follower is not None
    for _ in range(500):
        if store._follower.backend_pid is not None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the store's listening connection did not come up in 5 s")


def test_a_store_knows_whether_another_process_has_the_database_open(
    postgres_url: str, runner: asyncio.Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``alone()`` lets a lone server skip the leases that coordinate upstream fetches
    between processes: true only while no other store (process) has the database open, and
    false whenever the store cannot tell."""
    monkeypatch.setattr(postgres_store, "ALONE_TTL", 0.0)  # every call looks again

    async def body() -> None:
        (a,) = await open_many(postgres_url, 1)
        try:
            await _listening(a)
            assert await a.alone() is True
            (b,) = await open_many(postgres_url, 1)
            try:
                await _listening(b)
                assert await a.alone() is False
                assert await b.alone() is False
            finally:
                await b.close()
            for _ in range(500):  # the server ends B's backends just after B closes them
                if await a.alone():
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("A still sees B 5 s after B closed")
            assert a._follower is not None
            await a._follower.stop()
            assert await a.alone() is False  # its own listening connection is down
        finally:
            await a.close()

    runner.run(body())


def test_concurrent_questions_share_one_look_and_the_answer_is_kept_a_moment(
    postgres_url: str, runner: asyncio.Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body() -> None:
        (a,) = await open_many(postgres_url, 1)
        looks = 0
        real = a._read

        async def counted(query: str, args: Any = ()) -> list[tuple[Any, ...]]:
            nonlocal looks
            if query == postgres_store._OTHERS_SQL:
                looks += 1
                await asyncio.sleep(0.05)
            return await real(query, args)

        monkeypatch.setattr(a, "_read", counted)
        try:
            await _listening(a)
            assert await asyncio.gather(*(a.alone() for _ in range(20))) == [True] * 20
            assert looks == 1
            assert await a.alone() is True
            assert looks == 1  # within ALONE_TTL: kept
            monkeypatch.setattr(postgres_store, "ALONE_TTL", 0.0)
            a._alone = (True, 0.0)
            assert await a.alone() is True
            assert looks == 2
        finally:
            await a.close()

    runner.run(body())
