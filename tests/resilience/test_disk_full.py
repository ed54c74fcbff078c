"""Disk full: the embedded stores (SQLite and the blob folder) on an 8 MiB tmpfs. Publishing
until it is full, the publish that does not fit gets 507 with a clear message and leaves
nothing behind: no temporary file, no version without its tarball, fsck clean, reads still
work. With more room, the same publish then works, without a restart.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.resilience.harness import (
    ServerProcess,
    check_feed,
    client,
    publish,
    running,
    temp_files,
)

pytestmark = pytest.mark.resilience

#: Incompressible bytes per tarball: about a dozen fit in 8 MiB.
PADDING = 700 * 1024
NAME = "disk-full-pkg"


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, unmounted afterwards. Skipped where mounting is not permitted."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    folder = tmp_path / "disk"
    folder.mkdir()
    done = _mount("-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(folder))
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], timeout=30, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], timeout=30, check=False)


def test_a_full_disk_refuses_the_publish_cleanly(small_disk: Path, tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "server", small_disk / "data")
    with running(server):
        token = server.token()
        acknowledged: list[str] = []
        refused = None
        with client(server, token) as http:
            for patch in range(40):
                response = publish(http, NAME, f"1.0.{patch}", padding=PADDING)
                if response.status_code != 201:
                    refused = (f"1.0.{patch}", response)
                    break
                acknowledged.append(f"1.0.{patch}")
        assert refused is not None, "8 MiB never filled up"
        version, response = refused
        assert response.status_code == 507, response.text
        assert "out of storage space" in response.json()["error"]
        assert len(acknowledged) >= 3

        # Smaller publishes still fit for a while, until the last bytes are gone: then the
        # blob or the database write fails, and either way the answer is 507.
        with client(server, token) as http:
            for patch in range(40):
                small = publish(http, NAME, f"1.1.{patch}", padding=PADDING // 32)
                if small.status_code != 201:
                    break
                acknowledged.append(f"1.1.{patch}")
        assert small.status_code == 507, small.text
        assert "out of storage space" in small.json()["error"]

        # Nothing half-written: no temporary blob, no version without its tarball.
        assert temp_files(small_disk / "data" / "blobs") == []
        with client(server) as http:
            present = check_feed(http, [NAME])[NAME]
        assert present == set(acknowledged)
        summary = server.fsck()
        assert summary == f"checked {len(acknowledged)} versions: 0 problems"

        # More room: the same publish now works, without a restart.
        grown = _mount("-o", "remount,size=32m", str(small_disk))
        assert grown.returncode == 0, grown.stderr
        with client(server, token) as http:
            again = publish(http, NAME, version, padding=PADDING)
            assert again.status_code == 201, again.text
            present = check_feed(http, [NAME])[NAME]
        assert present == {*acknowledged, version}
        assert temp_files(small_disk / "data" / "blobs") == []
        server.fsck()
