"""Periodic work expressed once: a scheduler of named operations.

Each operation runs in isolation: an exception is logged (the same text at most once an hour, as
upstream's ``Error in <Operation>: … [NOTE: Will not log the same error for the next hour]``),
counted, and the operation is retried with exponential back-off capped at its period. A failing
operation never kills its thread or the process.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from guestagent import log

ERROR_LOG_PERIOD = 3600.0


@dataclass
class Operation:
    name: str
    func: Callable[[], None]
    period: float
    initial_delay: float = 0.0
    min_backoff: float = 1.0
    next_run: float = 0.0
    failures: int = 0
    runs: int = 0
    last_error: Optional[str] = None
    _logged: dict[str, float] = field(default_factory=dict)

    def run(self, now: float) -> None:
        self.runs += 1
        try:
            self.func()
        except Exception as e:  # isolation: one operation's failure is reported, never propagated
            self.failures += 1
            text = f"{type(e).__name__}: {e}" if not str(e).startswith("[") else str(e)
            self.last_error = text
            last = self._logged.get(text)
            if last is None or now - last >= ERROR_LOG_PERIOD:
                self._logged[text] = now
                log.warn("Error in {0}: {1} --- [NOTE: Will not log the same error for the next hour]",
                         self.name, text)
            backoff = min(self.period, self.min_backoff * (2 ** min(self.failures - 1, 16)))
            self.next_run = time.monotonic() + backoff
            return
        self.failures = 0
        self.next_run = time.monotonic() + self.period


class PeriodicThread(threading.Thread):
    """A named worker thread running its operations, sleeping until the next one is due."""

    def __init__(self, name: str, operations: list[Operation], stop_event: Optional[threading.Event] = None):
        super().__init__(name=name, daemon=True)
        self.operations = operations
        self.stop_event = stop_event or threading.Event()
        start = time.monotonic()
        for op in operations:
            op.next_run = start + op.initial_delay

    def run(self) -> None:
        while not self.stop_event.is_set():
            now = time.monotonic()
            for op in self.operations:
                if op.next_run <= now and not self.stop_event.is_set():
                    op.run(now)
            if not self.operations:
                self.stop_event.wait(3600)
                continue
            wait = min(op.next_run for op in self.operations) - time.monotonic()
            if wait > 0:
                self.stop_event.wait(wait)

    def stop(self) -> None:
        self.stop_event.set()
