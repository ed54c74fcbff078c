"""Read the registry packages a client lockfile names (for ``entrepot mirror``).

Pure: ``parse_lockfile(filename, text)`` dispatches on the file's base name:

- ``package-lock.json`` / ``npm-shrinkwrap.json``: lockfileVersion 2 and 3 (the ``packages``
  map) and 1 (the nested ``dependencies`` tree);
- ``pnpm-lock.yaml``: lockfileVersion 5.x (``/name/1.0.0_peer``), 6.0 (``/name@1.0.0(peer)``)
  and 9.0 (``name@1.0.0``), including pnpm 11+'s two-document files;
- ``yarn.lock``: yarn 1 (its own format) and yarn 2+ ("berry", YAML with ``__metadata``).

Only packages fetched from a registry are returned: the root project, workspaces, links,
``file:``/``portal:`` folders, git dependencies, tarball-URL dependencies and bundled
dependencies are left out, as the mirror cannot fetch them from a registry.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

import yaml

from entrepot.npm.semver import InvalidVersion, parse_version

NPM_LOCKFILES = ("package-lock.json", "npm-shrinkwrap.json")
PNPM_LOCKFILE = "pnpm-lock.yaml"
YARN_LOCKFILE = "yarn.lock"
SUPPORTED_FILENAMES = (*NPM_LOCKFILES, PNPM_LOCKFILE, YARN_LOCKFILE)

_NAME = re.compile(r"(?:@[^\s/@]+/)?[^\s/@]+")
# Stronger first, for the rare lockfile that records two hashes for one version.
_ALGORITHM_RANK = {"sha512": 4, "sha384": 3, "sha256": 2, "sha1": 1}


@dataclasses.dataclass(frozen=True, order=True)
class Locked:
    """One registry package version a lockfile pins."""

    name: str
    version: str
    integrity: str | None


class LockfileError(ValueError):
    """A lockfile that cannot be read: unsupported file name, bad syntax or bad structure.

    The message names the file and what is wrong with it.
    """


def parse_lockfile(filename: str, text: str) -> list[Locked]:
    """The registry packages ``text`` (the lockfile named ``filename``) pins.

    Dispatches on the base name of ``filename`` (``/`` or ``\\`` separated). Returns entries
    sorted and de-duplicated: one per name and version, keeping a recorded integrity over none.
    Raises ``LockfileError``, its message starting with ``filename``, for an unsupported file
    name or malformed content.
    """
    base = PureWindowsPath(PurePosixPath(filename).name).name
    text = text.removeprefix("\ufeff")
    if base in NPM_LOCKFILES:
        found = _npm(filename, _load_json(filename, text))
    elif base == PNPM_LOCKFILE:
        # pnpm 11+ puts an "env" document (config dependencies, pnpm itself) before the
        # project's; those are real registry packages too, so every document counts.
        documents = _load_yaml_documents(filename, text)
        found = itertools.chain.from_iterable(_pnpm(filename, doc) for doc in documents)
    elif base == YARN_LOCKFILE:
        if re.search(r"^__metadata:", text, re.MULTILINE):
            found = _yarn_berry(filename, _load_yaml(filename, text))
        else:
            found = _yarn_v1(filename, text)
    else:
        supported = ", ".join(SUPPORTED_FILENAMES)
        raise LockfileError(f"{filename}: not a supported lockfile name (expected {supported})")
    return _dedupe(found)


def _dedupe(found: Iterator[Locked]) -> list[Locked]:
    best: dict[tuple[str, str], Locked] = {}
    for item in found:
        key = (item.name, item.version)
        kept = best.get(key)
        if kept is None or _strength(item.integrity) > _strength(kept.integrity):
            best[key] = item
    return sorted(best.values())


def _strength(integrity: str | None) -> tuple[int, str]:
    if integrity is None:
        return (0, "")
    # The text breaks ties so the choice does not depend on the order entries come in.
    return (_ALGORITHM_RANK.get(integrity.partition("-")[0], 0) + 1, integrity)


def _load_json(filename: str, text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise LockfileError(f"{filename}: invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise LockfileError(f"{filename}: expected a JSON object at the top level")
    return data


def _load_yaml(filename: str, text: str) -> dict[str, Any]:
    documents = _load_yaml_documents(filename, text)
    if len(documents) != 1:
        raise LockfileError(f"{filename}: expected one YAML document, found {len(documents)}")
    return documents[0]


def _load_yaml_documents(filename: str, text: str) -> list[dict[str, Any]]:
    try:
        documents = list(yaml.safe_load_all(text))
    except (yaml.YAMLError, RecursionError) as exc:
        raise LockfileError(f"{filename}: invalid YAML: {exc}") from None
    if not documents or not all(isinstance(document, dict) for document in documents):
        raise LockfileError(f"{filename}: expected a YAML mapping at the top level")
    return documents


def _is_exact_version(text: str) -> bool:
    # parse_version also takes a leading "v" and surrounding blanks; lockfiles never write them.
    if not text[:1].isdigit() or text != text.strip():
        return False
    try:
        parse_version(text)
    except InvalidVersion:
        return False
    return True


def _is_name(text: str) -> bool:
    return _NAME.fullmatch(text) is not None


def _split_spec(spec: str) -> tuple[str, str]:
    """``name@rest`` → (name, rest); the first ``@`` of a scoped name belongs to the name."""
    at = spec.find("@", 1)
    if at < 0:
        return spec, ""
    return spec[:at], spec[at + 1 :]


def _is_registry_tarball(url: str, name: str, version: str) -> bool:
    """Whether ``url`` is where a registry serves ``name@version``: ``.../-/<bare>-<ver>.tgz``.

    A tarball-URL dependency names some other file; it is not in any registry.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return False
    bare = name.rpartition("/")[2]
    return urllib.parse.unquote(parts.path).endswith(f"/-/{bare}-{version}.tgz")


def _mapping(filename: str, value: object, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LockfileError(f"{filename}: {where} should be a mapping")
    return value


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


# npm --------------------------------------------------------------------------------------------


def _npm(filename: str, data: Mapping[str, Any]) -> Iterator[Locked]:
    version = data.get("lockfileVersion")
    if "packages" in data:
        # v2 also carries the v1 tree for old npm; "packages" is the complete one.
        return _npm_packages(filename, _mapping(filename, data["packages"], '"packages"'))
    if version == 1 or "dependencies" in data:
        return _npm_v1(filename, _mapping(filename, data.get("dependencies"), '"dependencies"'))
    raise LockfileError(f'{filename}: no "packages" or "dependencies" (lockfileVersion {version})')


def _npm_packages(filename: str, packages: Mapping[str, Any]) -> Iterator[Locked]:
    for path, raw in packages.items():
        entry = _mapping(filename, raw, f'"packages" entry {path!r}')
        # "" is the root project; keys without node_modules/ are workspace or file: folders.
        if "node_modules/" not in path or entry.get("link") or entry.get("inBundle"):
            continue
        name = _text(entry.get("name")) or path.rpartition("node_modules/")[2]
        version = _text(entry.get("version"))
        if version is None or not _is_name(name) or not _is_exact_version(version):
            continue
        resolved = _text(entry.get("resolved"))
        # With omit-lockfile-registry-resolved npm leaves "resolved" out for registry packages.
        if resolved is not None and not _is_registry_tarball(resolved, name, version):
            continue
        yield Locked(name, version, _text(entry.get("integrity")))


def _npm_v1(filename: str, dependencies: Mapping[str, Any]) -> Iterator[Locked]:
    for key, raw in dependencies.items():
        entry = _mapping(filename, raw, f'"dependencies" entry {key!r}')
        nested = _mapping(filename, entry.get("dependencies"), f"dependencies of {key!r}")
        yield from _npm_v1(filename, nested)
        version = _text(entry.get("version"))
        if version is None or entry.get("bundled"):
            continue
        name = key
        if version.startswith("npm:"):
            name, version = _split_spec(version.removeprefix("npm:"))
        if not _is_name(name) or not _is_exact_version(version):
            continue
        resolved = _text(entry.get("resolved"))
        if resolved is not None and not _is_registry_tarball(resolved, name, version):
            continue
        yield Locked(name, version, _text(entry.get("integrity")))


# pnpm -------------------------------------------------------------------------------------------


def _pnpm(filename: str, data: Mapping[str, Any]) -> Iterator[Locked]:
    if "lockfileVersion" not in data:
        raise LockfileError(f"{filename}: no lockfileVersion")
    # 5.x keys are /name/1.0.0_peer; 6.0 keys /name@1.0.0(peer); 9.0 keys name@1.0.0.
    major = str(data["lockfileVersion"]).partition(".")[0]
    packages = _mapping(filename, data.get("packages"), '"packages"')
    for key, raw in packages.items():
        entry = _mapping(filename, raw, f'"packages" entry {key!r}')
        resolution = _mapping(filename, entry.get("resolution"), f"resolution of {key!r}")
        # Directory, git and tarball-URL entries have keys without an exact version.
        parsed = _pnpm_key(str(key), major)
        if parsed is None:
            continue
        name, version = parsed
        if _is_name(name) and _is_exact_version(version):
            yield Locked(name, version, _text(resolution.get("integrity")))


def _pnpm_key(key: str, major: str) -> tuple[str, str] | None:
    if major in ("5", "6"):
        # Registry packages start with "/"; others are file:, host/path, @host/tarball keys.
        if not key.startswith("/"):
            return None
        key = key[1:]
    if major == "5":
        name, _, version = key.rpartition("/")
        return name, version.partition("_")[0]
    name, version = _split_spec(key.partition("(")[0])
    return name, version


# yarn -------------------------------------------------------------------------------------------


def _yarn_berry(filename: str, data: Mapping[str, Any]) -> Iterator[Locked]:
    for key, raw in data.items():
        if key == "__metadata":
            continue
        entry = _mapping(filename, raw, f"entry {key!r}")
        resolution = _text(entry.get("resolution"))
        if resolution is None:
            raise LockfileError(f"{filename}: entry {key!r} has no resolution")
        locked = _berry_locator(resolution)
        if locked is not None:
            yield locked


def _berry_locator(locator: str) -> Locked | None:
    """``name@npm:1.2.3`` → that package; a patch of one → the package patched; else None.

    A berry checksum is yarn's own hash of its zip archive, not an npm integrity.
    """
    name, reference = _split_spec(locator)
    protocol, _, rest = reference.partition(":")
    if protocol == "patch":
        # name@patch:inner#patchfile::params, the inner locator URL-encoded (npm%3A1.2.3).
        return _berry_locator(urllib.parse.unquote(rest.partition("#")[0]))
    if protocol != "npm":
        return None  # workspace, link, portal, file, git, http tarball, exec...
    # "::__archiveUrl=..." follows the version when the registry serves an odd tarball URL.
    version = rest.partition("::")[0]
    if _is_name(name) and _is_exact_version(version):
        return Locked(name, version, None)
    return None


_YARN_FIELD = re.compile(r"  ([A-Za-z]+) (.+)")


def _yarn_v1(filename: str, text: str) -> Iterator[Locked]:
    for lineno, header, fields in _yarn_v1_entries(filename, text):
        specs = _yarn_v1_specs(filename, lineno, header)
        name, range_ = _split_spec(specs[0])
        if range_.startswith("npm:"):
            name = _split_spec(range_.removeprefix("npm:"))[0]
        version = fields.get("version")
        resolved = fields.get("resolved")
        if version is None:
            raise LockfileError(f"{filename}: line {lineno}: entry {header!r} has no version")
        # Registry entries always carry "resolved"; file: and link: entries have none.
        if resolved is None or not (_is_name(name) and _is_exact_version(version)):
            continue
        if _is_registry_tarball(resolved, name, version):
            yield Locked(name, version, fields.get("integrity"))


def _yarn_v1_entries(filename: str, text: str) -> Iterator[tuple[int, str, dict[str, str]]]:
    """(line number, header, top-level fields) of each entry of a yarn 1 lockfile."""
    header: str | None = None
    start = 0
    fields: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            if header is not None:
                yield start, header, fields
            if not line.endswith(":"):
                raise LockfileError(f"{filename}: line {lineno}: expected an entry header")
            header, start, fields = line[:-1], lineno, {}
            continue
        if header is None:
            raise LockfileError(f"{filename}: line {lineno}: indented line before any entry")
        match = _YARN_FIELD.fullmatch(line)
        if match is not None:  # deeper lines (dependencies: ...) do not matter here
            fields[match[1]] = _yarn_v1_value(filename, lineno, match[2])
    if header is not None:
        yield start, header, fields


def _yarn_v1_value(filename: str, lineno: int, raw: str) -> str:
    if not raw.startswith('"'):
        return raw
    try:
        value = json.loads(raw)
    except ValueError:
        raise LockfileError(f"{filename}: line {lineno}: bad quoted string {raw}") from None
    if not isinstance(value, str):
        raise LockfileError(f"{filename}: line {lineno}: bad quoted string {raw}")
    return value


_YARN_SPEC = re.compile(r'\s*("(?:[^"\\]|\\.)*"|[^",]+?)\s*(?:,|$)')


def _yarn_v1_specs(filename: str, lineno: int, header: str) -> list[str]:
    """``"a@^1", a@^1.1`` → ["a@^1", "a@^1.1"]."""
    specs: list[str] = []
    position = 0
    while position < len(header):
        match = _YARN_SPEC.match(header, position)
        if match is None or match.end() == position:
            raise LockfileError(f"{filename}: line {lineno}: bad entry header {header!r}")
        specs.append(_yarn_v1_value(filename, lineno, match[1]))
        position = match.end()
    if not specs:
        raise LockfileError(f"{filename}: line {lineno}: empty entry header")
    return specs
