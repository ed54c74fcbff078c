"""A small client that talks to a registry the way Unity's Package Manager does.

What UPM does with a scoped registry (docs/npm-protocol.md, section 6), step by step:

1. credentials from ``~/.upmconfig.toml`` (or the file ``UPM_USER_CONFIG_FILE`` names):
   ``[npmAuth."URL"]`` with ``token`` (sent as ``Bearer``) or ``_auth`` (sent as ``Basic``
   as is), looked up by the manifest's URL exactly, as Unity does;
2. the "My Registries" list: ``GET /-/v1/search?text=<scope>&from=<n>&size=250``, page after
   page; if that fails, the legacy ``GET /-/all``;
3. resolution: the full packument ``GET /<name>``, then the tarball, ``HEAD`` then ``GET``,
   checked against ``dist.shasum``.

A plain module for the end-to-end tests (``from tests.e2e.upm_client import UpmClient``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

PAGE_SIZE = 250


class UpmError(Exception):
    """What Unity would show as a failed resolution or listing."""


def upmconfig_path(env: Mapping[str, str], home: Path) -> Path:
    """Where Unity reads the user's credentials: ``UPM_USER_CONFIG_FILE`` or the home's."""
    override = env.get("UPM_USER_CONFIG_FILE")
    return Path(override) if override else home / ".upmconfig.toml"


def read_upmconfig(path: Path) -> dict[str, dict[str, Any]]:
    """The ``npmAuth`` tables of a ``.upmconfig.toml`` (an absent file has none)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    tables = data.get("npmAuth", {})
    if not isinstance(tables, dict):
        raise UpmError(f"{path}: npmAuth is not a table")
    return {url: dict(entry) for url, entry in tables.items() if isinstance(entry, dict)}


@dataclasses.dataclass(frozen=True)
class Listed:
    """A package as the "My Registries" list shows it."""

    name: str
    display_name: str
    latest: str
    versions: tuple[str, ...]
    modified: str


@dataclasses.dataclass(frozen=True)
class Downloaded:
    """A resolved version: its manifest from the packument and the checked tarball."""

    manifest: dict[str, Any]
    tarball: bytes

    def package_json(self) -> dict[str, Any]:
        """The ``package.json`` inside the tarball (what Unity unpacks)."""
        with tarfile.open(fileobj=io.BytesIO(self.tarball), mode="r:gz") as archive:
            member = archive.extractfile("package/package.json")
            assert member is not None
            data: dict[str, Any] = json.loads(member.read())
        return data


class UpmClient:
    """One scoped registry of a Unity project, as UPM uses it.

    ``url`` is the registry URL exactly as in the manifest's ``scopedRegistries``;
    ``search_path`` is where the list is asked for (a test points it elsewhere to make the
    search fail and see the ``/-/all`` fallback), ``page_size`` how many hits a page asks for
    (Unity: 250). ``listed_with`` tells which one answered.
    """

    def __init__(
        self,
        url: str,
        *,
        env: Mapping[str, str],
        home: Path,
        search_path: str = "-/v1/search",
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.url = url
        self.base = url if url.endswith("/") else url + "/"
        self.search_path = search_path
        self.page_size = page_size
        self.auth = read_upmconfig(upmconfig_path(env, home)).get(url)
        self.http = httpx.Client(timeout=30, trust_env=False, follow_redirects=False)
        self.listed_with: str | None = None
        #: Every request made, as (method, URL, status): what Unity would have sent.
        self.requests: list[tuple[str, str, int]] = []

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> UpmClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "UnityPackageManager (tests)"}
        if self.auth is not None:
            if isinstance(self.auth.get("token"), str):
                headers["Authorization"] = f"Bearer {self.auth['token']}"
            elif isinstance(self.auth.get("_auth"), str):
                headers["Authorization"] = f"Basic {self.auth['_auth']}"
        return headers

    def _send(self, method: str, url: str) -> httpx.Response:
        response = self.http.request(method, url, headers=self.headers())
        self.requests.append((method, url, response.status_code))
        return response

    # -- the "My Registries" list ---------------------------------------------------------

    def list_packages(self, scope: str) -> list[Listed]:
        """Every package of the scope: search, page by page; ``/-/all`` when search fails."""
        try:
            found = self._search(scope)
            self.listed_with = "search"
        except UpmError:
            found = self._all(scope)
            self.listed_with = "all"
        return sorted(found, key=lambda p: p.name)

    def _search(self, scope: str) -> list[Listed]:
        found: list[Listed] = []
        start = 0
        while True:
            query = urllib.parse.urlencode({"text": scope, "from": start, "size": self.page_size})
            response = self._send("GET", f"{self.base}{self.search_path}?{query}")
            if response.status_code != 200:
                raise UpmError(f"search answered HTTP {response.status_code}")
            try:
                body = response.json()
                objects = body["objects"]
                total = int(body["total"])
            except (ValueError, KeyError, TypeError) as exc:
                raise UpmError(f"search answered something else than npm's shape: {exc}") from exc
            for hit in objects:
                package = hit["package"]
                if not str(package["name"]).startswith(scope):
                    continue  # a search is by words; a scope is a name prefix
                found.append(
                    Listed(
                        name=package["name"],
                        display_name=package.get("displayName") or package["name"],
                        latest=package["dist-tags"]["latest"],
                        versions=tuple(package["versions"]),
                        modified=package["time"]["modified"],
                    )
                )
            start += len(objects)
            if not objects or start >= total:
                return found

    def _all(self, scope: str) -> list[Listed]:
        response = self._send("GET", f"{self.base}-/all")
        if response.status_code != 200:
            raise UpmError(f"/-/all answered HTTP {response.status_code}")
        body = response.json()
        return [
            Listed(
                name=name,
                display_name=entry.get("displayName") or name,
                latest=entry["dist-tags"]["latest"],
                versions=tuple(entry["versions"]),
                modified=entry["time"]["modified"],
            )
            for name, entry in body.items()
            if name != "_updated" and name.startswith(scope)
        ]

    # -- resolution -----------------------------------------------------------------------

    def packument(self, name: str) -> dict[str, Any]:
        """The full packument (UPM sends no corgi Accept)."""
        response = self._send("GET", self.base + urllib.parse.quote(name, safe="@"))
        if response.status_code != 200:
            raise UpmError(f"{name}: the packument answered HTTP {response.status_code}")
        document: dict[str, Any] = response.json()
        return document

    def download(self, name: str, version: str | None = None) -> Downloaded:
        """Resolve ``name`` (``version``, or its latest) and fetch the tarball: HEAD, then
        GET, then the SHA-1 check Unity makes against ``dist.shasum``."""
        document = self.packument(name)
        version = version or document["dist-tags"]["latest"]
        manifest: dict[str, Any] = document["versions"][version]
        url = manifest["dist"]["tarball"]
        head = self._send("HEAD", url)
        if head.status_code != 200:
            raise UpmError(f"{name}@{version}: HEAD of the tarball answered {head.status_code}")
        got = self._send("GET", url)
        if got.status_code != 200:
            raise UpmError(f"{name}@{version}: GET of the tarball answered {got.status_code}")
        length = int(head.headers.get("content-length", "-1"))
        if length != len(got.content):
            raise UpmError(f"{name}@{version}: HEAD said {length} bytes, GET sent another size")
        shasum = hashlib.sha1(got.content, usedforsecurity=False).hexdigest()
        if shasum != manifest["dist"]["shasum"]:
            raise UpmError(f"{name}@{version}: the tarball's SHA-1 is not dist.shasum")
        return Downloaded(manifest, got.content)
