"""Tests for entrepot.npm.semver.

The tables below were produced once by running real node-semver on each input; the tests compare
the port against them and never call node.
"""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entrepot.npm.semver import (
    MAX_LENGTH,
    MAX_SAFE_INTEGER,
    InvalidVersion,
    Version,
    clean,
    compare,
    is_valid_range,
    max_version,
    parse_version,
    satisfies,
    valid_range,
)

# Generated once with node-semver 7.8.6: semver.validRange(text).
VALID_RANGE_CASES: list[tuple[str, str | None]] = [
    ("latest", None),
    ("next", None),
    ("beta", None),
    ("alpha", None),
    ("canary", None),
    ("rc", None),
    ("stable", None),
    ("dev", None),
    ("experimental", None),
    ("legacy", None),
    ("lts", None),
    ("release", None),
    ("prerelease", None),
    ("tag", None),
    ("foo", None),
    ("foo1", None),
    ("1foo", None),
    ("latest1", None),
    ("1latest", None),
    ("latest-1", None),
    ("next-11", None),
    ("beta.1", None),
    ("rc1", None),
    ("v1beta", None),
    ("x1", None),
    ("1x", None),
    ("@latest", None),
    ("^latest", None),
    ("~next", None),
    ("next-1", None),
    ("", "*"),
    ("  ", "*"),
    (" \t ", "*"),
    ("*", "*"),
    ("x", "*"),
    ("X", "*"),
    ("**", None),
    ("* *", "*"),
    ("x x", "*"),
    ("1 x", ">=1.0.0 <2.0.0-0"),
    ("x.x", "*"),
    ("x.x.x", "*"),
    ("X.X", "*"),
    ("*.*", "*"),
    ("vX", "*"),
    ("vx", "*"),
    ("v*", "*"),
    ("=*", "*"),
    ("1", ">=1.0.0 <2.0.0-0"),
    ("01", None),
    ("0", "<1.0.0-0"),
    ("0.0", "<0.1.0-0"),
    ("0.0.0", "0.0.0"),
    ("1.0", ">=1.0.0 <1.1.0-0"),
    ("1.0.0", "1.0.0"),
    ("v1", ">=1.0.0 <2.0.0-0"),
    ("v1.0", ">=1.0.0 <1.1.0-0"),
    ("v1.2.3", "1.2.3"),
    ("V1", None),
    ("V1.0.0", None),
    ("v", None),
    ("vv1", ">=1.0.0 <2.0.0-0"),
    ("=1", ">=1.0.0 <2.0.0-0"),
    ("==1", ">=1.0.0 <2.0.0-0"),
    ("v=1", ">=1.0.0 <2.0.0-0"),
    ("=v1.2.3", "1.2.3"),
    ("v=1.2.3", None),
    ("v = 1.2.3", None),
    ("v 1.2.3", None),
    ("= 1.2.3", "1.2.3"),
    ("==1.2.3", None),
    ("=1.2.3", "1.2.3"),
    ("1.2.3.4", None),
    ("1.02", None),
    ("1.2.03", None),
    ("01.2.3", None),
    ("1.02.3", None),
    ("9007199254740991", None),
    ("9007199254740992", None),
    ("1.9007199254740991.0", "1.9007199254740991.0"),
    ("^9007199254740991", None),
    ("~1.9007199254740991", None),
    ("9007199254740990 - 9007199254740990", ">=9007199254740990.0.0 <9007199254740991.0.0-0"),
    ("1.x", ">=1.0.0 <2.0.0-0"),
    ("1.*", ">=1.0.0 <2.0.0-0"),
    ("1.2.*", ">=1.2.0 <1.3.0-0"),
    ("1.2.x", ">=1.2.0 <1.3.0-0"),
    ("1.x.x", ">=1.0.0 <2.0.0-0"),
    ("1.X", ">=1.0.0 <2.0.0-0"),
    ("1.2.X", ">=1.2.0 <1.3.0-0"),
    ("X.1.2", None),
    ("1.x.2", None),
    ("x.1", None),
    ("*.1", None),
    ("1.*.2", None),
    ("1.2.3*", "1.2.3"),
    ("a*b", None),
    ("*-beta", None),
    ("1.x-beta", None),
    ("1.2.x-beta", ">=1.2.0 <1.3.0-0"),
    ("1.2.3-x", "1.2.3-x"),
    ("1.2.3-*", None),
    ("^1", ">=1.0.0 <2.0.0-0"),
    ("~1", ">=1.0.0 <2.0.0-0"),
    ("^", None),
    ("~", None),
    ("~>", None),
    ("^~1", None),
    ("~^1", None),
    (">~1", None),
    ("<^1", None),
    ("^>1", None),
    ("^1.2.3", ">=1.2.3 <2.0.0-0"),
    ("^0.2.3", ">=0.2.3 <0.3.0-0"),
    ("^0.0.3", ">=0.0.3 <0.0.4-0"),
    ("^0.0", "<0.1.0-0"),
    ("^0", "<1.0.0-0"),
    ("^1.2", ">=1.2.0 <2.0.0-0"),
    ("^1.2.x", ">=1.2.0 <2.0.0-0"),
    ("^0.0.x", "<0.1.0-0"),
    ("^0.x", "<1.0.0-0"),
    ("^1.2.3-beta.2", ">=1.2.3-beta.2 <2.0.0-0"),
    ("^0.0.3-beta", ">=0.0.3-beta <0.0.4-0"),
    ("^0.1.2-beta", ">=0.1.2-beta <0.2.0-0"),
    ("^ 1.2", ">=1.2.0 <2.0.0-0"),
    ("^  1.2.3", ">=1.2.3 <2.0.0-0"),
    ("~1.2.3", ">=1.2.3 <1.3.0-0"),
    ("~1.2", ">=1.2.0 <1.3.0-0"),
    ("~>1.2", ">=1.2.0 <1.3.0-0"),
    ("~> 1.2.3", ">=1.2.3 <1.3.0-0"),
    ("~1.2.3-beta.2", ">=1.2.3-beta.2 <1.3.0-0"),
    ("~0.0.1", ">=0.0.1 <0.1.0-0"),
    ("~ 1", ">=1.0.0 <2.0.0-0"),
    ("~ >1", ">=1.0.0 <2.0.0-0"),
    ("~01", None),
    ("^01", None),
    ("^0.0.0", "<0.0.1-0"),
    ("~0.0.0", "<0.1.0-0"),
    ("^*", "*"),
    ("~*", "*"),
    ("^x.1", "*"),
    ("~1.x.2", ">=1.0.0 <2.0.0-0"),
    (">1", ">=2.0.0"),
    ("<1", "<1.0.0-0"),
    (">=1", ">=1.0.0"),
    ("<=1", "<2.0.0-0"),
    ("=", None),
    (">", None),
    ("<", None),
    (">=", None),
    ("<=", None),
    (">*", "<0.0.0-0"),
    ("<*", "<0.0.0-0"),
    (">=*", "*"),
    ("<=*", "*"),
    (">x", "<0.0.0-0"),
    (">1.x", ">=2.0.0"),
    ("<=1.x", "<2.0.0-0"),
    ("<=1.2", "<1.3.0-0"),
    (">1.2", ">=1.3.0"),
    ("<1.2", "<1.2.0-0"),
    (">=1.2", ">=1.2.0"),
    ("<1.2.x", "<1.2.0-0"),
    (">=1.2.x", ">=1.2.0"),
    (">1.2.3-beta.1", ">1.2.3-beta.1"),
    ("<=1.2.3-beta", "<=1.2.3-beta"),
    (">=01", None),
    ("<0.0.0", "<0.0.0"),
    ("<0.0.0-0", "<0.0.0-0"),
    ("<1.0.0-0", "<1.0.0-0"),
    (">=0.0.0", "*"),
    (">=0.0.0-0", ">=0.0.0-0"),
    (">= 0.0.0", "*"),
    (">=1.2.3 <2", ">=1.2.3 <2.0.0-0"),
    (">= 1.2.3 < 2", ">=1.2.3 <2.0.0-0"),
    (">=1.2.3  <2", ">=1.2.3 <2.0.0-0"),
    ("\t>=1\n", ">=1.0.0"),
    (">= 1", ">=1.0.0"),
    ("> = 1", None),
    (">=  1", ">=1.0.0"),
    ("< 1 > 2", "<1.0.0-0 >=3.0.0"),
    ("> =1.2.3", ">=1.2.3"),
    ("< = 1", None),
    (">=1.2.3<2", None),
    (">=1.2.3,<2", None),
    ("1.2.3 , 2", None),
    ("1.2.3 >=1.2.3", "1.2.3 >=1.2.3"),
    (">=1 <=1", ">=1.0.0 <2.0.0-0"),
    (">=1 <1", ">=1.0.0 <1.0.0-0"),
    ("!1", None),
    ("!=1", None),
    ("1 && 2", None),
    ("1 - 2", ">=1.0.0 <3.0.0-0"),
    ("1-2", None),
    ("1 -2", None),
    ("1.2.3 -2", None),
    ("1.2.3- 2", None),
    ("1.2.3 -- 2", None),
    ("- 1", None),
    ("1 -", None),
    ("1.2.3 - 2.3.4", ">=1.2.3 <=2.3.4"),
    ("1.2 - 2.3", ">=1.2.0 <2.4.0-0"),
    ("1.2.3 - 2.3", ">=1.2.3 <2.4.0-0"),
    ("1.2.3 - 2", ">=1.2.3 <3.0.0-0"),
    ("* - 1", "<2.0.0-0"),
    ("1 - *", ">=1.0.0"),
    ("x - x", "*"),
    ("1.2.3-beta - 2.0.0-rc.1", ">=1.2.3-beta <=2.0.0-rc.1"),
    ("1.2.3-beta.1 - 1.2.3-beta.2", ">=1.2.3-beta.1 <=1.2.3-beta.2"),
    ("v1.2.3 - v2.3.4", ">=1.2.3 <=2.3.4"),
    ("=1.2.3 - 2", None),
    ("1.2.3 - 01", None),
    ("2.x - 1", ">=2.0.0 <2.0.0-0"),
    ("1.2.3 - latest", None),
    ("0.0.0 - 0.0.0", "<=0.0.0"),
    ("1.2.3 ~ 2", "1.2.3 >=2.0.0 <3.0.0-0"),
    ("1.2.3 - 2.3.4 - 5", None),
    ("1 || 2", ">=1.0.0 <2.0.0-0||>=2.0.0 <3.0.0-0"),
    ("1||2", ">=1.0.0 <2.0.0-0||>=2.0.0 <3.0.0-0"),
    ("1 | 2", None),
    ("1 ||| 2", None),
    ("|| 1", "*"),
    ("1 ||", "*"),
    ("||", "*"),
    ("* || 1", "*"),
    ("1 || *", "*"),
    (">1 <1.5 || >=2 <3", ">=2.0.0 <1.5.0-0||>=2.0.0 <3.0.0-0"),
    ("~1.2.3 || ^2", ">=1.2.3 <1.3.0-0||>=2.0.0 <3.0.0-0"),
    ("latest || 1", None),
    ("1 latest", None),
    ("1.0.0 || <0.0.0-0", "1.0.0"),
    ("<0.0.0-0 || <0.0.0-0", "<0.0.0-0"),
    ("* || >=1.0.0-beta", "*"),
    ("a||1", None),
    ("1.2.3+build", "1.2.3"),
    ("+build", "*"),
    ("1.2.3-beta+b", "1.2.3-beta"),
    ("1.2.3+build.1 - 2.0.0+x", ">=1.2.3 <=2.0.0"),
    ("^1.2.3+build", ">=1.2.3 <2.0.0-0"),
    ("~1.2.3+build", ">=1.2.3 <1.3.0-0"),
    ("=1.2.3+build.5", "1.2.3"),
    ("<1.2.3+build", "<1.2.3"),
    ("1.2.3+build+build2", "1.2.3"),
    ("1.2.3+", None),
    ("1.2.3+.", None),
    (">=1.2.3+build <2+build", ">=1.2.3 <2.0.0-0"),
    ("latest+1", None),
    ("1.2.3 +build", "1.2.3"),
    ("1.2.3-", None),
    ("1.2.3-.", None),
    ("1.2.3-beta..1", None),
    ("1.2.3-01", None),
    ("1.2.3-0a", "1.2.3-0a"),
    ("1.2.3-a-b", "1.2.3-a-b"),
    ("1.2.3-0", "1.2.3-0"),
    ("1.2.3beta", None),
    (">=1.2.3beta", None),
    ("1.0.0-next", "1.0.0-next"),
    ("v1.0.0-rc.1", "1.0.0-rc.1"),
    ("1.0.0-rc.1+b", "1.0.0-rc.1"),
    ("\xa01", ">=1.0.0 <2.0.0-0"),
    ("1\xa0||\xa02", ">=1.0.0 <2.0.0-0||>=2.0.0 <3.0.0-0"),
    ("\u3000^1", ">=1.0.0 <2.0.0-0"),
    ("１", None),
    ("1.2.3\n", "1.2.3"),
    ("1\n2", ">=1.0.0 <2.0.0-0 >=2.0.0 <3.0.0-0"),
    ("٣", None),
    ("1 .2", None),
    ("1. 2", None),
    ("1.", None),
    ("1..2", None),
    (".1", None),
    ("1.2.", None),
    ("v1.", None),
    ("x.", None),
    ("1.2.3.", None),
    ("-1", None),
    ("1.-2", None),
    ("1.2.-3", None),
]

# Generated once with node-semver 7.8.6: semver.satisfies(version, range).
SATISFIES_CASES: list[tuple[str, str, bool]] = [
    ("1.2.3", "1.2.3", True),
    ("1.2.3", "1.x", True),
    ("1.2.3", "*", True),
    ("1.2.3", "", True),
    ("1.2.3", "latest", False),
    ("1.2.3", "^1.2", True),
    ("1.3.0", "~1.2", False),
    ("1.2.9", "~1.2", True),
    ("2.0.0", "^1.2.3", False),
    ("1.9.9", "<2", True),
    ("0.2.9", "^0.2.3", True),
    ("0.3.0", "^0.2.3", False),
    ("0.0.4", "^0.0.3", False),
    ("0.0.3", "^0.0.3", True),
    ("1.2.3-beta", "*", False),
    ("1.2.3-beta", "", False),
    ("1.2.3-beta", "1.x", False),
    ("1.2.3-beta.2", "^1.2.3-beta.1", True),
    ("1.2.3-beta.0", "^1.2.3-beta.1", False),
    ("1.2.4-beta", "^1.2.3-beta.1", False),
    ("1.2.3", "^1.2.3-beta.1", True),
    ("1.0.0-rc.1", ">=1.0.0-beta <1.0.0", True),
    ("2.0.0-0", "<2.0.0", False),
    ("2.0.0-0", "<2.0.0-1", True),
    ("1.0.0-beta", ">=1.0.0-alpha <1.0.0 || *", False),
    ("1.0.0-beta", "* || >=1.0.0-alpha", False),
    ("1.2.3-beta", "1.2.3-beta", True),
    ("1.2.3-beta", "=1.2.3-beta", True),
    ("1.2.3-beta", ">1.2.3-alpha", True),
    ("1.2.3-beta.10", "<=1.2.3-beta.9", False),
    ("1.2.3-beta.10", "1.2.3-beta.1 - 1.2.3-beta.11", True),
    ("1.2.3-alpha.1", "1.2.3-alpha - 1.2.3", True),
    ("1.2.3-alpha.1", "~1.2.3-alpha", True),
    ("1.2.3", "1.2.3 - 2.3.4", True),
    ("2.3.4", "1.2.3 - 2.3.4", True),
    ("2.3.5", "1.2.3 - 2.3.4", False),
    ("2.3.9", "1.2.3 - 2.3", True),
    ("2.4.0", "1.2.3 - 2.3", False),
    ("1.2.3", "1.2 - 2", True),
    ("2.9.9", "1.2 - 2", True),
    ("3.0.0", "1.2 - 2", False),
    ("1.2.2", "1.2.3 - 2", False),
    ("v1.2.3", "1.2.3", True),
    (" 1.2.3 ", "1", True),
    ("=1.2.3", "1.2.3", False),
    ("1.2.3+build", "1.2.3", True),
    ("1.2.3", "1.2.3+other", True),
    ("1.2", "*", False),
    ("", "*", False),
    ("01.2.3", "*", False),
    ("latest", "*", False),
    ("1.2.3", "1.2.3 || latest", False),
    ("0.0.0", "<0.0.0-0", False),
    ("0.0.0-0", ">=0.0.0", False),
    ("0.0.0", "*", True),
    ("0.0.0", ">=0.0.0", True),
    ("3.0.0", ">1 <1.5 || >=2 <3", False),
    ("1.4.9", ">1 <1.5 || >=2 <3", False),
    ("2.5.0", ">1 <1.5 || >=2 <3", True),
    ("1.0.0", ">1", False),
    ("2.0.0", ">1", True),
    ("1.3.0", ">1.2", True),
    ("1.2.9", ">1.2", False),
    ("1.2.9", "<=1.2", True),
    ("1.3.0", "<=1.2", False),
    ("2.0.0-0", "<=1.x", False),
    ("1.9.9", "<=1.x", True),
    ("1.2.3", "=1.2.3", True),
    ("1.2.4", "!=1.2.3", False),
    ("1.2.3", ">= 1.2.3", True),
    ("1.2.3", "~> 1.2", True),
    ("1.2.3", "^ 1", True),
    ("1.2.3", "1 - 1", True),
    ("1.2.3", "x.x.x", True),
    ("1.2.3", "1.2.*", True),
    ("1.3.3", "1.2.*", False),
    ("1.2.3", ">=v1.2.3", True),
    ("1.0.0", "^0", False),
    ("0.9.0", "^0", True),
    ("0.9.0", "~0", True),
    ("1.0.0", "~0", False),
    ("9007199254740991.0.0", "*", True),
    ("9007199254740992.0.0", "*", False),
]

# Generated once with node-semver 7.8.6: semver.clean(text).
CLEAN_CASES: list[tuple[str, str | None]] = [
    ("1.2.3", "1.2.3"),
    (" 1.2.3 ", "1.2.3"),
    ("v1.2.3", "1.2.3"),
    ("=v1.2.3", "1.2.3"),
    ("=v=v 1.2.3+b", "1.2.3"),
    ("vv1.2.3", "1.2.3"),
    ("v=1.2.3", "1.2.3"),
    ("==1.2.3", "1.2.3"),
    ("1.2.3-beta.1+b.2", "1.2.3-beta.1"),
    ("  =1.2.3  ", "1.2.3"),
    ("1.2", None),
    ("1.2.3.4", None),
    ("01.2.3", None),
    ("1.2.3-01", None),
    ("~1.2.3", None),
    (">1.2.3", None),
    ("V1.2.3", None),
    ("v 1.2.3", "1.2.3"),
    ("= 1.2.3", "1.2.3"),
    ("1.2.3 ", "1.2.3"),
    ("\t1.2.3\n", "1.2.3"),
    ("\xa01.2.3\xa0", "1.2.3"),
    ("1.2.3beta", None),
    ("1.2.3-beta", "1.2.3-beta"),
    ("", None),
    ("v", None),
    ("latest", None),
    ("9007199254740991.0.0", "9007199254740991.0.0"),
    ("9007199254740992.0.0", None),
    ("1.2.3-9007199254740992", "1.2.3-9007199254740992"),
    ("1.2.3+", None),
    (" v1.2.3-rc.0+build.1", "1.2.3-rc.0"),
    ("x.2.3", None),
    ("1.2.x", None),
]

# Generated once with node-semver 7.8.6: semver.parse(text) -> (version, build) or None.
PARSE_CASES: list[tuple[str, tuple[str, tuple[str, ...]] | None]] = [
    ("1.2.3", ("1.2.3", ())),
    ("v1.2.3", ("1.2.3", ())),
    (" 1.2.3", ("1.2.3", ())),
    ("1.2.3-beta.1+build.2", ("1.2.3-beta.1", ("build", "2"))),
    ("1.2.3+build", ("1.2.3", ("build",))),
    ("1.2.3-0", ("1.2.3-0", ())),
    ("1.2.3-0a", ("1.2.3-0a", ())),
    ("1.2.3-a.0.b", ("1.2.3-a.0.b", ())),
    ("1.2.3--", ("1.2.3--", ())),
    ("1.2.3-x-y-z.--", ("1.2.3-x-y-z.--", ())),
    ("1.0.0-alpha+001", ("1.0.0-alpha", ("001",))),
    ("1.0.0+20130313144700", ("1.0.0", ("20130313144700",))),
    ("1.0.0-beta+exp.sha.5114f85", ("1.0.0-beta", ("exp", "sha", "5114f85"))),
    ("1.0.0+21AF26D3----117B344092BD", ("1.0.0", ("21AF26D3----117B344092BD",))),
    ("0.0.0", ("0.0.0", ())),
    ("=1.2.3", None),
    ("vv1.2.3", None),
    ("V1.2.3", None),
    ("1.2", None),
    ("1", None),
    ("1.2.3.4", None),
    ("01.2.3", None),
    ("1.02.3", None),
    ("1.2.03", None),
    ("1.2.3-01", None),
    ("1.2.3-", None),
    ("1.2.3-beta..1", None),
    ("1.2.3+", None),
    ("1.2.3+a..b", None),
    ("1.2.3-beta_1", None),
    ("1.2.3 -beta", None),
    ("1.2.3beta", None),
    ("-1.2.3", None),
    ("1.2.3\n", ("1.2.3", ())),
    (
        "9007199254740991.9007199254740991.9007199254740991",
        ("9007199254740991.9007199254740991.9007199254740991", ()),
    ),
    ("9007199254740992.0.0", None),
    ("0.9007199254740992.0", None),
    ("0.0.9007199254740992", None),
    ("1.2.3-99999999999999999999", ("1.2.3-99999999999999999999", ())),
    ("１.2.3", None),
    ("1.٢.3", None),
    ("", None),
]

# Sorted once with node-semver 7.8.6: versions.sort(semver.compare).
SORTED_VERSIONS = [
    "0.0.0-0",
    "0.0.0",
    "0.0.1",
    "0.1.0",
    "1.0.0-0",
    "1.0.0-1",
    "1.0.0-9",
    "1.0.0-10",
    "1.0.0--",
    "1.0.0-1a",
    "1.0.0-A",
    "1.0.0-Z",
    "1.0.0-a",
    "1.0.0-alpha",
    "1.0.0-alpha.0",
    "1.0.0-alpha.1",
    "1.0.0-alpha.1.1",
    "1.0.0-alpha.-",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1-0",
    "2.0.0",
    "2.9.0",
    "2.10.0",
    "10.0.0",
    "9007199254740991.0.0",
]


@pytest.mark.parametrize(("text", "expected"), VALID_RANGE_CASES)
def test_valid_range_matches_node_semver(text: str, expected: str | None) -> None:
    assert valid_range(text) == expected
    assert is_valid_range(text) is (expected is not None)


@pytest.mark.parametrize(
    ("tag", "is_range"),
    [
        ("latest", False),
        ("next", False),
        ("beta", False),
        ("canary", False),
        ("foo1", False),
        ("v1", True),
        ("1.x", True),
        ("x", True),
        ("", True),
        ("*", True),
        ("1.0.0", True),
    ],
)
def test_dist_tag_words(tag: str, is_range: bool) -> None:
    assert is_valid_range(tag) is is_range


@pytest.mark.parametrize(("version", "range_", "expected"), SATISFIES_CASES)
def test_satisfies_matches_node_semver(version: str, range_: str, expected: bool) -> None:
    assert satisfies(version, range_) is expected


def test_satisfies_accepts_a_parsed_version() -> None:
    assert satisfies(parse_version("1.2.3-beta.2"), "^1.2.3-beta.1")
    assert not satisfies(parse_version("1.2.4-beta"), "^1.2.3-beta.1")


@pytest.mark.parametrize(("text", "expected"), CLEAN_CASES)
def test_clean_matches_node_semver(text: str, expected: str | None) -> None:
    assert clean(text) == expected


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse_version_matches_node_semver(
    text: str, expected: tuple[str, tuple[str, ...]] | None
) -> None:
    if expected is None:
        with pytest.raises(InvalidVersion):
            parse_version(text)
    else:
        version = parse_version(text)
        assert (str(version), version.build) == expected


def test_parse_version_fields() -> None:
    version = parse_version("1.2.3-beta.11.x-1+exp.sha.5114f85")
    assert version == Version(1, 2, 3, ("beta", 11, "x-1"), ("exp", "sha", "5114f85"))
    assert version.build == ("exp", "sha", "5114f85")
    assert str(version) == "1.2.3-beta.11.x-1"


def test_invalid_version_is_a_value_error_with_a_message() -> None:
    with pytest.raises(ValueError, match=r"Invalid Version: 1\.2"):
        parse_version("1.2")
    with pytest.raises(InvalidVersion, match="longer than 256"):
        parse_version("1.2.3-" + "a" * (MAX_LENGTH - 5))
    with pytest.raises(InvalidVersion, match="Invalid minor version"):
        parse_version(f"1.{MAX_SAFE_INTEGER + 1}.0")


def test_length_limit_counts_the_raw_text() -> None:
    longest = "1.2.3-" + "a" * (MAX_LENGTH - 6)
    assert str(parse_version(longest)) == longest
    with pytest.raises(InvalidVersion):
        parse_version(longest + " ")


def test_equality_and_hash_ignore_build() -> None:
    a, b = parse_version("1.0.0+a"), parse_version("1.0.0+b")
    assert a == b
    assert hash(a) == hash(b)
    assert not a < b
    assert a <= b
    assert len({a, b}) == 1


def test_sort_matches_node_semver() -> None:
    shuffled = sorted(SORTED_VERSIONS, key=lambda v: v[::-1])
    assert sorted(shuffled, key=parse_version) == SORTED_VERSIONS


def test_compare() -> None:
    assert compare("1.0.0-alpha", "1.0.0") == -1
    assert compare("1.0.0", "1.0.0-alpha") == 1
    assert compare("1.0.0+build", "v1.0.0") == 0
    assert compare("1.0.0-2", "1.0.0-10") == -1
    assert compare("1.0.0-10", "1.0.0-a") == -1
    with pytest.raises(InvalidVersion):
        compare("1.0.0", "latest")


def test_huge_numeric_prerelease_identifiers_compare_exactly() -> None:
    # node-semver compares these as doubles (so as equal); the port compares exact integers.
    assert parse_version("1.2.3-9007199254740993") > parse_version("1.2.3-9007199254740992")
    assert satisfies("1.2.3-9007199254740993", ">1.2.3-9007199254740992")


def test_max_version() -> None:
    assert max_version([]) is None
    assert max_version(["1.0.0", "2.0.0-beta", "1.9.9"]) == "2.0.0-beta"
    assert max_version(["1.0.0", "1.0.0-rc.1"]) == "1.0.0"
    assert max_version(["1.10.0", "1.9.0", "1.2.0"]) == "1.10.0"
    assert max_version(iter(["0.0.1"])) == "0.0.1"
    # Equal precedence: the last one wins, like Array.prototype.sort (stable) then pop().
    assert max_version(["1.0.0+a", "1.0.0+b", "0.1.0"]) == "1.0.0+b"
    with pytest.raises(InvalidVersion):
        max_version(["1.0.0", "nope"])


@pytest.mark.parametrize(
    "text",
    [
        "v" * 100_000,
        "1" * 100_000,
        "1." * 50_000,
        "> " * 50_000,
        "x " * 50_000,
        "||" * 50_000,
        "=v" * 50_000 + "1",
        "1.2.3-" + "a." * 50_000,
        "1.2.3-" + "0" * 100_000,
    ],
)
def test_long_hostile_ranges_take_linear_time(text: str) -> None:
    started = time.perf_counter()
    is_valid_range(text)
    satisfies("1.2.3", text)
    # Quadratic behaviour would take minutes on these; linear takes well under a second.
    assert time.perf_counter() - started < 10


_IDENTIFIER_CHARS = "0123456789abcXYZ-"
_numbers = st.integers(0, 20) | st.integers(0, MAX_SAFE_INTEGER)
_prerelease_ids = (
    st.integers(0, 20)
    | st.integers(0, 2**64)
    | st.text(_IDENTIFIER_CHARS, min_size=1, max_size=6).filter(lambda s: not s.isdigit())
)
_versions = st.builds(
    Version,
    _numbers,
    _numbers,
    _numbers,
    st.lists(_prerelease_ids, max_size=4).map(tuple),
    st.lists(st.text(_IDENTIFIER_CHARS, min_size=1, max_size=6), max_size=3).map(tuple),
)


def _full_text(version: Version) -> str:
    return str(version) + ("+" + ".".join(version.build) if version.build else "")


@given(_versions)
def test_round_trip(version: Version) -> None:
    parsed = parse_version(_full_text(version))
    assert parsed == version
    assert parsed.prerelease == version.prerelease
    assert parsed.build == version.build
    assert str(parse_version(str(version))) == str(version)
    assert clean(_full_text(version)) == str(version)


@given(st.lists(_versions, max_size=12))
def test_order_is_total_and_consistent_with_sort(versions: list[Version]) -> None:
    ordered = sorted(versions)
    for i, a in enumerate(ordered):
        for b in ordered[i:]:
            assert a <= b
            assert [a < b, a == b, a > b].count(True) == 1
            assert compare(str(a), str(b)) == (a > b) - (a < b)
            if a == b:
                assert hash(a) == hash(b)


@given(_versions, st.lists(st.text(_IDENTIFIER_CHARS, min_size=1, max_size=6), max_size=2))
def test_build_never_matters(version: Version, build: list[str]) -> None:
    other = replace(version, build=tuple(build))
    assert other == version
    assert hash(other) == hash(version)


@given(_versions)
def test_version_satisfies_its_own_ranges(version: Version) -> None:
    text = str(version)
    assert is_valid_range(text)
    assert satisfies(text, text)
    assert satisfies(text, f">={text}")
    assert not satisfies(text, f"<{text}")
    assert satisfies(text, "*") is (not version.prerelease)


@given(
    st.text(" \t=v0123456789.-+abx<>~^|*", max_size=24)
    | _versions.map(_full_text).map(lambda s: "=v " + s)
    | st.text()
)
def test_clean_is_idempotent(text: str) -> None:
    cleaned = clean(text)
    if cleaned is not None:
        assert clean(cleaned) == cleaned
        assert str(parse_version(cleaned)) == cleaned


@given(st.text(" \t=v0123456789.-+abxX<>~^|*", max_size=30) | st.text(max_size=30))
def test_valid_range_is_stable(text: str) -> None:
    normalized = valid_range(text)
    if normalized is not None:
        # The normalized form is itself a range that normalizes to itself.
        assert valid_range(normalized) == normalized
