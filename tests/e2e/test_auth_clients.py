"""Real clients, a real server, a private feed: every way npm carries credentials, tokens
that must be refused, npm's web login, the one-time password, and yarn 4, pnpm 10 and bun.

All tests share the module's server; each uses its own package names.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import pytest
from tests.e2e.clients import (
    NPMRC_FORMS,
    JsClients,
    Run,
    WebLogin,
    b64,
    browse,
    client_environment,
    install_js_clients,
    installed_version,
    nerf_dart,
    npmrc_credentials,
    run,
    run_in_terminal,
    without_registry_flag,
    write_project,
    yarnrc,
)
from tests.e2e.conftest import (
    NpmFactory,
    PackageFactory,
    Server,
    assert_log_has_no_secrets,
)

from entrepot import totp

pytestmark = pytest.mark.e2e

FEED = "vault"
USER = "carol"
EMAIL = f"{USER}@example.test"
#: Published once into the private feed by the module fixture; the installs fetch both.
LIB, SCOPED = "vault-lib", "@vault/scoped-lib"
BEARER_REFUSED = "Unable to authenticate"


@dataclasses.dataclass(frozen=True)
class Vault:
    """The private feed and its publisher, carol."""

    registry: str
    password: str
    token: str
    #: A token of the server's admin, to look at the feed whatever the test did.
    admin: str


def add_user(server: Server, name: str, password: str | None = None) -> str:
    """``entrepot user add NAME --password-stdin``; returns the password."""
    password = server.remember(password or f"{name}'s long password")
    server.admin(
        "user",
        "add",
        name,
        "--email",
        f"{name}@example.test",
        "--password-stdin",
        input=password + "\n",
    )
    return password


@pytest.fixture(scope="module")
def vault(server: Server, admin_token: str, tmp_path_factory: pytest.TempPathFactory) -> Vault:
    server.admin("feed", "create", FEED, "--private")
    password = add_user(server, USER)
    server.admin("feed", "grant", FEED, USER, "publisher")
    assert re.search(rf"^{USER}\s+publisher$", server.admin("feed", "members", FEED), re.M)
    token = server.token(user=USER)
    registry = server.feed_url(FEED)
    response = server.request("GET", f"/npm/{FEED}/-/whoami", token=token)
    assert response.body == {"username": USER}
    root = tmp_path_factory.mktemp("vault-packages")
    for name in (LIB, SCOPED):
        folder = root / name.replace("/", "+")
        folder.mkdir()
        manifest = {"name": name, "version": "1.0.0", "main": "index.js", "license": "MIT"}
        (folder / "package.json").write_text(json.dumps(manifest))
        (folder / "index.js").write_text(f"module.exports = {json.dumps(name)};\n")
        home = root / f"home-{folder.name}"
        home.mkdir()
        userconfig = home / ".npmrc"
        userconfig.write_text(f"{nerf_dart(registry)}:_authToken={token}\n")
        command = ["npm", "publish", "--registry", registry, "--userconfig", str(userconfig)]
        command += ["--cache", str(home / "cache"), "--fetch-retries=0"]
        published = run(command, cwd=folder, env=client_environment(home))
        assert published.returncode == 0, published.output
    return Vault(registry, password, token, admin_token)


@pytest.fixture(scope="session")
def js_clients(tmp_path_factory: pytest.TempPathFactory) -> JsClients:
    """yarn 4, pnpm 10 and bun, installed once per test session."""
    return install_js_clients(tmp_path_factory.mktemp("js-clients"))


def versions(server: Server, vault: Vault, name: str) -> list[str]:
    """The versions of ``name`` in the private feed, as the admin sees them."""
    response = server.packument(name, feed=FEED, token=vault.admin)
    if response.status == 404:
        return []
    assert response.status == 200, response.body
    return list(response.body["versions"])


def project(tmp_path: Path, label: str) -> Path:
    return write_project(tmp_path / label, {LIB: "^1.0.0", SCOPED: "1.0.0"})


def assert_installed(folder: Path) -> None:
    assert installed_version(folder, LIB) == "1.0.0"
    assert installed_version(folder, SCOPED) == "1.0.0"


# -- npm and .npmrc --------------------------------------------------------------------------


@pytest.mark.parametrize("form", NPMRC_FORMS)
def test_npm_publishes_and_installs_with_each_npmrc_form(
    server: Server,
    vault: Vault,
    npm: NpmFactory,
    make_package: PackageFactory,
    tmp_path: Path,
    form: str,
) -> None:
    client = npm(feed=FEED)
    lines, encoded = npmrc_credentials(
        form, vault.registry, user=USER, email=EMAIL, password=vault.password, token=vault.token
    )
    for secret in encoded:
        server.remember(secret)
    client.userconfig.write_text(lines)
    name = f"vault-form-{form.lower()}"
    client.ok("publish", cwd=make_package(name, "1.0.0"))
    assert versions(server, vault, name) == ["1.0.0"]
    manifest = server.packument(name, feed=FEED, token=vault.token).body["versions"]["1.0.0"]
    assert manifest["_npmUser"]["name"] == USER

    consumer = write_project(tmp_path / "consumer", {})
    client.ok("install", f"{name}@1.0.0", LIB, cwd=consumer)
    assert installed_version(consumer, name) == "1.0.0"
    assert installed_version(consumer, LIB) == "1.0.0"


def test_npm_without_credentials_is_asked_to_sign_in(
    server: Server, vault: Vault, npm: NpmFactory, tmp_path: Path
) -> None:
    client = npm(feed=FEED)
    refused = client("install", LIB, cwd=write_project(tmp_path / "consumer", {}))
    assert refused.returncode != 0
    assert "E401" in refused.output
    assert installed_version(tmp_path / "consumer", LIB) is None


def test_npm_with_the_azure_split_of_npmrc_files(
    server: Server,
    vault: Vault,
    npm: NpmFactory,
    make_package: PackageFactory,
    tmp_path: Path,
) -> None:
    """Azure Artifacts' layout: the project's ``.npmrc`` names only the registry, the
    user's ``.npmrc`` holds the credentials (username, base64 token, email)."""
    client = npm(feed=FEED)
    key = nerf_dart(vault.registry)
    password = server.remember(b64(vault.token))
    client.userconfig.write_text(
        "; begin auth token\n"
        f"{key}:username={USER}\n"
        f"{key}:_password={password}\n"
        f"{key}:email=npm requires email to be set but doesn't use the value\n"
        "; end auth token\n"
    )
    project_npmrc = f"registry={vault.registry}\n"
    package = make_package("vault-azure", "1.0.0")
    (package / ".npmrc").write_text(project_npmrc)
    env = client.environment()
    published = run(without_registry_flag(client.command(["publish"])), cwd=package, env=env)
    assert published.returncode == 0, published.output
    assert versions(server, vault, "vault-azure") == ["1.0.0"]

    consumer = project(tmp_path, "consumer")
    (consumer / ".npmrc").write_text(project_npmrc)
    installed = run(without_registry_flag(client.command(["install"])), cwd=consumer, env=env)
    assert installed.returncode == 0, installed.output
    assert_installed(consumer)


def test_npm_with_wrong_expired_and_revoked_tokens(
    server: Server,
    vault: Vault,
    npm: NpmFactory,
    make_package: PackageFactory,
) -> None:
    name = "vault-refused"
    npm(token=vault.token, feed=FEED).ok("publish", cwd=make_package(name, "1.0.0"))
    wrong = server.remember("ent_" + "x" * 43)
    expiring = server.token("--expires-days", "0.00002", "--description", "short", user=USER)
    expires_at = time.time() + 0.00002 * 86400
    revoked = server.token("--description", "revoke-me", user=USER)
    by_secret = server.token(user=USER)

    # Both were good before the administrator revoked them.
    for token in (revoked, by_secret):
        assert npm(token=token, feed=FEED).ok("whoami").strip() == USER
    listed = server.admin("token", "list", "--user", USER)
    assert re.search(r"\texpires \d{4}-\d\d-\d\d \d\d:\d\d UTC\tshort$", listed, re.M), listed
    (key,) = [line.split("\t")[0] for line in listed.splitlines() if line.endswith("revoke-me")]
    assert server.admin("token", "revoke", key).startswith(f"revoked token {key} of {USER}")
    assert server.admin("token", "revoke", by_secret).startswith("revoked token ")
    assert "revoke-me" not in server.admin("token", "list", "--user", USER)
    while time.time() < expires_at + 1:
        time.sleep(0.2)

    reasons = {
        wrong: "not valid",
        expiring: "expired",
        revoked: "not valid",
        by_secret: "not valid",
    }
    for token, reason in reasons.items():
        answer = server.request("GET", f"/npm/{FEED}/-/whoami", token=token)
        assert answer.status == 401 and reason in answer.body["error"], answer.body
        client = npm(token=token, feed=FEED)
        for args in (["publish"], ["view", name, "version"]):
            failed = client(*args, cwd=make_package(name, "2.0.0"))
            assert failed.returncode != 0, failed.output
            assert "E401" in failed.output, failed.output
            assert BEARER_REFUSED in failed.output, failed.output
    assert versions(server, vault, name) == ["1.0.0"]


def test_npm_with_a_read_only_token(
    server: Server,
    vault: Vault,
    npm: NpmFactory,
    make_package: PackageFactory,
    tmp_path: Path,
) -> None:
    name = "vault-read-only"
    npm(token=vault.token, feed=FEED).ok("publish", cwd=make_package(name, "1.0.0"))
    client = npm(token=server.token("--read-only", user=USER), feed=FEED)
    consumer = write_project(tmp_path / "consumer", {})
    client.ok("install", name, cwd=consumer)
    assert installed_version(consumer, name) == "1.0.0"
    refused = client("publish", cwd=make_package(name, "1.1.0"))
    assert refused.returncode != 0
    assert "E403" in refused.output
    assert "this token is read-only: it cannot change packages" in refused.output
    tagged = client("dist-tag", "add", f"{name}@1.0.0", "stable")
    assert tagged.returncode != 0
    assert "read-only" in tagged.output
    assert versions(server, vault, name) == ["1.0.0"]


def test_roles_granted_and_revoked_with_the_cli(
    server: Server, vault: Vault, npm: NpmFactory
) -> None:
    add_user(server, "dave")
    client = npm(token=server.token(user="dave"), feed=FEED)
    hidden = client("view", LIB, "version")
    assert hidden.returncode != 0 and "E404" in hidden.output
    server.admin("feed", "grant", FEED, "dave", "reader")
    assert re.search(r"^dave\s+reader$", server.admin("feed", "members", FEED), re.M)
    assert client.ok("view", LIB, "version").strip() == "1.0.0"
    server.admin("feed", "revoke", FEED, "dave")
    assert "dave" not in server.admin("feed", "members", FEED)
    again = client("view", LIB, "version")
    assert again.returncode != 0 and "E404" in again.output


# -- npm login (web) and the one-time password ----------------------------------------------


def test_npm_web_login(server: Server, vault: Vault, npm: NpmFactory) -> None:
    client = npm(feed=FEED)
    login = WebLogin(client.command(["login"]), cwd=client.home, env=client.environment())
    try:
        url = login.login_url()
        assert url.startswith(f"{server.base_url}/-/web/login/")
        page = browse(url)
        assert page.status == 200
        for field in ("name=name", "name=password", "name=otp"):
            assert field in page.html
        wrong = browse(url, {"name": USER, "password": "not carol's password", "otp": ""})
        assert wrong.status == 401
        assert "Incorrect user name or password" in wrong.html
        right = browse(url, {"name": USER, "password": vault.password, "otp": ""})
        assert right.status == 200
        assert f"signed in as <b>{USER}</b>" in right.html
        done = login.finish()
    finally:
        login.stop()
    assert done.returncode == 0, done.output
    assert vault.password not in done.output
    prefix = re.escape(f"{nerf_dart(vault.registry)}:_authToken=")
    found = re.search(rf"^{prefix}(ent_\S+)$", client.saved_config(), re.M)
    assert found is not None, client.saved_config()
    server.remember(found.group(1))
    assert client.ok("whoami").strip() == USER
    assert "npm login (web)" in server.admin("token", "list", "--user", USER)
    assert browse(url).status == 404  # the sign-in link works once


def test_npm_publish_with_a_one_time_password(
    server: Server, vault: Vault, npm: NpmFactory, make_package: PackageFactory
) -> None:
    password = add_user(server, "erin")
    server.admin("feed", "grant", FEED, "erin", "publisher")
    client = npm(token=server.token(user="erin"), feed=FEED)

    secrets: list[str] = []

    def code(found: re.Match[str]) -> str:
        secrets.append(server.remember(found.group(1)))
        # The previous step's code (still accepted) enrols; it is then spent, and the
        # current step's code stays free for the publish below.
        return totp.code_at(found.group(1), int(time.time() // totp.STEP) - 1)

    enabled = run_in_terminal(
        client.command(["profile", "enable-2fa", "auth-and-writes"]),
        cwd=client.home,
        env=client.environment(),
        prompts=[
            (r"npm password: ", lambda found: password),
            (r"(?s)enter code:\s*([A-Z2-7]{16,})\s.*?authenticator: ", code),
        ],
    )
    assert enabled.returncode == 0, enabled.stdout
    assert "2FA successfully enabled" in enabled.stdout
    assert password not in enabled.stdout

    name = "vault-otp"
    package = make_package(name, "1.0.0")
    refused = client("publish", cwd=package)
    assert refused.returncode != 0
    assert "EOTP" in refused.output
    assert versions(server, vault, name) == []
    one_time = totp.code_at(secrets[0], int(time.time() // totp.STEP))
    client.ok("publish", f"--otp={one_time}", cwd=package)
    assert versions(server, vault, name) == ["1.0.0"]
    replayed = client("publish", f"--otp={one_time}", cwd=make_package(name, "1.1.0"))
    assert replayed.returncode != 0
    assert "EOTP" in replayed.output
    assert versions(server, vault, name) == ["1.0.0"]


# -- yarn 4, pnpm 10, bun --------------------------------------------------------------------


def fresh(tmp_path: Path, label: str) -> tuple[Path, dict[str, str]]:
    """A consumer project and an environment with its own HOME (so its own client caches:
    a run without credentials must not find packages cached by a run with them)."""
    home = tmp_path / f"home-{label}"
    home.mkdir()
    return project(tmp_path, label), client_environment(home)


def assert_refused(done: Run, folder: Path, marker: str = "401") -> None:
    """The install failed for want of credentials, and installed nothing."""
    assert done.returncode != 0, done.output
    assert marker in done.output, done.output
    assert installed_version(folder, LIB) is None


def test_yarn4_installs_from_the_private_feed(
    server: Server, vault: Vault, js_clients: JsClients, tmp_path: Path
) -> None:
    ident = server.remember(f"{USER}:{vault.token}")
    settings: dict[str, dict[str, str | bool]] = {
        "auth-token": {"npmAuthToken": vault.token, "npmAlwaysAuth": True},
        "auth-ident": {"npmAuthIdent": ident, "npmAlwaysAuth": True},
    }
    for label, auth in settings.items():
        folder, env = fresh(tmp_path, label)
        (folder / ".yarnrc.yml").write_text(yarnrc(vault.registry, **auth))
        done = run([*js_clients.yarn, "install"], cwd=folder, env=env)
        assert done.returncode == 0, f"{label}:\n{done.output}"
        assert_installed(folder)
    anonymous, env = fresh(tmp_path, "anonymous")
    (anonymous / ".yarnrc.yml").write_text(yarnrc(vault.registry))
    refused = run([*js_clients.yarn, "install"], cwd=anonymous, env=env)
    # yarn's YN0041 is its message for a 401.
    assert_refused(refused, anonymous, "YN0041")
    assert "Invalid authentication (as an anonymous user)" in refused.output


def pnpm_npmrc(tmp_path: Path, label: str, registry: str, auth: str = "") -> str:
    cache = tmp_path / f"pnpm-{label}"
    return (
        f"registry={registry}\n{auth}store-dir={cache / 'store'}\n"
        f"cache-dir={cache / 'cache'}\nupdate-notifier=false\n"
    )


def test_pnpm10_installs_from_the_private_feed(
    server: Server, vault: Vault, js_clients: JsClients, tmp_path: Path
) -> None:
    key = nerf_dart(vault.registry)
    folder, env = fresh(tmp_path, "with-token")
    auth = f"{key}:_authToken={vault.token}\n"
    (folder / ".npmrc").write_text(pnpm_npmrc(tmp_path, "with-token", vault.registry, auth))
    done = run([*js_clients.pnpm, "install"], cwd=folder, env=env)
    assert done.returncode == 0, done.output
    assert_installed(folder)
    anonymous, env = fresh(tmp_path, "anonymous")
    (anonymous / ".npmrc").write_text(pnpm_npmrc(tmp_path, "anonymous", vault.registry))
    assert_refused(run([*js_clients.pnpm, "install"], cwd=anonymous, env=env), anonymous)


def test_bun_installs_from_the_private_feed(
    server: Server, vault: Vault, js_clients: JsClients, tmp_path: Path
) -> None:
    probe = run([*js_clients.bun, "--version"], cwd=tmp_path, env=client_environment(tmp_path))
    if probe.returncode != 0:
        pytest.skip(f"the bun installed from npm does not run here: {probe.output.strip()[:300]}")
    key = nerf_dart(vault.registry)
    folder, env = fresh(tmp_path, "npmrc")
    (folder / ".npmrc").write_text(f"registry={vault.registry}\n{key}:_authToken={vault.token}\n")
    done = run([*js_clients.bun, "install"], cwd=folder, env=env)
    assert done.returncode == 0, done.output
    assert_installed(folder)
    bunfig, env = fresh(tmp_path, "bunfig")
    (bunfig / "bunfig.toml").write_text(
        f'[install]\nregistry = {{ url = "{vault.registry}", token = "{vault.token}" }}\n'
    )
    done = run([*js_clients.bun, "install"], cwd=bunfig, env=env)
    assert done.returncode == 0, done.output
    assert_installed(bunfig)
    anonymous, env = fresh(tmp_path, "anonymous")
    (anonymous / ".npmrc").write_text(f"registry={vault.registry}\n")
    assert_refused(run([*js_clients.bun, "install"], cwd=anonymous, env=env), anonymous)


def test_server_log_has_no_secrets(server: Server) -> None:
    """Runs last in this module: no token, password or encoded credential reached the log."""
    assert_log_has_no_secrets(server)
