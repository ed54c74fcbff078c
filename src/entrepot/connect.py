"""``entrepot connect``, ``disconnect`` and ``doctor``: client set-up done for the user.

``connect`` gets a token (from standard input, or by signing in), checks it, and writes it
only into user-level files (``~/.npmrc``, ``~/.yarnrc.yml``, ``~/.upmconfig.toml``, mode
0600), while the project gets files without secrets that can be committed (``.npmrc``,
``.yarnrc.yml``, Unity's ``Packages/manifest.json``). ``doctor`` reads what each client would
read, asks the registries, and explains every problem in one sentence with its fix.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import yaml

from entrepot import clientconfig as cc

CLIENTS = ("npm", "yarn", "pnpm", "upm")


class ConnectError(Exception):
    """Something the user must fix before connecting; the message says what."""


@dataclasses.dataclass(frozen=True)
class UserFiles:
    """Where each client keeps its user-level configuration."""

    npmrc: Path
    yarnrc: Path
    upmconfig: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str], home: Path) -> UserFiles:
        return cls(
            npmrc=Path(
                env.get("NPM_CONFIG_USERCONFIG")
                or env.get("npm_config_userconfig")
                or home / ".npmrc"
            ),
            yarnrc=home / ".yarnrc.yml",
            upmconfig=Path(env.get("UPM_USER_CONFIG_FILE") or home / ".upmconfig.toml"),
        )


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def _write(path: Path, text: str, *, secret: bool) -> None:
    """Replace a file atomically; user files holding secrets get mode 0600."""
    # A symlinked ~/.npmrc (dotfiles managers) stays a link: the file it points at changes.
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o600 if secret else (path.stat().st_mode & 0o777 if path.exists() else 0o644)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            out.write(text)
        Path(tmp).chmod(mode)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _edit(path: Path, change: Callable[[str], str], *, secret: bool, changed: list[str]) -> None:
    before = _read(path)
    after = change(before or "")
    if after != (before or "") or (secret and before is not None and path.stat().st_mode & 0o077):
        _write(path, after, secret=secret)
        changed.append(str(path))


def _remove_from(path: Path, change: Callable[[str], str], changed: list[str]) -> None:
    before = _read(path)
    if before is None:
        return
    after = change(before)
    if after != before:
        if after:
            # The file keeps its mode: a project file stays readable, a user file 0600.
            _write(path, after, secret=False)
        else:
            # Only what connect wrote was in it, so connect created it: leave no empty file.
            path.resolve().unlink()
        changed.append(str(path))


# -- tokens -------------------------------------------------------------------------------------


def whoami(client: httpx.Client, url: str, headers: Mapping[str, str]) -> tuple[int, str | None]:
    """(status, user name) from ``<registry>/-/whoami``."""
    response = client.get(f"{url}-/whoami", headers=dict(headers))
    if response.status_code != 200:
        return response.status_code, None
    try:
        return 200, str(orjson.loads(response.content).get("username"))
    except (orjson.JSONDecodeError, AttributeError):
        return 200, None


def login_with_password(
    client: httpx.Client,
    url: str,
    name: str,
    password: str,
    ask_otp: Callable[[], str],
) -> str:
    """npm's legacy login: a fresh token for a user name and password (and one-time code)."""
    body = {"_id": f"org.couchdb.user:{name}", "name": name, "password": password, "type": "user"}
    headers: dict[str, str] = {}
    for _ in range(2):
        response = client.put(
            f"{url}-/user/org.couchdb.user:{quote(name, safe='')}", json=body, headers=headers
        )
        if response.status_code == 401 and response.headers.get("www-authenticate") == "OTP":
            headers["npm-otp"] = ask_otp()
            continue
        break
    if response.status_code == 201:
        token = orjson.loads(response.content).get("token")
        if isinstance(token, str) and token:
            return token
    raise ConnectError(f"sign-in failed: {_error_of(response)}")


def login_on_the_web(
    client: httpx.Client, url: str, show: Callable[[str], None], timeout: float = 600
) -> str:
    """npm's web login: show the sign-in URL, then wait until the user has signed in."""
    response = client.post(f"{url}-/v1/login", json={})
    if response.status_code != 200:
        raise ConnectError(f"this registry has no web sign-in: {_error_of(response)}")
    urls = orjson.loads(response.content)
    show(str(urls["loginUrl"]))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = client.get(str(urls["doneUrl"]))
        if done.status_code == 200:
            return str(orjson.loads(done.content)["token"])
        if done.status_code != 202:
            raise ConnectError(f"sign-in failed: {_error_of(done)}")
        time.sleep(float(done.headers.get("retry-after", "1") or 1))
    raise ConnectError("nobody signed in within 10 minutes")


def _error_of(response: httpx.Response) -> str:
    try:
        return str(orjson.loads(response.content).get("error") or response.status_code)
    except (orjson.JSONDecodeError, AttributeError):
        return f"HTTP {response.status_code}"


# -- connect / disconnect ---------------------------------------------------------------------


def connect(
    url: str,
    token: str,
    *,
    clients: set[str],
    scope: str | None,
    upm_scope: str | None,
    project: Path,
    files: UserFiles,
) -> list[str]:
    """Write the configuration; returns the files changed. Running it twice changes nothing
    the second time."""
    url = cc.normalize_registry_url(url)
    manifest = project / "Packages" / "manifest.json"
    if upm_scope and not manifest.exists():
        raise ConnectError(
            f"there is no {manifest} to add the scope {upm_scope} to: run this in the Unity "
            "project's folder, or give it with --project"
        )
    changed: list[str] = []
    if clients & {"npm", "pnpm"}:
        _edit(
            files.npmrc,
            lambda t: cc.npmrc_set_auth_token(t, url, token),
            secret=True,
            changed=changed,
        )
        _edit(
            project / ".npmrc",
            lambda t: cc.npmrc_set_registry(t, url, scope=scope),
            secret=False,
            changed=changed,
        )
    if "yarn" in clients:
        _edit(
            files.yarnrc,
            lambda t: cc.yarnrc_set_registry(t, url, token=token, always_auth=True),
            secret=True,
            changed=changed,
        )
        _edit(
            project / ".yarnrc.yml",
            lambda t: cc.yarnrc_set_registry(t, url, scope=scope.lstrip("@") if scope else None),
            secret=False,
            changed=changed,
        )
    if "upm" in clients:
        _edit(
            files.upmconfig,
            lambda t: cc.upmconfig_set(t, url, token=token),
            secret=True,
            changed=changed,
        )
        if upm_scope:
            host = re.sub(r"^https?://", "", url).split("/", 1)[0]
            _edit(
                manifest,
                lambda t: cc.manifest_add_scoped_registry(
                    t, name=f"Entrepot ({host})", url=url, scopes=[upm_scope]
                ),
                secret=False,
                changed=changed,
            )
    return changed


def disconnect(url: str, *, scope: str | None, project: Path, files: UserFiles) -> list[str]:
    """Remove exactly what :func:`connect` wrote for this registry."""
    url = cc.normalize_registry_url(url)
    changed: list[str] = []
    _remove_from(files.npmrc, lambda t: cc.npmrc_remove_auth_token(t, url), changed)
    _remove_from(files.yarnrc, lambda t: cc.yarnrc_remove_registry(t, url), changed)
    _remove_from(files.upmconfig, lambda t: cc.upmconfig_remove(t, url), changed)
    _remove_from(
        project / ".npmrc", lambda t: cc.npmrc_remove_registry(t, url, scope=scope), changed
    )
    yarn_scope = scope.lstrip("@") if scope else None
    _remove_from(
        project / ".yarnrc.yml",
        lambda t: cc.yarnrc_remove_registry(t, url, scope=yarn_scope),
        changed,
    )
    _remove_from(
        project / "Packages" / "manifest.json",
        lambda t: cc.manifest_remove_scoped_registry(t, url),
        changed,
    )
    return changed


# -- doctor -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Finding:
    """One line of the doctor's report: fine (``problem`` False) or a problem with its fix."""

    client: str
    text: str
    problem: bool = False


@dataclasses.dataclass
class Doctor:
    """Reads every config the clients would read for a project and checks it live."""

    project: Path
    files: UserFiles
    env: Mapping[str, str]
    http: httpx.Client
    default_registry: str | None = None
    findings: list[Finding] = dataclasses.field(default_factory=list)
    _private: dict[str, bool] = dataclasses.field(default_factory=dict)

    def ok(self, client: str, text: str) -> None:
        self.findings.append(Finding(client, text))

    def bad(self, client: str, text: str) -> None:
        self.findings.append(Finding(client, text, problem=True))

    def run(self) -> list[Finding]:
        self.check_npm()
        self.check_yarn()
        self.check_upm()
        return self.findings

    # live checks

    def is_private(self, url: str) -> bool | None:
        if url not in self._private:
            try:
                response = self.http.get(url)
            except httpx.HTTPError:
                return None
            self._private[url] = response.status_code == 401
        return self._private[url]

    def live(self, client: str, url: str, headers: Mapping[str, str] | None, label: str) -> None:
        try:
            ping = self.http.get(f"{url}-/ping")
        except httpx.HTTPError as exc:
            self.bad(
                client,
                f"{url} cannot be reached ({type(exc).__name__}): "
                "is the server up, and the URL right?",
            )
            return
        if ping.status_code == 404:
            self.bad(
                client,
                f"{url} answers, but it is not a registry (no /-/ping): "
                "check the URL, including /npm/<feed>/",
            )
            return
        if headers is None:
            if self.is_private(url):
                self.bad(
                    client,
                    f"{url} is a private feed and {label} sends no credential for it: "
                    f"run `entrepot connect {url}`",
                )
            else:
                self.ok(client, f"{url} reachable; no credential (fine for reading a public feed)")
            return
        status, user = whoami(self.http, url, headers)
        if status == 200:
            self.ok(client, f"{url} accepts the credential: signed in as {user}")
        elif status == 401:
            self.bad(
                client,
                f"{url} refuses the credential from {label} (expired, revoked or wrong): "
                f"get a new one with `entrepot connect {url}`",
            )
        else:
            self.bad(
                client,
                f"{url} answered HTTP {status} to /-/whoami with the credential from {label}",
            )

    # npm and pnpm

    def check_npm(self) -> None:
        project_text = _read(self.project / ".npmrc")
        user_text = _read(self.files.npmrc)
        try:
            credentials = cc.npmrc_registries(
                project_text, user_text, self.env, default_registry=self.default_registry
            )
            problems = cc.npmrc_problems(
                project_text, user_text, self.env, default_registry=self.default_registry
            )
        except cc.ClientConfigError as exc:
            self.bad("npm", f"an .npmrc cannot be read: {exc}")
            return
        for problem in problems:
            self.bad("npm", problem.message)
        merged = {**cc.npmrc_parse(user_text or ""), **cc.npmrc_parse(project_text or "")}
        for cred in credentials:
            if cred.registry is None:
                continue
            configured = cred.registry_source != cc.ConfigSource.DEFAULT
            what = f"{cred.scope} scope" if cred.scope else "default registry"
            shown = (
                f"{cred.kind.value} {cred.masked}" if cred.kind and cred.masked else "no credential"
            )
            self.ok("npm", f"{what}: {cred.registry} ({shown})")
            if configured:
                self.live("npm", cred.registry, self._npm_headers(cred, merged), "your .npmrc")

    def _npm_headers(
        self, cred: cc.RegistryCredential, merged: Mapping[str, str]
    ) -> dict[str, str] | None:
        if cred.kind is None or cred.key is None:
            return None
        value = _expand(merged.get(cred.key, ""), self.env)
        if cred.kind == cc.CredentialKind.TOKEN:
            return {"Authorization": f"Bearer {value}"}
        if cred.kind == cc.CredentialKind.AUTH:
            return {"Authorization": f"Basic {value}"}
        if cred.kind == cc.CredentialKind.PASSWORD:
            prefix = cred.key.rsplit(":", 1)[0]
            user = _expand(merged.get(f"{prefix}:username", ""), self.env)
            try:
                password = base64.b64decode(
                    _expand(merged.get(f"{prefix}:_password", ""), self.env)
                ).decode()
            except ValueError:
                return None
            pair = base64.b64encode(f"{user}:{password}".encode()).decode()
            return {"Authorization": f"Basic {pair}"}
        return None

    # yarn 4

    def check_yarn(self) -> None:
        project = _yaml(self.project / ".yarnrc.yml")
        user = _yaml(self.files.yarnrc)
        if project is None and user is None:
            return
        merged = {**(user or {}), **(project or {})}
        servers: list[tuple[str | None, str]] = []
        if isinstance(merged.get("npmRegistryServer"), str):
            servers.append((None, merged["npmRegistryServer"]))
        scopes = merged.get("npmScopes")
        if isinstance(scopes, dict):
            for scope, conf in scopes.items():
                if isinstance(conf, dict) and isinstance(conf.get("npmRegistryServer"), str):
                    servers.append((str(scope), conf["npmRegistryServer"]))
        registries = (
            merged.get("npmRegistries") if isinstance(merged.get("npmRegistries"), dict) else {}
        )
        assert isinstance(registries, dict)
        whitelist = merged.get("unsafeHttpWhitelist") or []
        for scope, url in servers:
            url = url if url.endswith("/") else url + "/"
            self.ok("yarn", f"{'@' + scope if scope else 'default registry'}: {url}")
            conf = _yarn_entry(registries, url)
            if url.startswith("http://"):
                host = url.split("/")[2].split(":")[0]
                if host not in whitelist:
                    self.bad(
                        "yarn",
                        "yarn 4 refuses http:// registries unless the host is listed: "
                        f'add `unsafeHttpWhitelist: ["{host}"]` to .yarnrc.yml',
                    )
            token = conf.get("npmAuthToken") if conf else None
            ident = conf.get("npmAuthIdent") if conf else None
            if (
                scope is None
                and self.is_private(url)
                and (token or ident)
                and not (conf or {}).get("npmAlwaysAuth", merged.get("npmAlwaysAuth"))
            ):
                self.bad(
                    "yarn",
                    f"{url} is private but yarn 4 sends credentials on unscoped requests "
                    "only with `npmAlwaysAuth: true`: add it under npmRegistries",
                )
            headers = None
            if isinstance(token, str):
                headers = {"Authorization": f"Bearer {_expand(token, self.env)}"}
            elif isinstance(ident, str):
                headers = {
                    "Authorization": "Basic "
                    + base64.b64encode(_expand(ident, self.env).encode()).decode()
                }
            self.live("yarn", url, headers, "your .yarnrc.yml")

    # Unity

    def check_upm(self) -> None:
        manifest_text = _read(self.project / "Packages" / "manifest.json")
        if manifest_text is None:
            return
        try:
            manifest = orjson.loads(manifest_text)
        except orjson.JSONDecodeError:
            self.bad("upm", "Packages/manifest.json is not valid JSON")
            return
        upm_text = _read(self.files.upmconfig) or ""
        try:
            auth = cc.upmconfig_parse(upm_text)
        except (cc.ClientConfigError, tomllib.TOMLDecodeError) as exc:
            self.bad("upm", f"{self.files.upmconfig} cannot be read: {exc}")
            return
        seen: dict[str, str] = {}
        for registry in manifest.get("scopedRegistries") or []:
            if not isinstance(registry, dict) or not isinstance(registry.get("url"), str):
                continue
            url = registry["url"]
            scopes = [s for s in registry.get("scopes") or [] if isinstance(s, str)]
            for scope in scopes:
                if scope in seen and seen[scope] != url:
                    self.bad(
                        "upm",
                        f"the scope {scope} is mapped to two registries "
                        f"({seen[scope]} and {url}): keep one",
                    )
                seen[scope] = url
            self.ok("upm", f"scoped registry {url} for {', '.join(scopes)}")
            entry = auth.get(url)
            if entry is None:
                other = url[:-1] if url.endswith("/") else url + "/"
                if other in auth:
                    # --upm-scope: connect then writes the same URL into both files.
                    fix = f" (`entrepot connect {url} --upm-scope {scopes[0]}` does)"
                    self.bad(
                        "upm",
                        f'.upmconfig.toml has [npmAuth."{other}"] but the manifest says {url}: '
                        "Unity matches them exactly, so make them the same"
                        + (fix if scopes else ""),
                    )
                    entry = auth[other]
            headers = None
            if entry is not None and isinstance(entry.get("token"), str):
                headers = {"Authorization": f"Bearer {entry['token']}"}
            elif entry is not None and isinstance(entry.get("_auth"), str):
                headers = {"Authorization": f"Basic {entry['_auth']}"}
            base = url if url.endswith("/") else url + "/"
            self.live("upm", base, headers, "your .upmconfig.toml")


def _yarn_entry(registries: Mapping[str, Any], url: str) -> dict[str, Any] | None:
    nerf = cc.nerf_dart(url)
    for key in (url, url.rstrip("/"), nerf, nerf.rstrip("/")):
        value = registries.get(key)
        if isinstance(value, dict):
            return value
    return None


def _yaml(path: Path) -> dict[str, Any] | None:
    text = _read(path)
    if text is None:
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


_VAR = re.compile(r"\$\{([^${}?]+)\??\}")


def _expand(value: str, env: Mapping[str, str]) -> str:
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), value)
