"""MetadataStore on PostgreSQL: for several servers (or many workers) sharing one database.

Same tables and semantics as the SQLite store. Every write runs in one READ COMMITTED
transaction from a connection pool (psycopg 3, async). The database enforces what must
hold across processes: (package, version) is the primary key of ``versions`` and deleted
versions keep their row, so a number is published at most once whoever races.

Locks, in the order every write transaction takes them (one order, so our transactions do
not deadlock each other; deadlocks and serialization failures are retried all the same):

1. row locks on what the write reads and rewrites: the package row (``SELECT ... FOR
   UPDATE``, after an ``INSERT ... ON CONFLICT DO NOTHING`` that creates it), so dist-tags,
   ``latest``, readme and maintainers are read-modified-written by one publish at a time;
   the feed row (``FOR NO KEY UPDATE``) for its connector list and upstream names;
2. last, the single ``meta`` row that holds ``seq`` (``UPDATE ... RETURNING``). Its new value
   becomes visible atomically with the write that bumped it, so no reader sees seq N+1
   before change N+1; writes are serialized only from the bump to their commit.

The bump also queues ``NOTIFY entrepot_seq, '<seq>'``, which PostgreSQL delivers at commit
(and never for a write that rolls back). Search uses a ``pg_trgm`` index for the same
substring matching as SQLite's trigram FTS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, Self, TypeVar

import orjson
import psycopg
from psycopg import errors, pq, sql
from psycopg.rows import dict_row
from psycopg.types.json import Json, set_json_loads
from psycopg_pool import AsyncConnectionPool

from entrepot.clock import now_iso
from entrepot.npm.search import search_entry, search_text
from entrepot.storage.base import (
    ROLES,
    USER_FIELDS,
    AlreadyExists,
    Connector,
    Feed,
    LoginSession,
    Missing,
    NewVersion,
    Package,
    PackageChange,
    SchemaMismatch,
    StaleRevision,
    StoreFull,
    StoreUnavailable,
    Token,
    UpstreamDoc,
    User,
    Version,
    VersionRef,
    seq_memo,
    tags_after_publish,
)

T = TypeVar("T")
Conn = psycopg.AsyncConnection[tuple[Any, ...]]

log = logging.getLogger("entrepot.postgres")

SCHEMA_VERSION = 3

#: Any constant: the advisory lock that keeps two processes from creating the schema at once.
_SCHEMA_LOCK = 0x656E747265706F74

#: Attempts for a write that PostgreSQL aborted as a deadlock or serialization failure.
_ATTEMPTS = 5

#: Seconds a request waits for a pooled connection while the database is known to be down
#: (the seq follower lost its connection): it fails fast with 503 rather than hanging for
#: the pool's whole timeout.
_DOWN_WAIT = 1.0

#: Steps from one schema version to the next: MIGRATIONS[n] takes version n to n + 1 (SQL
#: statements run in one transaction with the others, PostgreSQL's DDL being transactional).
MIGRATIONS: dict[int, str] = {
    # 2: leases coalesce upstream fetches across processes.
    1: """CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL
)""",
    # 3: a connector may cache an upstream's abbreviated packument (for installs only).
    2: "ALTER TABLE upstream_docs ADD COLUMN IF NOT EXISTS abbreviated BOOLEAN NOT NULL "
    "DEFAULT FALSE",
}

# Manifests, dist-tags and maintainers are JSON, not JSONB: JSON keeps the text as written,
# so key order (what clients see in a packument) is the same as on SQLite. Names and time
# stamps that are sorted or compared as ranges are COLLATE "C": code point order, as SQLite
# sorts, whatever the database's locale.
SCHEMA = """
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta (key, value) VALUES ('seq', 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS feeds (
    id BIGSERIAL PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    private BOOLEAN NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    id BIGSERIAL PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    email TEXT NOT NULL,
    password_hash TEXT,
    admin BOOLEAN NOT NULL,
    created TEXT NOT NULL,
    totp_secret TEXT,
    totp_pending TEXT,
    totp_last_step BIGINT NOT NULL DEFAULT 0,
    recovery_hashes TEXT[] NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS feed_roles (
    feed_id BIGINT NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    PRIMARY KEY (feed_id, user_id)
);
CREATE INDEX IF NOT EXISTS feed_roles_user ON feed_roles (user_id);
CREATE TABLE IF NOT EXISTS login_sessions (
    id BIGSERIAL PRIMARY KEY,
    login_hash TEXT NOT NULL UNIQUE,
    done_hash TEXT NOT NULL UNIQUE,
    expires DOUBLE PRECISION NOT NULL,
    user_id BIGINT REFERENCES users(id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS tokens (
    id BIGSERIAL PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    secret_hash TEXT NOT NULL UNIQUE,
    read_only BOOLEAN NOT NULL,
    feeds TEXT[] NOT NULL,
    cidrs TEXT[] NOT NULL,
    expires DOUBLE PRECISION,
    created TEXT NOT NULL,
    description TEXT NOT NULL,
    revoked BOOLEAN NOT NULL DEFAULT FALSE,
    prefix TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS tokens_user ON tokens (user_id);
CREATE TABLE IF NOT EXISTS packages (
    id BIGSERIAL PRIMARY KEY,
    feed_id BIGINT NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
    name TEXT COLLATE "C" NOT NULL,
    rev BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    created TEXT NOT NULL,
    modified TEXT NOT NULL,
    dist_tags JSON NOT NULL,
    maintainers JSON NOT NULL,
    readme TEXT NOT NULL,
    UNIQUE (feed_id, name)
);
CREATE TABLE IF NOT EXISTS versions (
    package_id BIGINT NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    version TEXT COLLATE "C" NOT NULL,
    manifest JSON NOT NULL,
    blob_key TEXT NOT NULL,
    size BIGINT NOT NULL,
    published TEXT NOT NULL,
    deleted TEXT,
    PRIMARY KEY (package_id, version)
);
CREATE INDEX IF NOT EXISTS versions_blob ON versions (blob_key);
CREATE TABLE IF NOT EXISTS search_docs (
    package_id BIGINT PRIMARY KEY REFERENCES packages(id) ON DELETE CASCADE,
    feed_id BIGINT NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    modified TEXT COLLATE "C" NOT NULL,
    entry JSON NOT NULL,
    haystack TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS search_docs_name ON search_docs (feed_id, name);
CREATE INDEX IF NOT EXISTS search_docs_newest ON search_docs (feed_id, modified DESC, name);
CREATE INDEX IF NOT EXISTS search_docs_haystack ON search_docs USING gin (haystack gin_trgm_ops);
CREATE TABLE IF NOT EXISTS connectors (
    id BIGSERIAL PRIMARY KEY,
    feed_id BIGINT NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    url TEXT NOT NULL,
    credential_kind TEXT,
    credential_env TEXT,
    allow TEXT[] NOT NULL,
    block TEXT[] NOT NULL,
    min_age_hours DOUBLE PRECISION,
    ttl INTEGER NOT NULL,
    allow_internal BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (feed_id, name)
);
CREATE TABLE IF NOT EXISTS upstream_names (
    feed_id BIGINT NOT NULL REFERENCES feeds(id) ON DELETE CASCADE,
    pattern TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (feed_id, pattern)
);
CREATE TABLE IF NOT EXISTS upstream_docs (
    connector_id BIGINT NOT NULL REFERENCES connectors(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    status INTEGER NOT NULL,
    etag TEXT,
    fetched DOUBLE PRECISION NOT NULL,
    body BYTEA NOT NULL,
    abbreviated BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (connector_id, name)
);
CREATE TABLE IF NOT EXISTS upstream_tarballs (
    connector_id BIGINT NOT NULL REFERENCES connectors(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (connector_id, name, version)
);
CREATE INDEX IF NOT EXISTS upstream_tarballs_blob ON upstream_tarballs (blob_key);
CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL
);
"""

# One round trip: bump the counter and queue the notification (sent when the write commits).
_BUMP = (
    "WITH bumped AS (UPDATE meta SET value = value + 1 WHERE key = 'seq' RETURNING value) "
    "SELECT value, pg_notify('entrepot_seq', value::text)::text FROM bumped"
)

# A package and all its versions in one statement, so one snapshot: the versions come as one
# JSON array (the manifests embedded as stored, and parsed once on our side).
_LOAD_PACKAGE = """
SELECT p.id, p.rev, p.seq, p.created, p.modified, p.dist_tags, p.maintainers, p.readme,
    COALESCE((
        SELECT json_agg(json_build_array(
            v.version, v.deleted IS NULL,
            CASE WHEN v.deleted IS NULL THEN v.manifest END,
            v.blob_key, v.size, v.published
        ) ORDER BY v.version)
        FROM versions v WHERE v.package_id = p.id
    ), '[]'::json)
FROM packages p WHERE p.feed_id = %s AND p.name = %s
"""


def _json(value: Any) -> Json:
    return Json(value, dumps=orjson.dumps)


async def _configure(conn: Conn) -> None:
    set_json_loads(orjson.loads, conn)


def _translate(exc: psycopg.Error) -> Exception:
    """PostgreSQL's errors as store errors (never the SQL, nor the server's text)."""
    if isinstance(exc, errors.DiskFull):
        return StoreFull("the database disk is full")
    if isinstance(exc, errors.UniqueViolation):
        return AlreadyExists("that already exists")
    if isinstance(exc, errors.ForeignKeyViolation):
        return Missing("something it refers to does not exist (any more)")
    if isinstance(exc, psycopg.OperationalError):
        # Connection lost or refused, server shutting down, pool exhausted, statement
        # timeout, or still deadlocked after retries.
        code = f"{exc.sqlstate} " if exc.sqlstate else ""
        return StoreUnavailable(f"PostgreSQL is unavailable ({code}{type(exc).__name__})")
    return exc


def _text(value: str) -> str:
    """Free text from package contents for a TEXT column, which cannot hold NUL (JSON
    columns can: they keep it escaped)."""
    return value.replace("\x00", "\ufffd")


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _like_infix(text: str) -> str:
    return "%" + _like_prefix(text)


class _SeqFollower:
    """The latest ``seq``, kept from ``NOTIFY entrepot_seq`` on a connection of its own, so
    that the hot path needs no database round trip to know whether its caches are current.
    While the listening connection is down, :attr:`value` is None and readers ask the
    database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.value: int | None = None
        #: The server process behind the listening connection, while it is up.
        self.backend_pid: int | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="entrepot-seq-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.backend_pid = None

    async def _run(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=5, application_name=FOLLOWER_NAME
                ) as conn:
                    await conn.execute("LISTEN entrepot_seq")
                    # Read after LISTEN: nothing committed from here on can be missed.
                    cur = await conn.execute("SELECT value FROM meta WHERE key = 'seq'")
                    row = await cur.fetchone()
                    self.value = max(self.value or 0, int(row[0]) if row else 0)
                    self.backend_pid = conn.info.backend_pid
                    async for note in conn.notifies():
                        if note.payload.isdigit():
                            self.value = max(self.value or 0, int(note.payload))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: fall back to asking, and reconnect
                self.value = None
                self.backend_pid = None
                log.warning("seq follower lost its connection (%s); retrying", type(exc).__name__)
                await asyncio.sleep(1)


#: The application name of every store's listening connection: one per process that has
#: the store open (servers, and admin commands while they run).
FOLLOWER_NAME = "entrepot-follower"
_OTHERS_SQL = (
    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
    "AND application_name = %s AND pid <> %s)"
)
#: How long an answer of :meth:`PostgresMetadataStore.alone` is kept.
ALONE_TTL = 1.0


_SEQ_STATEMENT = b"entrepot_seq"
_SEQ_SQL = b"SELECT value FROM meta WHERE key = 'seq'"


class _SeqReader:
    """Reads ``seq`` on a connection of its own, through libpq directly: a prepared
    statement and one wait for its answer, a quarter of the CPU of a pooled psycopg query
    (docs/decisions.md). It runs one read at a time (the :class:`_Coalesced` in front
    sees to that). On any failure it drops the connection and answers with ``fallback``
    (the pool's read, which retries or reports the store unavailable), and connects again
    at most once a second."""

    def __init__(self, url: str, fallback: Callable[[], Awaitable[int]], timeout: float) -> None:
        self.url = url
        self._fallback = fallback
        self._timeout = timeout
        self._conn: Conn | None = None
        self._retry_at = 0.0

    async def __call__(self) -> int:
        if self._conn is None and time.monotonic() < self._retry_at:
            return await self._fallback()
        try:
            async with asyncio.timeout(self._timeout):
                if self._conn is None:
                    self._retry_at = time.monotonic() + 1.0
                    self._conn = await psycopg.AsyncConnection.connect(
                        self.url,
                        autocommit=True,
                        connect_timeout=max(2, int(self._timeout)),
                        application_name="entrepot-seq",
                    )
                    self._conn.pgconn.nonblocking = 1
                    await self._ask(lambda pg: pg.send_prepare(_SEQ_STATEMENT, _SEQ_SQL))
                return await self._ask(lambda pg: pg.send_query_prepared(_SEQ_STATEMENT, None))
        except Exception as exc:
            await self.close()
            log.warning("seq reader lost its connection (%s)", type(exc).__name__)
            return await self._fallback()
        except BaseException:
            await self.close()  # cancelled mid-read: the connection's state is unknown
            raise

    async def _ask(self, send: Callable[[pq.abc.PGconn], None]) -> int:
        assert self._conn is not None
        pg = self._conn.pgconn
        send(pg)
        while pg.flush():
            await self._ready(pg.socket, write=True)
        value = -1
        while True:
            pg.consume_input()
            while not pg.is_busy():
                result = pg.get_result()
                if result is None:
                    return value
                if result.status == pq.ExecStatus.TUPLES_OK:
                    value = int(result.get_value(0, 0) or b"0")
                elif result.status != pq.ExecStatus.COMMAND_OK:
                    status = pq.ExecStatus(result.status).name
                    raise psycopg.OperationalError(f"seq read failed ({status})")
            await self._ready(pg.socket)

    @staticmethod
    async def _ready(fd: int, *, write: bool = False) -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        (loop.add_writer if write else loop.add_reader)(fd, ready.set_result, None)
        try:
            await ready
        finally:
            (loop.remove_writer if write else loop.remove_reader)(fd)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


class _Coalesced(Generic[T]):
    """One read for many callers, and never an answer older than the call: a caller that
    arrives while a read is on its way waits for the next one, which all who arrived in
    the meantime share (the first read may have been sent before they asked)."""

    def __init__(self, read: Callable[[], Awaitable[T]], name: str = "entrepot-seq-read") -> None:
        self._read = read
        self._name = name
        self._next: asyncio.Future[T] | None = None
        self._runner: asyncio.Task[None] | None = None

    async def __call__(self) -> T:
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            if self._runner is None:
                self._runner = asyncio.create_task(self._run(), name=self._name)
        # Shielded: a caller that gives up does not cancel the read the others wait for.
        return await asyncio.shield(self._next)

    async def _run(self) -> None:
        try:
            while (waiting := self._next) is not None:
                self._next = None  # who asks from now on waits for the next read
                try:
                    waiting.set_result(await self._read())
                except Exception as exc:
                    waiting.set_exception(exc)
                    waiting.exception()  # retrieved: nobody may be left to see it
        finally:
            self._runner = None


class PostgresMetadataStore:
    """The metadata store for shared deployments. Open it with :meth:`open`."""

    def __init__(self, pool: AsyncConnectionPool[Conn], upgraded_from: int | None = None) -> None:
        self._pool = pool
        self._follower: _SeqFollower | None = None
        #: Reads of seq from the database: each counts every write committed before its
        #: callers asked, and callers that arrive while one is on its way share the next.
        self._seq_read = _Coalesced(self._read_seq)
        self._seq_reader: _SeqReader | None = None
        #: Set by our own writes: the next seq() asks the database, so this process sees
        #: its own write at once rather than when its notification arrives.
        self._wrote = True
        #: The schema version ``open(upgrade=True)`` found and upgraded, if it did.
        self.upgraded_from = upgraded_from
        #: alone(): the last answer and until when it holds; looks shared by their callers.
        self._alone = (False, 0.0)
        self._look = _Coalesced(self._look_alone, "entrepot-alone")

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        upgrade: bool = False,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 10.0,
    ) -> Self:
        """Connect to ``postgresql://user@host:port/dbname``; create the schema if the
        database is empty, else check its version (:class:`SchemaMismatch`), or with
        ``upgrade`` bring it up to date. Connection errors surface here, as
        :class:`StoreUnavailable`, not at the first request."""
        try:
            async with await psycopg.AsyncConnection.connect(
                url, autocommit=True, connect_timeout=max(2, int(timeout))
            ) as conn:
                upgraded_from = await _prepare(conn, upgrade=upgrade)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"cannot open the PostgreSQL database: {exc}") from exc
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            kwargs={"autocommit": True, "application_name": "entrepot"},
            configure=_configure,
            open=False,
            name="entrepot",
            timeout=timeout,
            # Stop a failing reconnection after this long instead of backing off for up to
            # five minutes: the next request starts a fresh attempt, so the pool is back as
            # soon as the database is, not minutes later.
            reconnect_timeout=timeout,
        )
        try:
            await pool.open(wait=True, timeout=timeout)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, psycopg.OperationalError):
                raise StoreUnavailable("cannot fill the PostgreSQL connection pool") from exc
            raise
        store = cls(pool, upgraded_from)
        store._follower = _SeqFollower(url)
        store._follower.start()
        store._seq_reader = _SeqReader(url, store._read_seq, timeout)
        store._seq_read = _Coalesced(store._seq_reader)
        return store

    async def close(self) -> None:
        if self._follower is not None:
            await self._follower.stop()
        if self._seq_reader is not None:
            await self._seq_reader.close()
        await self._pool.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _wait(self) -> float | None:
        """How long to wait for a pooled connection: the pool's timeout, but only a moment
        while the database is unreachable."""
        follower = self._follower
        return _DOWN_WAIT if follower is not None and follower.value is None else None

    async def _query(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """Run reads on a pooled connection, outside any transaction."""
        for attempt in (1, 2):
            stale = False
            try:
                async with self._pool.connection(self._wait()) as conn:
                    try:
                        return await work(conn)
                    except psycopg.OperationalError:
                        stale = conn.broken
                        raise
            except psycopg.Error as exc:
                # A pooled connection the server has closed since (restart, failover, idle
                # timeout): its idle siblings likely are too. Drop them all; a read is safe
                # to run again on a fresh connection.
                if not (stale and attempt == 1):
                    raise _translate(exc) from exc
                await self._pool.check()
        raise AssertionError("unreachable")

    async def _read(self, query: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async def work(conn: Conn) -> list[tuple[Any, ...]]:
            cur = await conn.execute(query, args)
            return await cur.fetchall()

        return await self._query(work)

    async def _write(self, work: Callable[[Conn], Awaitable[T]], *, cache: bool = False) -> T:
        """Run ``work`` in one transaction, retrying the aborts PostgreSQL asks us to retry,
        and turn backend errors into store errors.

        ``cache``: ``work`` is one idempotent statement on the caches (leases, upstream
        copies) that moves no change counter. It runs on its own (a single statement is
        atomic: no BEGIN and COMMIT round trips), runs again once on a fresh connection if
        the connection was lost, and leaves ``seq()`` answering from the notifications."""
        for attempt in range(1, _ATTEMPTS + 1):
            stale = committing = False
            try:
                async with self._pool.connection(self._wait()) as conn:
                    try:
                        if cache:
                            return await work(conn)
                        async with conn.transaction():
                            result = await work(conn)
                            committing = True
                        self._wrote = True
                        if (memo := seq_memo.get()) is not None:
                            memo.clear()  # this request must see its own write
                        return result
                    except psycopg.OperationalError:
                        stale = conn.broken
                        raise
            except (errors.SerializationFailure, errors.DeadlockDetected) as exc:
                if attempt == _ATTEMPTS:
                    raise _translate(exc) from exc
            except (errors.UniqueViolation, errors.ForeignKeyViolation) as exc:
                raise _translate(exc) from None
            except psycopg.Error as exc:
                # A connection lost before COMMIT was sent: the server rolled the transaction
                # back, so it can run again once. Lost during COMMIT, the outcome is unknown
                # (a cache write is idempotent: it runs again whatever the outcome).
                if not (stale and not committing and attempt == 1):
                    raise _translate(exc) from exc
                await self._pool.check()
                continue
            await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))
        raise AssertionError("unreachable")

    @staticmethod
    async def _bump(conn: Conn) -> int:
        cur = await conn.execute(_BUMP)
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def seq(self, *, fresh: bool = False) -> int:
        follower = self._follower
        if fresh:
            memo = seq_memo.get()
            if memo is not None and "fresh" in memo:
                return memo["fresh"]
        elif follower is not None and follower.value is not None and not self._wrote:
            return follower.value
        self._wrote = False
        value = await self._seq_read()
        if follower is not None and follower.value is not None:
            follower.value = max(follower.value, value)
        if fresh and (memo := seq_memo.get()) is not None:
            memo["fresh"] = value
        return value

    async def alone(self) -> bool:
        """Whether no other process has this database open as a store: no other listening
        connection of ours in ``pg_stat_activity``. Asked at most once per ALONE_TTL
        (callers in the meantime share the answer); False while our own listening
        connection is down or the database does not answer."""
        answer, until = self._alone
        if time.monotonic() < until:
            return answer
        answer = await self._look()
        self._alone = (answer, time.monotonic() + ALONE_TTL)
        return answer

    async def _look_alone(self) -> bool:
        follower = self._follower
        pid = follower.backend_pid if follower is not None else None
        if pid is None:
            return False
        try:
            rows = await self._read(_OTHERS_SQL, (FOLLOWER_NAME, pid))
        except (StoreUnavailable, psycopg.Error):
            return False
        return not rows[0][0]

    async def _read_seq(self) -> int:
        return int((await self._read("SELECT value FROM meta WHERE key = 'seq'"))[0][0])

    # -- feeds ------------------------------------------------------------------------------

    async def create_feed(self, name: str, *, private: bool) -> Feed:
        async def work(conn: Conn) -> Feed:
            created = now_iso()
            try:
                cur = await conn.execute(
                    "INSERT INTO feeds (name, private, created) VALUES (%s, %s, %s) RETURNING id",
                    (name, private, created),
                )
            except errors.UniqueViolation:
                raise AlreadyExists(f"feed {name!r} already exists") from None
            row = await cur.fetchone()
            assert row is not None
            await self._bump(conn)
            return Feed(int(row[0]), name, private, created)

        return await self._write(work)

    async def get_feed(self, name: str) -> Feed | None:
        rows = await self._read(
            "SELECT id, name, private, created FROM feeds WHERE name = %s", (name,)
        )
        return Feed(*rows[0]) if rows else None

    async def list_feeds(self) -> list[Feed]:
        rows = await self._read("SELECT id, name, private, created FROM feeds ORDER BY name")
        return [Feed(*r) for r in rows]

    async def delete_feed(self, name: str) -> None:
        async def work(conn: Conn) -> None:
            cur = await conn.execute("DELETE FROM feeds WHERE name = %s", (name,))
            if cur.rowcount == 0:
                raise Missing(f"no feed named {name!r}")
            await self._bump(conn)

        await self._write(work)

    async def set_feed_private(self, name: str, private: bool) -> Feed:
        async def work(conn: Conn) -> Feed:
            cur = await conn.execute(
                "UPDATE feeds SET private = %s WHERE name = %s "
                "RETURNING id, name, private, created",
                (private, name),
            )
            row = await cur.fetchone()
            if row is None:
                raise Missing(f"no feed named {name!r}")
            await self._bump(conn)
            return Feed(*row)

        return await self._write(work)

    async def count_packages(self, feed_id: int) -> int:
        rows = await self._read(
            "SELECT COUNT(*) FROM packages p WHERE p.feed_id = %s AND EXISTS "
            "(SELECT 1 FROM versions v WHERE v.package_id = p.id AND v.deleted IS NULL)",
            (feed_id,),
        )
        return int(rows[0][0])

    # -- users ------------------------------------------------------------------------------

    _USER_COLUMNS = (
        "id, name, email, password_hash, admin, created, totp_secret, totp_pending, recovery_hashes"
    )

    @staticmethod
    def _user(row: tuple[Any, ...]) -> User:
        return User(
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            totp_secret=row[6],
            totp_pending=row[7],
            recovery_hashes=tuple(row[8]),
        )

    async def create_user(
        self, name: str, email: str, password_hash: str | None, *, admin: bool
    ) -> User:
        async def work(conn: Conn) -> User:
            created = now_iso()
            try:
                cur = await conn.execute(
                    "INSERT INTO users (name, email, password_hash, admin, created) "
                    "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                    (name, email, password_hash, admin, created),
                )
            except errors.UniqueViolation:
                raise AlreadyExists(f"user {name!r} already exists") from None
            row = await cur.fetchone()
            assert row is not None
            await self._bump(conn)
            return User(int(row[0]), name, email, password_hash, admin, created)

        return await self._write(work)

    async def get_user(self, name: str) -> User | None:
        rows = await self._read(f"SELECT {self._USER_COLUMNS} FROM users WHERE name = %s", (name,))
        return self._user(rows[0]) if rows else None

    async def get_user_by_id(self, user_id: int) -> User | None:
        rows = await self._read(f"SELECT {self._USER_COLUMNS} FROM users WHERE id = %s", (user_id,))
        return self._user(rows[0]) if rows else None

    async def list_users(self) -> list[User]:
        rows = await self._read(f"SELECT {self._USER_COLUMNS} FROM users ORDER BY name")
        return [self._user(r) for r in rows]

    async def delete_user(self, name: str) -> None:
        async def work(conn: Conn) -> None:
            # Tokens, roles and sign-in sessions go with the user (ON DELETE CASCADE).
            cur = await conn.execute("DELETE FROM users WHERE name = %s", (name,))
            if cur.rowcount == 0:
                raise Missing(f"no user named {name!r}")
            await self._bump(conn)

        await self._write(work)

    async def set_password(self, name: str, password_hash: str) -> None:
        async def work(conn: Conn) -> None:
            cur = await conn.execute(
                "UPDATE users SET password_hash = %s WHERE name = %s", (password_hash, name)
            )
            if cur.rowcount == 0:
                raise Missing(f"no user named {name!r}")
            await self._bump(conn)

        await self._write(work)

    async def update_user(self, user_id: int, fields: Mapping[str, Any]) -> User:
        unknown = set(fields) - USER_FIELDS
        if unknown:
            raise ValueError(f"not user fields: {sorted(unknown)}")
        values = {
            key: list(v) if key == "recovery_hashes" else (bool(v) if key == "admin" else v)
            for key, v in fields.items()
        }
        columns = sql.SQL(self._USER_COLUMNS)
        if values:
            assignments = sql.SQL(", ").join(
                sql.SQL("{} = %s").format(sql.Identifier(key)) for key in values
            )
            query = sql.SQL("UPDATE users SET {} WHERE id = %s RETURNING {}").format(
                assignments, columns
            )
        else:
            query = sql.SQL("SELECT {} FROM users WHERE id = %s FOR UPDATE").format(columns)

        async def work(conn: Conn) -> User:
            cur = await conn.execute(query, (*values.values(), user_id))
            row = await cur.fetchone()
            if row is None:
                raise Missing(f"no user with id {user_id}")
            await self._bump(conn)
            return self._user(row)

        return await self._write(work)

    async def use_totp_step(self, user_id: int, step: int) -> bool:
        # One statement: a concurrent use of the same step waits on the row lock, then
        # re-checks the condition against the committed value and matches nothing.
        async def work(conn: Conn) -> bool:
            cur = await conn.execute(
                "UPDATE users SET totp_last_step = %s WHERE id = %s AND totp_last_step < %s",
                (step, user_id, step),
            )
            return cur.rowcount == 1

        return await self._write(work)

    async def acquire_lease(self, key: str, holder: str, seconds: float) -> bool:
        async def work(conn: Conn) -> bool:
            now = time.time()
            cur = await conn.execute(
                "INSERT INTO leases (key, holder, expires) VALUES (%s, %s, %s) "
                "ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, "
                "expires = excluded.expires WHERE leases.expires < %s OR leases.holder = %s",
                (key, holder, now + seconds, now, holder),
            )
            return cur.rowcount == 1

        return await self._write(work, cache=True)

    async def release_lease(self, key: str, holder: str) -> None:
        async def work(conn: Conn) -> None:
            await conn.execute("DELETE FROM leases WHERE key = %s AND holder = %s", (key, holder))

        await self._write(work, cache=True)

    # -- roles ------------------------------------------------------------------------------

    async def set_role(self, feed_id: int, user_id: int, role: str | None) -> None:
        if role is not None and role not in ROLES:
            raise ValueError(f"not a role: {role!r}")

        async def work(conn: Conn) -> None:
            if role is None:
                await conn.execute(
                    "DELETE FROM feed_roles WHERE feed_id = %s AND user_id = %s",
                    (feed_id, user_id),
                )
            else:
                await conn.execute(
                    "INSERT INTO feed_roles (feed_id, user_id, role) VALUES (%s, %s, %s) "
                    "ON CONFLICT (feed_id, user_id) DO UPDATE SET role = excluded.role",
                    (feed_id, user_id, role),
                )
            await self._bump(conn)

        await self._write(work)

    async def get_role(self, feed_id: int, user_id: int) -> str | None:
        rows = await self._read(
            "SELECT role FROM feed_roles WHERE feed_id = %s AND user_id = %s", (feed_id, user_id)
        )
        return str(rows[0][0]) if rows else None

    async def list_roles(self, feed_id: int) -> list[tuple[str, str]]:
        rows = await self._read(
            "SELECT u.name, r.role FROM feed_roles r JOIN users u ON u.id = r.user_id "
            "WHERE r.feed_id = %s ORDER BY u.name",
            (feed_id,),
        )
        return [(str(r[0]), str(r[1])) for r in rows]

    # -- web login sessions -----------------------------------------------------------------

    async def create_login_session(self, login_hash: str, done_hash: str, expires: float) -> None:
        async def work(conn: Conn) -> None:
            await conn.execute("DELETE FROM login_sessions WHERE expires < %s", (time.time(),))
            await conn.execute(
                "INSERT INTO login_sessions (login_hash, done_hash, expires) VALUES (%s, %s, %s)",
                (login_hash, done_hash, expires),
            )

        await self._write(work)

    async def find_login_session(self, login_hash: str) -> LoginSession | None:
        rows = await self._read(
            "SELECT id, expires, user_id FROM login_sessions "
            "WHERE login_hash = %s AND expires > %s",
            (login_hash, time.time()),
        )
        return LoginSession(*rows[0]) if rows else None

    async def approve_login_session(self, login_hash: str, user_id: int) -> bool:
        async def work(conn: Conn) -> bool:
            cur = await conn.execute(
                "UPDATE login_sessions SET user_id = %s WHERE login_hash = %s AND expires > %s "
                "AND user_id IS NULL",
                (user_id, login_hash, time.time()),
            )
            return cur.rowcount == 1

        return await self._write(work)

    async def take_login_session(self, done_hash: str) -> LoginSession | None:
        async def work(conn: Conn) -> LoginSession | None:
            # FOR UPDATE: of two polls racing for an approved session, only one gets it.
            cur = await conn.execute(
                "SELECT id, expires, user_id FROM login_sessions "
                "WHERE done_hash = %s AND expires > %s FOR UPDATE",
                (done_hash, time.time()),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            if row[2] is not None:
                await conn.execute("DELETE FROM login_sessions WHERE id = %s", (row[0],))
            return LoginSession(*row)

        return await self._write(work)

    # -- tokens -----------------------------------------------------------------------------

    _TCOLUMNS = (
        "t.id, t.key, t.user_id, u.name, t.read_only, t.feeds, t.cidrs, t.expires, t.created, "
        "t.description, t.revoked, t.prefix"
    )

    @staticmethod
    def _token(row: tuple[Any, ...]) -> Token:
        return Token(
            id=row[0],
            key=row[1],
            user_id=row[2],
            user_name=row[3],
            read_only=row[4],
            feeds=tuple(row[5]),
            cidrs=tuple(row[6]),
            expires=row[7],
            created=row[8],
            description=row[9],
            revoked=row[10],
            prefix=row[11],
        )

    async def create_token(
        self,
        *,
        user_id: int,
        key: str,
        secret_hash: str,
        read_only: bool,
        feeds: Sequence[str],
        cidrs: Sequence[str],
        expires: float | None,
        description: str,
        prefix: str = "",
    ) -> Token:
        async def work(conn: Conn) -> Token:
            await conn.execute(
                "INSERT INTO tokens (key, user_id, secret_hash, read_only, feeds, cidrs, "
                "expires, created, description, prefix) "
                "VALUES (%s, %s, %s, %s, %s::text[], %s::text[], %s, %s, %s, %s)",
                (
                    key,
                    user_id,
                    secret_hash,
                    read_only,
                    list(feeds),
                    list(cidrs),
                    expires,
                    now_iso(),
                    description,
                    prefix,
                ),
            )
            cur = await conn.execute(
                f"SELECT {self._TCOLUMNS} FROM tokens t JOIN users u ON u.id = t.user_id "
                "WHERE t.key = %s",
                (key,),
            )
            row = await cur.fetchone()
            assert row is not None
            await self._bump(conn)
            return self._token(row)

        return await self._write(work)

    async def find_token(self, secret_hash: str) -> Token | None:
        rows = await self._read(
            f"SELECT {self._TCOLUMNS} FROM tokens t JOIN users u ON u.id = t.user_id "
            "WHERE t.secret_hash = %s",
            (secret_hash,),
        )
        return self._token(rows[0]) if rows else None

    async def list_tokens(self, user_id: int | None = None) -> list[Token]:
        query = (
            f"SELECT {self._TCOLUMNS} FROM tokens t JOIN users u ON u.id = t.user_id "
            "WHERE NOT t.revoked"
        )
        args: tuple[Any, ...] = ()
        if user_id is not None:
            query += " AND t.user_id = %s"
            args = (user_id,)
        return [self._token(r) for r in await self._read(query + " ORDER BY t.id", args)]

    async def revoke_token(self, key: str) -> bool:
        async def work(conn: Conn) -> bool:
            cur = await conn.execute(
                "UPDATE tokens SET revoked = TRUE WHERE key = %s AND NOT revoked", (key,)
            )
            if cur.rowcount == 0:
                return False
            await self._bump(conn)
            return True

        return await self._write(work)

    # -- packages ---------------------------------------------------------------------------

    @staticmethod
    async def _load_package(conn: Conn, feed_id: int, name: str) -> Package | None:
        cur = await conn.execute(_LOAD_PACKAGE, (feed_id, name))
        row = await cur.fetchone()
        if row is None:
            return None
        versions: dict[str, Version] = {}
        reserved: set[str] = set()
        for version, live, manifest, blob_key, size, published in row[8]:
            reserved.add(version)
            if live:
                versions[version] = Version(version, manifest, blob_key, size, published)
        return Package(
            feed_id=feed_id,
            name=name,
            rev=row[1],
            seq=row[2],
            created=row[3],
            modified=row[4],
            dist_tags=row[5],
            versions=versions,
            reserved=frozenset(reserved),
            maintainers=row[6],
            readme=row[7],
        )

    async def get_package(self, feed_id: int, name: str) -> Package | None:
        return await self._query(lambda conn: self._load_package(conn, feed_id, name))

    async def find_version(self, feed_id: int, name: str, version: str) -> Version | None:
        rows = await self._read(
            "SELECT v.manifest, v.blob_key, v.size, v.published FROM versions v "
            "JOIN packages p ON p.id = v.package_id "
            "WHERE p.feed_id = %s AND p.name = %s AND v.version = %s AND v.deleted IS NULL",
            (feed_id, name, version),
        )
        if not rows:
            return None
        manifest, blob_key, size, published = rows[0]
        return Version(version, manifest, blob_key, size, published)

    async def package_seq(self, feed_id: int, name: str) -> int | None:
        rows = await self._read(
            "SELECT seq FROM packages WHERE feed_id = %s AND name = %s", (feed_id, name)
        )
        return int(rows[0][0]) if rows else None

    async def publish(self, feed_id: int, name: str, new: NewVersion) -> Package:
        async def work(conn: Conn) -> Package:
            now = now_iso()
            # Create the row if it is the first version, then lock it: publishes of other
            # versions of this package wait here, so tags and latest are never lost.
            await conn.execute(
                "INSERT INTO packages (feed_id, name, rev, seq, created, modified, dist_tags, "
                "maintainers, readme) VALUES (%s, %s, 0, 0, %s, %s, '{}', '[]', '') "
                "ON CONFLICT (feed_id, name) DO NOTHING",
                (feed_id, name, now, now),
            )
            cur = await conn.execute(
                "SELECT id, dist_tags, maintainers, readme FROM packages "
                "WHERE feed_id = %s AND name = %s FOR UPDATE",
                (feed_id, name),
            )
            row = await cur.fetchone()
            assert row is not None
            package_id = row[0]
            tags: dict[str, str] = dict(row[1])
            maintainers: list[dict[str, str]] = list(row[2])
            readme: str = row[3]
            try:
                await conn.execute(
                    "INSERT INTO versions (package_id, version, manifest, blob_key, size, "
                    "published) VALUES (%s, %s, %s, %s, %s, %s)",
                    (package_id, new.version, _json(new.manifest), new.blob_key, new.size, now),
                )
            except errors.UniqueViolation:
                raise AlreadyExists(f"{name}@{new.version} is or was published") from None
            cur = await conn.execute(
                "SELECT COUNT(*) FROM versions WHERE package_id = %s AND deleted IS NULL",
                (package_id,),
            )
            live = await cur.fetchone()
            assert live is not None
            tags = tags_after_publish(tags, new.tag, new.version, only_live=live[0] == 1)
            if tags["latest"] == new.version:
                readme = _text(new.readme)
            if all(m.get("name") != new.maintainer.get("name") for m in maintainers):
                maintainers.append(dict(new.maintainer))
            seq = await self._bump(conn)
            await conn.execute(
                "UPDATE packages SET rev = rev + 1, seq = %s, modified = %s, dist_tags = %s, "
                "maintainers = %s, readme = %s WHERE id = %s",
                (seq, now, _json(tags), _json(maintainers), readme, package_id),
            )
            package = await self._load_package(conn, feed_id, name)
            assert package is not None
            await self._index(conn, package_id, package)
            return package

        return await self._write(work)

    @staticmethod
    async def _lock_package(conn: Conn, feed_id: int, name: str, expected_rev: int | None) -> int:
        """Lock the package row for this transaction; its id."""
        cur = await conn.execute(
            "SELECT id, rev FROM packages WHERE feed_id = %s AND name = %s FOR UPDATE",
            (feed_id, name),
        )
        row = await cur.fetchone()
        if row is None:
            raise Missing(f"no package named {name!r}")
        if expected_rev is not None and expected_rev != row[1]:
            raise StaleRevision(f"{name} changed since revision {expected_rev}")
        return int(row[0])

    async def change_package(self, feed_id: int, name: str, change: PackageChange) -> Package:
        async def work(conn: Conn) -> Package:
            package_id = await self._lock_package(conn, feed_id, name, change.expected_rev)
            current = await self._load_package(conn, feed_id, name)
            assert current is not None
            now = now_iso()
            async with conn.cursor() as cur:
                manifests = [
                    (_json(manifest), package_id, version)
                    for version, manifest in change.manifests.items()
                    if version in current.versions
                ]
                if manifests:
                    await cur.executemany(
                        "UPDATE versions SET manifest = %s WHERE package_id = %s AND version = %s",
                        manifests,
                    )
                if change.deleted:
                    await cur.execute(
                        "UPDATE versions SET deleted = %s WHERE package_id = %s "
                        "AND version = ANY(%s) AND deleted IS NULL",
                        (now, package_id, sorted(change.deleted)),
                    )
            live = set(current.versions) - change.deleted
            tags = dict(change.dist_tags if change.dist_tags is not None else current.dist_tags)
            tags = {tag: v for tag, v in tags.items() if v in live}
            maintainers = (
                change.maintainers if change.maintainers is not None else current.maintainers
            )
            seq = await self._bump(conn)
            await conn.execute(
                "UPDATE packages SET rev = rev + 1, seq = %s, modified = %s, dist_tags = %s, "
                "maintainers = %s WHERE id = %s",
                (seq, now, _json(tags), _json(list(maintainers)), package_id),
            )
            package = await self._load_package(conn, feed_id, name)
            assert package is not None
            await self._index(conn, package_id, package)
            return package

        return await self._write(work)

    async def delete_package(self, feed_id: int, name: str, expected_rev: int | None) -> None:
        async def work(conn: Conn) -> None:
            package_id = await self._lock_package(conn, feed_id, name, expected_rev)
            now = now_iso()
            await conn.execute(
                "UPDATE versions SET deleted = %s WHERE package_id = %s AND deleted IS NULL",
                (now, package_id),
            )
            seq = await self._bump(conn)
            await conn.execute(
                "UPDATE packages SET rev = rev + 1, seq = %s, modified = %s, dist_tags = '{}' "
                "WHERE id = %s",
                (seq, now, package_id),
            )
            await conn.execute("DELETE FROM search_docs WHERE package_id = %s", (package_id,))

        await self._write(work)

    @staticmethod
    async def _index(conn: Conn, package_id: int, package: Package) -> None:
        """Keep the search entry in step with the package, in the same transaction."""
        entry = search_entry(package)
        if entry is None:
            await conn.execute("DELETE FROM search_docs WHERE package_id = %s", (package_id,))
            return
        # Lowercased here, not by PostgreSQL: case folding as Python's, whatever the locale.
        haystack = _text(f"{package.name} {search_text(entry)}".lower())
        await conn.execute(
            "INSERT INTO search_docs (package_id, feed_id, name, modified, entry, haystack) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (package_id) DO UPDATE SET "
            "modified = excluded.modified, entry = excluded.entry, haystack = excluded.haystack",
            (package_id, package.feed_id, package.name, package.modified, _json(entry), haystack),
        )

    async def search(
        self, feed_id: int, text: str, *, size: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        words = [_text(w) for w in text.lower().split() if w][:8]
        long = [w for w in words if len(w) >= 3]
        short = [w for w in words if len(w) < 3]
        if long:
            # Every word a substring of the name or the text (the trigram index finds them);
            # ties within a rank go to the closest match, then by name. Words too short for
            # a trigram must be in the name ("react ui").
            phrase = " ".join(words)
            where = (
                "FROM search_docs d WHERE d.feed_id = %s"
                + " AND d.haystack LIKE %s" * len(long)
                + " AND strpos(lower(d.name), %s) > 0" * len(short)
            )
            args: tuple[Any, ...] = (feed_id, *(_like_infix(w) for w in long), *short)
            order = (
                "ORDER BY (d.name = %s) DESC, (d.name LIKE %s) DESC, (strpos(d.name, %s) > 0) "
                "DESC, similarity(d.haystack, %s) DESC, d.name"
            )
            order_args: tuple[Any, ...] = (phrase, _like_prefix(phrase), phrase, phrase)
        else:
            prefix = " ".join(words)
            where = "FROM search_docs d WHERE d.feed_id = %s AND d.name >= %s AND d.name < %s"
            args = (feed_id, prefix, prefix + "\U0010ffff")
            order, order_args = "ORDER BY d.name", ()
        total = int((await self._read(f"SELECT COUNT(*) {where}", args))[0][0])
        rows = await self._read(
            f"SELECT d.entry {where} {order} LIMIT %s OFFSET %s",
            (*args, *order_args, size, offset),
        )
        return [r[0] for r in rows], total

    async def newest_packages(
        self, feed_id: int, *, size: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        total = await self._read("SELECT COUNT(*) FROM search_docs WHERE feed_id = %s", (feed_id,))
        rows = await self._read(
            "SELECT entry FROM search_docs WHERE feed_id = %s "
            "ORDER BY modified DESC, name LIMIT %s OFFSET %s",
            (feed_id, size, offset),
        )
        return [r[0] for r in rows], int(total[0][0])

    async def listing(self, feed_id: int, since: str | None) -> list[dict[str, Any]]:
        rows = await self._read(
            "SELECT entry FROM search_docs WHERE feed_id = %s AND modified > %s ORDER BY name",
            (feed_id, since or ""),
        )
        return [r[0] for r in rows]

    async def dump(self, feeds: Sequence[str] | None = None) -> dict[str, Any]:
        async def work(conn: Conn) -> dict[str, Any]:
            async with conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return await _dump(conn, feeds)

        return await self._query(work)

    async def load(self, snapshot: Mapping[str, Any]) -> dict[str, int]:
        return await self._write(lambda conn: self._load(conn, snapshot))

    async def _load(self, conn: Conn, snap: Mapping[str, Any]) -> dict[str, int]:
        """The SQLite store's merge, with ``ON CONFLICT DO NOTHING`` so that it also holds
        against concurrent writers; every row lock is taken before the first bump."""
        added = dict.fromkeys(
            ("feeds", "users", "tokens", "roles", "connectors", "packages", "versions"), 0
        )

        async def one(query: str, args: Sequence[Any]) -> Any:
            cur = await conn.execute(query, args)
            row = await cur.fetchone()
            return row[0] if row else None

        async def count(query: str, args: Sequence[Any]) -> int:
            return (await conn.execute(query, args)).rowcount

        async def feed_id(name: str) -> int | None:
            found = await one("SELECT id FROM feeds WHERE name = %s", (name,))
            return None if found is None else int(found)

        async def user_id(name: str) -> int | None:
            found = await one("SELECT id FROM users WHERE name = %s", (name,))
            return None if found is None else int(found)

        for feed in snap.get("feeds", []):
            added["feeds"] += await count(
                "INSERT INTO feeds (name, private, created) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (feed["name"], bool(feed["private"]), feed["created"]),
            )
            await conn.execute(
                "INSERT INTO upstream_names (feed_id, pattern) "
                "SELECT f.id, p FROM feeds f, unnest(%s::text[]) AS p WHERE f.name = %s "
                "ON CONFLICT DO NOTHING",
                (list(feed.get("upstream_names", [])), feed["name"]),
            )
        for user in snap.get("users", []):
            added["users"] += await count(
                "INSERT INTO users (name, email, password_hash, admin, created, totp_secret, "
                "totp_pending, recovery_hashes) VALUES (%s, %s, %s, %s, %s, %s, %s, %s::text[]) "
                "ON CONFLICT (name) DO NOTHING",
                (
                    user["name"],
                    user["email"],
                    user["password_hash"],
                    bool(user["admin"]),
                    user["created"],
                    user.get("totp_secret"),
                    user.get("totp_pending"),
                    list(user.get("recovery_hashes", [])),
                ),
            )
        for token in snap.get("tokens", []):
            owner = await user_id(token["user"])
            if owner is None:
                continue
            added["tokens"] += await count(
                "INSERT INTO tokens (key, user_id, secret_hash, read_only, feeds, cidrs, "
                "expires, created, description, revoked, prefix) "
                "VALUES (%s, %s, %s, %s, %s::text[], %s::text[], %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (
                    token["key"],
                    owner,
                    token["secret_hash"],
                    bool(token["read_only"]),
                    list(token["feeds"]),
                    list(token["cidrs"]),
                    token["expires"],
                    token["created"],
                    token["description"],
                    bool(token["revoked"]),
                    token.get("prefix", ""),
                ),
            )
        for role in snap.get("roles", []):
            feed, user = await feed_id(role["feed"]), await user_id(role["user"])
            if feed is None or user is None:
                continue
            added["roles"] += await count(
                "INSERT INTO feed_roles (feed_id, user_id, role) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (feed, user, role["role"]),
            )
        for c in snap.get("connectors", []):
            feed = await feed_id(c["feed"])
            if feed is None:
                continue
            added["connectors"] += await count(
                "INSERT INTO connectors (feed_id, name, position, url, credential_kind, "
                "credential_env, allow, block, min_age_hours, ttl, allow_internal) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s::text[], %s::text[], %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (
                    feed,
                    c["name"],
                    c["position"],
                    c["url"],
                    c["credential_kind"],
                    c["credential_env"],
                    list(c["allow"]),
                    list(c["block"]),
                    c["min_age_hours"],
                    c["ttl"],
                    bool(c.get("allow_internal", False)),
                ),
            )
        touched: list[tuple[int, int, str]] = []
        for pkg in snap.get("packages", []):
            feed = await feed_id(pkg["feed"])
            if feed is None:
                continue
            created = await one(
                "INSERT INTO packages (feed_id, name, rev, seq, created, modified, dist_tags, "
                "maintainers, readme) VALUES (%s, %s, %s, 0, %s, %s, %s, %s, %s) "
                "ON CONFLICT (feed_id, name) DO NOTHING RETURNING id",
                (
                    feed,
                    pkg["name"],
                    pkg["rev"],
                    pkg["created"],
                    pkg["modified"],
                    _json(pkg["dist_tags"]),
                    _json(pkg["maintainers"]),
                    _text(pkg["readme"]),
                ),
            )
            added["packages"] += created is not None
            package_id = await one(
                "SELECT id FROM packages WHERE feed_id = %s AND name = %s FOR UPDATE",
                (feed, pkg["name"]),
            )
            new_versions = 0
            for v in pkg["versions"]:
                new_versions += await count(
                    "INSERT INTO versions (package_id, version, manifest, blob_key, size, "
                    "published, deleted) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    (
                        package_id,
                        v["version"],
                        _json(v["manifest"]),
                        v["blob_key"],
                        v["size"],
                        v["published"],
                        v["deleted"],
                    ),
                )
            if new_versions:
                added["versions"] += new_versions
                touched.append((package_id, feed, pkg["name"]))
        for package_id, feed, name in touched:
            seq = await self._bump(conn)
            await conn.execute("UPDATE packages SET seq = %s WHERE id = %s", (seq, package_id))
            package = await self._load_package(conn, feed, name)
            assert package is not None
            await self._index(conn, package_id, package)
        if any(added.values()):
            await self._bump(conn)
        return added

    async def version_refs(self) -> list[VersionRef]:
        rows = await self._read(
            "SELECT f.name, p.name, v.version, v.blob_key, v.manifest -> 'dist', "
            "v.deleted IS NOT NULL FROM versions v "
            "JOIN packages p ON p.id = v.package_id JOIN feeds f ON f.id = p.feed_id "
            "ORDER BY f.name, p.name, v.version"
        )
        refs = []
        for feed, name, version, blob_key, dist, deleted in rows:
            integrity = dist.get("integrity") if isinstance(dist, dict) else None
            refs.append(VersionRef(feed, name, version, blob_key, integrity, deleted))
        return refs

    async def referenced_blobs(self) -> set[str]:
        rows = await self._read(
            "SELECT blob_key FROM versions WHERE deleted IS NULL "
            "UNION SELECT blob_key FROM upstream_tarballs"
        )
        return {r[0] for r in rows}

    async def local_scopes(self, feed_id: int) -> set[str]:
        rows = await self._read(
            "SELECT DISTINCT split_part(name, '/', 1) FROM packages "
            "WHERE feed_id = %s AND name LIKE %s",
            (feed_id, "@%/%"),
        )
        return {str(r[0]) for r in rows}

    # -- connectors -------------------------------------------------------------------------

    _CONNECTOR_COLUMNS = (
        "id, feed_id, name, position, url, credential_kind, credential_env, allow, block, "
        "min_age_hours, ttl, allow_internal"
    )

    @staticmethod
    def _connector(row: tuple[Any, ...]) -> Connector:
        return Connector(
            id=row[0],
            feed_id=row[1],
            name=row[2],
            position=row[3],
            url=row[4],
            credential_kind=row[5],
            credential_env=row[6],
            allow=tuple(row[7]),
            block=tuple(row[8]),
            min_age_hours=row[9],
            ttl=row[10],
            allow_internal=row[11],
        )

    @staticmethod
    async def _lock_feed(conn: Conn, feed_id: int) -> None:
        """Serialize edits of one feed's connector settings (positions, name lists).

        NO KEY UPDATE does not block publishes, whose foreign keys take KEY SHARE."""
        cur = await conn.execute("SELECT 1 FROM feeds WHERE id = %s FOR NO KEY UPDATE", (feed_id,))
        if await cur.fetchone() is None:
            raise Missing(f"no feed with id {feed_id}")

    async def add_connector(
        self,
        feed_id: int,
        *,
        name: str,
        url: str,
        credential_kind: str | None,
        credential_env: str | None,
        allow: Sequence[str],
        block: Sequence[str],
        min_age_hours: float | None,
        ttl: int,
        allow_internal: bool = False,
    ) -> Connector:
        async def work(conn: Conn) -> Connector:
            await self._lock_feed(conn, feed_id)
            try:
                cur = await conn.execute(
                    "INSERT INTO connectors (feed_id, name, position, url, credential_kind, "
                    "credential_env, allow, block, min_age_hours, ttl, allow_internal) "
                    "SELECT %s, %s, COALESCE(MAX(position), 0) + 1, %s, %s, %s, %s::text[], "
                    "%s::text[], %s, %s, %s FROM connectors WHERE feed_id = %s "
                    f"RETURNING {self._CONNECTOR_COLUMNS}",
                    (
                        feed_id,
                        name,
                        url,
                        credential_kind,
                        credential_env,
                        list(allow),
                        list(block),
                        min_age_hours,
                        ttl,
                        allow_internal,
                        feed_id,
                    ),
                )
            except errors.UniqueViolation:
                raise AlreadyExists(f"the feed already has a connector named {name!r}") from None
            row = await cur.fetchone()
            assert row is not None
            await self._bump(conn)
            return self._connector(row)

        return await self._write(work)

    async def list_connectors(self, feed_id: int) -> list[Connector]:
        rows = await self._read(
            f"SELECT {self._CONNECTOR_COLUMNS} FROM connectors WHERE feed_id = %s "
            "ORDER BY position",
            (feed_id,),
        )
        return [self._connector(r) for r in rows]

    async def remove_connector(self, feed_id: int, name: str) -> None:
        async def work(conn: Conn) -> None:
            cur = await conn.execute(
                "DELETE FROM connectors WHERE feed_id = %s AND name = %s", (feed_id, name)
            )
            if cur.rowcount == 0:
                raise Missing(f"no connector named {name!r}")
            await self._bump(conn)

        await self._write(work)

    async def set_upstream_names(self, feed_id: int, patterns: Sequence[str]) -> None:
        async def work(conn: Conn) -> None:
            await self._lock_feed(conn, feed_id)
            await conn.execute("DELETE FROM upstream_names WHERE feed_id = %s", (feed_id,))
            await conn.execute(
                "INSERT INTO upstream_names (feed_id, pattern) "
                "SELECT %s, p FROM unnest(%s::text[]) AS p ON CONFLICT DO NOTHING",
                (feed_id, list(patterns)),
            )
            await self._bump(conn)

        await self._write(work)

    async def upstream_names(self, feed_id: int) -> list[str]:
        rows = await self._read(
            "SELECT pattern FROM upstream_names WHERE feed_id = %s ORDER BY pattern", (feed_id,)
        )
        return [str(r[0]) for r in rows]

    async def get_upstream_doc(self, connector_id: int, name: str) -> UpstreamDoc | None:
        rows = await self._read(
            "SELECT status, etag, fetched, body, abbreviated FROM upstream_docs "
            "WHERE connector_id = %s AND name = %s",
            (connector_id, name),
        )
        if not rows:
            return None
        status, etag, fetched, body, abbreviated = rows[0]
        return UpstreamDoc(status, etag, fetched, bytes(body), bool(abbreviated))

    async def upstream_doc_state(self, connector_id: int, name: str) -> tuple[int, float] | None:
        rows = await self._read(
            "SELECT status, fetched FROM upstream_docs WHERE connector_id = %s AND name = %s",
            (connector_id, name),
        )
        return (int(rows[0][0]), float(rows[0][1])) if rows else None

    async def put_upstream_doc(self, connector_id: int, name: str, doc: UpstreamDoc) -> None:
        async def work(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO upstream_docs "
                "(connector_id, name, status, etag, fetched, body, abbreviated) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (connector_id, name) DO UPDATE SET "
                "status = excluded.status, etag = excluded.etag, fetched = excluded.fetched, "
                "body = excluded.body, abbreviated = excluded.abbreviated",
                (connector_id, name, doc.status, doc.etag, doc.fetched, doc.body, doc.abbreviated),
            )

        await self._write(work, cache=True)

    async def get_upstream_tarball(
        self, connector_id: int, name: str, version: str
    ) -> tuple[str, int] | None:
        rows = await self._read(
            "SELECT blob_key, size FROM upstream_tarballs "
            "WHERE connector_id = %s AND name = %s AND version = %s",
            (connector_id, name, version),
        )
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    async def put_upstream_tarball(
        self, connector_id: int, name: str, version: str, blob_key: str, size: int
    ) -> None:
        async def work(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO upstream_tarballs (connector_id, name, version, blob_key, size) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (connector_id, name, version) "
                "DO UPDATE SET blob_key = excluded.blob_key, size = excluded.size",
                (connector_id, name, version, blob_key, size),
            )

        await self._write(work, cache=True)


async def _dump(conn: Conn, feeds: Sequence[str] | None) -> dict[str, Any]:
    """Every table by natural keys (see ``MetadataStore.dump``), as the SQLite store has it."""
    cur = conn.cursor(row_factory=dict_row)

    async def rows(query: str) -> list[dict[str, Any]]:
        await cur.execute(query)
        return await cur.fetchall()

    wanted = None if feeds is None else set(feeds)
    feed_rows = [
        r
        for r in await rows("SELECT * FROM feeds ORDER BY name")
        if wanted is None or r["name"] in wanted
    ]
    feed_names = {r["id"]: r["name"] for r in feed_rows}
    patterns: dict[int, list[str]] = {}
    for r in await rows("SELECT feed_id, pattern FROM upstream_names"):
        patterns.setdefault(r["feed_id"], []).append(r["pattern"])
    users = await rows("SELECT * FROM users ORDER BY name")
    user_names = {r["id"]: r["name"] for r in users}
    versions: dict[int, list[dict[str, Any]]] = {}
    for v in await rows(
        "SELECT package_id, version, manifest, blob_key, size, published, deleted "
        "FROM versions ORDER BY package_id, version"
    ):
        versions.setdefault(v.pop("package_id"), []).append(v)
    packages = [
        {
            "feed": feed_names[p["feed_id"]],
            "name": p["name"],
            "rev": p["rev"],
            "created": p["created"],
            "modified": p["modified"],
            "dist_tags": p["dist_tags"],
            "maintainers": p["maintainers"],
            "readme": p["readme"],
            "versions": versions.get(p["id"], []),
        }
        for p in await rows("SELECT * FROM packages ORDER BY feed_id, name")
        if p["feed_id"] in feed_names
    ]
    return {
        "format": 1,
        "feeds": [
            {
                "name": r["name"],
                "private": r["private"],
                "created": r["created"],
                "upstream_names": sorted(patterns.get(r["id"], [])),
            }
            for r in feed_rows
        ],
        "users": [
            {
                "name": r["name"],
                "email": r["email"],
                "password_hash": r["password_hash"],
                "admin": r["admin"],
                "created": r["created"],
                "totp_secret": r["totp_secret"],
                "totp_pending": r["totp_pending"],
                "recovery_hashes": r["recovery_hashes"],
            }
            for r in users
        ],
        "tokens": [
            {
                "key": r["key"],
                "user": user_names[r["user_id"]],
                "secret_hash": r["secret_hash"],
                "read_only": r["read_only"],
                "feeds": r["feeds"],
                "cidrs": r["cidrs"],
                "expires": r["expires"],
                "created": r["created"],
                "description": r["description"],
                "revoked": r["revoked"],
                "prefix": r["prefix"],
            }
            for r in await rows("SELECT * FROM tokens ORDER BY id")
        ],
        "roles": [
            {"feed": feed_names[r["feed_id"]], "user": user_names[r["user_id"]], "role": r["role"]}
            for r in await rows("SELECT * FROM feed_roles ORDER BY feed_id, user_id")
            if r["feed_id"] in feed_names
        ],
        "connectors": [
            {
                "feed": feed_names[r["feed_id"]],
                "name": r["name"],
                "position": r["position"],
                "url": r["url"],
                "credential_kind": r["credential_kind"],
                "credential_env": r["credential_env"],
                "allow": r["allow"],
                "block": r["block"],
                "min_age_hours": r["min_age_hours"],
                "ttl": r["ttl"],
                "allow_internal": r["allow_internal"],
            }
            for r in await rows("SELECT * FROM connectors ORDER BY feed_id, position")
            if r["feed_id"] in feed_names
        ],
        "packages": packages,
    }


async def schema_version(conn: Conn) -> int | None:
    """The database's schema version; None for an empty database."""
    cur = await conn.execute("SELECT to_regclass('meta') IS NOT NULL")
    exists = await cur.fetchone()
    if exists is None or not exists[0]:
        return None
    cur = await conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _prepare(conn: Conn, *, upgrade: bool) -> int | None:
    """Create the schema in an empty database, or check (and with ``upgrade``, bring up to
    date) an existing one, as the SQLite store does. Returns the version upgraded from."""
    version = await schema_version(conn)
    if version == SCHEMA_VERSION:
        return None  # the common case: one query, no lock
    async with conn.transaction():
        # Several workers starting at once: one creates or upgrades, the others wait for
        # it and then find the work done.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        version = await schema_version(conn)
        if version is None:
            await conn.execute(SCHEMA)
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (SCHEMA_VERSION,),
            )
            return None
        if version > SCHEMA_VERSION:
            raise SchemaMismatch(
                f"the database schema is version {version}, newer than this Entrepot knows "
                f"({SCHEMA_VERSION}): upgrade Entrepot"
            )
        if version == SCHEMA_VERSION:
            return None
        if not upgrade:
            raise SchemaMismatch(
                f"the database schema is version {version}; this Entrepot needs "
                f"{SCHEMA_VERSION}: run `entrepot db upgrade` (after a backup)"
            )
        for step in range(version, SCHEMA_VERSION):
            await conn.execute(MIGRATIONS[step])
        await conn.execute(
            "UPDATE meta SET value = %s WHERE key = 'schema_version'", (SCHEMA_VERSION,)
        )
        return version
