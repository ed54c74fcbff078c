"""Backup bundles and moves between stores.

A bundle is a tar file: ``entrepot-bundle.json`` (a store snapshot: feeds, users, token
hashes, roles, connectors, packages with every version, live or deleted) and one file per
tarball under ``blobs/``, named by its sha512. Every tarball is checked against its name on
the way in, blobs are written before metadata (the store's write order), and loading merges
by names, so importing the same bundle twice changes nothing. ``entrepot migrate`` is the
same copy without the tar file in between.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from entrepot.storage.base import BlobStore, MetadataStore, Missing

SNAPSHOT = "entrepot-bundle.json"
MAX_SNAPSHOT = 2 * 1024 * 1024 * 1024


class BundleError(ValueError):
    """The bundle is unreadable, or a tarball in it does not match its hash."""


@dataclasses.dataclass
class CopyReport:
    blobs_copied: int = 0
    blobs_present: int = 0
    missing: list[str] = dataclasses.field(default_factory=list)
    added: dict[str, int] = dataclasses.field(default_factory=dict)


def _blob_keys(snapshot: dict[str, Any]) -> list[str]:
    """The tarballs a snapshot needs: those of live versions (an unpublished version's
    number travels with the metadata, its tarball does not)."""
    keys = {
        v["blob_key"]
        for p in snapshot.get("packages", [])
        for v in p["versions"]
        if v.get("deleted") is None
    }
    return sorted(keys)


async def export_bundle(
    meta: MetadataStore, blobs: BlobStore, out: Path, feeds: Sequence[str] | None = None
) -> CopyReport:
    """Write a bundle of the store (or of some feeds); consistent while the server runs."""
    snapshot = await meta.dump(feeds)
    report = CopyReport()
    tmp = out.with_name(out.name + ".partial")
    # The bundle holds password hashes, token hashes and TOTP secrets: its owner's only.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as archive:
        data = orjson.dumps(snapshot)
        _add(archive, SNAPSHOT, data)
        for key in _blob_keys(snapshot):
            try:
                blob = await blobs.get(key)
            except Missing:
                report.missing.append(key)
                continue
            _add(archive, f"blobs/{key}", blob)
            report.blobs_copied += 1
    tmp.replace(out)
    return report


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o600
    archive.addfile(info, io.BytesIO(data))


async def import_bundle(meta: MetadataStore, blobs: BlobStore, path: Path) -> CopyReport:
    """Load a bundle: every tarball verified and stored, then the metadata merged."""
    report = CopyReport()
    snapshot: dict[str, Any] | None = None
    _verify(path)
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                if not member.isfile():
                    raise BundleError(f"unexpected entry in the bundle: {member.name[:100]!r}")
                if member.name == SNAPSHOT:
                    if member.size > MAX_SNAPSHOT:
                        raise BundleError("the bundle's metadata is too large")
                    handle = archive.extractfile(member)
                    assert handle is not None
                    snapshot = orjson.loads(handle.read())
                    continue
                key = member.name.removeprefix("blobs/")
                if not member.name.startswith("blobs/") or not _is_key(key):
                    raise BundleError(f"unexpected entry in the bundle: {member.name[:100]!r}")
                handle = archive.extractfile(member)
                assert handle is not None
                await _store_checked(blobs, key, handle.read(), report)
    except (tarfile.TarError, OSError, orjson.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not a readable Entrepot bundle: {exc}") from None
    if not isinstance(snapshot, dict) or snapshot.get("format") != 1:
        raise BundleError(f"{path} has no Entrepot metadata ({SNAPSHOT})")
    report.missing = [k for k in _blob_keys(snapshot) if not await blobs.exists(k)]
    report.added = await meta.load(snapshot)
    return report


def _verify(path: Path) -> None:
    """Check every tarball against its name before anything is stored: a bundle with one
    altered tarball imports nothing, not even the tarballs before it."""
    try:
        with tarfile.open(path, "r:*") as archive:
            for member in archive:
                key = member.name.removeprefix("blobs/")
                if not (member.isfile() and member.name.startswith("blobs/") and _is_key(key)):
                    continue
                handle = archive.extractfile(member)
                assert handle is not None
                digest = hashlib.sha512()
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
                if digest.hexdigest() != key:
                    raise BundleError(
                        f"the tarball {key[:16]}... does not match its hash: refusing the "
                        "whole bundle, nothing was imported"
                    )
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{path} is not a readable Entrepot bundle: {exc}") from None


def _is_key(key: str) -> bool:
    return len(key) == 128 and all(c in "0123456789abcdef" for c in key)


async def _store_checked(blobs: BlobStore, key: str, data: bytes, report: CopyReport) -> None:
    if hashlib.sha512(data).hexdigest() != key:
        raise BundleError(f"the tarball {key[:16]}... does not match its hash: refusing it")
    if await blobs.exists(key):
        report.blobs_present += 1
        return
    await blobs.put(key, data)
    report.blobs_copied += 1


async def copy_store(
    source_meta: MetadataStore,
    source_blobs: BlobStore,
    target_meta: MetadataStore,
    target_blobs: BlobStore,
) -> CopyReport:
    """``entrepot migrate``: every tarball (verified) then the metadata, from one store to
    another. Re-running it resumes: what the target has is skipped."""
    snapshot = await source_meta.dump()
    report = CopyReport()
    for key in _blob_keys(snapshot):
        if await target_blobs.exists(key):
            report.blobs_present += 1
            continue
        try:
            data = await source_blobs.get(key)
        except Missing:
            report.missing.append(key)
            continue
        await _store_checked(target_blobs, key, data, report)
    report.added = await target_meta.load(snapshot)
    return report
