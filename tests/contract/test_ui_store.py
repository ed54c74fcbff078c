"""The store methods behind the web UI and the admin API, on every backend:
``set_feed_private``, ``delete_user`` and ``newest_packages``."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest

from entrepot.storage.base import MetadataStore, Missing, NewVersion, PackageChange
from entrepot.storage.sqlite import SCHEMA_VERSION, SQLiteMetadataStore

PUBLISHER = {"name": "alice", "email": "alice@example.test"}


def new_version(name: str, version: str) -> NewVersion:
    return NewVersion(
        version=version,
        manifest={"name": name, "version": version, "description": f"{name} here"},
        blob_key=hashlib.sha512(f"{name}@{version}".encode()).hexdigest(),
        size=10,
        tag="latest",
        readme="",
        maintainer=PUBLISHER,
    )


def test_set_feed_private_flips_and_bumps_seq(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        created = await meta_store.create_feed("team", private=False)
        before = await meta_store.seq()
        flipped = await meta_store.set_feed_private("team", True)
        assert flipped.private and flipped.id == created.id and flipped.name == "team"
        assert await meta_store.seq() > before
        stored = await meta_store.get_feed("team")
        assert stored is not None and stored.private
        back = await meta_store.set_feed_private("team", False)
        assert not back.private
        stored = await meta_store.get_feed("team")
        assert stored is not None and not stored.private
        seq = await meta_store.seq()
        with pytest.raises(Missing):
            await meta_store.set_feed_private("nope", True)
        assert await meta_store.seq() == seq

    runner.run(body())


def test_delete_user_takes_tokens_and_roles_along(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        feed = await meta_store.create_feed("main", private=False)
        carol = await meta_store.create_user("carol", "c@example.test", None, admin=False)
        dave = await meta_store.create_user("dave", "d@example.test", None, admin=False)
        for user, key in ((carol, "k-carol"), (dave, "k-dave")):
            await meta_store.create_token(
                user_id=user.id,
                key=key,
                secret_hash=hashlib.sha256(key.encode()).hexdigest(),
                read_only=False,
                feeds=[],
                cidrs=[],
                expires=None,
                description="",
            )
        await meta_store.set_role(feed.id, carol.id, "publisher")
        await meta_store.set_role(feed.id, dave.id, "reader")
        await meta_store.publish(feed.id, "kept", new_version("kept", "1.0.0"))
        before = await meta_store.seq()
        await meta_store.delete_user("carol")
        assert await meta_store.seq() > before
        assert await meta_store.get_user("carol") is None
        assert await meta_store.get_user_by_id(carol.id) is None
        assert [t.key for t in await meta_store.list_tokens()] == ["k-dave"]
        assert await meta_store.find_token(hashlib.sha256(b"k-carol").hexdigest()) is None
        assert await meta_store.list_roles(feed.id) == [("dave", "reader")]
        # What carol published stays.
        package = await meta_store.get_package(feed.id, "kept")
        assert package is not None and list(package.versions) == ["1.0.0"]
        # The name is free again.
        again = await meta_store.create_user("carol", "c2@example.test", None, admin=False)
        assert again.id != carol.id
        assert await meta_store.get_role(feed.id, again.id) is None
        seq = await meta_store.seq()
        with pytest.raises(Missing):
            await meta_store.delete_user("nobody")
        assert await meta_store.seq() == seq

    runner.run(body())


def test_newest_packages_pages_by_last_change(
    meta_store: MetadataStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        feed = await meta_store.create_feed("main", private=False)
        other = await meta_store.create_feed("other", private=False)
        for name in ("a", "b", "c", "d"):
            await meta_store.publish(feed.id, name, new_version(name, "1.0.0"))
            await asyncio.sleep(0.002)  # distinct modification times
        await meta_store.publish(other.id, "elsewhere", new_version("elsewhere", "1.0.0"))
        await asyncio.sleep(0.002)
        # A new version moves "a" to the front; an unpublished package leaves the list.
        await meta_store.publish(feed.id, "a", new_version("a", "1.1.0"))
        await meta_store.delete_package(feed.id, "c", None)
        entries, total = await meta_store.newest_packages(feed.id, size=10, offset=0)
        assert total == 3
        assert [e["name"] for e in entries] == ["a", "d", "b"]
        assert entries[0]["version"] == "1.1.0"
        assert entries[0]["description"] == "a here"
        first, total = await meta_store.newest_packages(feed.id, size=2, offset=0)
        second, _ = await meta_store.newest_packages(feed.id, size=2, offset=2)
        assert total == 3
        assert [e["name"] for e in first + second] == ["a", "d", "b"]
        empty, total = await meta_store.newest_packages(feed.id, size=0, offset=0)
        assert (empty, total) == ([], 3)
        # A deprecation is a change too (a millisecond later: times are kept to the ms, and
        # two changes within one ms would tie).
        await asyncio.sleep(0.002)
        package = await meta_store.get_package(feed.id, "b")
        assert package is not None
        manifest = {**package.versions["1.0.0"].manifest, "deprecated": "old"}
        await meta_store.change_package(feed.id, "b", PackageChange(manifests={"1.0.0": manifest}))
        entries, _ = await meta_store.newest_packages(feed.id, size=1, offset=0)
        assert [e["name"] for e in entries] == ["b"]

    runner.run(body())


def test_sqlite_upgrade_adds_the_newest_index(tmp_path: Path) -> None:
    """A version-1 database (before the index) refuses to open until upgraded; the upgrade
    adds the index that ``newest_packages`` walks."""
    path = tmp_path / "entrepot.db"
    asyncio.run(SQLiteMetadataStore(path).close())
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX search_docs_newest")
    conn.execute("UPDATE meta SET value = 1 WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(Exception, match="entrepot db upgrade"):
        SQLiteMetadataStore(path)
    store = SQLiteMetadataStore(path, upgrade=True)
    assert store.upgraded_from == 1
    plan = store._read(
        "EXPLAIN QUERY PLAN SELECT entry FROM search_docs WHERE feed_id = 1 "
        "ORDER BY modified DESC, name LIMIT 5"
    )
    assert "search_docs_newest" in str(plan)
    version = store._read("SELECT value FROM meta WHERE key = 'schema_version'")[0][0]
    assert version == SCHEMA_VERSION
    asyncio.run(store.close())
