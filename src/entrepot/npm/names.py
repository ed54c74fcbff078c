"""npm package name rules: a port of ``validate-npm-package-name`` v6 for new packages.

A name is acceptable for a new package when the library reports neither errors nor warnings
(``validForNewPackages``); warnings mark names that were allowed once (capital letters, core
module names, ...) and are refused now.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence

__all__ = [
    "NODE_BUILTIN_MODULES",
    "InvalidPackageName",
    "is_safe_path_part",
    "split_name",
    "validate_package_name",
]

# `require("module").builtinModules` of node 20.
NODE_BUILTIN_MODULES = frozenset(
    {
        "_http_agent",
        "_http_client",
        "_http_common",
        "_http_incoming",
        "_http_outgoing",
        "_http_server",
        "_stream_duplex",
        "_stream_passthrough",
        "_stream_readable",
        "_stream_transform",
        "_stream_wrap",
        "_stream_writable",
        "_tls_common",
        "_tls_wrap",
        "assert",
        "assert/strict",
        "async_hooks",
        "buffer",
        "child_process",
        "cluster",
        "console",
        "constants",
        "crypto",
        "dgram",
        "diagnostics_channel",
        "dns",
        "dns/promises",
        "domain",
        "events",
        "fs",
        "fs/promises",
        "http",
        "http2",
        "https",
        "inspector",
        "inspector/promises",
        "module",
        "net",
        "os",
        "path",
        "path/posix",
        "path/win32",
        "perf_hooks",
        "process",
        "punycode",
        "querystring",
        "readline",
        "readline/promises",
        "repl",
        "stream",
        "stream/consumers",
        "stream/promises",
        "stream/web",
        "string_decoder",
        "sys",
        "timers",
        "timers/promises",
        "tls",
        "trace_events",
        "tty",
        "url",
        "util",
        "util/types",
        "v8",
        "vm",
        "wasi",
        "worker_threads",
        "zlib",
    }
)

_EXCLUDED = ("node_modules", "favicon.ico")
_MAX_LENGTH = 214
_SCOPED = re.compile(r"(?:@([^/]+?)/)?([^/]+?)")
_SPECIAL = re.compile(r"[~'!()*]")
# The characters encodeURIComponent leaves alone.
_URI_SAFE = frozenset(string.ascii_letters + string.digits + "-_.!~*'()")
# What JavaScript's String.trim removes, which differs from str.strip().
_JS_WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000\ufeff"
)


class InvalidPackageName(ValueError):
    """A name npm would refuse for a new package; ``problems`` lists npm's reasons."""

    def __init__(self, name: str, problems: Sequence[str]) -> None:
        self.name = name
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


def _uri_safe(text: str) -> bool:
    return all(c in _URI_SAFE for c in text)


def _problems(name: str) -> list[str]:
    errors: list[str] = []
    warnings: list[str] = []
    lower = name.lower()
    if not name:
        errors.append("name length must be greater than zero")
    if name.startswith("."):
        errors.append("name cannot start with a period")
    if name.startswith("_"):
        errors.append("name cannot start with an underscore")
    if name.strip(_JS_WHITESPACE) != name:
        errors.append("name cannot contain leading or trailing spaces")
    errors.extend(
        f"{excluded} is not a valid package name" for excluded in _EXCLUDED if lower == excluded
    )

    if lower in NODE_BUILTIN_MODULES:
        warnings.append(f"{name} is a core module name")
    # JavaScript counts UTF-16 code units.
    if len(name.encode("utf-16-le", "surrogatepass")) // 2 > _MAX_LENGTH:
        warnings.append(f"name can no longer contain more than {_MAX_LENGTH} characters")
    if lower != name:
        warnings.append("name can no longer contain capital letters")
    if _SPECIAL.search(name.split("/")[-1]):
        warnings.append('name can no longer contain special characters ("~\'!()*")')

    if not _uri_safe(name):
        match = _SCOPED.fullmatch(name)
        scope, bare = match.groups() if match else (None, "")
        if bare.startswith("."):
            errors.append("name cannot start with a period")
        if scope is None or not _uri_safe(scope) or not _uri_safe(bare):
            errors.append("name can only contain URL-friendly characters")
    return errors + warnings


def validate_package_name(name: str) -> None:
    """Raise ``InvalidPackageName`` unless npm accepts ``name`` for a new package."""
    problems = _problems(name)
    if problems:
        raise InvalidPackageName(name, problems)


def split_name(name: str) -> tuple[str | None, str]:
    """Split ``@scope/name`` into ``("scope", "name")`` and ``name`` into ``(None, "name")``.

    Only the shape is checked (``InvalidPackageName`` if it is neither); use
    ``validate_package_name`` for the rest.
    """
    match = _SCOPED.fullmatch(name)
    if match is None or (match.group(1) is None and name.startswith("@")):
        raise InvalidPackageName(name, ["name must be either name or @scope/name"])
    scope, bare = match.groups()
    return scope, bare


def is_safe_path_part(text: str) -> bool:
    """Whether ``text`` can be used as one file name component, such as a tarball's name.

    Refuses empty, ``.``, ``..``, separators (``/``, ``\\``) and control characters (NUL
    included); lone surrogates too, since they cannot be encoded to a file name.
    """
    return (
        text not in ("", ".", "..")
        and "/" not in text
        and "\\" not in text
        and not any(unicodedata.category(c) in ("Cc", "Cs") for c in text)
    )
