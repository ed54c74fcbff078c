"""Registry use cases: read packuments and tarballs, publish, tag, deprecate, unpublish.

Handlers call one method here each. Policy lives here (what a publish must prove, how
``latest`` moves, which edits a document PUT may make); storage lives behind the stores.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from isal import igzip

from entrepot.auth import Principal
from entrepot.clock import http_date, now_iso
from entrepot.connectors import (
    NO_DIST,
    Dist,
    Found,
    StoredTarball,
    TarballStream,
    Upstreams,
    connector_admits,
    name_matches,
)
from entrepot.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InsufficientStorage,
    InvalidName,
    InvalidPublish,
    InvalidVersion,
    NotFound,
    Unauthorized,
    VersionExists,
)
from entrepot.lru import SizedLRU
from entrepot.npm import names, semver
from entrepot.npm.packument import (
    ABBREVIATED,
    abbreviated_document,
    bare_name,
    document_modified,
    full_document,
    parse_revision,
    revision,
    tarball_url,
)
from entrepot.npm.search import all_entry, search_hit
from entrepot.npm.tarball import digests, inspect_tarball
from entrepot.storage.base import (
    AlreadyExists,
    BlobStore,
    Connector,
    Feed,
    MetadataStore,
    Missing,
    NewVersion,
    Package,
    PackageChange,
    StaleRevision,
    StoreFull,
)

#: Fields of a version object the server sets itself, whatever the client sent.
SERVER_FIELDS = ("_id", "_npmUser", "_attachments", "readme", "dist", "_rev")

#: Roles on a feed by strength; a higher one includes the lower ones.
ROLE_RANK = {"reader": 1, "publisher": 2, "owner": 3}

#: package.json fields kept from the tarball when the client's manifest lacks them.
TARBALL_FIELDS = ("_upm",)

#: Scripts that make npm run code at install time (npm's ``hasInstallScript``).
INSTALL_SCRIPTS = ("preinstall", "install", "postinstall")


@dataclasses.dataclass
class Rendered:
    """A serialized packument, plain and gzip, with its validators.

    A local one is good while the package's ``seq`` is unchanged; one from upstream
    (``package_seq`` -1) while ``fresh_until`` has not passed and no local package of that
    name has appeared.
    """

    body: bytes
    etag: str
    last_modified: str
    package_seq: int
    checked_seq: int
    _gzipped: bytes | None = None
    fresh_until: float = 0.0
    #: Why an upstream copy is served as it is (every upstream failed); None when current.
    stale: str | None = None
    #: Per-variant data the HTTP layer derives once (prebuilt header blocks).
    http_cache: dict[Any, Any] = dataclasses.field(default_factory=dict)
    #: The upstream copy it was made from (the connector as configured, time fetched):
    #: while the connectors answer with that same copy, rendering again gives the same bytes.
    source: tuple[Connector, float] | None = None

    @property
    def gzipped(self) -> bytes:
        if self._gzipped is None:
            # ISA-L at level 3: a fifth of zlib's CPU at level 6, 3-7% more bytes
            # (docs/decisions.md, "gzip").
            self._gzipped = igzip.compress(self.body, compresslevel=3, mtime=0)
        return self._gzipped


@dataclasses.dataclass(frozen=True)
class TarballRef:
    """Where a tarball's bytes are: a local file to send, bytes, or an upstream stream."""

    blob_key: str
    size: int
    path: Path | None
    data: bytes | None = None
    stream: TarballStream | None = None
    #: For a tarball kept from a connector: a monotonic deadline after which the
    #: connectors are asked again whether it may be served. None: until the next write.
    fresh_until: float | None = None


def clean_version(text: object) -> str:
    """A version as the registry keys it: valid SemVer, build metadata stripped."""
    if not isinstance(text, str):
        raise InvalidVersion("the version must be a string")
    cleaned = semver.clean(text)
    if cleaned is None:
        raise InvalidVersion(f"invalid version: {text[:100]!r} is not SemVer 2")
    return cleaned


def check_tag(tag: object) -> str:
    """A dist-tag name npm would accept: not empty, URL-safe, not a SemVer range."""
    if not isinstance(tag, str) or not tag:
        raise BadRequest("a dist-tag must be a non-empty string")
    if len(tag) > 128 or not names.is_safe_path_part(tag) or tag != tag.strip():
        raise BadRequest(f"invalid dist-tag name: {tag[:100]!r}")
    if semver.is_valid_range(tag):
        raise BadRequest(f"tag name must not be a valid SemVer range: {tag!r}")
    return tag


def check_package_name(name: str) -> str:
    try:
        names.validate_package_name(name)
    except names.InvalidPackageName as exc:
        raise InvalidName(f"invalid package name {name[:100]!r}: {exc}") from None
    return name


def _render(doc: dict[str, Any], modified: str, package_seq: int, seq: int) -> Rendered:
    # orjson's bytes keep the capacity of its output buffer (8 KB for a 1 KB packument):
    # a body that stays in the cache is copied to its own size.
    body = bytes(memoryview(orjson.dumps(doc)))
    digest = hashlib.blake2b(body, digest_size=16).hexdigest()
    try:
        last_modified = http_date(modified)
    except ValueError:
        last_modified = http_date(now_iso())
    return Rendered(
        body=body,
        etag=f'W/"{digest}"',
        last_modified=last_modified,
        package_seq=package_seq,
        checked_seq=seq,
    )


def _rendered_weight(entry: Rendered) -> int:
    """What a cached packument holds, for the cache's bound: the body, its gzipped copy
    (made on first use; a quarter of the body or less) and about 2.5 KB of objects around
    them (the entry, its ETag and dates, the header blocks the HTTP layer keeps with it,
    the key). Weighed by the body alone, 100,000 small packuments took 4 KB each and the
    process grew to 445 MiB (bench/installs.py, workload 6, run for two minutes)."""
    return len(entry.body) * 5 // 4 + 2560


def _source(found: Found | None) -> tuple[Connector, float] | None:
    """What identifies the upstream copy a document is made from; None when the same copy
    can give other bytes later (versions appearing with a minimum age) or is stale."""
    if found is None or found.stale or found.connector.min_age_hours:
        return None
    return (found.connector, found.fetched)


def _audited_names(body: dict[str, Any], kind: str) -> set[str]:
    """Every package name an audit body mentions (bulk: its keys; quick: the names under
    ``requires`` and ``dependencies`` at every depth)."""
    if kind == "bulk":
        return {n for n in body if isinstance(n, str)}
    names: set[str] = set()
    pending = [body]
    while pending:
        node = pending.pop()
        for field in ("requires", "dependencies"):
            children = node.get(field)
            if isinstance(children, dict):
                names.update(n for n in children if isinstance(n, str))
                if field == "dependencies":
                    pending.extend(c for c in children.values() if isinstance(c, dict))
    return names


class Registry:
    """The registry's use cases over one metadata store and one blob store."""

    def __init__(
        self,
        meta: MetadataStore,
        blobs: BlobStore,
        *,
        max_unpacked: int,
        upstreams: Upstreams | None = None,
    ) -> None:
        self.meta = meta
        self.blobs = blobs
        self._max_unpacked = max_unpacked
        self.upstreams = upstreams
        if upstreams is not None:
            upstreams.feed_document = self._feed_document
            upstreams.feed_tarball = self._feed_tarball
        self._scopes: dict[int, tuple[int, set[str], list[str]]] = {}
        #: Serialized packuments by (feed, name, form, base URL). An entry is checked
        #: against the global change counter, then the package's own ``seq`` (see
        #: :meth:`packument`). Weighed with what comes with the body (see
        #: :func:`_rendered_weight`).
        self._packuments: SizedLRU[tuple[int, str, bool, str], Rendered] = SizedLRU(
            _rendered_weight, max_bytes=128 * 1024 * 1024
        )
        self._feeds: dict[str, tuple[int, Feed | None]] = {}
        self._roles: dict[tuple[int, int], int] = {}
        # The versions each upstream copy offered when its packument was last rendered, with
        # what fetching their tarballs needs, by (feed id, name); weighed at about 400
        # bytes a version (strings shared with the parsed document). Last, the change
        # counter at which the feed was last seen to hold no package of that name (-1 if
        # it did): while it stands, a tarball request need not look for a local version.
        self._offered: SizedLRU[
            tuple[int, str], tuple[tuple[Connector, float], dict[str, Dist], int]
        ] = SizedLRU(lambda item: 400 * (len(item[1]) + 1), max_bytes=32 * 1024 * 1024)
        #: Tarballs found, by (feed id, name, file name): (change counter, where, and for a
        #: connector's tarball the upstream copy that offered it). Good while nothing was
        #: written since and, for a connector's, until ``TarballRef.fresh_until``. Bounded
        #: by count (each entry weighs 1).
        self._tarball_refs: SizedLRU[
            tuple[int, str, str], tuple[int, TarballRef, tuple[Connector, float] | None]
        ] = SizedLRU(lambda _: 1, max_bytes=50_000)
        self._roles_seq = -1

    def counters(self) -> dict[str, float]:
        """Figures for ``/-/metrics``."""
        cache = self._packuments
        return {
            "packument_cache_hits_total": float(cache.hits),
            "packument_cache_misses_total": float(cache.misses),
            "packument_cache_bytes": float(cache.size_bytes),
            "packument_cache_entries": float(len(cache)),
        }

    # -- feeds and permissions --------------------------------------------------------------

    async def known_feed(self, name: str) -> Feed:
        """The feed of that name, whoever asks; :class:`NotFound` if there is none."""
        seq = await self.meta.seq()
        cached = self._feeds.get(name)
        if cached is None or cached[0] != seq:
            if len(self._feeds) > 10_000:
                self._feeds.clear()
            cached = (seq, await self.meta.get_feed(name))
            self._feeds[name] = cached
        if cached[1] is None:
            raise NotFound(f"no feed named {name[:100]!r} on this server")
        return cached[1]

    async def feed(self, name: str, principal: Principal | None) -> Feed:
        """The feed, if the caller may read it: anonymous on a private feed gets 401 (so
        clients send credentials); signed in without access gets 404 (nothing is revealed)."""
        feed = await self.known_feed(name)
        if await self.role(feed, principal) == 0:
            if principal is None:
                raise Unauthorized(f"feed {feed.name!r} is private: sign in to read it")
            raise NotFound(f"no feed named {name[:100]!r} on this server")
        return feed

    async def role(self, feed: Feed, principal: Principal | None) -> int:
        """The caller's rank on the feed: 0 none, then :data:`ROLE_RANK` values."""
        public = 0 if feed.private else ROLE_RANK["reader"]
        if principal is None:
            return public
        if not principal.may_use_feed(feed.name):
            return 0
        if principal.admin:
            rank = ROLE_RANK["owner"]
        else:
            seq = await self.meta.seq()
            if seq != self._roles_seq:
                self._roles.clear()
                self._roles_seq = seq
            key = (feed.id, principal.user_id)
            if key not in self._roles:
                self._roles[key] = ROLE_RANK.get(
                    await self.meta.get_role(feed.id, principal.user_id) or "", 0
                )
            rank = max(self._roles[key], public)
        if principal.read_only:
            rank = min(rank, ROLE_RANK["reader"])
        return rank

    async def require(self, feed: Feed, principal: Principal | None, role: str) -> Principal:
        """The caller, if they hold ``role`` (or more) on the feed; 401 or 403 otherwise."""
        if principal is None:
            raise Unauthorized("you must sign in to change packages (npm login, or a token)")
        if await self.role(feed, principal) >= ROLE_RANK[role]:
            return principal
        if principal.read_only:
            raise Forbidden("this token is read-only: it cannot change packages")
        raise Forbidden(
            f"you need the {role} role on feed {feed.name!r} for this "
            f"(an owner or admin can grant it: entrepot feed grant {feed.name} "
            f"{principal.name} {role})"
        )

    # -- reads ------------------------------------------------------------------------------

    async def packument(
        self, feed: Feed, name: str, *, abbreviated: bool, feed_base: str
    ) -> Rendered:
        """The serialized packument, local or through the feed's connectors.

        :class:`NotFound` if neither has a live version; :class:`UpstreamUnavailable` if a
        connector failed and nothing is cached.
        """
        key = (feed.id, name, abbreviated, feed_base)
        seq = await self.meta.seq()
        entry = previous = self._packuments.get(key)
        if entry is not None:
            if entry.package_seq < 0:
                # A local package of that name, published since, takes over at once.
                if entry.checked_seq != seq and await self.meta.package_seq(feed.id, name) is None:
                    entry.checked_seq = seq
                    kept = self._offered.get((feed.id, name))
                    if kept is not None and kept[0] == entry.source:
                        self._offered.put((feed.id, name), (kept[0], kept[1], seq))
                if entry.checked_seq == seq:
                    if time.monotonic() < entry.fresh_until:
                        return entry
                    if entry.source is not None and entry.source == await self._fresh_source(
                        feed, name
                    ):
                        # Made from the copy the connectors would answer with: keep the
                        # bytes, without reading or parsing that copy again.
                        entry.fresh_until = time.monotonic() + min(entry.source[0].ttl, 60)
                        return entry
            elif entry.checked_seq == seq:
                return entry
            elif await self.meta.package_seq(feed.id, name) == entry.package_seq:
                entry.checked_seq = seq
                return entry
            self._packuments.drop(key)
        package = await self.meta.get_package(feed.id, name)
        if package is not None and not await self._merges_upstream(feed, name):
            if not package.versions:
                raise NotFound(f"package {name[:214]!r} not found in feed {feed.name!r}")
            doc = (abbreviated_document if abbreviated else full_document)(package, feed_base)
            entry = _render(doc, package.modified, package.seq, seq)
        else:
            found = await self._upstream(feed, name, abbreviated=abbreviated)
            if found is not None and not found.doc.get("versions"):
                found = None  # every version is hidden (minimum age): nothing to install
            source = _source(found)
            if (
                found is not None
                and source is not None
                and previous is not None
                and previous.source == source
                and package is None
                and previous.stale is None
            ):
                # Expired, but made from the very same upstream copy: keep the bytes
                # (rendering a big packument again costs the event loop milliseconds).
                previous.checked_seq = seq
                previous.fresh_until = time.monotonic() + min(found.connector.ttl, 60)
                self._packuments.put(key, previous)
                return previous
            if found is None:
                if package is None or not package.versions:
                    raise NotFound(f"package {name[:214]!r} not found in feed {feed.name!r}")
                doc = (abbreviated_document if abbreviated else full_document)(package, feed_base)
            else:
                doc, offered = self._present(
                    found.doc, name, feed_base, package, abbreviated=abbreviated
                )
                if source is not None:
                    alone = seq if package is None else -1
                    self._offered.put((feed.id, name), (source, offered, alone))
            entry = _render(doc, str(document_modified(doc) or ""), -1, seq)
            entry.source = source
            ttl = found.connector.ttl if found is not None else 0
            entry.fresh_until = time.monotonic() + min(ttl, 60)
            if found is not None and found.stale:
                entry.stale = f"upstream {found.connector.name} unreachable; cached copy"
                entry.fresh_until = time.monotonic() + 5
        self._packuments.put(key, entry)
        return entry

    async def _fresh_source(self, feed: Feed, name: str) -> tuple[Connector, float] | None:
        """The source (see :func:`_source`) :meth:`_upstream` would answer from, when it is
        fresh and known without reading the document; None: ask :meth:`_upstream`."""
        if self.upstreams is None or not await self._reads_upstream(feed, name):
            return None
        return await self.upstreams.fresh_copy(feed, name)

    async def _merges_upstream(self, feed: Feed, name: str) -> bool:
        """Whether the feed lets this local name show upstream versions too."""
        _, _, patterns = await self._local_scopes(feed)
        return bool(patterns) and name_matches(name, patterns)

    async def _local_scopes(self, feed: Feed) -> tuple[int, set[str], list[str]]:
        seq = await self.meta.seq()
        cached = self._scopes.get(feed.id)
        if cached is None or cached[0] != seq:
            cached = (
                seq,
                await self.meta.local_scopes(feed.id),
                await self.meta.upstream_names(feed.id),
            )
            self._scopes[feed.id] = cached
        return cached

    async def _upstream(
        self, feed: Feed, name: str, depth: int = 0, *, abbreviated: bool = False
    ) -> Found | None:
        """The connectors' document, unless the name is guarded as local (``abbreviated``:
        see :meth:`Upstreams.find`)."""
        if self.upstreams is None or not await self._reads_upstream(feed, name):
            return None
        return await self.upstreams.find(feed, name, depth=depth, abbreviated=abbreviated)

    async def prefetch_full(self, feed: Feed, name: str) -> None:
        """Bring the connectors' full document for a name into their cache (``entrepot
        mirror``), unless the feed serves that name from its own packages only."""
        if not await self._local_only(feed, name):
            await self._upstream(feed, name)

    async def _local_only(self, feed: Feed, name: str) -> bool:
        """Whether the feed holds the name and does not merge upstream versions into it."""
        return await self.meta.package_seq(feed.id, name) is not None and not (
            await self._merges_upstream(feed, name)
        )

    async def _reads_upstream(self, feed: Feed, name: str) -> bool:
        _, scopes, patterns = await self._local_scopes(feed)
        scope = name.split("/", 1)[0] if name.startswith("@") else None
        # Dependency-confusion guard: a scope with local packages stays local.
        return scope not in scopes or name_matches(name, patterns)

    @staticmethod
    def _present(
        doc: dict[str, Any],
        name: str,
        feed_base: str,
        local: Package | None,
        *,
        abbreviated: bool,
    ) -> tuple[dict[str, Any], dict[str, Dist]]:
        """An upstream document as this feed serves it, full or abbreviated: tarballs on
        this server, and local versions (when the feed merges this name) over upstream
        ones. With it, each upstream version's :class:`Dist`. One pass over the versions:
        a cold install renders hundreds of documents on the event loop."""
        versions: dict[str, Any] = {}
        offered: dict[str, Dist] = {}
        for version, manifest in (doc.get("versions") or {}).items():
            if not isinstance(manifest, dict):
                continue
            sent = manifest.get("dist")
            if isinstance(sent, dict):
                offered[version] = Dist.of_dist(sent)
                dist = dict(sent)
            else:
                offered[version] = NO_DIST
                dist = {}
            dist["tarball"] = tarball_url(feed_base, name, version)
            if abbreviated:
                copy = {k: v for k, v in manifest.items() if k in ABBREVIATED}
            else:
                copy = dict(manifest)
            copy["dist"] = dist
            versions[version] = copy
        tags = dict(doc.get("dist-tags") or {})
        times = doc.get("time")
        merged = local if local is not None and local.versions else None
        if merged is not None:
            mine = (abbreviated_document if abbreviated else full_document)(merged, feed_base)
            versions.update(mine["versions"])
            tags.update(mine["dist-tags"])
            if not abbreviated:
                times = {**(times if isinstance(times, dict) else {}), **mine["time"]}
        if abbreviated:
            modified = merged.modified if merged is not None else document_modified(doc)
            out = {"name": name, "modified": modified, "dist-tags": tags, "versions": versions}
        else:
            out = dict(doc)
            out.pop("_attachments", None)
            if times is not None:
                out["time"] = times
            out["versions"] = versions
            out["dist-tags"] = tags
            out["_id"] = name
            out["name"] = name
        return out, offered

    async def _feed_document(self, feed_name: str, name: str, depth: int) -> dict[str, Any] | None:
        """Another feed's full document for a ``feed:`` connector (no HTTP, no permissions:
        connectors are configured by administrators)."""
        other = await self.meta.get_feed(feed_name)
        if other is None:
            return None
        package = await self.meta.get_package(other.id, name)
        if package is not None and package.versions:
            return full_document(package, "feed:/")
        if package is not None:
            return None
        found = await self._upstream(other, name, depth)
        return found.doc if found is not None else None

    async def _feed_tarball(self, feed_name: str, name: str, filename: str, depth: int) -> bytes:
        other = await self.meta.get_feed(feed_name)
        if other is None:
            raise NotFound(f"no feed named {feed_name!r}")
        ref = await self.tarball(other, name, filename, depth=depth)
        if ref.data is not None:
            return ref.data
        if ref.path is not None:
            return ref.path.read_bytes()
        assert ref.stream is not None
        return b"".join([chunk async for chunk in ref.stream.chunks])

    async def _live_package(self, feed: Feed, name: str) -> Package:
        package = await self.meta.get_package(feed.id, name)
        if package is None or not package.versions:
            raise NotFound(f"package {name[:214]!r} not found in feed {feed.name!r}")
        return package

    async def tarball(self, feed: Feed, name: str, filename: str, *, depth: int = 0) -> TarballRef:
        """Find ``<bare>-<version>.tgz``: a local version, else through the connectors."""
        prefix = bare_name(name) + "-"
        if not (filename.startswith(prefix) and filename.endswith(".tgz")):
            raise NotFound(f"no tarball {filename[:200]!r} for {name}")
        seq = await self.meta.seq()
        key = (feed.id, name, filename)
        known = self._tarball_refs.get(key)
        if known is not None:
            kept_seq, ref, source = known
            if kept_seq == seq:
                if ref.fresh_until is None or time.monotonic() < ref.fresh_until:
                    return ref
                if source is not None and source == await self._fresh_source(feed, name):
                    # The same upstream copy still offers it (see packument()).
                    return self._upstream_tarball_ref(key, seq, ref, source, ttl=source[0].ttl)
            self._tarball_refs.drop(key)
        version = semver.clean(filename[len(prefix) : -len(".tgz")])
        offered = self._offered.get((feed.id, name))
        # The packument rendered at this very change counter found no local package of that
        # name: no local version either, and nothing that keeps the name local.
        upstream_only = offered is not None and offered[2] == seq
        if version and not upstream_only:
            found = await self.meta.find_version(feed.id, name, version)
            if found is not None:
                ref = TarballRef(found.blob_key, found.size, self.blobs.local_path(found.blob_key))
                self._tarball_refs.put(key, (seq, ref, None))
                return ref
        missing = NotFound(f"no tarball {filename[:200]!r} for {name} in feed {feed.name!r}")
        if version is None or self.upstreams is None:
            raise missing
        if not upstream_only and await self._local_only(feed, name):
            raise missing
        if offered is not None and version in offered[1]:
            # The packument rendered from this copy listed it (npm asks for the packument
            # first): if the copy is still the fresh one, it need not be read (or parsed)
            # again to serve or fetch the tarball.
            source = await self._fresh_source(feed, name)
            if source is not None and source == offered[0]:
                result: StoredTarball | bytes | TarballStream = await self.upstreams.fetch_tarball(
                    source[0], name, version, offered[1][version]
                )
                return self._upstream_tarball_ref(key, seq, result, source, ttl=source[0].ttl)
        upstream = await self._upstream(feed, name, depth, abbreviated=True)
        if upstream is None or version not in (upstream.doc.get("versions") or {}):
            raise missing
        result = await self.upstreams.tarball(upstream, name, version, depth=depth)
        return self._upstream_tarball_ref(
            key, seq, result, _source(upstream), ttl=upstream.connector.ttl, stale=upstream.stale
        )

    def _upstream_tarball_ref(
        self,
        key: tuple[int, str, str],
        seq: int,
        result: StoredTarball | TarballRef | bytes | TarballStream,
        source: tuple[Connector, float] | None,
        *,
        ttl: int,
        stale: bool = False,
    ) -> TarballRef:
        """The reference to hand out for what the connectors gave. A stored tarball is kept:
        served again without asking the connectors until its upstream copy needs
        revalidating, as its packument is (5 s for a stale copy), while nothing is written
        (a write may add a local version, change a connector or its filters)."""
        if isinstance(result, bytes):
            return TarballRef("", len(result), None, data=result)
        if isinstance(result, TarballStream):
            return TarballRef("", result.size or 0, None, stream=result)
        seconds = 5 if stale else min(ttl, 60)
        ref = TarballRef(
            result.blob_key, result.size, result.path, fresh_until=time.monotonic() + seconds
        )
        self._tarball_refs.put(key, (seq, ref, source))
        return ref

    async def audit(self, feed: Feed, kind: str, body: dict[str, Any]) -> Any | None:
        """Forward an audit to the first connector that answers, without any package that
        is local to the feed (private names never leave the building) and, for each
        connector, without the names it does not serve (its allow and block patterns: a
        partner's names are not sent to the public registry). None: no answer."""
        if self.upstreams is None:
            return None
        _, scopes, _ = await self._local_scopes(feed)
        private: set[str] = set()
        for name in _audited_names(body, kind):
            if (name.startswith("@") and name.split("/", 1)[0] in scopes) or (
                await self.meta.package_seq(feed.id, name) is not None
            ):
                private.add(name)

        def kept(connector: Connector, name: object) -> bool:
            return (
                isinstance(name, str) and name not in private and connector_admits(connector, name)
            )

        if kind == "bulk":

            def bulk_for(connector: Connector) -> dict[str, Any] | None:
                return {n: v for n, v in body.items() if kept(connector, n)} or None

            return await self.upstreams.forward(feed, "-/npm/v1/security/advisories/bulk", bulk_for)

        def prune(node: dict[str, Any], connector: Connector) -> dict[str, Any]:
            out = dict(node)
            for field in ("requires", "dependencies"):
                children = node.get(field)
                if isinstance(children, dict):
                    out[field] = {
                        n: (
                            prune(c, connector)
                            if isinstance(c, dict) and field == "dependencies"
                            else c
                        )
                        for n, c in children.items()
                        if kept(connector, n)
                    }
            return out

        return await self.upstreams.forward(
            feed, "-/npm/v1/security/audits/quick", lambda connector: prune(body, connector)
        )

    async def search(self, feed: Feed, text: str, *, size: int, offset: int) -> dict[str, Any]:
        """npm's search response over the feed's own packages."""
        entries, total = await self.meta.search(feed.id, text, size=size, offset=offset)
        count = len(entries)
        objects = [
            search_hit(entry, round(1.0 - i / max(count, 1) * 0.5, 4))
            for i, entry in enumerate(entries)
        ]
        return {"objects": objects, "total": total, "time": now_iso()}

    async def listing(self, feed: Feed, since: str | None) -> dict[str, Any]:
        """UPM's legacy ``/-/all`` (or ``/-/all/since?startkey=<ms>``) listing."""
        after = None
        if since is not None:
            if not (since.isascii() and since.isdigit()) or len(since) > 16:
                raise BadRequest("startkey must be a time in milliseconds since the epoch")
            stamp = dt.datetime.fromtimestamp(int(since) / 1000, dt.UTC)
            after = stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
        out: dict[str, Any] = {"_updated": int(time.time() * 1000)}
        for entry in await self.meta.listing(feed.id, after):
            out[entry["name"]] = all_entry(entry)
        return out

    async def dist_tags(self, feed: Feed, name: str) -> Mapping[str, str]:
        return (await self._live_package(feed, name)).dist_tags

    # -- publish ----------------------------------------------------------------------------

    async def publish(self, feed: Feed, name: str, body: dict[str, Any], actor: Principal) -> str:
        """Add one version from an npm publish body; returns the new ``_rev``."""
        await self.require(feed, actor, "publisher")
        check_package_name(name)
        if body.get("name") != name or body.get("_id", name) != name:
            raise InvalidPublish(
                f"the package name in the body ({str(body.get('name'))[:100]!r}) does not "
                f"match the URL ({name!r})"
            )
        versions = body.get("versions")
        if not isinstance(versions, dict) or len(versions) != 1:
            raise InvalidPublish("a publish must carry exactly one version")
        ((raw_version, manifest),) = versions.items()
        version = clean_version(raw_version)
        if not isinstance(manifest, dict):
            raise InvalidPublish("the version object must be a JSON object")
        if manifest.get("name") != name:
            raise InvalidPublish("the name in the version object does not match the URL")
        if clean_version(manifest.get("version")) != version:
            raise InvalidPublish("the version in the version object does not match its key")
        tag = self._publish_tag(body, version)
        data = self._attachment(body)
        sums = digests(data)
        self._check_dist(manifest.get("dist"), sums.integrity, sums.shasum)
        # Unpacking is CPU work (up to about a second for a bomb at the limit): off the loop.
        info = await asyncio.to_thread(inspect_tarball, data, max_unpacked=self._max_unpacked)
        if info.package_json.get("name") != name:
            raise InvalidPublish(
                f"the tarball's package.json names {str(info.package_json.get('name'))[:100]!r},"
                f" not {name!r}"
            )
        inner = info.package_json.get("version")
        if not isinstance(inner, str) or semver.clean(inner) != version:
            raise InvalidPublish(
                f"the tarball's package.json has version {str(inner)[:50]!r}, not {version}"
            )
        existing = await self.meta.get_package(feed.id, name)
        if existing is not None and version in existing.reserved:
            raise VersionExists(name, version)
        stored = {k: v for k, v in manifest.items() if k not in SERVER_FIELDS}
        stored["version"] = version
        stored["_id"] = f"{name}@{version}"
        stored["_npmUser"] = {"name": actor.name, "email": actor.email}
        stored["dist"] = {
            "integrity": sums.integrity,
            "shasum": sums.shasum,
            "fileCount": info.file_count,
            "unpackedSize": info.unpacked_size,
        }
        scripts = info.package_json.get("scripts")
        if isinstance(scripts, dict) and any(s in scripts for s in INSTALL_SCRIPTS):
            stored["hasInstallScript"] = True
        if info.has_shrinkwrap:
            stored["_hasShrinkwrap"] = True
        # npm drops "_" fields from the manifest it sends; Unity's "_upm" (the changelog UPM
        # shows) lives in the tarball's package.json, so it is kept from there.
        for field in TARBALL_FIELDS:
            if field not in stored and field in info.package_json:
                stored[field] = info.package_json[field]
        readme = manifest.get("readme", body.get("readme", ""))
        new = NewVersion(
            version=version,
            manifest=stored,
            blob_key=sums.sha512_hex,
            size=len(data),
            tag=tag,
            readme=readme if isinstance(readme, str) else "",
            maintainer={"name": actor.name, "email": actor.email},
        )
        try:
            await self.blobs.put(sums.sha512_hex, data)
            package = await self.meta.publish(feed.id, name, new)
        except AlreadyExists:
            raise VersionExists(name, version) from None
        except StoreFull as exc:
            raise InsufficientStorage(f"the registry is out of storage space: {exc}") from None
        return revision(package)

    @staticmethod
    def _publish_tag(body: dict[str, Any], version: str) -> str:
        tags = body.get("dist-tags") or {"latest": version}
        if not isinstance(tags, dict) or len(tags) != 1:
            raise InvalidPublish("a publish must carry exactly one dist-tag")
        ((tag, target),) = tags.items()
        if clean_version(target) != version:
            raise InvalidPublish(f"the dist-tag {tag!r} does not point at the published version")
        return check_tag(tag)

    @staticmethod
    def _attachment(body: dict[str, Any]) -> bytes:
        attachments = body.get("_attachments")
        if not isinstance(attachments, dict) or not attachments:
            raise InvalidPublish("the publish has no tarball attachment")
        if len(attachments) != 1:
            raise InvalidPublish("a publish must carry exactly one attachment, the tarball")
        ((filename, attachment),) = attachments.items()
        if not isinstance(filename, str) or not filename.endswith(".tgz"):
            raise InvalidPublish("the attachment must be a .tgz tarball")
        if not isinstance(attachment, dict) or not isinstance(attachment.get("data"), str):
            raise InvalidPublish("the attachment has no base64 data")
        try:
            data = base64.b64decode(attachment["data"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidPublish("the attachment data is not valid base64") from None
        length = attachment.get("length")
        if length is not None and length != len(data):
            raise InvalidPublish(
                f"the attachment is {len(data)} bytes, but its length says {length}"
            )
        if not data:
            raise InvalidPublish("the attachment is empty")
        return data

    @staticmethod
    def _check_dist(dist: object, integrity: str, shasum: str) -> None:
        if not isinstance(dist, dict):
            raise InvalidPublish("the version has no dist object with the tarball's integrity")
        sent_integrity = dist.get("integrity")
        sent_shasum = dist.get("shasum")
        if sent_integrity is None and sent_shasum is None:
            raise InvalidPublish("dist must carry the tarball's integrity or shasum")
        if sent_integrity is not None:
            sha512s = [part for part in str(sent_integrity).split() if part.startswith("sha512-")]
            if sha512s and integrity not in sha512s:
                raise InvalidPublish(
                    "the tarball does not match dist.integrity (sha512): it was corrupted or "
                    "altered in transit"
                )
            if not sha512s and sent_shasum is None:
                raise InvalidPublish("dist.integrity must be a sha512 integrity string")
        if sent_shasum is not None and str(sent_shasum).lower() != shasum:
            raise InvalidPublish("the tarball does not match dist.shasum (sha1)")

    # -- document edits: deprecate, unpublish a version, owners, tags ------------------------

    async def update_document(
        self,
        feed: Feed,
        name: str,
        body: dict[str, Any],
        rev: str | None,
        actor: Principal | None,
    ) -> str:
        """Apply a whole-document PUT from npm (deprecate, unpublish, owner); returns ``_rev``.

        Only these edits are possible: a version's ``deprecated`` message, removing versions,
        dist-tags, maintainers. Anything else in a published version stays as published.
        Removing every version needs the owner role; the rest needs publisher.
        """
        await self.require(feed, actor, "publisher")
        if body.get("name", name) != name or body.get("_id", name) != name:
            raise BadRequest("the package name in the body does not match the URL")
        current = await self._live_package(feed, name)
        expected = self._expected_rev(rev if rev is not None else body.get("_rev"))
        sent = body.get("versions")
        manifests: dict[str, dict[str, Any]] = {}
        deleted: frozenset[str] = frozenset()
        if sent is not None:
            if not isinstance(sent, dict):
                raise BadRequest("versions must be an object")
            cleaned = {clean_version(v): m for v, m in sent.items()}
            unknown = set(cleaned) - set(current.versions)
            if unknown:
                raise BadRequest(
                    f"cannot add versions without a tarball: {', '.join(sorted(unknown))}"
                )
            deleted = frozenset(set(current.versions) - set(cleaned))
            for version, sent_manifest in cleaned.items():
                manifest = self._deprecation(current, version, sent_manifest)
                if manifest is not None:
                    manifests[version] = manifest
        tags = self._edited_tags(current, body.get("dist-tags"), deleted)
        maintainers = self._maintainers(body.get("maintainers"))
        if deleted and deleted == set(current.versions):
            await self.require(feed, actor, "owner")
            await self._delete_package(feed, name, expected)
            return revision(current)
        change = PackageChange(
            expected_rev=expected,
            dist_tags=tags,
            manifests=manifests,
            deleted=deleted,
            maintainers=maintainers,
        )
        return revision(await self._change(feed, name, change))

    @staticmethod
    def _deprecation(current: Package, version: str, sent: object) -> dict[str, Any] | None:
        if not isinstance(sent, dict):
            raise BadRequest(f"the version object of {version} must be an object")
        stored = dict(current.versions[version].manifest)
        message = sent.get("deprecated")
        if message is not None and not isinstance(message, str):
            raise BadRequest("deprecated must be a string")
        if message == stored.get("deprecated") or (not message and "deprecated" not in stored):
            return None
        if message:
            stored["deprecated"] = message[:1024]
        else:
            stored.pop("deprecated", None)
        return stored

    @staticmethod
    def _edited_tags(current: Package, sent: object, deleted: frozenset[str]) -> dict[str, str]:
        if sent is None:
            tags = dict(current.dist_tags)
        elif isinstance(sent, dict):
            tags = {}
            for tag, version in sent.items():
                tags[check_tag(tag)] = clean_version(version)
        else:
            raise BadRequest("dist-tags must be an object")
        live = set(current.versions) - deleted
        unknown = {v for v in tags.values() if v not in live and v not in deleted}
        if unknown:
            raise BadRequest(f"dist-tags point at versions that do not exist: {sorted(unknown)}")
        tags = {tag: v for tag, v in tags.items() if v in live}
        if "latest" not in tags and live:
            # npm's unpublish rule: the highest remaining version, prereleases included.
            tags["latest"] = semver.max_version(live) or ""
        return tags

    @staticmethod
    def _maintainers(sent: object) -> list[dict[str, str]] | None:
        if sent is None:
            return None
        if not isinstance(sent, list) or not all(
            isinstance(m, dict)
            and isinstance(m.get("name"), str)
            and isinstance(m.get("email", ""), str)
            for m in sent
        ):
            raise BadRequest("maintainers must be a list of {name, email}")
        if not sent:
            raise BadRequest("a package must keep at least one maintainer")
        return [{"name": m["name"], "email": m.get("email", "")} for m in sent]

    @staticmethod
    def _expected_rev(rev: object) -> int | None:
        if rev is None or rev == "undefined":
            return None
        number = parse_revision(str(rev))
        if number is None:
            raise Conflict(f"unknown revision {str(rev)[:40]!r}: fetch the package again")
        return number

    async def _change(self, feed: Feed, name: str, change: PackageChange) -> Package:
        try:
            return await self.meta.change_package(feed.id, name, change)
        except Missing:
            raise NotFound(f"package {name!r} not found in feed {feed.name!r}") from None
        except StaleRevision:
            raise Conflict(f"{name} was changed by someone else: fetch it and retry") from None

    async def _delete_package(self, feed: Feed, name: str, expected: int | None) -> None:
        try:
            await self.meta.delete_package(feed.id, name, expected)
        except Missing:
            raise NotFound(f"package {name!r} not found in feed {feed.name!r}") from None
        except StaleRevision:
            raise Conflict(f"{name} was changed by someone else: fetch it and retry") from None

    async def delete_package(
        self, feed: Feed, name: str, rev: str, actor: Principal | None
    ) -> None:
        """``npm unpublish pkg --force``: every version goes; their numbers stay reserved."""
        await self.require(feed, actor, "owner")
        await self._live_package(feed, name)
        await self._delete_package(feed, name, self._expected_rev(rev))

    async def delete_tarball(
        self, feed: Feed, name: str, filename: str, actor: Principal | None
    ) -> None:
        """npm's last unpublish step; the version itself was removed by the document PUT."""
        await self.require(feed, actor, "publisher")
        package = await self.meta.get_package(feed.id, name)
        if package is None:
            raise NotFound(f"package {name!r} not found in feed {feed.name!r}")
        prefix = bare_name(name) + "-"
        version = semver.clean(filename.removeprefix(prefix).removesuffix(".tgz"))
        if version is not None and version in package.versions:
            change = PackageChange(
                dist_tags=self._edited_tags(package, None, frozenset({version})),
                deleted=frozenset({version}),
            )
            if len(package.versions) == 1:
                await self.require(feed, actor, "owner")
                await self._delete_package(feed, name, None)
            else:
                await self._change(feed, name, change)

    async def set_dist_tag(
        self, feed: Feed, name: str, tag: str, version: object, actor: Principal | None
    ) -> None:
        await self.require(feed, actor, "publisher")
        check_tag(tag)
        target = clean_version(version)
        current = await self._live_package(feed, name)
        if target not in current.versions:
            raise NotFound(f"{name}@{target} does not exist in feed {feed.name!r}")
        await self._change(feed, name, PackageChange(dist_tags={**current.dist_tags, tag: target}))

    async def remove_dist_tag(
        self, feed: Feed, name: str, tag: str, actor: Principal | None
    ) -> None:
        await self.require(feed, actor, "publisher")
        if tag == "latest":
            raise BadRequest("the latest tag cannot be removed; point it at another version")
        current = await self._live_package(feed, name)
        if tag not in current.dist_tags:
            raise NotFound(f"{name} has no dist-tag {tag[:100]!r}")
        tags = {t: v for t, v in current.dist_tags.items() if t != tag}
        await self._change(feed, name, PackageChange(dist_tags=tags))
