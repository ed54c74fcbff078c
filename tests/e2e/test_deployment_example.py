"""The deployment example of ``docs/deployment.md`` is real: its files, with this test's
ports and paths put in, run two ``entrepot serve`` processes on PostgreSQL + S3 behind
nginx (TLS with a throwaway certificate), and the real npm publishes and installs through it.

The example files keep their production values (``127.0.0.1:4881``, ``/etc/entrepot/...``);
``render`` replaces each one and fails if the file no longer contains it, so the test and
the docs cannot drift apart. Needs PostgreSQL, SeaweedFS (``weed``), nginx and openssl.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import tarfile
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.e2e.cluster import (
    blob_url,
    closed_port,
    entrepot,
    environment,
    launch,
    make_certificate,
    postgres_database,
    request,
    s3_server,
    stop,
    tool,
    wait_listening,
)
from tests.e2e.conftest import ENTREPOT, HttpResult, Npm, PackageFactory, Server

pytestmark = pytest.mark.e2e

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXAMPLES = DOCS / "deployment"
PRODUCTION_BINARY = "/opt/entrepot/venv/bin/entrepot"
PRODUCTION_CONFIG = "/etc/entrepot/entrepot.toml"


def render(name: str, replacements: Mapping[str, str]) -> str:
    """An example file with each production value replaced; every one must be there."""
    text = (EXAMPLES / name).read_text()
    for old, new in replacements.items():
        assert old in text, f"docs/deployment/{name} no longer contains {old!r}: update the test"
        text = text.replace(old, new)
    return text


def exec_start(unit: str) -> list[str]:
    """The command of a unit's ``ExecStart=`` line."""
    (line,) = [x for x in unit.splitlines() if x.startswith("ExecStart=")]
    return shlex.split(line.removeprefix("ExecStart="))


@dataclass
class Deployment:
    root: Path
    config: Path
    env: dict[str, str]
    servers: list[Server]
    public_url: str
    http_url: str
    certificate: Path
    access_log: Path
    tls: ssl.SSLContext

    def get(self, path: str, **kwargs: Any) -> HttpResult:
        return request(self.public_url, "GET", path, context=self.tls, **kwargs)

    def npm(self, root: Path, token: str | None = None) -> Npm:
        """A real npm pointed at the feed through nginx, trusting the test certificate."""
        registry = f"{self.public_url}/npm/main/"
        client = Npm(root, self.servers[0], registry)
        lines = [f"cafile={self.certificate}"]
        if token is not None:
            lines.append(f"{registry.removeprefix('https:')}:_authToken={token}")
        client.userconfig.write_text("\n".join(lines) + "\n")
        return client


def nginx_main_config(root: Path, site: Path) -> Path:
    """What nginx.conf around the example site needs to run unprivileged in a temp folder."""
    temp = root / "nginx-temp"
    temp.mkdir()
    main = root / "nginx-main.conf"
    main.write_text(
        f"""daemon off;
master_process off;
pid {root / "nginx.pid"};
error_log {root / "nginx-error.log"} info;
events {{ worker_connections 512; }}
http {{
    access_log {root / "nginx-other.log"};
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    include {site};
}}
"""
    )
    return main


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"nginx exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nginx did not listen on {port}:\n{log.read_text()}")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    nginx = tool("nginx")
    root = tmp_path_factory.mktemp("deployment")
    tls_port, http_port = closed_port(), closed_port()
    public_url = f"https://127.0.0.1:{tls_port}"
    with postgres_database() as database_url, s3_server(root / "s3") as s3:
        # entrepot.toml: S3 keys from its [credentials] table, none in the environment.
        config = root / "entrepot.toml"
        config.write_text(
            render(
                "entrepot.toml",
                {
                    '"https://npm.example.com"': json.dumps(public_url),
                    '"/var/lib/entrepot"': json.dumps(str(root / "data")),
                    "postgresql://entrepot@127.0.0.1:5432/entrepot": database_url,
                    "s3://entrepot/tarballs?endpoint=http://127.0.0.1:8333&region=us-east-1": (
                        blob_url(s3, "deployment")
                    ),
                    'AWS_ACCESS_KEY_ID = "entrepot"': (
                        f"AWS_ACCESS_KEY_ID = {json.dumps(s3.access_key_id)}"
                    ),
                    '"change-me-to-the-real-secret"': json.dumps(s3.secret_access_key),
                },
            )
        )
        config.chmod(0o600)
        env = environment()
        upgraded = entrepot(config, "db", "upgrade", env=env)
        assert "schema" in upgraded.stdout

        unit = render(
            "entrepot@.service",
            {PRODUCTION_BINARY: str(ENTREPOT), PRODUCTION_CONFIG: str(config), "%i": "0"},
        )
        launched = [
            launch(root, [], env, data_dir=root / "data", command=exec_start(unit))
            for _ in range(2)
        ]
        nginx_process: subprocess.Popen[bytes] | None = None
        try:
            servers = [wait_listening(x) for x in launched]
            cert, key = make_certificate(root)
            access_log = root / "entrepot.access.log"
            site = root / "entrepot-site.conf"
            site.write_text(
                render(
                    "nginx.conf",
                    {
                        "server 127.0.0.1:4881 ": f"server 127.0.0.1:{servers[0].port} ",
                        "server 127.0.0.1:4882 ": f"server 127.0.0.1:{servers[1].port} ",
                        "listen 80;": f"listen 127.0.0.1:{http_port};",
                        "listen 443 ssl;": f"listen 127.0.0.1:{tls_port} ssl;",
                        "/etc/letsencrypt/live/npm.example.com/fullchain.pem": str(cert),
                        "/etc/letsencrypt/live/npm.example.com/privkey.pem": str(key),
                        "/var/log/nginx/entrepot.access.log": str(access_log),
                    },
                )
            )
            main = nginx_main_config(root, site)
            error_log = root / "nginx-error.log"
            args = [nginx, "-p", str(root), "-e", str(error_log), "-c", str(main)]
            checked = subprocess.run(
                [*args, "-t"], capture_output=True, text=True, timeout=30, check=False
            )
            assert checked.returncode == 0, checked.stderr
            nginx_process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
            )
            wait_for_port(tls_port, nginx_process, error_log)
            yield Deployment(
                root=root,
                config=config,
                env=env,
                servers=servers,
                public_url=public_url,
                http_url=f"http://127.0.0.1:{http_port}",
                certificate=cert,
                access_log=access_log,
                tls=ssl.create_default_context(cafile=str(cert)),
            )
        finally:
            if nginx_process is not None and nginx_process.poll() is None:
                nginx_process.send_signal(signal.SIGQUIT)
                try:
                    nginx_process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    nginx_process.kill()
                    nginx_process.wait()
            for x in launched:
                stop(x.process)


def consumer(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "package.json").write_text(
        json.dumps({"name": "consumer", "version": "0.0.0", "private": True})
    )
    return folder


# -- the tests --------------------------------------------------------------------------------


def test_health_through_nginx_and_metrics_kept_inside(deployment: Deployment) -> None:
    for _ in range(4):  # round robin: both processes answer
        health = deployment.get("/-/health")
        assert health.status == 200 and health.body["status"] == "ok", health
    assert deployment.get("/-/metrics").status == 403
    # Plain HTTP is sent to HTTPS.
    plain = request(deployment.http_url, "GET", "/npm/main/")
    assert plain.status == 301
    assert plain.headers["Location"].startswith("https://127.0.0.1/npm/main/")


def test_npm_publish_and_install_through_nginx(
    deployment: Deployment, make_package: PackageFactory, tmp_path: Path
) -> None:
    token = entrepot(deployment.config, "token", "create", "--user", "admin", env=deployment.env)
    publisher = deployment.npm(tmp_path / "npm-publish", token.stdout.strip())
    small = make_package("deploy-small", "1.0.0")
    publisher.ok("publish", cwd=small)
    # A few MB that do not compress: the body streams through nginx unbuffered.
    big = make_package("deploy-big", "1.0.0")
    (big / "blob.bin").write_bytes(secrets.token_bytes(3 * 1024 * 1024))
    out = publisher.ok("publish", cwd=big)
    assert "+ deploy-big@1.0.0" in out

    installer = deployment.npm(tmp_path / "npm-install")
    project = consumer(tmp_path / "consumer")
    installer.ok("install", "deploy-small@1.0.0", "deploy-big@1.0.0", cwd=project)
    blob = project / "node_modules" / "deploy-big" / "blob.bin"
    assert blob.read_bytes() == (big / "blob.bin").read_bytes()
    lock = json.loads((project / "package-lock.json").read_text())
    for name in ("deploy-small", "deploy-big"):
        resolved = lock["packages"][f"node_modules/{name}"]["resolved"]
        assert resolved.startswith(f"{deployment.public_url}/npm/main/"), resolved

    # nginx sent requests to both processes.
    log = deployment.access_log.read_text()
    for server in deployment.servers:
        assert f"upstream=127.0.0.1:{server.port}" in log, log[-2000:]


def test_nginx_refuses_bodies_over_max_body_bytes(deployment: Deployment) -> None:
    settings = tomllib.loads((EXAMPLES / "entrepot.toml").read_text())
    found = re.search(r"client_max_body_size (\d+)m;", (EXAMPLES / "nginx.conf").read_text())
    assert found is not None
    assert int(found.group(1)) * 1024 * 1024 == settings["max_body_bytes"]

    port = int(deployment.public_url.rsplit(":", 1)[1])
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=deployment.tls, timeout=30)
    try:
        conn.putrequest("PUT", "/npm/main/too-big")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(settings["max_body_bytes"] + 1))
        conn.endheaders()
        conn.send(b'{"name": "too-big"')
        response = conn.getresponse()
        assert response.status == 413
    finally:
        conn.close()


def test_prometheus_scrapes_each_process(deployment: Deployment) -> None:
    a, b = deployment.servers
    config = yaml.safe_load(
        render(
            "prometheus.yml",
            {"127.0.0.1:4881": f"127.0.0.1:{a.port}", "127.0.0.1:4882": f"127.0.0.1:{b.port}"},
        )
    )
    (job,) = config["scrape_configs"]
    (targets,) = [group["targets"] for group in job["static_configs"]]
    assert sorted(targets) == sorted(f"127.0.0.1:{s.port}" for s in deployment.servers)
    for target in targets:
        page = request(f"http://{target}", "GET", job["metrics_path"])
        assert page.status == 200
        text = page.body.decode() if isinstance(page.body, bytes) else str(page.body)
        assert "# TYPE entrepot_requests_total counter" in text


def test_backup_with_export_restores_into_a_fresh_store(
    deployment: Deployment, tmp_path: Path
) -> None:
    bundle = tmp_path / "entrepot-backup.tar"
    done = entrepot(deployment.config, "export", "--out", str(bundle), env=deployment.env)
    assert f"wrote {bundle}" in done.stdout
    with tarfile.open(bundle) as archive:
        names = archive.getnames()
    assert "entrepot-bundle.json" in names
    assert any(n.startswith("blobs/") for n in names)
    restored = subprocess.run(
        [str(ENTREPOT), "--data-dir", str(tmp_path / "restored"), "import", str(bundle)],
        capture_output=True,
        text=True,
        timeout=120,
        env=deployment.env,
        check=False,
    )
    assert restored.returncode == 0, restored.stderr
    assert "imported" in restored.stdout


def test_nginx_keeps_serving_when_a_process_dies(deployment: Deployment) -> None:
    """Last in the module: it kills one of the two servers."""
    doomed = deployment.servers[0]
    doomed.process.kill()
    doomed.process.wait(timeout=10)
    for _ in range(6):
        assert deployment.get("/-/health").status == 200
        doc = deployment.get("/npm/main/deploy-small")
        assert doc.status == 200 and "1.0.0" in doc.body["versions"]


# -- the single-machine example and the units -------------------------------------------------


def test_single_machine_unit_serves_the_embedded_store(tmp_path: Path) -> None:
    unit = render(
        "entrepot.service",
        {
            PRODUCTION_BINARY: str(ENTREPOT),
            "/var/lib/entrepot": str(tmp_path / "data"),
            "--port 4880": "--port 0",
        },
    )
    command = exec_start(unit)
    server = wait_listening(
        launch(tmp_path, [], environment(), data_dir=tmp_path / "data", command=command)
    )
    try:
        feed = request(server.base_url, "GET", "/npm/main/")
        assert feed.status == 200
        # Behind the proxy, clients are given the public URL, not 127.0.0.1.
        assert feed.body["registry"] == "https://npm.example.com/npm/main/"
        assert (tmp_path / "data" / "entrepot.db").is_file()
    finally:
        stop(server.process)


@pytest.mark.parametrize("unit", ["entrepot@.service", "entrepot.service"])
def test_units_pass_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit files were not verified")
    path = tmp_path / unit
    path.write_text(render(unit, {PRODUCTION_BINARY: str(ENTREPOT)}))
    instance = path.with_name("entrepot@4881.service") if unit.endswith("@.service") else path
    done = subprocess.run(
        [analyze, "verify", str(instance)], capture_output=True, text=True, timeout=60, check=False
    )
    # Unknown or misspelt settings are only warnings: any output fails the test.
    assert done.returncode == 0 and not done.stdout + done.stderr, done.stdout + done.stderr
