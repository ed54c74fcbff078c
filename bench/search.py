"""Server-side time of npm's search endpoint (``/-/v1/search``, also Unity's "My Registries"
list) with 100,000 packages in one feed.

Run from the repository root::

    .venv/bin/python bench/search.py                          # 100,000 packages, 20 runs each
    .venv/bin/python bench/search.py --packages 5000 --runs 5  # a quick run

The packages are written straight through the metadata store (``MetadataStore.publish``, one
version each, no tarballs, no HTTP: the same code that indexes a real publish) into
``bench/.work/search/<count>`` (kept between runs: a second run with the same count reuses
it). Names mix unscoped, ``@scope/`` and Unity (``com.company.*``) packages; descriptions and
keywords carry words that are not in any name. Each query is then sent in-process through the
ASGI app (httpx's ASGI transport: no sockets, so this is the server's own time: routing, the
store's count and ranking, JSON), after one warm-up request and a check of the hits; the
median and the 90th percentile are printed in milliseconds, as a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from entrepot.http.app import create_app
from entrepot.settings import load_settings
from entrepot.storage.base import NewVersion
from entrepot.storage.sqlite import SQLiteMetadataStore

WORK = Path(__file__).resolve().parent / ".work" / "search"
FEED = "big"
WORDS = ("react", "vue", "http", "date", "color", "stream", "parser", "test", "image", "audio")
NOUNS = ("core", "kit", "plugin", "loader", "utils")
ADJECTIVES = ("fast", "tiny", "modern", "simple", "secure")


def manifest(i: int) -> dict[str, Any]:
    """Package ``i``: a tenth are Unity packages, a tenth scoped, the rest unscoped."""
    word, noun = WORDS[i % len(WORDS)], NOUNS[(i // len(WORDS)) % len(NOUNS)]
    if i % 10 == 3:
        name = f"com.company.{word}.{noun}{i:06d}"
    elif i % 10 == 7:
        name = f"@acme/{word}-{noun}-{i:06d}"
    else:
        name = f"{word}-{noun}-{i:06d}"
    adjective = ADJECTIVES[(i // 50) % len(ADJECTIVES)]
    rare = " quantum" if i % 100 == 42 else ""
    return {
        "name": name,
        "version": "1.0.0",
        "description": f"A {adjective}{rare} {word} {noun} library, number {i}",
        "keywords": [word, noun, "bench"],
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
            readme="",
            maintainer={"name": "bench", "email": "bench@example.test"},
        )
        await store.publish(feed.id, name, new)
        if (i + 1) % 10_000 == 0:
            rate = (i + 1) / (time.perf_counter() - started)
            print(f"  {i + 1:,} packages ({rate:,.0f}/s)", flush=True)
    print(f"wrote {count:,} packages in {time.perf_counter() - started:.0f} s")
    await store.close()


Check = Callable[[dict[str, Any]], bool]


def queries(count: int) -> list[tuple[str, str, Check]]:
    """(label, query string, a check of the first response)."""
    exact = str(manifest(count * 54 // 100)["name"])
    tenth, fifth = count // 10, count // 5

    def first_is(name: str) -> Check:
        return lambda body: body["objects"][0]["package"]["name"] == name

    def total_near(expected: int) -> Check:
        return lambda body: abs(body["total"] - expected) <= expected // 10 + 2

    return [
        (f"exact name (`{exact}`)", f"text={exact}", first_is(exact)),
        ("common name substring (`core`, 20%)", "text=core", total_near(fifth)),
        ("description word (`secure`, 20%)", "text=secure", total_near(fifth)),
        ("rare description word (`quantum`, 1%)", "text=quantum", total_near(count // 100)),
        ("two words (`react core`, 2%)", "text=react+core", total_near(count // 50)),
        ("short prefix (`re`, 10%)", "text=re", total_near(tenth)),
        ("empty text (first 20 by name)", "text=", total_near(count)),
        (
            "Unity scope, 250 a page (`com.company`, 10%)",
            "text=com.company&from=0&size=250",
            total_near(tenth),
        ),
        ("deep page (`core`, from=10,000)", "text=core&from=10000&size=20", total_near(fifth)),
    ]


async def measure(data_dir: Path, runs: int, count: int) -> list[tuple[str, int, float, float]]:
    settings = load_settings(overrides={"data_dir": data_dir})
    app = create_app(settings)
    results = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for label, query, check in queries(count):
            path = f"/npm/{FEED}/-/v1/search?{query}"
            first = await client.get(path)
            assert first.status_code == 200, (path, first.status_code, first.text[:300])
            body = first.json()
            assert check(body), (label, body["total"], body["objects"][:1])
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                response = await client.get(path)
                times.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200
            times.sort()
            p90 = times[min(len(times) - 1, int(len(times) * 0.9))]
            results.append((label, int(body["total"]), statistics.median(times), p90))
    await app.meta.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    data_dir = WORK / f"{args.packages}"
    asyncio.run(fill(data_dir, args.packages))
    rows = asyncio.run(measure(data_dir, args.runs, args.packages))
    print(f"\n{args.packages:,} packages in one feed, {args.runs} runs per query, in-process\n")
    print("| query | total | median ms | p90 ms |")
    print("|---|---:|---:|---:|")
    for label, total, median, p90 in rows:
        print(f"| {label} | {total:,} | {median:.1f} | {p90:.1f} |")


if __name__ == "__main__":
    main()
