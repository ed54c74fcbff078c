"""Server-side time of the web UI's feed and search pages (and their API twins) with
100,000 packages in one feed.

Run from the repository root::

    .venv/bin/python bench/ui_pages.py                  # 100,000 packages, 30 runs per page
    .venv/bin/python bench/ui_pages.py --packages 5000 --runs 10   # a quick run

The packages are written straight through the metadata store (``MetadataStore.publish``, one
version each, no tarballs, no HTTP), into ``bench/.work/ui-pages`` (kept between runs: a
second run with the same count reuses it). Each page is then requested in-process through the
ASGI app (httpx's ASGI transport: no sockets, so this is the server's own time: routing, the
store's queries, templates), after one warm-up request; the median and the 90th percentile of
the runs are printed in milliseconds, as a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import time
from pathlib import Path

import httpx

from entrepot.http.app import create_app
from entrepot.settings import load_settings
from entrepot.storage.base import NewVersion
from entrepot.storage.sqlite import SQLiteMetadataStore

WORK = Path(__file__).resolve().parent / ".work" / "ui-pages"
FEED = "big"
WORDS = ("react", "vue", "utils", "http", "cli", "parser", "color", "date", "test", "stream")


def manifest(i: int) -> dict[str, object]:
    word = WORDS[i % len(WORDS)]
    name = f"@bench/{word}-{i:06d}" if i % 5 == 0 else f"{word}-tool-{i:06d}"
    return {
        "name": name,
        "version": "1.0.0",
        "description": f"A {word} package, number {i}, for the UI benchmark",
        "keywords": [word, "bench"],
        "license": "MIT",
        "_npmUser": {"name": "bench", "email": "bench@example.test"},
        "dist": {"integrity": f"sha512-{i:088d}", "shasum": f"{i:040d}"},
    }


async def fill(data_dir: Path, count: int) -> None:
    """Create the feed and ``count`` packages, unless a previous run left exactly that."""
    store_path = data_dir / "entrepot.db"
    if store_path.exists():
        store = SQLiteMetadataStore(store_path)
        feed = await store.get_feed(FEED)
        have = await store.count_packages(feed.id) if feed else -1
        await store.close()
        if have == count:
            print(f"reusing {count:,} packages in {data_dir}")
            return
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    store = SQLiteMetadataStore(store_path)
    feed = await store.create_feed(FEED, private=False)
    await store.create_feed("main", private=False)
    started = time.perf_counter()
    for i in range(count):
        doc = manifest(i)
        name = str(doc["name"])
        new = NewVersion(
            version="1.0.0",
            manifest=doc,
            blob_key=f"{i:0128x}",
            size=1000 + i % 5000,
            tag="latest",
            readme=f"# {name}\n\nPackage {i}.\n",
            maintainer={"name": "bench", "email": "bench@example.test"},
        )
        await store.publish(feed.id, name, new)
        if (i + 1) % 10_000 == 0:
            rate = (i + 1) / (time.perf_counter() - started)
            print(f"  {i + 1:,} packages ({rate:,.0f}/s)", flush=True)
    await store.close()


async def measure(data_dir: Path, runs: int, count: int) -> list[tuple[str, float, float]]:
    settings = load_settings(overrides={"data_dir": data_dir})
    app = create_app(settings)
    last_page = max(1, count // 50)
    pages = [
        ("home `/` (feed list with counts)", "/", {"Accept": "text/html"}),
        ("feed page 1 (newest 50)", f"/-/ui/feed/{FEED}", {}),
        (f"feed page {last_page:,} (the oldest)", f"/-/ui/feed/{FEED}?page={last_page}", {}),
        ("search, one match", f"/-/ui/search?feed={FEED}&q=tool-004242", {}),
        ("search, a word in 10% of the feed", f"/-/ui/search?feed={FEED}&q=parser", {}),
        ("search, two words, 10% and 100%", f"/-/ui/search?feed={FEED}&q=color+number", {}),
        ("search, page 100", f"/-/ui/search?feed={FEED}&q=react&page=100", {}),
        ("search, scoped name prefix", f"/-/ui/search?feed={FEED}&q=%40bench%2Fcli-00", {}),
        ("package page", f"/-/ui/package/{FEED}/cli-tool-000004", {}),
        ("API packages page 1", f"/-/api/feeds/{FEED}/packages?size=50", {}),
        ("API search", f"/-/api/search?feed={FEED}&q=parser", {}),
    ]
    results = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for label, path, headers in pages:
            first = await client.get(path, headers=headers)
            assert first.status_code == 200, (path, first.status_code, first.text[:300])
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                response = await client.get(path, headers=headers)
                times.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200
            times.sort()
            p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
            results.append((label, statistics.median(times), p90))
    await app.meta.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    data_dir = WORK / f"{args.packages}"
    asyncio.run(fill(data_dir, args.packages))
    rows = asyncio.run(measure(data_dir, args.runs, args.packages))
    print(f"\n{args.packages:,} packages in one feed, {args.runs} runs per page, in-process\n")
    print("| page | median ms | p90 ms |")
    print("|---|---:|---:|")
    for label, median, p90 in rows:
        print(f"| {label} | {median:.1f} | {p90:.1f} |")


if __name__ == "__main__":
    main()
