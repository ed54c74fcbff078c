"""A port of the parts of node-semver 7 (npm's ``semver`` package) that a registry needs.

Covers strict parsing (``semver.parse`` without ``loose``), SemVer 2.0.0 precedence,
``semver.clean``, ``semver.validRange`` and ``semver.satisfies`` (without
``includePrerelease``). Range parsing follows node-semver step by step, desugaring included,
because npm decides what is a dist-tag and what is a range with ``validRange``: a tag-like word
must be judged exactly as npm judges it.

The regular expressions are node-semver's bounded "safe" variants, which are the ones it matches
with. Whitespace means ECMAScript whitespace (JavaScript's ``\\s`` and ``String.trim``), which
is not Python's idea of whitespace.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = [
    "MAX_LENGTH",
    "MAX_SAFE_INTEGER",
    "InvalidVersion",
    "Version",
    "clean",
    "compare",
    "is_valid_range",
    "max_version",
    "parse_version",
    "satisfies",
    "valid_range",
]

MAX_LENGTH = 256
MAX_SAFE_INTEGER = 2**53 - 1

_JS_WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_S = f"[{_JS_WHITESPACE}]"

# node-semver's regex sources, with its "safe" bounds on repetitions.
_NUM = "0|[1-9][0-9]{0,256}"
_NUM_LOOSE = "[0-9]{1,256}"
_NON_NUM = "[0-9]{0,256}[a-zA-Z-][a-zA-Z0-9-]{0,250}"
_PRE_ID = f"(?:{_NON_NUM}|{_NUM})"
_PRE_ID_LOOSE = f"(?:{_NON_NUM}|{_NUM_LOOSE})"
_PRE = rf"(?:-({_PRE_ID}(?:\.{_PRE_ID})*))"
_PRE_LOOSE = rf"(?:-?({_PRE_ID_LOOSE}(?:\.{_PRE_ID_LOOSE})*))"
_BUILD_ID = "[a-zA-Z0-9-]{1,250}"
_BUILD = rf"(?:\+({_BUILD_ID}(?:\.{_BUILD_ID})*))"
_FULL_PLAIN = rf"v?({_NUM})\.({_NUM})\.({_NUM}){_PRE}?{_BUILD}?"
_LOOSE_BODY = rf"({_NUM_LOOSE})\.({_NUM_LOOSE})\.({_NUM_LOOSE}){_PRE_LOOSE}?{_BUILD}?"
_GTLT = "((?:<|>)?=?)"
_XR_ID = rf"{_NUM}|x|X|\*"
_XRANGE_BODY = rf"({_XR_ID})(?:\.({_XR_ID})(?:\.({_XR_ID})(?:{_PRE})?{_BUILD}?)?)?"
_XRANGE_PLAIN = f"[v={_JS_WHITESPACE}]*{_XRANGE_BODY}"

_FULL = re.compile(_FULL_PLAIN)
_COMPARATOR = re.compile(f"{_GTLT}{_S}?({_FULL_PLAIN})|")
_XRANGE = re.compile(f"{_GTLT}{_S}?{_XRANGE_PLAIN}")
_TILDE = re.compile(f"~>?{_XRANGE_PLAIN}")
_CARET = re.compile(rf"\^{_XRANGE_PLAIN}")
_HYPHEN = re.compile(f"{_S}?({_XRANGE_PLAIN}){_S}-{_S}({_XRANGE_PLAIN}){_S}?")
_TILDE_TRIM = re.compile(f"({_S}?)~>?{_S}")
_CARET_TRIM = re.compile(rf"({_S}?)\^{_S}")
_STAR = re.compile(rf"(<|>)?=?{_S}?\*")
_GTE0 = re.compile(rf"{_S}?>={_S}?0\.0\.0{_S}?")
_VERSION_BODY = re.compile(f"{_LOOSE_BODY}|{_XRANGE_BODY}")
# node-semver strips build metadata with the unbounded source regex, not the safe one.
_BUILD_STRIP = re.compile(r"\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)")
_SPACES = re.compile(f"{_S}+")

_VERSION_PREFIX = frozenset("v=" + _JS_WHITESPACE)
_VERSION_START = frozenset("0123456789xX*")


class InvalidVersion(ValueError):
    """Raised for text that is not a strict SemVer 2.0.0 version."""


def _js_trim(text: str) -> str:
    return text.strip(_JS_WHITESPACE)


@functools.total_ordering
@dataclass(frozen=True)
class Version:
    """A parsed version; ordering, equality and hashing follow precedence, ignoring build.

    Numeric prerelease identifiers are ints, the others strs.
    """

    major: int
    minor: int
    patch: int
    prerelease: tuple[str | int, ...] = ()
    build: tuple[str, ...] = field(default=(), compare=False)

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(map(str, self.prerelease))
        return text

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._precedence() < other._precedence()

    def _precedence(self) -> tuple[int, int, int, bool, tuple[tuple[bool, int | str], ...]]:
        # A release outranks its prereleases; numeric identifiers rank below alphanumeric ones.
        return (
            self.major,
            self.minor,
            self.patch,
            not self.prerelease,
            tuple((isinstance(i, str), i) for i in self.prerelease),
        )


def parse_version(text: str) -> Version:
    """Parse ``text`` like node-semver's ``semver.parse(text)`` (strict mode).

    As in node-semver, surrounding whitespace and one leading ``v`` are accepted; compare
    ``str(version)`` with the input to insist on the canonical form.
    Raises ``InvalidVersion`` for anything else.
    """
    if len(text) > MAX_LENGTH:
        raise InvalidVersion(f"version is longer than {MAX_LENGTH} characters")
    match = _FULL.fullmatch(_js_trim(text))
    if match is None:
        raise InvalidVersion(f"Invalid Version: {text}")
    major, minor, patch = (int(n) for n in match.group(1, 2, 3))
    for part, number in (("major", major), ("minor", minor), ("patch", patch)):
        if number > MAX_SAFE_INTEGER:
            raise InvalidVersion(f"Invalid {part} version: {text}")
    pre, build = match.group(4, 5)
    return Version(
        major,
        minor,
        patch,
        tuple(int(i) if i.isdigit() else i for i in pre.split(".")) if pre else (),
        tuple(build.split(".")) if build else (),
    )


def clean(text: str) -> str | None:
    """Like ``semver.clean``: the canonical version in ``text`` (no build), or None.

    Surrounding whitespace and any leading run of ``=`` and ``v`` are dropped first.
    """
    try:
        return str(parse_version(_js_trim(text).lstrip("=v")))
    except InvalidVersion:
        return None


def compare(a: str, b: str) -> int:
    """Like ``semver.compare``: -1, 0 or 1. Raises ``InvalidVersion`` for an invalid input."""
    va, vb = parse_version(a), parse_version(b)
    return (va > vb) - (va < vb)


def max_version(versions: Iterable[str]) -> str | None:
    """The highest of ``versions`` by precedence, prereleases included; None if empty.

    Returns the string as given. Among versions of equal precedence (build metadata differs)
    the last one wins, as with npm's ``keys.sort(semver.compareLoose).pop()``. Raises
    ``InvalidVersion`` for an invalid version: a registry only stores valid ones.
    """
    best: tuple[Version, str] | None = None
    for text in versions:
        version = parse_version(text)
        if best is None or version >= best[0]:
            best = (version, text)
    return None if best is None else best[1]


@dataclass(frozen=True)
class _Comparator:
    operator: str  # "", "<", "<=", ">" or ">="
    version: Version | None  # None matches any version

    @property
    def value(self) -> str:
        return "" if self.version is None else f"{self.operator}{self.version}"

    def test(self, version: Version) -> bool:
        if self.version is None:
            return True
        match self.operator:
            case "<":
                return version < self.version
            case "<=":
                return version <= self.version
            case ">":
                return version > self.version
            case ">=":
                return version >= self.version
            case _:
                return version == self.version


_NULL_SET = "<0.0.0-0"
_ComparatorSet = tuple[_Comparator, ...]


def _is_x(part: str | None) -> bool:
    return not part or part in ("x", "X", "*")


def _hyphen_replace(match: re.Match[str]) -> str:
    low, l_major, l_minor, l_patch = match.group(1, 2, 3, 4)
    high, h_major, h_minor, h_patch, h_pre = match.group(7, 8, 9, 10, 11)
    if _is_x(l_major):
        low = ""
    elif _is_x(l_minor):
        low = f">={l_major}.0.0"
    elif _is_x(l_patch):
        low = f">={l_major}.{l_minor}.0"
    else:
        low = f">={low}"
    if _is_x(h_major):
        high = ""
    elif _is_x(h_minor):
        high = f"<{int(h_major) + 1}.0.0-0"
    elif _is_x(h_patch):
        high = f"<{h_major}.{int(h_minor) + 1}.0-0"
    elif h_pre:
        high = f"<={h_major}.{h_minor}.{h_patch}-{h_pre}"
    else:
        high = f"<={high}"
    return _js_trim(f"{low} {high}")


def _trim_comparator_whitespace(text: str) -> str:
    """Turn ``> 1.2.3`` into ``>1.2.3``: node-semver's linear-time COMPARATORTRIM scanner."""
    kept: list[str] = []
    copy_from = cursor = 0
    while cursor < len(text):
        start = cursor
        if text[cursor] in "<>":
            cursor += 1
        elif text[cursor] not in _VERSION_PREFIX and text[cursor] not in _VERSION_START:
            cursor += 1
            continue
        # Consume a v/=/whitespace run once, so a long run costs linear time.
        while cursor < len(text) and text[cursor] in _VERSION_PREFIX:
            cursor += 1
        if cursor == len(text) or text[cursor] not in _VERSION_START:
            continue
        # Drop only the one whitespace right after the operator, as the regex did.
        gap = start + (text[start] in _JS_WHITESPACE)
        gap += text[gap] in "<>"
        gap += text[gap] == "="
        if text[gap] in _JS_WHITESPACE:
            kept.append(text[copy_from:gap])
            copy_from = gap + 1
        body = _VERSION_BODY.match(text, cursor)
        assert body is not None  # any version start character matches
        cursor = body.end()
    kept.append(text[copy_from:])
    return "".join(kept)


def _replace_caret(comp: str) -> str:
    match = _CARET.fullmatch(comp)
    if match is None:
        return comp
    major, minor, patch, pre = match.group(1, 2, 3, 4)
    if _is_x(major):
        return ""
    if _is_x(minor):
        return f">={major}.0.0 <{int(major) + 1}.0.0-0"
    if _is_x(patch):
        if major == "0":
            return f">={major}.{minor}.0 <{major}.{int(minor) + 1}.0-0"
        return f">={major}.{minor}.0 <{int(major) + 1}.0.0-0"
    low = f">={major}.{minor}.{patch}-{pre}" if pre else f">={major}.{minor}.{patch}"
    if major != "0":
        return f"{low} <{int(major) + 1}.0.0-0"
    if minor != "0":
        return f"{low} <{major}.{int(minor) + 1}.0-0"
    return f"{low} <{major}.{minor}.{int(patch) + 1}-0"


def _replace_tilde(comp: str) -> str:
    match = _TILDE.fullmatch(comp)
    if match is None:
        return comp
    major, minor, patch, pre = match.group(1, 2, 3, 4)
    if _is_x(major):
        return ""
    if _is_x(minor):
        return f">={major}.0.0 <{int(major) + 1}.0.0-0"
    if _is_x(patch):
        return f">={major}.{minor}.0 <{major}.{int(minor) + 1}.0-0"
    low = f">={major}.{minor}.{patch}-{pre}" if pre else f">={major}.{minor}.{patch}"
    return f"{low} <{major}.{int(minor) + 1}.0-0"


def _replace_xrange(comp: str) -> str:
    comp = _js_trim(comp)
    match = _XRANGE.fullmatch(comp)
    if match is None:
        return comp
    gtlt, major, minor, patch = match.group(1, 2, 3, 4)
    if (_is_x(major) and not _is_x(minor)) or (_is_x(minor) and patch and not _is_x(patch)):
        return comp
    x_major = _is_x(major)
    x_minor = x_major or _is_x(minor)
    any_x = x_minor or _is_x(patch)
    if gtlt == "=" and any_x:
        gtlt = ""
    if x_major:
        return _NULL_SET if gtlt in ("<", ">") else "*"
    if gtlt and any_x:
        new_major, new_minor = int(major), 0 if x_minor else int(minor)
        if gtlt in (">", "<="):
            # >1 is >=2.0.0, and <=1.2 is <1.3.0-0: every 1.2.x must pass.
            gtlt = ">=" if gtlt == ">" else "<"
            if x_minor:
                new_major += 1
            else:
                new_minor += 1
        return f"{gtlt}{new_major}.{new_minor}.0{'-0' if gtlt == '<' else ''}"
    if x_minor:
        return f">={major}.0.0 <{int(major) + 1}.0.0-0"
    if any_x:
        return f">={major}.{minor}.0 <{major}.{int(minor) + 1}.0-0"
    return comp


def _desugar(comp: str) -> str:
    comp = " ".join(map(_replace_caret, _SPACES.split(_js_trim(comp))))
    comp = " ".join(map(_replace_tilde, _SPACES.split(_js_trim(comp))))
    comp = " ".join(map(_replace_xrange, _SPACES.split(comp)))
    # The star is AND-ed with the rest, so it can go (only the first, as in node-semver).
    return _STAR.sub("", _js_trim(comp), count=1)


def _parse_comparator(comp: str) -> _Comparator:
    comp = " ".join(_SPACES.split(_js_trim(comp)))
    match = _COMPARATOR.fullmatch(comp)
    if match is None:
        raise ValueError(f"Invalid comparator: {comp}")
    operator, version = match.group(1, 2)
    if version is None:
        return _Comparator("", None)
    return _Comparator("" if operator == "=" else operator, parse_version(version))


def _parse_set(text: str) -> _ComparatorSet:
    text = _BUILD_STRIP.sub("", text)
    hyphen = _HYPHEN.fullmatch(text)
    if hyphen is not None:
        text = _hyphen_replace(hyphen)
    text = _trim_comparator_whitespace(text)
    text = _TILDE_TRIM.sub(r"\1~", text)
    text = _CARET_TRIM.sub(r"\1^", text)
    desugared = " ".join(map(_desugar, text.split(" ")))
    comparators = [
        _parse_comparator("" if _GTE0.fullmatch(c := _js_trim(comp)) else c)
        for comp in _SPACES.split(desugared)
    ]
    unique: dict[str, _Comparator] = {}
    for comparator in comparators:
        if comparator.value == _NULL_SET:
            return (comparator,)
        unique[comparator.value] = comparator
    if len(unique) > 1:
        unique.pop("", None)
    return tuple(unique.values())


@functools.lru_cache(maxsize=1000)
def _parse_range(text: str) -> tuple[_ComparatorSet, ...]:
    raw = _SPACES.sub(" ", _js_trim(text))
    sets = [_parse_set(_js_trim(part)) for part in raw.split("||")]
    if len(sets) > 1:
        sets = [s for s in sets if s[0].value != _NULL_SET] or sets[:1]
        for comparators in sets:
            if len(comparators) == 1 and comparators[0].version is None:
                return (comparators,)
    return tuple(sets)


def valid_range(text: str) -> str | None:
    """Like ``semver.validRange``: the normalized range (``*`` for any version), or None."""
    try:
        sets = _parse_range(text)
    except ValueError:
        return None
    return "||".join(" ".join(c.value for c in s) for s in sets) or "*"


def is_valid_range(text: str) -> bool:
    """Like ``semver.validRange(text) !== null``; npm refuses such text as a dist-tag name."""
    return valid_range(text) is not None


def _test_set(comparators: _ComparatorSet, version: Version) -> bool:
    if not all(c.test(version) for c in comparators):
        return False
    if not version.prerelease:
        return True
    # A prerelease only matches when the range names a prerelease of the same x.y.z.
    return any(
        c.version is not None
        and c.version.prerelease
        and (c.version.major, c.version.minor, c.version.patch)
        == (version.major, version.minor, version.patch)
        for c in comparators
    )


def satisfies(version: str | Version, range_: str) -> bool:
    """Like ``semver.satisfies``: False for an invalid version or range."""
    try:
        sets = _parse_range(range_)
        parsed = version if isinstance(version, Version) else parse_version(version)
    except ValueError:
        return False
    return any(_test_set(comparators, parsed) for comparators in sets)
