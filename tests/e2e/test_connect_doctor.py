"""``entrepot connect``, ``disconnect`` and ``doctor`` on a developer's machine (a temporary
HOME per test), against a real server and a private feed.

After ``connect``, ``doctor`` finds nothing to fix and npm, pnpm, yarn 4 and bun install from
the private feed with nothing but the files it wrote. ``connect`` keeps what else is in the
files, writes the same bytes when run twice, keeps secrets in user files (mode 0600), honours
``NPM_CONFIG_USERCONFIG`` and ``UPM_USER_CONFIG_FILE``, and ``disconnect`` gives the files back
as they were. Each broken configuration makes ``doctor`` exit 1 and name the problem.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.e2e.clients import (
    JsClients,
    Run,
    WebLogin,
    browse,
    client_environment,
    install_js_clients,
    installed_version,
    nerf_dart,
    run,
    run_in_terminal,
)
from tests.e2e.conftest import ENTREPOT, Server, assert_log_has_no_secrets

pytestmark = pytest.mark.e2e

FEED = "closet"
USER = "frank"
LIB, SCOPED = "closet-lib", "@closet/scoped-lib"
UNITY_SCOPE = "com.company"
CLIENT_NAMES = ("npm", "pnpm", "yarn", "bun")

#: A project's own yarn settings, there before ``connect``: yarn 4 quarantines versions
#: younger than a day by default, and every package here is seconds old.
PROJECT_YARNRC = (
    "# Project settings: entrepot connect must keep these\n"
    "nodeLinker: node-modules\n"
    "npmMinimalAgeGate: 0\n"
    "enableTelemetry: false\n"
)
#: A Unity project's manifest as the Editor writes it (two-space indent, final newline).
UNITY_MANIFEST = (
    json.dumps(
        {
            "dependencies": {"com.unity.ugui": "1.0.0", "com.unity.modules.ui": "1.0.0"},
            "testables": ["com.unity.ugui"],
        },
        indent=2,
    )
    + "\n"
)


@dataclasses.dataclass(frozen=True)
class Closet:
    """The private feed, its reader frank, and a public feed for contrast."""

    registry: str
    token: str
    password: str
    public: str


@pytest.fixture(scope="module")
def closet(server: Server, admin_token: str, tmp_path_factory: pytest.TempPathFactory) -> Closet:
    server.admin("feed", "create", FEED, "--private")
    password = server.remember(f"{USER}'s long password")
    server.admin(
        "user", "add", USER, "--email", f"{USER}@example.test", "--password-stdin", input=password
    )
    server.admin("feed", "grant", FEED, USER, "reader")
    registry = server.feed_url(FEED)
    root = tmp_path_factory.mktemp("closet-packages")
    for name in (LIB, SCOPED):
        folder = root / name.replace("/", "+")
        folder.mkdir()
        manifest = {"name": name, "version": "1.0.0", "main": "index.js", "license": "MIT"}
        (folder / "package.json").write_text(json.dumps(manifest))
        (folder / "index.js").write_text(f"module.exports = {json.dumps(name)};\n")
        userconfig = root / "publisher.npmrc"
        userconfig.write_text(f"{nerf_dart(registry)}:_authToken={admin_token}\n")
        command = ["npm", "publish", "--registry", registry, "--userconfig", str(userconfig)]
        command += ["--cache", str(root / "cache"), "--fetch-retries=0"]
        published = run(command, cwd=folder, env=client_environment(root))
        assert published.returncode == 0, published.output
    return Closet(registry, server.token(user=USER), password, server.feed_url("main"))


@pytest.fixture(scope="session")
def js_clients(tmp_path_factory: pytest.TempPathFactory) -> JsClients:
    """yarn 4, pnpm 10 and bun, installed once per test session."""
    return install_js_clients(tmp_path_factory.mktemp("js-clients"))


# -- a developer's machine --------------------------------------------------------------------


@dataclasses.dataclass
class Machine:
    """A HOME and a project folder, and the environment every command here runs with."""

    home: Path
    project: Path
    env: dict[str, str]

    @classmethod
    def create(cls, root: Path) -> Machine:
        home, project = root / "home", root / "project"
        home.mkdir(parents=True)
        project.mkdir()
        env = client_environment(home)  # no npm_config_* (so no NPM_CONFIG_USERCONFIG)
        env.pop("UPM_USER_CONFIG_FILE", None)
        env["BROWSER"] = "true"  # --web: webbrowser.open() runs `true URL`, nothing opens
        return cls(home, project, env)

    @property
    def user_files(self) -> list[Path]:
        return [self.home / name for name in (".npmrc", ".yarnrc.yml", ".upmconfig.toml")]

    @property
    def project_files(self) -> list[Path]:
        names = (".npmrc", ".yarnrc.yml", "Packages/manifest.json")
        return [self.project / name for name in names]

    def entrepot(self, *args: str, stdin: str | None = None) -> Run:
        done = subprocess.run(
            [str(ENTREPOT), *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.project,
            env=self.env,
            timeout=120,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr)

    def connect(self, url: str, token: str, *options: str) -> Run:
        return self.entrepot("connect", url, "--token-stdin", *options, stdin=token + "\n")

    def connected(self, url: str, token: str, *options: str) -> Run:
        done = self.connect(url, token, *options)
        assert done.returncode == 0, done.output
        return done

    def doctor(self) -> Run:
        return self.entrepot("doctor")

    def snapshot(self, files: list[Path] | None = None) -> dict[Path, tuple[bytes, int] | None]:
        """Each file's bytes and mode (None: no file)."""
        out: dict[Path, tuple[bytes, int] | None] = {}
        for path in files or [*self.user_files, *self.project_files]:
            out[path] = (path.read_bytes(), path.stat().st_mode & 0o777) if path.exists() else None
        return out


def unity_project(machine: Machine, manifest: str = UNITY_MANIFEST) -> Path:
    path = machine.project / "Packages" / "manifest.json"
    path.parent.mkdir()
    path.write_text(manifest)
    return path


def consumer(machine: Machine) -> None:
    """The project's package.json and yarn settings (there before ``connect``)."""
    dependencies = {LIB: "^1.0.0", SCOPED: "1.0.0"}
    manifest = {
        "name": "consumer",
        "version": "1.0.0",
        "private": True,
        "dependencies": dependencies,
    }
    (machine.project / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (machine.project / ".yarnrc.yml").write_text(PROJECT_YARNRC)


def assert_doctor_happy(machine: Machine) -> str:
    done = machine.doctor()
    assert done.returncode == 0, done.output
    assert "PROBLEM" not in done.stdout, done.stdout
    assert done.stdout.rstrip().endswith("0 problems found"), done.stdout
    return done.stdout


def assert_doctor_finds(machine: Machine, *fragments: str) -> str:
    """doctor exits 1 and each fragment is in one of its PROBLEM lines."""
    done = machine.doctor()
    assert done.returncode == 1, done.output
    problems = [line for line in done.stdout.splitlines() if line.startswith("PROBLEM")]
    for fragment in fragments:
        assert any(fragment in line for line in problems), (fragment, done.stdout)
    assert re.search(rf"^{len(problems)} problems? found$", done.stdout, re.M), done.stdout
    return done.stdout


def kept_in_order(old: str, new: str) -> bool:
    """Every line of ``old`` is still in ``new``, in the same order."""
    lines = iter(new.splitlines())
    return all(any(line == candidate for candidate in lines) for line in old.splitlines())


def npm_install(machine: Machine) -> Run:
    """``npm install`` in the project, with only the configuration files to go by."""
    command = ["npm", "install", "--no-audit", "--no-fund", "--fetch-retries=0"]
    return run(command, cwd=machine.project, env=machine.env)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- connect, doctor, and every client installing ----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Connected:
    machine: Machine
    output: str


@pytest.fixture(scope="module")
def connected(closet: Closet, tmp_path_factory: pytest.TempPathFactory) -> Connected:
    """A Unity + JavaScript project after ``entrepot connect URL --client all --upm-scope``."""
    machine = Machine.create(tmp_path_factory.mktemp("connected"))
    consumer(machine)
    unity_project(machine)
    done = machine.connected(
        closet.registry, closet.token, "--client", "all", "--upm-scope", UNITY_SCOPE
    )
    return Connected(machine, done.stdout)


def test_connect_puts_the_token_in_user_files_only(closet: Closet, connected: Connected) -> None:
    machine = connected.machine
    assert f"signed in to {closet.registry} as {USER}" in connected.output
    for path in machine.user_files:
        assert closet.token in path.read_text(), path
        assert path.stat().st_mode & 0o777 == 0o600, path
        assert f"updated {path}" in connected.output
    for path in machine.project_files:
        assert closet.token not in path.read_text(), path
    assert (machine.project / ".npmrc").read_text() == f"registry={closet.registry}\n"
    assert (machine.project / ".npmrc").stat().st_mode & 0o777 == 0o644
    manifest = json.loads((machine.project / "Packages" / "manifest.json").read_text())
    (registry,) = manifest["scopedRegistries"]
    assert (registry["url"], registry["scopes"]) == (closet.registry, [UNITY_SCOPE])
    assert manifest["dependencies"] == json.loads(UNITY_MANIFEST)["dependencies"]


def test_doctor_finds_nothing_to_fix_after_connect(closet: Closet, connected: Connected) -> None:
    report = assert_doctor_happy(connected.machine)
    for client in ("npm", "yarn", "upm"):
        line = f"{client:4} {closet.registry} accepts the credential: signed in as {USER}"
        assert line in report, report


@pytest.mark.parametrize("client", CLIENT_NAMES)
def test_each_client_installs_with_only_the_files_connect_wrote(
    closet: Closet, connected: Connected, js_clients: JsClients, tmp_path: Path, client: str
) -> None:
    machine = connected.machine
    folder = tmp_path / "project"
    shutil.copytree(machine.project, folder)
    commands = {
        # No --registry, no --userconfig: npm reads the project's and the user's .npmrc.
        "npm": ["npm", "install", "--no-audit", "--no-fund", "--fetch-retries=0"],
        "pnpm": [*js_clients.pnpm, "install"],
        "yarn": [*js_clients.yarn, "install"],
        "bun": [*js_clients.bun, "install"],
    }
    if client == "bun":
        probe = run([*js_clients.bun, "--version"], cwd=tmp_path, env=machine.env)
        if probe.returncode != 0:
            pytest.skip(f"the bun installed from npm does not run here: {probe.output[:300]}")
    done = run(commands[client], cwd=folder, env=machine.env)
    assert done.returncode == 0, done.output
    assert installed_version(folder, LIB) == "1.0.0"
    assert installed_version(folder, SCOPED) == "1.0.0"


def test_without_connect_the_private_feed_refuses(closet: Closet, tmp_path: Path) -> None:
    """The control for the installs above: the same project with no user files fails."""
    machine = Machine.create(tmp_path)
    consumer(machine)
    (machine.project / ".npmrc").write_text(f"registry={closet.registry}\n")
    done = npm_install(machine)
    assert done.returncode != 0 and "E401" in done.output, done.output
    assert installed_version(machine.project, LIB) is None
    assert_doctor_finds(machine, "is a private feed and your .npmrc sends no credential")


def test_connect_refuses_a_token_the_registry_refuses(closet: Closet, tmp_path: Path) -> None:
    machine = Machine.create(tmp_path)
    done = machine.connect(closet.registry, "ent_" + "x" * 43, "--client", "all")
    assert done.returncode == 1, done.output
    assert f"{closet.registry} does not accept that token (HTTP 401)" in done.stderr
    assert all(state is None for state in machine.snapshot().values())
    empty = machine.entrepot("connect", closet.registry, "--token-stdin", stdin="\n")
    assert empty.returncode == 2 and "no token on standard input" in empty.stderr


def test_upm_scope_needs_a_unity_project(closet: Closet, tmp_path: Path) -> None:
    machine = Machine.create(tmp_path)
    done = machine.connect(closet.registry, closet.token, "--upm-scope", UNITY_SCOPE)
    assert done.returncode == 2, done.output
    assert "Packages/manifest.json to add the scope com.company to" in done.stderr
    assert all(state is None for state in machine.snapshot().values())


# -- what connect writes, twice, and what disconnect gives back ------------------------------

USER_NPMRC = """; personal npm settings
fund=false
# a token for another registry stays
//127.0.0.2:9/npm/other/:_authToken=other-token
save-exact=true
"""
USER_YARNRC = """# my yarn settings
enableTelemetry: false
npmRegistries:
  "//127.0.0.2:9/npm/other/":
    npmAuthToken: "other-token" # stays
"""
USER_UPMCONFIG = """# Unity credentials
[npmAuth."http://127.0.0.2:9/npm/other/"]
_auth = "b3RoZXI6c2VjcmV0"  # another registry
alwaysAuth = true
"""
PROJECT_NPMRC = "# project settings\nengine-strict=true\n"


def test_connect_twice_keeps_other_lines_and_disconnect_restores_every_byte(
    closet: Closet, tmp_path: Path
) -> None:
    machine = Machine.create(tmp_path)
    consumer(machine)
    other = {"name": "Public", "url": closet.public, "scopes": ["com.other"]}
    manifest = json.loads(UNITY_MANIFEST) | {"scopedRegistries": [other]}
    unity_project(machine, json.dumps(manifest, indent=2) + "\n")
    originals = {
        machine.home / ".npmrc": USER_NPMRC,
        machine.home / ".yarnrc.yml": USER_YARNRC,
        machine.home / ".upmconfig.toml": USER_UPMCONFIG,
        machine.project / ".npmrc": PROJECT_NPMRC,
    }
    for path, text in originals.items():
        path.write_text(text)
        path.chmod(0o644)
    before = machine.snapshot()

    options = ("--client", "all", "--upm-scope", UNITY_SCOPE)
    first = machine.connected(closet.registry, closet.token, *options)
    after = machine.snapshot()
    for path, text in {**originals, machine.project / ".yarnrc.yml": PROJECT_YARNRC}.items():
        assert kept_in_order(text, path.read_text()), path.read_text()
        shown = path if path.is_relative_to(machine.home) else path.relative_to(machine.project)
        assert f"updated {shown}" in first.stdout
    for path in machine.user_files:
        assert path.stat().st_mode & 0o777 == 0o600, path
    for path in machine.project_files:
        assert path.stat().st_mode & 0o777 == 0o644, path
    written = json.loads((machine.project / "Packages" / "manifest.json").read_text())
    assert written["dependencies"] == manifest["dependencies"]
    assert written["testables"] == manifest["testables"]
    assert [r["url"] for r in written["scopedRegistries"]] == [closet.public, closet.registry]
    assert_doctor_happy(machine)

    second = machine.connected(closet.registry, closet.token, *options)
    assert "everything was already set up" in second.stdout
    assert machine.snapshot() == after

    done = machine.entrepot("disconnect", closet.registry)
    assert done.returncode == 0, done.output
    restored = machine.snapshot()
    assert {path: state and state[0] for path, state in restored.items()} == {
        path: state and state[0] for path, state in before.items()
    }
    for path in machine.project_files:
        assert restored[path] == before[path], path  # project files keep their mode too
    again = machine.entrepot("disconnect", closet.registry)
    assert again.returncode == 0 and "nothing to remove" in again.stdout
    assert machine.snapshot() == restored


def test_files_connect_creates_are_private_and_disconnect_removes_them(
    closet: Closet, tmp_path: Path
) -> None:
    machine = Machine.create(tmp_path)
    manifest = unity_project(machine)
    machine.connected(closet.registry, closet.token, "--client", "all", "--upm-scope", "com.x")
    modes = {path: path.stat().st_mode & 0o777 for path in machine.user_files}
    assert modes == dict.fromkeys(machine.user_files, 0o600)
    for name in (".npmrc", ".yarnrc.yml"):
        assert (machine.project / name).stat().st_mode & 0o777 == 0o644
    done = machine.entrepot("disconnect", closet.registry)
    assert done.returncode == 0, done.output
    left = [path for path in [*machine.user_files, *machine.project_files] if path.exists()]
    assert left == [manifest]
    assert manifest.read_text() == UNITY_MANIFEST


def test_connect_for_one_npm_scope(closet: Closet, tmp_path: Path) -> None:
    machine = Machine.create(tmp_path)
    project_yarnrc = machine.project / ".yarnrc.yml"
    project_yarnrc.write_text(PROJECT_YARNRC)
    options = ("--scope", "@closet", "--client", "npm", "--client", "yarn")
    machine.connected(closet.registry, closet.token, *options)
    assert (machine.project / ".npmrc").read_text() == f"@closet:registry={closet.registry}\n"
    assert "npmScopes:" in project_yarnrc.read_text()
    assert "npmRegistryServer" not in project_yarnrc.read_text().split("npmScopes:")[0]
    assert not (machine.home / ".upmconfig.toml").exists()
    # Only @closet packages come from the feed: the install touches no other registry.
    (machine.project / "package.json").write_text(json.dumps({"dependencies": {SCOPED: "1.0.0"}}))
    done = npm_install(machine)
    assert done.returncode == 0, done.output
    assert installed_version(machine.project, SCOPED) == "1.0.0"
    assert f"@closet scope: {closet.registry}" in assert_doctor_happy(machine)

    done = machine.entrepot("disconnect", closet.registry, "--scope", "@closet")
    assert done.returncode == 0, done.output
    assert not (machine.project / ".npmrc").exists()
    assert project_yarnrc.read_text() == PROJECT_YARNRC
    assert not (machine.home / ".npmrc").exists()


def test_environment_variables_choose_the_user_files(closet: Closet, tmp_path: Path) -> None:
    machine = Machine.create(tmp_path / "machine")
    consumer(machine)
    unity_project(machine)
    npmrc = tmp_path / "elsewhere" / "npmrc"
    upmconfig = tmp_path / "ServiceAccounts" / "upm" / ".upmconfig.toml"
    npmrc.parent.mkdir()
    npmrc.write_text("fund=false\n")
    overridden = {"NPM_CONFIG_USERCONFIG": str(npmrc), "UPM_USER_CONFIG_FILE": str(upmconfig)}
    plain_env = dict(machine.env)
    machine.env.update(overridden)
    options = ("--client", "npm", "--upm-scope", UNITY_SCOPE)
    machine.connected(closet.registry, closet.token, *options)
    assert not (machine.home / ".npmrc").exists()
    assert not (machine.home / ".upmconfig.toml").exists()
    assert npmrc.read_text().startswith("fund=false\n")
    assert f"{nerf_dart(closet.registry)}:_authToken={closet.token}" in npmrc.read_text()
    assert f'[npmAuth."{closet.registry}"]' in upmconfig.read_text()
    assert upmconfig.stat().st_mode & 0o777 == 0o600
    report = assert_doctor_happy(machine)
    assert f"upm  {closet.registry} accepts the credential" in report
    done = npm_install(machine)
    assert done.returncode == 0, done.output
    assert installed_version(machine.project, LIB) == "1.0.0"

    machine.env = plain_env  # the same machine, without the variables: no credentials
    assert_doctor_finds(
        machine,
        "is a private feed and your .npmrc sends no credential",
        "is a private feed and your .upmconfig.toml sends no credential",
    )

    machine.env.update(overridden)
    assert machine.entrepot("disconnect", closet.registry).returncode == 0
    assert npmrc.read_text() == "fund=false\n"
    assert not upmconfig.exists()


def test_a_symlinked_npmrc_stays_a_link(closet: Closet, tmp_path: Path) -> None:
    """Dotfiles managers link ~/.npmrc to a file under version control."""
    machine = Machine.create(tmp_path)
    target = machine.home / "dotfiles" / "npmrc"
    target.parent.mkdir()
    target.write_text("fund=false\n")
    (machine.home / ".npmrc").symlink_to(target)
    machine.connected(closet.registry, closet.token)
    assert (machine.home / ".npmrc").is_symlink()
    assert closet.token in target.read_text()
    assert machine.entrepot("disconnect", closet.registry).returncode == 0
    assert (machine.home / ".npmrc").is_symlink()
    assert target.read_text() == "fund=false\n"


# -- signing in instead of pasting a token -----------------------------------------------------


def test_connect_login_asks_for_name_and_password(
    server: Server, closet: Closet, tmp_path: Path
) -> None:
    machine = Machine.create(tmp_path)
    command = [str(ENTREPOT), "connect", closet.registry, "--login", "--client", "npm"]

    def answer(value: str) -> Callable[[re.Match[str]], str]:
        return lambda _: value

    wrong = run_in_terminal(
        command,
        cwd=machine.project,
        env=machine.env,
        prompts=[(r"User name: ", answer(USER)), (r"Password: ", answer("not the password"))],
    )
    assert wrong.returncode == 2, wrong.stdout
    assert "sign-in failed" in wrong.stdout
    assert not (machine.home / ".npmrc").exists()

    done = run_in_terminal(
        command,
        cwd=machine.project,
        env=machine.env,
        prompts=[(r"User name: ", answer(USER)), (r"Password: ", answer(closet.password))],
    )
    assert done.returncode == 0, done.stdout
    assert f"signed in to {closet.registry} as {USER}" in done.stdout
    assert closet.password not in done.stdout  # getpass does not echo
    found = re.search(r":_authToken=(ent_\S+)$", (machine.home / ".npmrc").read_text(), re.M)
    assert found is not None
    server.remember(found.group(1))
    assert found.group(1) != closet.token
    assert_doctor_happy(machine)


def test_connect_web_signs_in_through_the_browser(
    server: Server, closet: Closet, tmp_path: Path
) -> None:
    machine = Machine.create(tmp_path)
    command = [str(ENTREPOT), "connect", closet.registry, "--web", "--client", "npm"]
    login = WebLogin(command, cwd=machine.project, env=machine.env)
    try:
        url = login.login_url()
        assert f"Sign in at: {url}" in login.printed.decode()
        assert url.startswith(f"{server.base_url}/-/web/login/")
        assert browse(url).status == 200
        signed = browse(url, {"name": USER, "password": closet.password, "otp": ""})
        assert signed.status == 200, signed.html
        done = login.finish()
    finally:
        login.stop()
    assert done.returncode == 0, done.output
    assert f"signed in to {closet.registry} as {USER}" in done.stdout
    found = re.search(r":_authToken=(ent_\S+)$", (machine.home / ".npmrc").read_text(), re.M)
    assert found is not None
    server.remember(found.group(1))
    assert_doctor_happy(machine)


# -- doctor: one broken configuration at a time -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class Broken:
    """A configuration doctor must reject: how to write it, what doctor must say, and
    (optionally) the fix that makes doctor happy again."""

    label: str
    write: Callable[[Machine, Closet, Server], None]
    says: str
    fix: Callable[[Machine, Closet, Server, str], None] | None = None


def _registry(machine: Machine, url: str) -> None:
    (machine.project / ".npmrc").write_text(f"registry={url}\n")


def _user_npmrc(machine: Machine, text: str) -> None:
    (machine.home / ".npmrc").write_text(text)


def _bare_token(machine: Machine, closet: Closet, server: Server) -> None:
    _registry(machine, closet.registry)
    _user_npmrc(machine, f"_authToken={closet.token}\n")


def _rename_bare_token(machine: Machine, closet: Closet, server: Server, report: str) -> None:
    key = re.search(r"rename it to `([^`]+)`", report)
    assert key is not None, report
    _user_npmrc(machine, f"{key.group(1)}={closet.token}\n")


def _no_slash(machine: Machine, closet: Closet, server: Server) -> None:
    _registry(machine, closet.registry)
    _user_npmrc(machine, f"{nerf_dart(closet.registry).rstrip('/')}:_authToken={closet.token}\n")


def _unset_variable(machine: Machine, closet: Closet, server: Server) -> None:
    _registry(machine, closet.registry)
    _user_npmrc(machine, f"{nerf_dart(closet.registry)}:_authToken=${{CLOSET_TOKEN}}\n")
    machine.env.pop("CLOSET_TOKEN", None)


def _set_variable(machine: Machine, closet: Closet, server: Server, report: str) -> None:
    machine.env["CLOSET_TOKEN"] = closet.token


def _expired(machine: Machine, closet: Closet, server: Server) -> None:
    token = server.token("--expires-days", "0.00001", user=USER)  # 0.864 s
    expires = time.time() + 0.00001 * 86400
    _registry(machine, closet.registry)
    _user_npmrc(machine, f"{nerf_dart(closet.registry)}:_authToken={token}\n")
    while time.time() < expires + 0.5:
        time.sleep(0.1)


def _revoked(machine: Machine, closet: Closet, server: Server) -> None:
    token = server.token(user=USER)
    assert server.request("GET", f"/npm/{FEED}/-/whoami", token=token).status == 200
    server.admin("token", "revoke", token)
    _registry(machine, closet.registry)
    _user_npmrc(machine, f"{nerf_dart(closet.registry)}:_authToken={token}\n")


def _upm_slash(machine: Machine, closet: Closet, server: Server) -> None:
    entry = {"name": "Closet", "url": closet.registry.rstrip("/"), "scopes": [UNITY_SCOPE]}
    manifest = json.loads(UNITY_MANIFEST) | {"scopedRegistries": [entry]}
    unity_project(machine, json.dumps(manifest, indent=2) + "\n")
    (machine.home / ".upmconfig.toml").write_text(
        f'[npmAuth."{closet.registry}"]\ntoken = "{closet.token}"\n'
    )


def _run_the_suggested_command(
    machine: Machine, closet: Closet, server: Server, report: str
) -> None:
    suggested = re.search(r"\(`entrepot (connect [^`]+)` does\)", report)
    assert suggested is not None, report
    _, url, *options = suggested.group(1).split()
    done = machine.connect(url, closet.token, *options)
    assert done.returncode == 0, done.output


def _yarn_without_always_auth(machine: Machine, closet: Closet, server: Server) -> None:
    (machine.project / ".yarnrc.yml").write_text(
        f'npmRegistryServer: "{closet.registry}"\nunsafeHttpWhitelist:\n  - "127.0.0.1"\n'
    )
    (machine.home / ".yarnrc.yml").write_text(
        f'npmRegistries:\n  "{nerf_dart(closet.registry)}":\n    npmAuthToken: "{closet.token}"\n'
    )


def _add_always_auth(machine: Machine, closet: Closet, server: Server, report: str) -> None:
    with (machine.home / ".yarnrc.yml").open("a") as out:
        out.write("    npmAlwaysAuth: true\n")


def _npm_scope_twice(machine: Machine, closet: Closet, server: Server) -> None:
    (machine.project / ".npmrc").write_text(f"@closet:registry={closet.registry}\n")
    _user_npmrc(
        machine,
        f"@closet:registry={closet.public}\n"
        f"{nerf_dart(closet.registry)}:_authToken={closet.token}\n",
    )


def _unity_scope_twice(machine: Machine, closet: Closet, server: Server) -> None:
    registries = [
        {"name": "Public", "url": closet.public, "scopes": [UNITY_SCOPE]},
        {"name": "Closet", "url": closet.registry, "scopes": [UNITY_SCOPE, "com.closet"]},
    ]
    manifest = json.loads(UNITY_MANIFEST) | {"scopedRegistries": registries}
    unity_project(machine, json.dumps(manifest, indent=2) + "\n")
    (machine.home / ".upmconfig.toml").write_text(
        f'[npmAuth."{closet.registry}"]\ntoken = "{closet.token}"\n'
    )


def _unreachable(machine: Machine, closet: Closet, server: Server) -> None:
    _registry(machine, f"http://127.0.0.1:{closed_port()}/npm/main/")


def _wrong_path(machine: Machine, closet: Closet, server: Server) -> None:
    _registry(machine, f"{server.base_url}/npm/no-such-feed/")


BROKEN = [
    Broken("bare-authtoken", _bare_token, "sets a bare `_authToken`", _rename_bare_token),
    Broken("key-without-slash", _no_slash, "has no slash before `:_authToken`"),
    Broken(
        "unset-variable",
        _unset_variable,
        "uses ${CLOSET_TOKEN}, which is not set",
        _set_variable,
    ),
    Broken("expired-token", _expired, "refuses the credential from your .npmrc (expired"),
    Broken("revoked-token", _revoked, "refuses the credential from your .npmrc (expired"),
    Broken(
        "upm-trailing-slash",
        _upm_slash,
        "Unity matches them exactly",
        _run_the_suggested_command,
    ),
    Broken(
        "yarn-without-always-auth",
        _yarn_without_always_auth,
        "sends credentials on unscoped requests only with `npmAlwaysAuth: true`",
        _add_always_auth,
    ),
    Broken("npm-scope-twice", _npm_scope_twice, "keep only one `@closet:registry` line"),
    Broken(
        "unity-scope-twice", _unity_scope_twice, "the scope com.company is mapped to two registries"
    ),
    Broken("unreachable", _unreachable, "cannot be reached"),
    Broken("not-a-feed", _wrong_path, "is not a registry (no /-/ping)"),
]


@pytest.mark.parametrize("broken", BROKEN, ids=[b.label for b in BROKEN])
def test_doctor_names_the_problem(
    server: Server, closet: Closet, tmp_path: Path, broken: Broken
) -> None:
    machine = Machine.create(tmp_path)
    broken.write(machine, closet, server)
    report = assert_doctor_finds(machine, broken.says)
    if broken.fix is not None:
        broken.fix(machine, closet, server, report)
        assert_doctor_happy(machine)


def test_server_log_has_no_secrets(server: Server) -> None:
    """Runs last in this module: no token or password reached the log."""
    assert_log_has_no_secrets(server)
