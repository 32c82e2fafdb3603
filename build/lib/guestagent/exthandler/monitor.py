"""MonitorHandler thread: heartbeats and health signals (spec 06 §6.2)."""

from __future__ import annotations

from guestagent import log
from guestagent.periodic import Operation

RESET_LOG_PERIOD = 12 * 3600.0


def _reset_periodic_logs() -> None:
    log.reset_periodic()


def operations(ctx) -> list[Operation]:
    return [Operation("ResetPeriodicLogMessages", _reset_periodic_logs, RESET_LOG_PERIOD,
                      initial_delay=RESET_LOG_PERIOD)]
