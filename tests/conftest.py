"""Shared test fixtures.

Upstream's sample documents live beside the repository in ``../shared/fixtures/walinuxagent``
(present in CI, absent in a user's fresh clone): tests that read them skip with the reason.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_FIXTURES = REPO.parent / "shared" / "fixtures" / "walinuxagent"
TESTDATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def upstream() -> Path:
    """Path of upstream's samples; skips the test (with the reason) when the folder is absent."""
    if not UPSTREAM_FIXTURES.is_dir():
        pytest.skip(f"upstream samples not present at {UPSTREAM_FIXTURES} (only CI and developers have ../shared)")
    return UPSTREAM_FIXTURES


@pytest.fixture
def tmp_root(tmp_path: Path):
    """Point osutil's root at a temporary directory for file-effect tests."""
    from guestagent.osutil import system

    old = system.get_root()
    system.set_root(tmp_path)
    try:
        yield tmp_path
    finally:
        system.set_root(old)


class LogLines:
    """An appender keeping every line the agent logs (all levels) for a test to search."""

    def __init__(self):
        from guestagent import log

        class _Appender(log.Appender):
            def write(inner, line: str) -> None:
                self.lines.append(line)

        self.lines: list[str] = []
        self.appender = _Appender(log.VERBOSE)

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


@pytest.fixture
def log_lines() -> LogLines:
    """Every log line written during the test (the appender is dropped by the log reset after it)."""
    from guestagent import log

    captured = LogLines()
    log.add_appender("test-lines", captured.appender)
    return captured


@pytest.fixture(autouse=True)
def _reset_log():
    from guestagent import log

    yield
    log.reset()
    log.clear_secrets()


def pytest_collection_modifyitems(config, items):
    is_root = os.geteuid() == 0
    for item in items:
        if item.get_closest_marker("sandbox") and not is_root:
            item.add_marker(pytest.mark.skip(reason="sandbox tests need root (namespaces, loop devices)"))


def cert_lifetime(cert) -> datetime.timedelta:
    """notAfter - notBefore on every cryptography the project supports (the ``*_utc`` properties
    arrived in 42; Debian 12 ships 38, where the naive ones are the only ones)."""
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after - cert.not_valid_before
