"""What the package page shows, taken from a packument: plain values for the template.

Everything here comes from publishers, so it is only ever passed to autoescaping templates;
URLs become links only when they are http(s).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from entrepot.npm import semver

MAX_VERSIONS = 100
DEPENDENCY_KINDS = (
    ("dependencies", "Dependencies"),
    ("peerDependencies", "Peer dependencies"),
    ("optionalDependencies", "Optional dependencies"),
    ("devDependencies", "Development dependencies"),
)


def safe_url(value: object) -> str | None:
    """An http(s) URL to link to, or None (``javascript:``, ``data:``, relative: no link)."""
    if not isinstance(value, str):
        return None
    url = value.strip()
    if url.startswith("git+"):
        url = url[4:]
    if url.endswith(".git"):
        url = url[:-4]
    lowered = url.lower()
    if not lowered.startswith(("https://", "http://")) or any(c in url for c in "\"'<> \t\n"):
        return None
    return url


def person(value: object) -> str:
    """An ``author``-style field as text: ``"Name <mail> (url)"`` or ``{"name": ...}``."""
    if isinstance(value, str):
        return value.split("<", 1)[0].strip()
    if isinstance(value, Mapping):
        return str(value.get("name") or "")
    return ""


def package_path(feed: str, name: str) -> str:
    """The UI path of a package (``@s/n`` keeps its slash, everything else is quoted)."""
    return f"/-/ui/package/{quote(feed, safe='')}/{quote(name, safe='@/')}"


@dataclasses.dataclass(frozen=True)
class VersionRow:
    version: str
    published: str
    publisher: str
    deprecated: str
    tags: tuple[str, ...]
    size: int | None
    integrity: str
    unpacked_size: int | None
    file_count: int | None


@dataclasses.dataclass(frozen=True)
class Dependency:
    name: str
    spec: str
    path: str


@dataclasses.dataclass(frozen=True)
class PackageView:
    name: str
    feed: str
    local: bool
    latest: VersionRow | None
    description: str
    keywords: tuple[str, ...]
    author: str
    license: str
    homepage: str | None
    repository: str | None
    dist_tags: tuple[tuple[str, str], ...]
    versions: tuple[VersionRow, ...]
    more_versions: int
    dependencies: tuple[tuple[str, tuple[Dependency, ...]], ...]
    readme: str
    install: str


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _row(
    version: str,
    manifest: Mapping[str, Any],
    times: Mapping[str, Any],
    tags: Mapping[str, list[str]],
    sizes: Mapping[str, int],
) -> VersionRow:
    dist = manifest.get("dist") if isinstance(manifest.get("dist"), Mapping) else {}
    assert isinstance(dist, Mapping)
    publisher = manifest.get("_npmUser")
    deprecated = manifest.get("deprecated")
    return VersionRow(
        version=version,
        published=str(times.get(version) or ""),
        publisher=person(publisher),
        deprecated=deprecated if isinstance(deprecated, str) else "",
        tags=tuple(tags.get(version, [])),
        size=sizes.get(version),
        integrity=str(dist.get("integrity") or dist.get("shasum") or ""),
        unpacked_size=_int(dist.get("unpackedSize")),
        file_count=_int(dist.get("fileCount")),
    )


def _dependencies(
    feed: str, manifest: Mapping[str, Any]
) -> tuple[tuple[str, tuple[Dependency, ...]], ...]:
    groups = []
    for key, title in DEPENDENCY_KINDS:
        deps = manifest.get(key)
        if not isinstance(deps, Mapping) or not deps:
            continue
        items = tuple(
            Dependency(str(name), str(spec), package_path(feed, str(name)))
            for name, spec in sorted(deps.items())
        )
        groups.append((title, items))
    return tuple(groups)


def package_view(
    doc: Mapping[str, Any],
    feed: str,
    *,
    local: bool,
    sizes: Mapping[str, int],
    all_versions: bool = False,
) -> PackageView:
    """The page's model from a full packument (local or from upstream)."""
    name = str(doc.get("name") or "")
    versions = doc.get("versions") if isinstance(doc.get("versions"), Mapping) else {}
    assert isinstance(versions, Mapping)
    raw_tags = doc.get("dist-tags") if isinstance(doc.get("dist-tags"), Mapping) else {}
    assert isinstance(raw_tags, Mapping)
    dist_tags = {str(t): str(v) for t, v in raw_tags.items()}
    times = doc.get("time") if isinstance(doc.get("time"), Mapping) else {}
    assert isinstance(times, Mapping)
    tags: dict[str, list[str]] = {}
    for tag, version in sorted(dist_tags.items()):
        tags.setdefault(version, []).append(tag)
    ordered = sorted(
        (str(v) for v in versions if semver.parse_version(str(v)) is not None),
        key=semver.parse_version,
        reverse=True,
    )
    shown = ordered if all_versions else ordered[:MAX_VERSIONS]
    rows = tuple(_row(v, versions[v], times, tags, sizes) for v in shown)
    latest_version = dist_tags.get("latest") or (ordered[0] if ordered else "")
    manifest = versions.get(latest_version)
    manifest = manifest if isinstance(manifest, Mapping) else {}
    latest = _row(latest_version, manifest, times, tags, sizes) if manifest else None
    keywords = manifest.get("keywords") or doc.get("keywords")
    readme = doc.get("readme") if isinstance(doc.get("readme"), str) else ""
    repository = manifest.get("repository")
    license_ = manifest.get("license")
    if isinstance(repository, Mapping):
        repository = repository.get("url")
    return PackageView(
        name=name,
        feed=feed,
        local=local,
        latest=latest,
        description=str(manifest.get("description") or doc.get("description") or ""),
        keywords=tuple(str(k) for k in keywords) if isinstance(keywords, list) else (),
        author=person(manifest.get("author")),
        license=license_ if isinstance(license_, str) else "",
        homepage=safe_url(manifest.get("homepage")),
        repository=safe_url(repository),
        dist_tags=tuple(sorted(dist_tags.items())),
        versions=rows,
        more_versions=len(ordered) - len(shown),
        dependencies=_dependencies(feed, manifest),
        readme=str(readme or manifest.get("readme") or ""),
        install=f"npm install {name}" if name else "",
    )
