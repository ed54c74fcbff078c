"""The two store protocols and the records they hand out.

``MetadataStore`` keeps feeds, users, tokens, packages and versions; ``BlobStore`` keeps
tarballs by content hash. Each has one contract test suite that every backend passes
(``tests/contract/``). Every write bumps the store's change counter, ``seq``, so caches in any
process can tell whether what they hold is still current.
"""

from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from entrepot.npm.semver import parse_version

#: Per-request memo of the change counter: a request reads ``seq`` once, however many caches
#: it checks (the app sets a fresh dict per request; a store's own writes clear it).
seq_memo: contextvars.ContextVar[dict[str, int] | None] = contextvars.ContextVar(
    "entrepot_seq_memo", default=None
)


class StoreError(Exception):
    """Base of the errors a store raises on purpose."""


class AlreadyExists(StoreError):
    """A unique thing (feed, user, version) is already there, or was and stays reserved."""


class Missing(StoreError):
    """The thing asked for is not in the store."""


class StaleRevision(StoreError):
    """The package changed since the caller read its revision."""


class StoreFull(StoreError):
    """The backend has no room for the write (disk full, quota)."""


class SchemaMismatch(StoreError):
    """The database's schema is older (run ``entrepot db upgrade``) or newer than the code."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached or is not answering (connection lost, locked)."""


@dataclasses.dataclass(frozen=True)
class Feed:
    id: int
    name: str
    private: bool
    created: str


@dataclasses.dataclass(frozen=True)
class User:
    id: int
    name: str
    email: str
    password_hash: str | None
    admin: bool
    created: str
    #: Base32 TOTP secret once enrolled; the second factor for publishing and new tokens.
    totp_secret: str | None = None
    #: A secret shown to the user but not yet confirmed with a code.
    totp_pending: str | None = None
    #: SHA-256 hashes of unused recovery codes.
    recovery_hashes: tuple[str, ...] = ()


#: The roles a user can hold on a feed, weakest first.
ROLES = ("reader", "publisher", "owner")

#: Columns of a user that ``update_user`` may change.
USER_FIELDS = frozenset(
    {"email", "password_hash", "admin", "totp_secret", "totp_pending", "recovery_hashes"}
)


@dataclasses.dataclass(frozen=True)
class Connector:
    """An upstream a feed reads through: a registry URL or ``feed:OTHER``.

    Credentials are never stored here, only the name of the environment variable (or
    config key) that holds them.
    """

    id: int
    feed_id: int
    name: str
    position: int
    url: str
    credential_kind: str | None  # "token" (Bearer) or "basic" (user:password)
    credential_env: str | None
    allow: tuple[str, ...]
    block: tuple[str, ...]
    min_age_hours: float | None
    ttl: int
    #: An administrator allowed link-local or this-server addresses (see netguard).
    allow_internal: bool = False


@dataclasses.dataclass(frozen=True)
class UpstreamDoc:
    """A packument as an upstream last answered: 200 with a body, or 404. ``abbreviated``:
    the body is the abbreviated ("corgi") form, good for installs only."""

    status: int
    etag: str | None
    fetched: float
    body: bytes
    abbreviated: bool = False


@dataclasses.dataclass(frozen=True)
class VersionRef:
    """A version's claim on a blob, for ``entrepot fsck``."""

    feed: str
    name: str
    version: str
    blob_key: str
    integrity: str | None
    deleted: bool


@dataclasses.dataclass(frozen=True)
class LoginSession:
    """A web sign-in started by ``npm login``: npm polls it until a user approves it."""

    id: int
    expires: float
    user_id: int | None


@dataclasses.dataclass(frozen=True)
class Token:
    """A token as stored: only the hash of the secret, never the secret."""

    id: int
    key: str
    user_id: int
    user_name: str
    read_only: bool
    feeds: tuple[str, ...]
    cidrs: tuple[str, ...]
    expires: float | None
    created: str
    description: str
    revoked: bool
    #: The first characters of the secret, for people to tell tokens apart in lists.
    prefix: str = ""


@dataclasses.dataclass(frozen=True)
class Version:
    """One published version. ``manifest`` is the version object as served, minus
    ``dist.tarball`` (built per request from the server's own URL)."""

    version: str
    manifest: Mapping[str, Any]
    blob_key: str
    size: int
    published: str


@dataclasses.dataclass(frozen=True)
class Package:
    """A package in a feed: its live versions, the numbers it may never reuse, and tags."""

    feed_id: int
    name: str
    rev: int
    seq: int
    created: str
    modified: str
    dist_tags: Mapping[str, str]
    versions: Mapping[str, Version]
    reserved: frozenset[str]
    maintainers: Sequence[Mapping[str, str]]
    readme: str


@dataclasses.dataclass(frozen=True)
class NewVersion:
    """What a publish writes: the version row and the tag that points at it."""

    version: str
    manifest: Mapping[str, Any]
    blob_key: str
    size: int
    tag: str
    readme: str
    maintainer: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class PackageChange:
    """A metadata edit to an existing package, applied in one transaction.

    ``expected_rev`` is checked when given (npm's ``-rev`` flows). ``manifests`` replaces the
    manifest of live versions (deprecation); ``deleted`` versions become reserved numbers.
    """

    expected_rev: int | None = None
    dist_tags: Mapping[str, str] | None = None
    manifests: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    deleted: frozenset[str] = frozenset()
    maintainers: Sequence[Mapping[str, str]] | None = None


def tags_after_publish(
    tags: Mapping[str, str], tag: str, version: str, *, only_live: bool
) -> dict[str, str]:
    """The dist-tags once ``version`` is published under ``tag`` (both stores apply this in
    the publish transaction, so racing publishes cannot disagree).

    ``latest`` always exists (the first live version gets it whatever its tag), and a publish
    never moves ``latest`` down to a lower version than a live one it points at: that is npm's
    own rule ("cannot implicitly apply the latest tag"), made race-free, so fifty racing
    publishes leave ``latest`` on the highest. ``npm dist-tag add`` still moves it anywhere.
    """
    out = dict(tags)
    current = out.get("latest")
    lower = (
        tag == "latest"
        and current is not None
        and not only_live
        and parse_version(version) < parse_version(current)
    )
    if not lower:
        out[tag] = version
    if "latest" not in out or only_live:
        out["latest"] = version
    return out


class MetadataStore(Protocol):
    """Feeds, users, tokens, packages, versions, and the change counter."""

    async def seq(self, *, fresh: bool = False) -> int:
        """The change counter: any committed write anywhere makes it larger.

        A shared store may answer from a copy that lags other processes' writes by the
        moment their notification takes to arrive. ``fresh`` asks for a value that counts
        every write committed before this request began (a revoked token must be refused
        at once, everywhere): a round trip that concurrent callers share."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...

    # feeds
    async def create_feed(self, name: str, *, private: bool) -> Feed:
        """Create a feed; :class:`AlreadyExists` if the name is taken."""
        ...

    async def get_feed(self, name: str) -> Feed | None:
        """The feed of that name, or None."""
        ...

    async def list_feeds(self) -> list[Feed]:
        """All feeds, by name."""
        ...

    async def delete_feed(self, name: str) -> None:
        """Delete a feed and everything in it; :class:`Missing` if there is none."""
        ...

    async def count_packages(self, feed_id: int) -> int:
        """How many packages with at least one live version the feed has."""
        ...

    async def set_feed_private(self, name: str, private: bool) -> Feed:
        """Make a feed private (only users with a role may read it) or public-read; the
        feed as it now is. :class:`Missing` if there is no such feed."""
        ...

    # users
    async def create_user(
        self, name: str, email: str, password_hash: str | None, *, admin: bool
    ) -> User:
        """Create a user; :class:`AlreadyExists` if the name is taken."""
        ...

    async def get_user(self, name: str) -> User | None:
        """The user of that name, or None."""
        ...

    async def get_user_by_id(self, user_id: int) -> User | None:
        """The user with that id, or None."""
        ...

    async def list_users(self) -> list[User]:
        """All users, by name."""
        ...

    async def set_password(self, name: str, password_hash: str) -> None:
        """Replace a user's password hash; :class:`Missing` if there is no such user."""
        ...

    async def delete_user(self, name: str) -> None:
        """Delete a user with their tokens, roles and sign-in sessions (what they published
        stays, signed by ``_npmUser``); :class:`Missing` if there is no such user."""
        ...

    async def update_user(self, user_id: int, fields: Mapping[str, Any]) -> User:
        """Change some of :data:`USER_FIELDS`; :class:`Missing` if there is no such user."""
        ...

    async def use_totp_step(self, user_id: int, step: int) -> bool:
        """Record that a TOTP time step was used; False if it (or a later one) already was,
        so one code cannot be replayed, on any process."""
        ...

    # leases
    async def acquire_lease(self, key: str, holder: str, seconds: float) -> bool:
        """Take (or renew) a lease for ``seconds`` unless another holder has a live one; a
        way for processes to agree that only one of them does a thing (an upstream fetch)."""
        ...

    async def release_lease(self, key: str, holder: str) -> None:
        """Give up a lease early (only the holder's own)."""
        ...

    async def alone(self) -> bool:
        """True when this process is known to be the only server using the store just
        now, so that leases would coordinate with nobody; False when others are, or when
        the store cannot tell. A hint: a process that starts meanwhile may be missed for
        a moment, which costs at most a duplicate upstream fetch."""
        ...

    # roles
    async def set_role(self, feed_id: int, user_id: int, role: str | None) -> None:
        """Grant a role on a feed (one of :data:`ROLES`), or remove it with None."""
        ...

    async def get_role(self, feed_id: int, user_id: int) -> str | None:
        """The user's role on the feed, or None."""
        ...

    async def list_roles(self, feed_id: int) -> list[tuple[str, str]]:
        """(user name, role) pairs of a feed, by user name."""
        ...

    # web login sessions
    async def create_login_session(self, login_hash: str, done_hash: str, expires: float) -> None:
        """Start a web sign-in known by the hashes of its two secret ids."""
        ...

    async def find_login_session(self, login_hash: str) -> LoginSession | None:
        """The session the browser holds (by its login id), if it has not expired."""
        ...

    async def approve_login_session(self, login_hash: str, user_id: int) -> bool:
        """Mark a live session as signed in by a user; False if unknown or expired."""
        ...

    async def take_login_session(self, done_hash: str) -> LoginSession | None:
        """The session npm polls (by its done id); deleted once approved and taken."""
        ...

    # tokens
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
        """Store a token by the hash of its secret."""
        ...

    async def find_token(self, secret_hash: str) -> Token | None:
        """The token whose secret hashes to this, revoked or not; None if unknown."""
        ...

    async def list_tokens(self, user_id: int | None = None) -> list[Token]:
        """Live (unrevoked) tokens, of one user or of all."""
        ...

    async def revoke_token(self, key: str) -> bool:
        """Revoke by key; False if no live token has that key."""
        ...

    # packages
    async def get_package(self, feed_id: int, name: str) -> Package | None:
        """The package with its live versions, or None if it was never published."""
        ...

    async def find_version(self, feed_id: int, name: str, version: str) -> Version | None:
        """One live version (cheap: for tarball requests), or None."""
        ...

    async def package_seq(self, feed_id: int, name: str) -> int | None:
        """The seq of the package's last change (cheap: for cache validation)."""
        ...

    async def publish(self, feed_id: int, name: str, new: NewVersion) -> Package:
        """Add one version in one transaction.

        :class:`AlreadyExists` if the version is live or was ever deleted: numbers are never
        reused. The blob must already be in the blob store.
        """
        ...

    async def change_package(self, feed_id: int, name: str, change: PackageChange) -> Package:
        """Apply an edit; :class:`Missing` for no package, :class:`StaleRevision` on a rev
        mismatch. Deleted versions stay reserved."""
        ...

    async def delete_package(self, feed_id: int, name: str, expected_rev: int | None) -> None:
        """Delete every version (all stay reserved) and the tags."""
        ...

    async def search(
        self, feed_id: int, text: str, *, size: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        """Packages with a live version matching every word of ``text`` (in the name,
        description, keywords or display name), best first: exact name, name prefix, name
        containing the words, then the rest. Returns one page of search entries and the total
        count. An empty ``text`` lists all packages by name."""
        ...

    async def newest_packages(
        self, feed_id: int, *, size: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of the feed's search entries (packages with a live version), the most
        recently changed first (ties by name), and the total count; an index walk, for
        feeds of any size (the web UI's package list)."""
        ...

    async def listing(self, feed_id: int, since: str | None) -> list[dict[str, Any]]:
        """The search entries of every package, or of those modified after ``since``."""
        ...

    async def local_scopes(self, feed_id: int) -> set[str]:
        """Scopes (``@s``) of the packages ever published in the feed."""
        ...

    # connectors and their cache
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
        """Append a connector to the feed's list; :class:`AlreadyExists` for a taken name."""
        ...

    async def list_connectors(self, feed_id: int) -> list[Connector]:
        """The feed's connectors, in the order they are asked."""
        ...

    async def remove_connector(self, feed_id: int, name: str) -> None:
        """Remove a connector and its cache; :class:`Missing` if there is none."""
        ...

    async def set_upstream_names(self, feed_id: int, patterns: Sequence[str]) -> None:
        """Names (globs) for which local and upstream versions may be merged."""
        ...

    async def upstream_names(self, feed_id: int) -> list[str]:
        """See :meth:`set_upstream_names`."""
        ...

    async def get_upstream_doc(self, connector_id: int, name: str) -> UpstreamDoc | None:
        """The cached upstream answer for a name, or None."""
        ...

    async def upstream_doc_state(self, connector_id: int, name: str) -> tuple[int, float] | None:
        """The cached answer's status and fetch time, without its body; None if none."""
        ...

    async def put_upstream_doc(self, connector_id: int, name: str, doc: UpstreamDoc) -> None:
        """Cache an upstream answer (no ``seq`` bump: a cache, not a change)."""
        ...

    async def get_upstream_tarball(
        self, connector_id: int, name: str, version: str
    ) -> tuple[str, int] | None:
        """(blob key, size) of a cached upstream tarball, or None."""
        ...

    async def put_upstream_tarball(
        self, connector_id: int, name: str, version: str, blob_key: str, size: int
    ) -> None:
        """Remember that an upstream tarball is in the blob store."""
        ...

    async def dump(self, feeds: Sequence[str] | None = None) -> dict[str, Any]:
        """A consistent snapshot (one read transaction) of feeds (all, or these), users,
        tokens (hashes only), roles, connectors and packages with every version, live or
        deleted, keyed by names rather than ids: the body of a backup bundle."""
        ...

    async def load(self, snapshot: Mapping[str, Any]) -> dict[str, int]:
        """Merge a :meth:`dump` into this store by natural keys (feed name, user name, token
        key, package name, version): what exists is kept, what is missing is added, so a
        second load of the same snapshot changes nothing. Returns counts of what was added."""
        ...

    async def version_refs(self) -> list[VersionRef]:
        """Every version of every package in every feed, live or deleted."""
        ...

    async def referenced_blobs(self) -> set[str]:
        """Blob keys that a live version or a cached upstream tarball names. An unpublished
        version keeps its number reserved but not its tarball: ``entrepot gc`` frees it (a
        leaked secret unpublished is really gone)."""
        ...


class BlobStore(Protocol):
    """Tarballs, stored once by the hex sha512 of their bytes."""

    async def put(self, key: str, data: bytes) -> None:
        """Store bytes under their key; idempotent. :class:`StoreFull` when out of room."""
        ...

    async def get(self, key: str) -> bytes:
        """The bytes; :class:`Missing` when absent."""
        ...

    async def exists(self, key: str) -> bool:
        """Whether the blob is stored."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob; absent is fine."""
        ...

    async def keys(self) -> list[str]:
        """Every stored key (for gc and fsck)."""
        ...

    async def modified(self, key: str) -> float | None:
        """When the blob was written (epoch seconds), or None if it is not stored."""
        ...

    async def sweep_partial(self, older_than: float) -> int:
        """Remove leftovers of writes that never finished (a crash mid-write) older than
        ``older_than`` seconds; how many were removed."""
        ...

    def local_path(self, key: str) -> Path | None:
        """A file the server may send with sendfile, when the backend has one."""
        ...
