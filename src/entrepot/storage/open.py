"""Choosing store backends by URL: ``sqlite://PATH`` or ``postgresql://...`` for metadata,
``file://PATH`` or ``s3://BUCKET/PREFIX?endpoint=...`` for tarballs."""

from __future__ import annotations

from collections.abc import Mapping

from entrepot.settings import Settings, SettingsError
from entrepot.storage.base import BlobStore, MetadataStore
from entrepot.storage.files import FileBlobStore
from entrepot.storage.sqlite import SQLiteMetadataStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_local(settings: Settings) -> bool:
    """Whether both stores are embedded (SQLite and files), so they open without a loop."""
    return settings.resolved_database_url.startswith(
        "sqlite://"
    ) and settings.resolved_blob_url.startswith("file://")


def open_local_stores(
    settings: Settings, *, upgrade: bool = False
) -> tuple[MetadataStore, BlobStore]:
    """The embedded stores, opened synchronously (SQLite and a folder)."""
    if not is_local(settings):
        raise SettingsError("these stores need open_stores() on an event loop")
    return (
        SQLiteMetadataStore.from_url(settings.resolved_database_url, upgrade=upgrade),
        FileBlobStore.from_url(settings.resolved_blob_url),
    )


async def open_stores(
    settings: Settings,
    *,
    upgrade: bool = False,
    environ: Mapping[str, str] | None = None,
) -> tuple[MetadataStore, BlobStore]:
    """Open the metadata and blob stores the settings name. An out-of-date schema is
    refused (:class:`SchemaMismatch`) unless ``upgrade`` is set. S3 credentials come from
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in ``environ`` or the settings'
    ``credentials`` table."""
    db = settings.resolved_database_url
    blob = settings.resolved_blob_url
    meta: MetadataStore
    if db.startswith("sqlite://"):
        meta = SQLiteMetadataStore.from_url(db, upgrade=upgrade)
    elif db.startswith(POSTGRES_SCHEMES):
        from entrepot.storage.postgres import PostgresMetadataStore

        meta = await PostgresMetadataStore.open(db, upgrade=upgrade)
    else:
        raise SettingsError(f"database_url: unsupported backend {db.split(':', 1)[0]!r}")
    try:
        blobs: BlobStore
        if blob.startswith("file://"):
            blobs = FileBlobStore.from_url(blob)
        elif blob.startswith("s3://"):
            from entrepot.storage.s3 import S3BlobStore

            s3 = S3BlobStore.from_url(blob, {**(environ or {}), **settings.credentials})
            await s3.ensure_bucket()
            blobs = s3
        else:
            raise SettingsError(f"blob_url: unsupported backend {blob.split(':', 1)[0]!r}")
    except BaseException:
        await meta.close()
        raise
    return meta, blobs
