"""Limits on failed sign-ins, per user name and per client address.

A sliding window: after ``limit`` failures within ``window`` seconds, further attempts for
that key are refused until the oldest failure leaves the window, so the real user is never
locked out for longer than the window. Kept per process (a deliberate trade: no write per
failed attempt); with N processes an attacker gets at most N times the limit.
"""

from __future__ import annotations

import time
from collections import deque


class FailureLimiter:
    """Counts failures per key and says how long to wait once there were too many."""

    def __init__(self, limit: int = 10, window: float = 300.0, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self._max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, *keys: str, now: float | None = None) -> int:
        """Seconds to wait before another attempt for any of these keys; 0 means go ahead."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for key in keys:
            stamps = self._failures.get(key)
            if not stamps:
                continue
            while stamps and stamps[0] <= now - self.window:
                stamps.popleft()
            if len(stamps) >= self.limit:
                wait = max(wait, stamps[0] + self.window - now)
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, *keys: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._failures) >= self._max_keys:
            self._failures.clear()
        for key in keys:
            self._failures.setdefault(key, deque(maxlen=self.limit)).append(now)

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
