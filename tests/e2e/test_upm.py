"""Unity's Package Manager against a real server: Unity packages published with npm, listed
("My Registries"), resolved and downloaded by a UPM-emulating client on a public and a
private feed, with ``token`` and ``_auth`` credentials; the ``/-/all`` fallback and
``/-/all/since``; and the real ``npm search``.

All tests share the module's server; the packages are published once by the module fixture.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.clients import b64, client_environment, nerf_dart, run
from tests.e2e.conftest import ENTREPOT, NpmFactory, Server, assert_log_has_no_secrets
from tests.e2e.upm_client import Listed, UpmClient, UpmError

pytestmark = pytest.mark.e2e

FEED = "unity-private"
USER = "uma"
SCOPE = "com.company"

TOOLS: dict[str, Any] = {
    "name": "com.company.tools",
    "displayName": "Company Tools",
    "description": "Editor tools for the company's Unity projects",
    "unity": "2021.3",
    "unityRelease": "0f1",
    "keywords": ["tools", "editor"],
    "author": {"name": "Company", "email": "dev@example.test", "url": "https://example.test"},
    "dependencies": {"com.unity.modules.ui": "1.0.0"},
    "samples": [
        {"displayName": "Basic", "description": "The smallest scene", "path": "Samples~/Basic"}
    ],
    "documentationUrl": "https://docs.example.test/tools",
    "changelogUrl": "https://docs.example.test/tools/changelog",
    "licensesUrl": "https://docs.example.test/tools/license",
    "_upm": {"changelog": "Added the tool window."},
}
ART: dict[str, Any] = {
    "name": "com.company.art",
    "displayName": "Art Pack",
    "description": "Sprites and materials",
    "unity": "2022.3",
}
OTHER: dict[str, Any] = {"name": "org.elsewhere.thing", "description": "not in the scope"}
#: What the module fixture publishes to both feeds, in order.
PUBLISHED = [(TOOLS, "1.0.0"), (TOOLS, "1.1.0"), (ART, "2.0.0"), (OTHER, "0.1.0")]


@dataclasses.dataclass(frozen=True)
class Unity:
    public: str
    private: str
    token: str
    password: str
    root: Path


def npm_publish(server: Server, registry: str, token: str, folder: Path, home: Path) -> None:
    userconfig = home / "npmrc"
    userconfig.write_text(f"{nerf_dart(registry)}:_authToken={token}\n")
    command = ["npm", "publish", "--registry", registry, "--userconfig", str(userconfig)]
    command += ["--cache", str(home / "cache"), "--fetch-retries=0", "--no-update-notifier"]
    done = run(command, cwd=folder, env=client_environment(home))
    assert done.returncode == 0, done.output


def package_folder(root: Path, manifest: dict[str, Any], version: str) -> Path:
    folder = root / f"{manifest['name']}-{version}"
    folder.mkdir(parents=True)
    (folder / "package.json").write_text(json.dumps({**manifest, "version": version}, indent=2))
    (folder / "README.md").write_text(f"# {manifest['name']}\n")
    (folder / "Runtime").mkdir()
    (folder / "Runtime" / "Tool.cs").write_text("public class Tool {}\n")
    return folder


@pytest.fixture(scope="module")
def unity(server: Server, admin_token: str, tmp_path_factory: pytest.TempPathFactory) -> Unity:
    server.admin("feed", "create", FEED, "--private")
    password = server.remember(f"{USER}'s long password")
    server.admin(
        "user", "add", USER, "--email", f"{USER}@example.test", "--password-stdin", input=password
    )
    server.admin("feed", "grant", FEED, USER, "reader")
    token = server.token("--read-only", user=USER)
    root = tmp_path_factory.mktemp("unity")
    home = root / "publisher"
    home.mkdir()
    for feed in ("main", FEED):
        for manifest, version in PUBLISHED:
            folder = package_folder(root / feed, manifest, version)
            npm_publish(server, server.feed_url(feed), admin_token, folder, home)
    return Unity(server.feed_url("main"), server.feed_url(FEED), token, password, root)


def machine(
    tmp_path: Path, label: str, upmconfig: str | None = None
) -> tuple[Path, dict[str, str]]:
    """A user's HOME (with this ``.upmconfig.toml``) and environment."""
    home = tmp_path / label
    home.mkdir()
    if upmconfig is not None:
        (home / ".upmconfig.toml").write_text(upmconfig)
    env = client_environment(home)
    env.pop("UPM_USER_CONFIG_FILE", None)
    return home, env


def upm_table(url: str, **values: str) -> str:
    lines = [f'[npmAuth."{url}"]', *(f'{key} = "{value}"' for key, value in values.items())]
    return "\n".join(lines) + "\n"


def expected_listing(server: Server, feed: str, token: str | None) -> list[Listed]:
    """The scope's packages as the packuments describe them."""
    out = []
    for name in ("com.company.art", "com.company.tools"):
        document = server.packument(name, feed=feed, token=token).body
        out.append(
            Listed(
                name=name,
                display_name=document["versions"][document["dist-tags"]["latest"]]["displayName"],
                latest=document["dist-tags"]["latest"],
                versions=tuple(document["versions"]),
                modified=document["time"]["modified"],
            )
        )
    return out


def assert_resolves(client: UpmClient) -> None:
    """UPM's resolution of the scope's packages: packument, HEAD, GET, SHA-1."""
    tools = client.download("com.company.tools")
    assert tools.manifest["version"] == "1.1.0"
    assert tools.package_json()["displayName"] == "Company Tools"
    older = client.download("com.company.tools", "1.0.0")
    assert older.package_json()["version"] == "1.0.0"
    art = client.download("com.company.art")
    assert art.package_json()["unity"] == "2022.3"
    methods = [(method, status) for method, url, status in client.requests if url.endswith(".tgz")]
    assert methods == [("HEAD", 200), ("GET", 200)] * 3


# -- what npm publish keeps ------------------------------------------------------------------


def test_unity_fields_are_kept_as_published(server: Server, unity: Unity, tmp_path: Path) -> None:
    document = server.packument("com.company.tools").body
    assert list(document["versions"]) == ["1.0.0", "1.1.0"]
    assert document["dist-tags"] == {"latest": "1.1.0"}
    assert set(document["time"]) >= {"created", "modified", "1.0.0", "1.1.0"}
    manifest = document["versions"]["1.1.0"]
    for field in (
        "displayName",
        "description",
        "unity",
        "unityRelease",
        "keywords",
        "author",
        "dependencies",
        "samples",
        "documentationUrl",
        "changelogUrl",
        "licensesUrl",
    ):
        assert manifest[field] == TOOLS[field], field
    # npm publish drops "_"-keys from the manifest it sends (its normalize step); the server
    # takes Unity's changelog from the tarball's package.json, which UPM also unpacks.
    assert manifest["_upm"] == TOOLS["_upm"]
    home, env = machine(tmp_path, "reader")
    with UpmClient(unity.public, env=env, home=home) as client:
        inside = client.download("com.company.tools").package_json()
    assert inside["_upm"] == TOOLS["_upm"]
    assert inside["samples"] == TOOLS["samples"]


def npm_style_body(manifest: dict[str, Any], registry: str) -> dict[str, Any]:
    """``PUT /<name>`` as a publisher that keeps every field sends it."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("package/package.json")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    tarball = gzip.compress(out.getvalue(), mtime=0)
    name, version = manifest["name"], manifest["version"]
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    shasum = hashlib.sha1(tarball, usedforsecurity=False).hexdigest()
    attachment = f"{name}-{version}.tgz"
    dist = {"integrity": integrity, "shasum": shasum, "tarball": f"{registry}{attachment}"}
    return {
        "_id": name,
        "name": name,
        "dist-tags": {"latest": version},
        "versions": {version: {**manifest, "_id": f"{name}@{version}", "dist": dist}},
        "_attachments": {
            attachment: {
                "content_type": "application/octet-stream",
                "data": base64.b64encode(tarball).decode(),
                "length": len(tarball),
            }
        },
    }


def test_the_server_keeps_upm_fields_a_publisher_sends(
    server: Server, unity: Unity, admin_token: str
) -> None:
    manifest = {**TOOLS, "name": "com.vendor.changelog", "version": "1.0.0"}
    body = npm_style_body(manifest, unity.public)
    put = server.request("PUT", "/npm/main/com.vendor.changelog", body, token=admin_token)
    assert put.status == 201, put.body
    stored = server.packument("com.vendor.changelog").body["versions"]["1.0.0"]
    for field in ("_upm", "samples", "displayName", "unity", "unityRelease"):
        assert stored[field] == TOOLS[field], field


# -- listing and resolving -------------------------------------------------------------------


def test_public_feed_without_credentials(server: Server, unity: Unity, tmp_path: Path) -> None:
    home, env = machine(tmp_path, "anonymous")
    with UpmClient(unity.public, env=env, home=home) as client:
        listed = client.list_packages(SCOPE)
        assert client.listed_with == "search"
        assert listed == expected_listing(server, "main", None)
        assert [p.display_name for p in listed] == ["Art Pack", "Company Tools"]
        assert listed[1].versions == ("1.0.0", "1.1.0")
        (search,) = [url for method, url, _ in client.requests if "/-/v1/search" in url]
        assert search.endswith(f"?text={SCOPE}&from=0&size=250")
        assert "Authorization" not in client.headers()
        assert_resolves(client)


def test_search_pages_like_unity(server: Server, unity: Unity, tmp_path: Path) -> None:
    """UPM asks 250 at a time; with a small page the client must follow ``from``/``total``."""
    home, env = machine(tmp_path, "pager")
    with UpmClient(unity.public, env=env, home=home) as client:
        everything = client.list_packages(SCOPE)
    home, env = machine(tmp_path, "small-pages")
    with UpmClient(unity.public, env=env, home=home, page_size=1) as client:
        paged = client.list_packages(SCOPE)
        searches = [url for method, url, _ in client.requests if "/-/v1/search" in url]
    assert paged == everything
    assert [url.split("?")[1] for url in searches[:2]] == [
        f"text={SCOPE}&from=0&size=1",
        f"text={SCOPE}&from=1&size=1",
    ]


def test_private_feed_refuses_unity_without_credentials(unity: Unity, tmp_path: Path) -> None:
    home, env = machine(tmp_path, "nobody")
    with UpmClient(unity.private, env=env, home=home) as client:
        with pytest.raises(UpmError, match="401"):
            client.list_packages(SCOPE)
        assert [status for _, _, status in client.requests] == [401, 401]
        with pytest.raises(UpmError, match="401"):
            client.download("com.company.tools")


@pytest.mark.parametrize("form", ["token", "_auth user:token", "_auth user:password"])
def test_private_feed_with_each_credential_form(
    server: Server, unity: Unity, tmp_path: Path, form: str
) -> None:
    if form == "token":
        table = upm_table(unity.private, token=unity.token, email=f"{USER}@example.test")
    else:
        secret = unity.token if form.endswith("token") else unity.password
        table = upm_table(unity.private, _auth=server.remember(b64(f"{USER}:{secret}")))
    home, env = machine(tmp_path, "member", "# Unity credentials\n" + table)
    with UpmClient(unity.private, env=env, home=home) as client:
        assert client.list_packages(SCOPE) == expected_listing(server, FEED, unity.token)
        assert client.listed_with == "search"
        assert_resolves(client)


def test_entrepot_connect_writes_what_unity_reads(
    server: Server, unity: Unity, tmp_path: Path
) -> None:
    home, env = machine(tmp_path, "connected")
    project = tmp_path / "Game"
    (project / "Packages").mkdir(parents=True)
    manifest = {"dependencies": {"com.unity.ugui": "1.0.0"}}
    (project / "Packages" / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    done = subprocess.run(
        [str(ENTREPOT), "connect", unity.private, "--upm-scope", SCOPE, "--token-stdin"],
        input=unity.token + "\n",
        capture_output=True,
        text=True,
        cwd=project,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    scoped = json.loads((project / "Packages" / "manifest.json").read_text())["scopedRegistries"]
    assert [(r["url"], r["scopes"]) for r in scoped] == [(unity.private, [SCOPE])]
    with UpmClient(scoped[0]["url"], env=env, home=home) as client:
        assert client.list_packages(SCOPE) == expected_listing(server, FEED, unity.token)
        assert_resolves(client)


def test_upm_user_config_file_is_honoured(server: Server, unity: Unity, tmp_path: Path) -> None:
    home, env = machine(tmp_path, "service-account")
    config = tmp_path / "ServiceAccounts" / ".upmconfig.toml"
    config.parent.mkdir()
    config.write_text(upm_table(unity.private, token=unity.token))
    with UpmClient(unity.private, env=env, home=home) as client, pytest.raises(UpmError):
        client.list_packages(SCOPE)
    env["UPM_USER_CONFIG_FILE"] = str(config)
    with UpmClient(unity.private, env=env, home=home) as client:
        assert client.list_packages(SCOPE) == expected_listing(server, FEED, unity.token)
        assert_resolves(client)


@pytest.mark.parametrize("feed", ["main", FEED])
def test_unity_falls_back_to_all_when_search_fails(
    server: Server, unity: Unity, tmp_path: Path, feed: str
) -> None:
    url = server.feed_url(feed)
    home, env = machine(tmp_path, "fallback", upm_table(url, token=unity.token))
    with UpmClient(url, env=env, home=home, search_path="-/v1/no-such-search") as client:
        listed = client.list_packages(SCOPE)
        assert client.listed_with == "all"
        statuses = [(url.rsplit("/", 2)[-1], status) for _, url, status in client.requests]
        assert statuses[0][1] == 404
        assert statuses[1] == ("all", 200)
    token = unity.token if feed == FEED else None
    assert listed == expected_listing(server, feed, token)
    with UpmClient(url, env=env, home=home) as client:
        assert client.list_packages(SCOPE) == listed
        assert client.listed_with == "search"


# -- /-/all and /-/all/since -----------------------------------------------------------------


def test_all_since_lists_what_changed_after_the_time(
    server: Server, unity: Unity, admin_token: str
) -> None:
    everything = server.request("GET", "/npm/main/-/all").body
    assert {"com.company.tools", "com.company.art", "org.elsewhere.thing"} <= set(everything)
    before = int(time.time() * 1000)
    assert abs(everything["_updated"] - before) < 60_000
    time.sleep(0.01)
    body = npm_style_body({**ART, "name": "com.vendor.late", "version": "1.0.0"}, unity.public)
    put = server.request("PUT", "/npm/main/com.vendor.late", body, token=admin_token)
    assert put.status == 201, put.body

    since = server.request("GET", f"/npm/main/-/all/since?startkey={before}").body
    since.pop("_updated")
    assert list(since) == ["com.vendor.late"]
    assert since["com.vendor.late"]["displayName"] == "Art Pack"
    assert since["com.vendor.late"]["versions"] == {"1.0.0": "latest"}
    earlier = server.request("GET", "/npm/main/-/all/since?startkey=0").body
    assert set(earlier) == set(everything) | {"com.vendor.late"}
    future = server.request("GET", f"/npm/main/-/all/since?startkey={before + 86_400_000}")
    assert future.status == 200 and list(future.body) == ["_updated"]
    bad = server.request("GET", "/npm/main/-/all/since?startkey=yesterday")
    assert bad.status == 400 and "startkey" in bad.body["error"]
    # A private feed's listing needs read access, like its packuments.
    assert server.request("GET", f"/npm/{FEED}/-/all/since?startkey=0").status == 401
    private = server.request("GET", f"/npm/{FEED}/-/all/since?startkey=0", token=unity.token)
    assert private.status == 200 and "com.company.tools" in private.body


# -- npm search ------------------------------------------------------------------------------


def test_npm_search(server: Server, unity: Unity, npm: NpmFactory) -> None:
    client = npm()
    text = client.ok("search", SCOPE)
    assert "com.company.tools" in text and "com.company.art" in text
    assert "Editor tools for the company's Unity projects" in text
    assert "org.elsewhere.thing" not in text
    hits = json.loads(client.ok("search", "--json", "company", "sprites"))
    assert [hit["name"] for hit in hits] == ["com.company.art"]
    assert hits[0]["maintainers"] == [{"username": "admin", "email": "admin@localhost"}]
    private = npm(token=unity.token, feed=FEED)
    assert "com.company.tools" in private.ok("search", "tools")
    refused = npm(feed=FEED)("search", "tools")
    assert refused.returncode != 0 and "E401" in refused.output


def test_server_log_has_no_secrets(server: Server) -> None:
    """Runs last in this module: no token, password or encoded credential reached the log."""
    assert_log_has_no_secrets(server)
