"""Store fixtures for the contract suites: every contract test runs once per backend.

Adding a backend is one line in ``META_BACKENDS`` or ``BLOB_BACKENDS``: a name and an async
function that opens an empty store, given a fresh folder it may use. Stores are opened, used
and closed on one event loop per test (``runner``), so backends with loop-bound connection
pools work too.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from tests.s3server import LazyS3Server

from entrepot.storage.base import BlobStore, MetadataStore
from entrepot.storage.files import FileBlobStore
from entrepot.storage.postgres import PostgresMetadataStore
from entrepot.storage.s3 import S3BlobStore
from entrepot.storage.sqlite import SQLiteMetadataStore


async def _sqlite(folder: Path) -> MetadataStore:
    return SQLiteMetadataStore(folder / "entrepot.db")


POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


async def create_postgres_database() -> str:
    """A new empty database on the local PostgreSQL; its URL. Skips the test when no server
    answers, unless ``ENTREPOT_REQUIRE_SERVICES=1`` makes that a failure."""
    name = f"entrepot_test_{secrets.token_hex(8)}"
    try:
        admin = await psycopg.AsyncConnection.connect(
            POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5
        )
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}"
        if os.environ.get("ENTREPOT_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    async with admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


async def drop_postgres_database(url: str) -> None:
    name = sql.Identifier(url.rsplit("/", 1)[1])
    async with await psycopg.AsyncConnection.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        await admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


class _ThrowawayPostgres(PostgresMetadataStore):
    """A store on a database of its own, dropped when the store is closed."""

    url = ""

    async def close(self) -> None:
        await super().close()
        await drop_postgres_database(self.url)


async def _postgres(folder: Path) -> MetadataStore:
    url = await create_postgres_database()
    try:
        store = await _ThrowawayPostgres.open(url)
    except BaseException:
        await drop_postgres_database(url)
        raise
    store.url = url
    return store


async def _files(folder: Path) -> BlobStore:
    return FileBlobStore(folder / "blobs")


#: One SeaweedFS S3 server for the session, started by the first S3 test.
_SEAWEEDFS = LazyS3Server()


@pytest.fixture(scope="session", autouse=True)
def _stop_seaweedfs() -> Iterator[None]:
    yield
    _SEAWEEDFS.close()


async def _s3(folder: Path) -> BlobStore:
    """A store under a prefix of its own in the session's bucket: tests stay apart."""
    server = _SEAWEEDFS.get()
    url = f"s3://entrepot-contract/{secrets.token_hex(8)}?endpoint={server.endpoint}"
    store = S3BlobStore.from_url(f"{url}&region={server.region}", server.credentials)
    await store.ensure_bucket()
    return store


META_BACKENDS: dict[str, Callable[[Path], Coroutine[Any, Any, MetadataStore]]] = {
    "postgres": _postgres,
    "sqlite": _sqlite,
}
BLOB_BACKENDS: dict[str, Callable[[Path], Coroutine[Any, Any, BlobStore]]] = {
    "files": _files,
    "s3": _s3,
}


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for the whole test: open the store, run the test body, close it."""
    with asyncio.Runner() as loop:
        yield loop


@pytest.fixture
def postgres_url(runner: asyncio.Runner) -> Iterator[str]:
    """The URL of a new empty PostgreSQL database, dropped after the test."""
    url = runner.run(create_postgres_database())
    yield url
    runner.run(drop_postgres_database(url))


@pytest.fixture(params=sorted(META_BACKENDS))
def meta_store(
    request: pytest.FixtureRequest, runner: asyncio.Runner, tmp_path: Path
) -> Iterator[MetadataStore]:
    folder = tmp_path / "meta"
    folder.mkdir()
    store = runner.run(META_BACKENDS[request.param](folder))
    yield store
    runner.run(store.close())


@pytest.fixture(params=sorted(BLOB_BACKENDS))
def blob_store(request: pytest.FixtureRequest, runner: asyncio.Runner, tmp_path: Path) -> BlobStore:
    folder = tmp_path / "blobs"
    folder.mkdir()
    return runner.run(BLOB_BACKENDS[request.param](folder))
