"""One Entrepot, filled by one cold ``npm ci``, then warm installs: server CPU per install,
idle CPU, resident memory, and optionally a py-spy profile of the first warm install.

Uses the fixture and helpers of ``bench/installs.py`` (run that once first to build it)::

    .venv/bin/python bench/warm_profile.py                    # embedded store, 3 warm installs
    .venv/bin/python bench/warm_profile.py --store pg+s3 --profile bench/.work/warm0.txt

With ``--profile`` it needs ``py-spy`` (``.venv/bin/pip install py-spy``); the profile is
py-spy's raw format (one folded stack per line with its sample count).
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
from bench.packuments import Server, ensure_tool, say


def rss_mib(server: Server) -> float:
    return max(server.rss_kib().values(), default=0) / 1024


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--store", choices=("embedded", "pg+s3"), default="embedded")
    parser.add_argument("--tree", choices=("small", "large"), default="large")
    parser.add_argument("--warm", type=int, default=3, help="warm installs (default 3)")
    parser.add_argument("--profile", type=Path, help="py-spy raw profile of the first warm one")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if args.profile and not Path(spy).exists():
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
        fill = b.install("npm", fixture, None, server.base, server, "warm-profile-fill")
        say(f"cold fill: {fill.seconds:.1f} s, {fill.server_cpu:.2f} CPU-s")
        say(f"resident after the fill: {rss_mib(server):.0f} MiB")
        before = server.cpu_seconds()
        time.sleep(20)
        say(f"idle for 20 s: {server.cpu_seconds() - before:.2f} CPU-s")
        for i in range(args.warm):
            recorder = None
            if i == 0 and args.profile:
                command = [spy, "record", "-p", str(server.process.pid), "-o", str(args.profile)]
                command += ["-f", "raw", "-r", "200", "--nonblocking"]
                recorder = subprocess.Popen(
                    command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
                time.sleep(1)
            result = b.install("npm", fixture, None, server.base, server, f"warm-profile-{i}")
            if recorder is not None:
                recorder.send_signal(2)
                recorder.wait(30)
            say(f"warm {i}: {result.seconds:.1f} s, {result.server_cpu:.2f} CPU-s")
        say(f"resident after the warm installs: {rss_mib(server):.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
