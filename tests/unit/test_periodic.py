"""The periodic scheduler isolates failures and backs off."""

from __future__ import annotations

import threading
import time

from guestagent import log
from guestagent.periodic import Operation, PeriodicThread


class ListAppender(log.Appender):
    def __init__(self):
        super().__init__(log.VERBOSE)
        self.lines: list[str] = []

    def write(self, line: str) -> None:
        self.lines.append(line)


def test_failing_operation_does_not_stop_others_and_is_logged_once():
    calls = {"bad": 0, "good": 0}

    def bad():
        calls["bad"] += 1
        raise RuntimeError("boom")

    def good():
        calls["good"] += 1

    appender = ListAppender()
    log.add_appender("test", appender)
    stop = threading.Event()
    t = PeriodicThread("TestThread", [Operation("Bad", bad, 0.05, min_backoff=0.01), Operation("Good", good, 0.05)],
                       stop)
    t.start()
    time.sleep(0.5)
    stop.set()
    t.join(2)
    assert not t.is_alive()
    assert calls["bad"] >= 3 and calls["good"] >= 3
    errors = [line for line in appender.lines if "Error in Bad" in line]
    assert len(errors) == 1
    assert "WARNING TestThread" in errors[0] and "Will not log the same error for the next hour" in errors[0]


def test_backoff_grows_but_is_capped_by_period():
    op = Operation("X", lambda: (_ for _ in ()).throw(ValueError("x")), period=8.0, min_backoff=1.0)
    delays = []
    for _ in range(6):
        before = time.monotonic()
        op.run(before)
        delays.append(round(op.next_run - before))
    assert delays == [1, 2, 4, 8, 8, 8]
    op.func = lambda: None
    before = time.monotonic()
    op.run(before)
    assert op.failures == 0 and round(op.next_run - before) == 8
