"""``entrepot mirror``: pull everything a lockfile names into a feed's cache, so that an
offline or air-gapped site can install from the feed alone."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence

from entrepot.errors import NotFound, RegistryError
from entrepot.lockfiles import Locked
from entrepot.registry import Registry
from entrepot.storage.base import Feed


@dataclasses.dataclass
class MirrorReport:
    """What happened to each locked package."""

    fetched: list[str] = dataclasses.field(default_factory=list)
    cached: list[str] = dataclasses.field(default_factory=list)
    local: list[str] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def done(self) -> int:
        return len(self.fetched) + len(self.cached) + len(self.local) + len(self.failed)


Progress = Callable[[MirrorReport, int, str], None]


async def mirror(
    registry: Registry,
    feed: Feed,
    packages: Sequence[Locked],
    *,
    progress: Progress | None = None,
    concurrency: int = 8,
) -> MirrorReport:
    """Fetch each package's packument and tarball through the feed's connectors."""
    report = MirrorReport()
    gate = asyncio.Semaphore(concurrency)
    total = len(packages)

    async def one(item: Locked) -> None:
        spec = f"{item.name}@{item.version}"
        async with gate:
            try:
                outcome = await _fetch(registry, feed, item)
            except RegistryError as exc:
                report.failed.append((spec, exc.message))
            else:
                getattr(report, outcome).append(spec)
        if progress is not None:
            progress(report, total, spec)

    await asyncio.gather(*(one(item) for item in packages))
    return report


async def _fetch(registry: Registry, feed: Feed, item: Locked) -> str:
    if await registry.meta.find_version(feed.id, item.name, item.version) is not None:
        return "local"
    upstreams = registry.upstreams
    if upstreams is None or not await upstreams.connectors(feed):
        raise NotFound(f"feed {feed.name!r} has no connectors to mirror from")
    # The full document, not the abbreviated one an install asks for: the offline site then
    # answers `npm view` and installs without a lockfile too.
    await registry.prefetch_full(feed, item.name)
    filename = f"{item.name.rpartition('/')[2]}-{item.version}.tgz"
    ref = await registry.tarball(feed, item.name, filename)
    if ref.stream is None:
        return "cached"
    async for _ in ref.stream.chunks:
        pass  # the stream stores the tarball as it goes
    return "fetched"
