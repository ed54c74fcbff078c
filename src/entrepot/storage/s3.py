"""BlobStore on S3 or any S3-compatible server: ``BUCKET/PREFIX/ab/cd/<sha512 hex>``.

Opened from ``s3://BUCKET[/PREFIX][?endpoint=http://127.0.0.1:8333][&region=us-east-1]`` and
an environment-like mapping that holds ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``
(and ``AWS_SESSION_TOKEN`` if any), handed in by the entry point. Requests go through obstore
(Rust ``object_store``), which signs the payload so the server checks every byte it stores.

Blobs are named by their content, so ``put`` skips a blob that is already there and two
concurrent writers of one key write the same bytes. Errors reach callers as store errors
whose messages carry no credentials and no request signatures.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Awaitable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import httpx
import obstore
from obstore.exceptions import BaseError as ObstoreError
from obstore.store import S3Store

from entrepot.settings import SettingsError
from entrepot.storage.base import Missing, StoreError, StoreFull, StoreUnavailable

if TYPE_CHECKING:
    from obstore import ObjectMeta
    from obstore.store import ClientConfig, RetryConfig, S3Config, S3Credential

T = TypeVar("T")

DEFAULT_REGION = "us-east-1"
#: Blobs larger than this are looked for (HEAD) before they are written; smaller ones are
#: written again if they exist, which costs less than the round trip.
HEAD_BEFORE_PUT = 1024 * 1024
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
# A request is retried a few times, then fails: a registry request should not hang for
# minutes (obstore's default) on an S3 outage.
_RETRY: RetryConfig = {"max_retries": 3, "retry_timeout": timedelta(seconds=15)}
_FULL = ("InsufficientStorage", "QuotaExceeded", "507 Insufficient Storage")


class S3Error(StoreUnavailable):
    """The S3 service refused or failed a request (the message names the operation); the
    server answers 503, as for any store it cannot use."""


def _check_key(key: str) -> str:
    # The same rule as the file store: 128 lowercase hex characters, refused before any request.
    if len(key) != 128 or any(c not in "0123456789abcdef" for c in key):
        raise Missing(f"not a blob key: {key[:16]!r}")
    return key


class S3BlobStore:
    """Blobs as objects in one bucket, under an optional prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        access_key_id: str,
        secret_access_key: str,
        session_token: str | None = None,
        endpoint: str | None = None,
        region: str = DEFAULT_REGION,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        self.endpoint = endpoint
        self._secrets = [s for s in (access_key_id, secret_access_key, session_token) if s]

        def credentials() -> S3Credential:
            return {
                "access_key_id": access_key_id,
                "secret_access_key": secret_access_key,
                "token": session_token,
                "expires_at": None,
            }

        # obstore also reads AWS_* variables from the process environment; every setting that
        # matters is given here so that they cannot change where blobs go or how they are signed.
        config: S3Config = {
            "region": region,
            "skip_signature": False,
            "unsigned_payload": False,
            "virtual_hosted_style_request": False,
        }
        if endpoint:
            config["endpoint"] = endpoint
        client: ClientConfig = {"allow_http": bool(endpoint and endpoint.startswith("http://"))}
        self._store = S3Store(
            bucket,
            prefix=self.prefix or None,
            config=config,
            client_options=client,
            retry_config=_RETRY,
            credential_provider=credentials,
        )
        # The bucket itself, unprefixed: only for signing CreateBucket.
        self._bucket_store = S3Store(
            bucket,
            config=config,
            client_options=client,
            retry_config=_RETRY,
            credential_provider=credentials,
        )

    @classmethod
    def from_url(cls, url: str, credentials: Mapping[str, str]) -> S3BlobStore:
        """Open ``s3://BUCKET[/PREFIX]?endpoint=...&region=...`` with ``AWS_*`` credentials."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "s3":
            raise SettingsError(f"blob_url: not an s3:// URL: {parts.scheme!r}")
        bucket = parts.netloc
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise SettingsError(f"blob_url: not a valid S3 bucket name: {bucket!r}")
        prefix = parts.path.strip("/")
        if prefix and not all(
            _PREFIX_SEGMENT.fullmatch(segment) and segment not in (".", "..")
            for segment in prefix.split("/")
        ):
            raise SettingsError(f"blob_url: unsupported prefix {prefix!r}")
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
        unknown = set(query) - {"endpoint", "region"}
        if unknown:
            raise SettingsError(f"blob_url: unknown parameters {sorted(unknown)}")
        endpoint = query.get("endpoint", [None])[-1] or None
        if endpoint is not None and urllib.parse.urlsplit(endpoint).scheme not in ("http", "https"):
            raise SettingsError("blob_url: endpoint must be an http:// or https:// URL")
        region = query.get("region", [DEFAULT_REGION])[-1] or DEFAULT_REGION
        access_key_id = credentials.get("AWS_ACCESS_KEY_ID", "")
        secret_access_key = credentials.get("AWS_SECRET_ACCESS_KEY", "")
        if not access_key_id or not secret_access_key:
            raise SettingsError(
                "blob_url: an s3:// store needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        return cls(
            bucket,
            prefix,
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            session_token=credentials.get("AWS_SESSION_TOKEN") or None,
            endpoint=endpoint,
            region=region,
        )

    def __repr__(self) -> str:
        where = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return f"S3BlobStore(s3://{where}, endpoint={self.endpoint!r})"

    # -- errors --------------------------------------------------------------------------

    def _clean(self, exc: BaseException) -> str:
        """The library's message without its debug dump, credentials or signatures."""
        text = str(exc).split("\n\nDebug source:", 1)[0].strip()
        text = re.sub(r"X-Amz-[A-Za-z-]+=[^&\s\"']*", "X-Amz-…=***", text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text[:600]

    def _error(self, exc: BaseException, action: str) -> StoreError:
        text = self._clean(exc)
        if any(marker in text for marker in _FULL):
            return StoreFull(f"the S3 bucket {self.bucket} has no room: {text}")
        return S3Error(f"S3 {action} failed: {text}")

    async def _call(self, action: str, request: Awaitable[T]) -> T:
        try:
            return await request
        except (ObstoreError, OSError, ValueError) as exc:
            raise self._error(exc, action) from None

    # -- layout --------------------------------------------------------------------------

    @staticmethod
    def _path(key: str) -> str:
        key = _check_key(key)
        return f"{key[:2]}/{key[2:4]}/{key}"

    def local_path(self, key: str) -> Path | None:
        return None

    # -- the bucket ----------------------------------------------------------------------

    async def ensure_bucket(self) -> None:
        """Create the bucket unless it exists; an existing bucket needs no create permission."""
        listing = obstore.list(self._store, chunk_size=1)
        try:
            await anext(listing, None)
            return
        except (ObstoreError, OSError, ValueError) as exc:
            if "NoSuchBucket" not in str(exc):
                raise self._error(exc, f"listing bucket {self.bucket}") from None
        # obstore has no bucket API: send CreateBucket as a presigned PUT on the bucket.
        url = await self._call(
            "signing CreateBucket",
            obstore.sign_async(self._bucket_store, "PUT", "", timedelta(minutes=5)),
        )
        body = b""
        if self.region != DEFAULT_REGION:
            body = (
                "<CreateBucketConfiguration><LocationConstraint>"
                f"{self.region}</LocationConstraint></CreateBucketConfiguration>"
            ).encode()
        try:
            async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
                response = await client.put(url, content=body)
        except httpx.HTTPError as exc:
            raise S3Error(f"S3 CreateBucket {self.bucket} failed: {type(exc).__name__}") from None
        if response.status_code == 409 and b"BucketAlreadyOwnedByYou" in response.content:
            return
        if response.status_code >= 300:
            code = re.search(rb"<Code>([^<]{1,64})</Code>", response.content)
            reason = code.group(1).decode(errors="replace") if code else response.reason_phrase
            raise S3Error(f"S3 CreateBucket {self.bucket} failed: {response.status_code} {reason}")

    # -- blobs ---------------------------------------------------------------------------

    async def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        # A key is the SHA-512 of its bytes, so writing an existing blob again changes
        # nothing: only a large one is worth a HEAD first (a round trip, and for a new
        # blob, the usual case, a not-found error raised and caught).
        if len(data) > HEAD_BEFORE_PUT and await self._head(path) is not None:
            return
        await self._call(f"put of blob {key[:16]}...", obstore.put_async(self._store, path, data))

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            result = await obstore.get_async(self._store, path)
            return bytes(await result.bytes_async())
        except FileNotFoundError:
            raise Missing(f"blob {key[:16]}... is not stored") from None
        except (ObstoreError, OSError, ValueError) as exc:
            raise self._error(exc, f"get of blob {key[:16]}...") from None

    async def exists(self, key: str) -> bool:
        return await self._head(self._path(key)) is not None

    async def modified(self, key: str) -> float | None:
        meta = await self._head(self._path(key))
        return None if meta is None else meta["last_modified"].timestamp()

    async def _head(self, path: str) -> ObjectMeta | None:
        try:
            return await obstore.head_async(self._store, path)
        except FileNotFoundError:
            return None
        except (ObstoreError, OSError, ValueError) as exc:
            raise self._error(exc, f"HEAD of {path.rsplit('/', 1)[-1][:16]}...") from None

    async def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            await obstore.delete_async(self._store, path)
        except FileNotFoundError:
            return
        except (ObstoreError, OSError, ValueError) as exc:
            raise self._error(exc, f"delete of blob {key[:16]}...") from None

    async def sweep_partial(self, older_than: float) -> int:
        # An object PUT is atomic in S3: a write that never finished leaves nothing behind.
        return 0

    async def keys(self) -> list[str]:
        found: list[str] = []
        try:
            async for chunk in obstore.list(self._store, chunk_size=1000):
                for meta in chunk:
                    parts = meta["path"].split("/")
                    if len(parts) == 3 and parts[:2] == [parts[2][:2], parts[2][2:4]]:
                        try:
                            found.append(_check_key(parts[2]))
                        except Missing:
                            continue
        except (ObstoreError, OSError, ValueError) as exc:
            raise self._error(exc, f"listing of bucket {self.bucket}") from None
        return sorted(found)

    async def presigned_url(self, key: str, expires: timedelta) -> str:
        """A URL that lets its holder GET the blob until it expires (for redirects)."""
        return await self._call(
            f"signing blob {key[:16]}...",
            obstore.sign_async(self._store, "GET", self._path(key), expires),
        )
