"""Time stamps in the form npm uses: ISO 8601, UTC, milliseconds, ``Z``."""

from __future__ import annotations

import datetime as dt


def now_iso() -> str:
    """The current time as npm writes it: ``2024-01-02T03:04:05.678Z``."""
    now = dt.datetime.now(dt.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def http_date(iso: str) -> str:
    """An npm time stamp as an HTTP date (``Last-Modified``)."""
    parsed = dt.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    return parsed.strftime("%a, %d %b %Y %H:%M:%S GMT")
