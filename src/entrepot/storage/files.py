"""BlobStore on a local folder: ``ROOT/ab/cd/<sha512 hex>``.

A blob is written to a temporary file in the same folder, flushed, then renamed into place,
so a reader (or a crash) never sees half a tarball.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import tempfile
import time
from pathlib import Path

from entrepot.storage.base import Missing, StoreFull


def _check_key(key: str) -> str:
    if len(key) != 128 or any(c not in "0123456789abcdef" for c in key):
        raise Missing(f"not a blob key: {key[:16]!r}")
    return key


class FileBlobStore:
    """Blobs as files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    @classmethod
    def from_url(cls, url: str) -> FileBlobStore:
        return cls(Path(url.removeprefix("file://")))

    def _path(self, key: str) -> Path:
        key = _check_key(key)
        return self.root / key[:2] / key[2:4] / key

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, key, data)

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            Path(tmp).replace(path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull("the blob store's disk is full") from exc
            raise

    async def get(self, key: str) -> bytes:
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except FileNotFoundError:
            raise Missing(f"blob {key[:16]}... is not stored") from None

    async def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    async def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    async def modified(self, key: str) -> float | None:
        try:
            return self._path(key).stat().st_mtime
        except FileNotFoundError:
            return None

    async def sweep_partial(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        removed = 0
        for path in self.root.glob("??/??/.tmp-*"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed

    async def keys(self) -> list[str]:
        return sorted(
            p.name for p in self.root.glob("??/??/*") if p.is_file() and len(p.name) == 128
        )
