"""The extensions summary and the initial goal state (upstream 2.15's ExtensionsSummary and
``initial_goal_state`` marker).

The summary is the sorted (name, status) of every reported extension (the extension's status when there is
one, else the handler's); it is logged when it changes. Until the first goal state has converged, the agent
polls every ``Extensions.InitialGoalStatePeriod``; then it writes ``<lib>/initial_goal_state`` (the summary)
and switches to ``Extensions.GoalStatePeriod``. The marker is kept across restarts (deprovision removes it).
"""

from __future__ import annotations

import os
from typing import Optional

from guestagent import events, log
from guestagent.osutil import system

MARKER = "initial_goal_state"
TERMINAL = ("success", "error", "Ready", "NotReady")


def summarize(status: dict) -> list:
    out = []
    for handler in status.get("aggregateStatus", {}).get("handlerAggregateStatus", []):
        settings = (handler.get("runtimeSettingsStatus") or {}).get("settingsStatus", {}).get("status")
        if settings:
            out.append((settings.get("name"), settings.get("status")))
        else:
            out.append((handler.get("handlerName"), handler.get("status")))
    return sorted(out, key=lambda s: str(s[0]))


def _text(summary: list) -> str:
    """As Python prints a list of tuples (upstream writes ``str(summary)``)."""
    return str(summary)


class GoalStateProgress:
    """Tracks the summary and the initial goal state; ``period`` is the goal-state period to use now."""

    def __init__(self, lib_dir: str, extensions_enabled: bool, period: float, initial_period: float):
        self.lib_dir = lib_dir
        self.marker = os.path.join(lib_dir, MARKER)
        self.initial = not system.exists(self.marker)
        self.extensions_enabled = extensions_enabled
        self.steady_period = period
        self.period = initial_period if (self.initial and extensions_enabled) else period
        self.summary: list = []
        self.converged = True

    def on_new_goal_state(self) -> None:
        """Before a new extensions goal state is processed."""
        if not self.converged:
            message = ("A new goal state was received, but not all the extensions in the previous goal state "
                       f"have completed: {_text(self.summary)}")
            log.warn("{0}", message)
            events.add_event(events.WALAEventOperation.GoalState, is_success=False, message=message,
                             log_event=False, lib_dir=self.lib_dir)
            self._initial_completed()
        self.summary, self.converged = [], True

    def on_status(self, status: Optional[dict]) -> None:
        """After each status report."""
        if status is None:
            return
        summary = summarize(status)
        if summary == self.summary:
            return
        self.summary = summary
        self.converged = all(s in TERMINAL for _, s in summary)
        message = f"Extension status: {_text(summary)}"
        log.info("{0}", message)
        events.add_event(events.WALAEventOperation.GoalState, message=message, lib_dir=self.lib_dir)
        if self.converged:
            message = f"All extensions in the goal state have reached a terminal state: {_text(summary)}"
            log.info("{0}", message)
            events.add_event(events.WALAEventOperation.GoalState, message=message, lib_dir=self.lib_dir)
            self._initial_completed()

    def _initial_completed(self) -> None:
        if not self.initial:
            return
        try:
            system.write_file(self.marker, _text(self.summary), fsync=False)
        except OSError as e:
            log.warn("Could not write {0}: {1}", self.marker, e)
        if self.extensions_enabled and self.period != self.steady_period:
            self.period = self.steady_period
            log.info("Initial goal state completed, switched the goal state period to {0}", int(self.period))
        self.initial = False
