"""Building packuments (full and abbreviated) from a stored package.

Pure functions: the registry caches their serialized output per change.
"""

from __future__ import annotations

from typing import Any

from entrepot.npm import semver
from entrepot.storage.base import Package

#: The abbreviated ("corgi") packument's media type: what installers ask for in ``Accept``.
CORGI = "application/vnd.npm.install-v1+json"

#: Fields of a version object kept in the abbreviated ("corgi") form, per npm's
#: package-metadata doc, plus ``libc`` which pnpm and yarn 4 read.
ABBREVIATED_FIELDS = (
    "name",
    "version",
    "deprecated",
    "dependencies",
    "acceptDependencies",
    "optionalDependencies",
    "devDependencies",
    "bundleDependencies",
    "bundledDependencies",
    "peerDependencies",
    "peerDependenciesMeta",
    "bin",
    "directories",
    "engines",
    "_hasShrinkwrap",
    "hasInstallScript",
    "funding",
    "cpu",
    "os",
    "libc",
)
#: The same, for membership tests.
ABBREVIATED = frozenset(ABBREVIATED_FIELDS)

#: Top-level fields of the full packument copied from the latest version.
LATEST_FIELDS = (
    "description",
    "author",
    "repository",
    "license",
    "keywords",
    "homepage",
    "bugs",
    "contributors",
)


def bare_name(name: str) -> str:
    """``@scope/name`` -> ``name``; the tarball file name starts with this."""
    return name.rpartition("/")[2]


def tarball_filename(name: str, version: str) -> str:
    return f"{bare_name(name)}-{version}.tgz"


def tarball_url(feed_base: str, name: str, version: str) -> str:
    """``<feed base>/<name>/-/<bare>-<version>.tgz``; ``feed_base`` ends with ``/``."""
    return f"{feed_base}{name}/-/{tarball_filename(name, version)}"


def revision(package: Package) -> str:
    """The CouchDB-style ``_rev``: npm sends it back on ``-rev`` writes."""
    return f"{package.rev}-{package.seq:016x}"


def parse_revision(text: str) -> int | None:
    """The revision number in a ``_rev``, or None if it is not one of ours."""
    head, _, _ = text.partition("-")
    return int(head) if head.isascii() and head.isdigit() and len(head) < 19 else None


def _ordered_versions(package: Package) -> list[str]:
    return sorted(package.versions, key=semver.parse_version)


def _version_object(package: Package, version: str, feed_base: str) -> dict[str, Any]:
    stored = package.versions[version]
    manifest = dict(stored.manifest)
    dist = dict(manifest.get("dist") or {})
    dist["tarball"] = tarball_url(feed_base, package.name, version)
    manifest["dist"] = dist
    return manifest


def full_document(package: Package, feed_base: str) -> dict[str, Any]:
    """The full packument, as ``npm view`` and ``npm install`` (npm 11) read it."""
    versions = _ordered_versions(package)
    latest = package.dist_tags.get("latest", "")
    doc: dict[str, Any] = {
        "_id": package.name,
        "_rev": revision(package),
        "name": package.name,
        "dist-tags": dict(package.dist_tags),
        "versions": {v: _version_object(package, v, feed_base) for v in versions},
        "time": {
            "created": package.created,
            "modified": package.modified,
            **{v: package.versions[v].published for v in versions},
        },
        "maintainers": [dict(m) for m in package.maintainers],
        "readme": package.readme,
    }
    if latest in package.versions:
        manifest = package.versions[latest].manifest
        for field in LATEST_FIELDS:
            if field in manifest:
                doc[field] = manifest[field]
        if "readmeFilename" in manifest:
            doc["readmeFilename"] = manifest["readmeFilename"]
    return doc


def abbreviated_document(package: Package, feed_base: str) -> dict[str, Any]:
    """The abbreviated ("corgi") packument: what installers need and nothing else."""
    versions: dict[str, Any] = {}
    for version in _ordered_versions(package):
        manifest = package.versions[version].manifest
        entry = {k: manifest[k] for k in ABBREVIATED_FIELDS if k in manifest}
        dist = dict(manifest.get("dist") or {})
        dist["tarball"] = tarball_url(feed_base, package.name, version)
        entry["dist"] = dist
        versions[version] = entry
    return {
        "name": package.name,
        "modified": package.modified,
        "dist-tags": dict(package.dist_tags),
        "versions": versions,
    }


def document_modified(doc: dict[str, Any]) -> Any:
    """When a packument document from an upstream last changed: ``time.modified`` in a full
    one, ``modified`` in an abbreviated one (None if neither says)."""
    times = doc.get("time")
    return (times.get("modified") if isinstance(times, dict) else None) or doc.get("modified")


def abbreviate(doc: dict[str, Any]) -> dict[str, Any]:
    """The abbreviated form of a packument document from an upstream (full, or already
    abbreviated)."""
    versions: dict[str, Any] = {}
    for version, manifest in (doc.get("versions") or {}).items():
        if isinstance(manifest, dict):
            entry = {k: manifest[k] for k in ABBREVIATED_FIELDS if k in manifest}
            entry["dist"] = manifest.get("dist") or {}
            versions[version] = entry
    return {
        "name": doc.get("name"),
        "modified": document_modified(doc),
        "dist-tags": doc.get("dist-tags") or {},
        "versions": versions,
    }
