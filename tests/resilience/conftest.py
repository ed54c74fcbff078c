"""The resilience tests: a real server under load, killed, starved of its dependencies, of
disk space, and held by slow clients. Helpers are in ``harness.py`` and ``services.py``."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Declared here, with the tests that use it, so that --strict-markers accepts it.
    config.addinivalue_line(
        "markers", "resilience: load, crashes, failing dependencies and slow clients"
    )
