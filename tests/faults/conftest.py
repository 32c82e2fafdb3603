"""The fault-matrix tier (design §7 "faults"): the real daemon and ext-handler child in the namespace
sandbox against a hostile or failing fabric, one case per fault. Needs root (CI is root); every item is
marked ``faults`` and ``sandbox``.

Each case records a row — the fault and what the agent did — and the session ends by printing the
matrix (fault → outcome) and writing it to ``$GUESTAGENT_FAULT_MATRIX`` (default
``$TMPDIR/guestagent-fault-matrix.txt``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROWS_KEY = pytest.StashKey[dict]()


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.sandbox)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="the fault tier needs root (namespaces, loop devices)"))


def pytest_configure(config):
    config.stash[ROWS_KEY] = {}


class Row:
    """What one case found; ``detail`` is the agent's own words (its error line) or the measured figure."""

    def __init__(self, fault: str):
        self.fault = fault
        self.detail = ""
        self.outcome = "not run"

    def note(self, text: str) -> None:
        self.detail = (self.detail + "; " if self.detail else "") + " ".join(text.split())[:160]


@pytest.fixture
def row(request) -> Row:
    """The matrix row of this case: ``row.note(...)`` what the agent did."""
    marker = request.node.get_closest_marker("fault")
    r = Row(marker.args[0] if marker else request.node.name)
    request.config.stash[ROWS_KEY][request.node.nodeid] = r
    return r


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    r = item.config.stash[ROWS_KEY].get(item.nodeid)
    if r is None or (report.when != "call" and not (report.failed or report.skipped)):
        return
    if report.skipped and hasattr(report, "wasxfail"):
        r.outcome = "xfail (expected: " + report.wasxfail + ")"
    elif report.skipped:
        r.outcome = "skipped"
    elif report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)  # absent when the report is a plain string
        r.outcome = f"FAILED ({report.when})"
        r.note(crash.message.splitlines()[0] if crash is not None else str(report.longrepr).splitlines()[-1])
    elif hasattr(report, "wasxfail"):
        r.outcome = "XPASS"
    else:
        r.outcome = "held"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = list(config.stash[ROWS_KEY].values())
    if not rows:
        return
    width = max(len(r.fault) for r in rows)
    lines = [f"{'fault'.ljust(width)}  outcome / what the agent did"]
    for r in rows:
        lines.append(f"{r.fault.ljust(width)}  {r.outcome}: {r.detail}")
    text = "\n".join(lines) + "\n"
    target = Path(os.environ.get("GUESTAGENT_FAULT_MATRIX") or Path(tempfile.gettempdir()) / "guestagent-fault-matrix.txt")
    try:
        target.write_text(text, encoding="utf-8")
        where = f" (also in {target})"
    except OSError as e:
        where = f" (could not write {target}: {e})"
    terminalreporter.write_sep("=", f"fault matrix{where}")
    terminalreporter.write(text)
