"""One Entrepot, filled by one cold ``npm ci``, then warm installs: server CPU per install,
idle CPU, resident memory, and optionally a py-spy profile of the fill or the first warm
install.

Uses the fixture and helpers of ``bench/installs.py`` (run that once first to build it)::

    .venv/bin/python bench/warm_profile.py                    # embedded store, 3 warm installs
    .venv/bin/python bench/warm_profile.py --store pg+s3 --profile bench/.work/warm0.txt
    .venv/bin/python bench/warm_profile.py --warm 0 --profile-fill bench/.work/cold.txt

With ``--profile`` or ``--profile-fill`` it needs ``py-spy`` (``.venv/bin/pip install
py-spy``); the profile is py-spy's raw format (one folded stack per line with its sample
count). ``--gil`` samples only the thread holding the GIL: Python's own CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench.installs as b
from bench.packuments import CLOCK_TICKS, Server, ensure_tool, say


def rss_mib(server: Server) -> float:
    return max(server.rss_kib().values(), default=0) / 1024


def record(spy: str, server: Server, output: Path, gil: bool, rate: int) -> subprocess.Popen[bytes]:
    """``py-spy record`` of the server into ``output`` (raw format, ``rate`` samples/s)."""
    command = [spy, "record", "-p", str(server.process.pid), "-o", str(output)]
    command += ["-f", "raw", "-r", str(rate), "--nonblocking", *(["--gil"] if gil else [])]
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    return recorder


def cpu_split(server: Server) -> dict[str, float]:
    """User and system CPU seconds of the server's processes: their main threads (the
    event loops) and everything else (worker threads, exited ones included)."""
    split = {"loop user": 0.0, "loop sys": 0.0, "threads user": 0.0, "threads sys": 0.0}
    for entry in server._group():
        try:
            total = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            main = (entry / "task" / entry.name / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        user, system = int(main[11]) / CLOCK_TICKS, int(main[12]) / CLOCK_TICKS
        split["loop user"] += user
        split["loop sys"] += system
        split["threads user"] += int(total[11]) / CLOCK_TICKS - user
        split["threads sys"] += int(total[12]) / CLOCK_TICKS - system
    return split


def stop(recorder: subprocess.Popen[bytes] | None) -> None:
    if recorder is not None:
        recorder.send_signal(2)
        recorder.wait(30)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--store", choices=("embedded", "pg+s3"), default="embedded")
    parser.add_argument("--tree", choices=("small", "large"), default="large")
    parser.add_argument("--warm", type=int, default=3, help="warm installs (default 3)")
    parser.add_argument("--profile", type=Path, help="py-spy raw profile of the first warm one")
    parser.add_argument("--profile-fill", type=Path, help="py-spy raw profile of the cold fill")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument(
        "--gil", action="store_true", help="profile only the thread holding the GIL"
    )
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if (args.profile or args.profile_fill) and not Path(spy).exists():
        raise SystemExit("py-spy is needed for --profile: .venv/bin/pip install py-spy")
    with contextlib.ExitStack() as stack:
        if args.store == "pg+s3":
            b.SHARED = stack.enter_context(b.shared_stores())
        fixture = b.ensure_fixture(args.tree, b.npm_registry())
        nginx = ensure_tool("nginx", "nginx", required=True)
        assert nginx is not None
        upstream = b.start_fixture_nginx(nginx, fixture, b.RUNS / "blob")
        stack.callback(upstream.stop)
        server = b.entrepot_with_connector("Entrepot", b.RUNS / "warm-profile", upstream.base)
        stack.callback(server.stop)
        database = b.SHARED.databases[-1] if b.SHARED is not None else None
        counted = 0

        def queries() -> str:
            """Database transactions since the last call, for PostgreSQL + S3."""
            nonlocal counted
            if database is None:
                return ""
            now = b.db_transactions(database)
            made, counted = now - counted, now
            return f", {made} database transactions"

        queries()
        recorder = (
            record(spy, server, args.profile_fill, args.gil, args.rate)
            if args.profile_fill
            else None
        )
        fill = b.install("npm", fixture, None, server.base, server, "warm-profile-fill")
        stop(recorder)
        say(f"cold fill: {fill.seconds:.1f} s, {fill.server_cpu:.2f} CPU-s{queries()}")
        say("  " + ", ".join(f"{k} {v:.2f}" for k, v in cpu_split(server).items()))
        say(f"resident after the fill: {rss_mib(server):.0f} MiB")
        before = server.cpu_seconds()
        time.sleep(20)
        say(f"idle for 20 s: {server.cpu_seconds() - before:.2f} CPU-s")
        for i in range(args.warm):
            recorder = (
                record(spy, server, args.profile, args.gil, args.rate)
                if i == 0 and args.profile
                else None
            )
            result = b.install("npm", fixture, None, server.base, server, f"warm-profile-{i}")
            stop(recorder)
            say(f"warm {i}: {result.seconds:.1f} s, {result.server_cpu:.2f} CPU-s{queries()}")
        say(f"resident after the warm installs: {rss_mib(server):.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
