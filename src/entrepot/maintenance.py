"""``entrepot gc`` and ``entrepot fsck``: keep the blob store and the metadata in step."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import time

from entrepot.storage.base import BlobStore, MetadataStore, Missing

#: Blobs younger than this are never collected: a publish writes its blob first and its
#: metadata a moment later, and must not lose the blob in between.
DEFAULT_GRACE = 3600.0


@dataclasses.dataclass
class GcReport:
    kept: int = 0
    removed: list[str] = dataclasses.field(default_factory=list)
    too_young: int = 0
    partial: int = 0


async def collect_garbage(
    meta: MetadataStore, blobs: BlobStore, *, grace: float = DEFAULT_GRACE, dry_run: bool = False
) -> GcReport:
    """Remove blobs that no live version and no upstream cache entry names (unpublished
    versions' tarballs included), and leftovers of writes a crash interrupted."""
    report = GcReport()
    if not dry_run:
        report.partial = await blobs.sweep_partial(grace)
    referenced = await meta.referenced_blobs()
    now = time.time()
    for key in await blobs.keys():
        if key in referenced:
            report.kept += 1
            continue
        written = await blobs.modified(key)
        if written is None:
            continue
        if now - written < grace:
            report.too_young += 1
            continue
        if not dry_run:
            await blobs.delete(key)
        report.removed.append(key)
    return report


@dataclasses.dataclass
class FsckReport:
    checked: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)


async def check_consistency(meta: MetadataStore, blobs: BlobStore) -> FsckReport:
    """Every live version's blob exists, hashes to its key, and matches its integrity."""
    report = FsckReport()
    for ref in await meta.version_refs():
        if ref.deleted:
            continue  # its number stays reserved; its tarball may be collected
        report.checked += 1
        where = f"{ref.feed}/{ref.name}@{ref.version}{' (deleted)' if ref.deleted else ''}"
        try:
            data = await blobs.get(ref.blob_key)
        except Missing:
            report.problems.append(f"{where}: its tarball is missing from the blob store")
            continue
        digest = hashlib.sha512(data).digest()
        if digest.hex() != ref.blob_key:
            report.problems.append(f"{where}: the stored tarball does not hash to its key")
            continue
        if ref.integrity and ref.integrity != "sha512-" + base64.b64encode(digest).decode():
            report.problems.append(f"{where}: the tarball does not match dist.integrity")
    return report
