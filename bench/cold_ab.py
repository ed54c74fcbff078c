"""Cold ``npm ci`` through two Entrepot builds and straight from the upstream, interleaved:
the way to tell whether a change to the connector path helps, on a machine whose speed
drifts from one minute to the next.

Uses the fixture and the 20 ms upstream of ``bench/installs.py`` (run that once first)::

    git worktree add /tmp/before <commit> && (cd /tmp/before && ./run --help)
    .venv/bin/python bench/cold_ab.py --before /tmp/before/.venv/bin/entrepot --rounds 5
    .venv/bin/python bench/cold_ab.py --before ... --store pg+s3   # each install on a new database
    .venv/bin/python bench/cold_ab.py --before ... --delay 0.1     # the upstream 100 ms away

Each round installs through the "before" build, the "after" build (``.venv/bin/entrepot``
of this checkout unless ``--after`` says otherwise) and straight from the upstream, in an
order rotated per round, each from a fresh registry, an empty npm cache and (as root) a
dropped page cache. Prints every install and the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench.installs as b
from bench.packuments import entrepot_command, say


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--before", required=True, help="the entrepot command of one build")
    parser.add_argument("--after", default=None, help="of the other (default: this checkout)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tree", choices=("small", "large"), default="large")
    parser.add_argument(
        "--store",
        choices=("embedded", "pg+s3"),
        default="embedded",
        help="the builds' store: SQLite + a folder, or PostgreSQL + SeaweedFS S3",
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=b.UPSTREAM_DELAY,
        help=f"seconds the upstream waits before each answer (default {b.UPSTREAM_DELAY})",
    )
    args = parser.parse_args(argv)
    b.UPSTREAM_DELAY = args.delay
    builds = {"before": args.before, "after": args.after or entrepot_command()}
    b.DROP_PAGE_CACHE = b.can_drop_page_cache()
    fixture = b.ensure_fixture(args.tree, b.npm_registry())
    upstream = b.start_delayed_upstream(fixture)
    results: dict[str, list[b.Install]] = {label: [] for label in (*builds, "straight")}
    stores = contextlib.ExitStack()
    try:
        if args.store == "pg+s3":
            b.SHARED = stores.enter_context(b.shared_stores())
        for round_ in range(args.rounds):
            order = list(results)
            for label in order[round_ % 3 :] + order[: round_ % 3]:
                server = None
                if label in builds:
                    b.ENTREPOT = builds[label]
                    server = b.entrepot_with_connector(label, b.RUNS / "cold-ab", upstream.base)
                registry = server.base if server is not None else upstream.base
                try:
                    result = b.install(
                        "npm", fixture, None, registry, server, f"ab-{label}", wait_idle=5
                    )
                finally:
                    if server is not None:
                        server.stop()
                results[label].append(result)
                say(
                    f"round {round_} {label:8} {result.seconds:5.1f} s, "
                    f"server {result.server_cpu:.2f} CPU-s, client {result.client_cpu:.1f} CPU-s"
                )
    finally:
        stores.close()
        upstream.stop()
    straight = statistics.median(r.seconds for r in results["straight"])
    for label, runs in results.items():
        wall = statistics.median(r.seconds for r in runs)
        line = f"{label:8} median {wall:.1f} s ({wall / straight:.2f}x straight)"
        if label in builds:
            line += f", server {statistics.median(r.server_cpu for r in runs):.2f} CPU-s"
        say(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
