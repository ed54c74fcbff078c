"""The BlobStore contract: every backend in ``BLOB_BACKENDS`` must pass all of it."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from entrepot.storage.base import BlobStore, Missing, StoreError


def key_of(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


def tree(root: Path) -> set[str]:
    """Every path under ``root``, and what sits next to it: nothing may appear outside."""
    return {str(p) for p in root.rglob("*")} | {str(p) for p in root.parent.iterdir()}


def test_put_get_exists_delete(blob_store: BlobStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        data = b"\x1f\x8b tarball bytes " + bytes(range(256))
        key = key_of(data)
        assert await blob_store.exists(key) is False
        await blob_store.put(key, data)
        assert await blob_store.exists(key) is True
        assert await blob_store.get(key) == data
        await blob_store.delete(key)
        assert await blob_store.exists(key) is False
        with pytest.raises(Missing):
            await blob_store.get(key)

    runner.run(body())


def test_get_missing_raises_missing(blob_store: BlobStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        with pytest.raises(Missing):
            await blob_store.get(key_of(b"never stored"))

    runner.run(body())


def test_delete_of_an_absent_blob_is_fine(blob_store: BlobStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        await blob_store.delete(key_of(b"never stored"))
        assert await blob_store.keys() == []

    runner.run(body())


@pytest.mark.parametrize("size", [10, 1024 * 1024 + 1], ids=["small", "over-1-MiB"])
def test_put_is_idempotent(blob_store: BlobStore, runner: asyncio.Runner, size: int) -> None:
    # Over 1 MiB the S3 store looks before it writes; under it, it writes again.
    async def body() -> None:
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        key = key_of(data)
        await blob_store.put(key, data)
        await blob_store.put(key, data)
        await asyncio.gather(*(blob_store.put(key, data) for _ in range(5)))
        assert await blob_store.get(key) == data
        assert await blob_store.keys() == [key]

    runner.run(body())


def test_keys_lists_every_blob(blob_store: BlobStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        assert await blob_store.keys() == []
        blobs = [f"blob {i}".encode() for i in range(20)]
        for data in blobs:
            await blob_store.put(key_of(data), data)
        assert sorted(await blob_store.keys()) == sorted(key_of(d) for d in blobs)
        await blob_store.delete(key_of(blobs[0]))
        assert sorted(await blob_store.keys()) == sorted(key_of(d) for d in blobs[1:])

    runner.run(body())


def test_large_and_empty_blobs_round_trip(blob_store: BlobStore, runner: asyncio.Runner) -> None:
    async def body() -> None:
        large = os.urandom(3 * 1024 * 1024 + 7)
        for data in (large, b""):
            await blob_store.put(key_of(data), data)
            assert await blob_store.get(key_of(data)) == data

    runner.run(body())


def test_local_path_when_given_holds_the_bytes(
    blob_store: BlobStore, runner: asyncio.Runner
) -> None:
    async def body() -> None:
        data = b"served with sendfile"
        await blob_store.put(key_of(data), data)
        path = blob_store.local_path(key_of(data))
        if path is not None:
            assert path.read_bytes() == data

    runner.run(body())


BAD_KEYS = [
    "",
    "a" * 127,
    "a" * 129,
    "A" * 128,
    "g" * 128,
    "../" * 42 + "ab",
    "/" + "a" * 127,
    "a" * 64 + "/" + "a" * 63,
    "a" * 126 + "\\a",
    "a" * 127 + "\x00",
    "a" * 126 + "..",
    ".." + "a" * 126,
    " " + "a" * 127,
    "a" * 127 + "\n",
    "é" * 128,
]


@pytest.mark.parametrize("key", BAD_KEYS, ids=range(len(BAD_KEYS)))
def test_keys_that_are_not_128_hex_chars_are_refused(
    blob_store: BlobStore, runner: asyncio.Runner, tmp_path: Path, key: str
) -> None:
    async def body() -> None:
        good = key_of(b"kept")
        await blob_store.put(good, b"kept")
        before = tree(tmp_path)
        with pytest.raises(StoreError):
            await blob_store.put(key, b"smuggled")
        with pytest.raises(Missing):
            await blob_store.get(key)
        with pytest.raises(StoreError):
            await blob_store.delete(key)
        try:
            path = blob_store.local_path(key)
        except StoreError:
            path = None
        assert path is None
        try:
            present = await blob_store.exists(key)
        except StoreError:
            present = False
        assert present is False
        assert tree(tmp_path) == before
        assert await blob_store.keys() == [good]
        assert await blob_store.get(good) == b"kept"

    runner.run(body())
