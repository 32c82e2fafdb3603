"""Handlers a full disk stopped (issue 13 W2): remembered with their error, reported from memory (their
HandlerStatus could not be written either) and processed again after a back-off until the goal state
changes."""

from __future__ import annotations

import time
from typing import Optional

from guestagent import log
from guestagent.errors import ExtensionError

#: The first retry after this many seconds, doubling up to RETRY_MAX.
RETRY_FIRST = 5.0
RETRY_MAX = 300.0
EVENT = "ExtensionProcessing"


class DiskFullRetry:
    """handler name → the disk-full error of its last attempt, and when the next attempt is due."""

    def __init__(self) -> None:
        self.errors: dict[str, ExtensionError] = {}
        self._at: Optional[float] = None
        self._delay = RETRY_FIRST

    def new_goal_state(self) -> None:
        """A new goal state is processed whole: nothing is waiting and the back-off starts again."""
        self.errors.clear()
        self._delay = RETRY_FIRST

    def names(self) -> set[str]:
        return set(self.errors)

    def error(self, name: str) -> Optional[ExtensionError]:
        return self.errors.get(name)

    def record(self, name: str, err: ExtensionError) -> ExtensionError:
        """``name`` failed because the disk is full: the error to report (worded so), remembered."""
        full = ExtensionError(f"The disk is full; the handler's files could not be written (nothing half-written "
                              f"is kept, it is processed again): {err.msg}", code=err.code)
        self.errors[name] = full
        return full

    def succeeded(self, name: str) -> None:
        self.errors.pop(name, None)

    def due(self) -> bool:
        """Some handlers wait and their next attempt is due."""
        return bool(self.errors) and self._at is not None and time.monotonic() >= self._at

    def schedule(self) -> None:
        """After a pass: the next attempt for those still waiting, the back-off doubled."""
        if not self.errors:
            self._at = None
            return
        log.warn("The disk is full: {0} will be processed again in {1} s", ", ".join(sorted(self.errors)),
                 int(self._delay))
        self._at = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, RETRY_MAX)
