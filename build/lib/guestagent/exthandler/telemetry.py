"""SendTelemetryHandler and TelemetryEventsCollector threads (spec 06 §9)."""

from __future__ import annotations

from guestagent.periodic import Operation


def collect_operations(ctx) -> list[Operation]:
    return []


def send_operations(ctx) -> list[Operation]:
    return []
