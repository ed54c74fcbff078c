"""Search documents: what ``/-/v1/search`` (npm, UPM) and ``/-/all`` (UPM's fallback) return
for a package. Built once per change and stored with the package (so a search is an index
lookup, not a scan of packuments)."""

from __future__ import annotations

from typing import Any

from entrepot.npm import semver
from entrepot.storage.base import Package


def _people(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list):
        return []
    return [
        {"username": str(m.get("name", "")), "email": str(m.get("email", ""))}
        for m in value
        if isinstance(m, dict)
    ]


def search_entry(package: Package) -> dict[str, Any] | None:
    """The ``package`` object of a search hit; None when no version is live."""
    if not package.versions:
        return None
    latest = package.dist_tags.get("latest", "")
    if latest not in package.versions:
        latest = semver.max_version(package.versions) or next(iter(package.versions))
    manifest = package.versions[latest].manifest
    keywords = manifest.get("keywords")
    tags_by_version: dict[str, str] = {}
    for tag, version in package.dist_tags.items():
        tags_by_version.setdefault(version, tag)
    publisher = manifest.get("_npmUser") if isinstance(manifest.get("_npmUser"), dict) else {}
    assert isinstance(publisher, dict)
    entry: dict[str, Any] = {
        "name": package.name,
        "version": latest,
        "description": str(manifest.get("description") or ""),
        "keywords": [str(k) for k in keywords] if isinstance(keywords, list) else [],
        "date": package.versions[latest].published,
        "links": {},
        "publisher": {
            "username": str(publisher.get("name", "")),
            "email": str(publisher.get("email", "")),
        },
        "maintainers": _people(list(package.maintainers)),
        # What Unity's Package Manager reads from a search hit.
        "displayName": str(manifest.get("displayName") or package.name),
        "time": {"modified": package.modified},
        "dist-tags": dict(package.dist_tags),
        "versions": {
            v: tags_by_version.get(v, "")
            for v in sorted(package.versions, key=semver.parse_version)
        },
    }
    for field in ("author", "repository", "homepage", "license"):
        if field in manifest:
            entry[field] = manifest[field]
    return entry


def search_text(entry: dict[str, Any]) -> str:
    """The words a search matches besides the name: description, keywords, display name."""
    return " ".join(
        [entry.get("description", ""), *entry.get("keywords", []), entry.get("displayName", "")]
    )


def search_hit(entry: dict[str, Any], score: float) -> dict[str, Any]:
    """One object of npm's search response."""
    return {
        "package": entry,
        "score": {
            "final": score,
            "detail": {"quality": score, "popularity": score, "maintenance": score},
        },
        "searchScore": score,
        "flags": {},
    }


def all_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A package in UPM's legacy ``/-/all`` listing."""
    return {
        "name": entry["name"],
        "description": entry.get("description", ""),
        "dist-tags": entry.get("dist-tags", {}),
        "versions": {v: tag or "" for v, tag in entry.get("versions", {}).items()},
        "time": entry.get("time", {}),
        "keywords": entry.get("keywords", []),
        "author": entry.get("author"),
        "maintainers": [
            {"name": m["username"], "email": m["email"]} for m in entry.get("maintainers", [])
        ],
        "displayName": entry.get("displayName", entry["name"]),
    }
