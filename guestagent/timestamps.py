"""The agent's timestamp formats, written once: the fabric's documents, upstream's files (fast_track.json,
status, events) and the log all use one of the two UTC formats here."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Optional, Union

#: The smallest timestamp: "no timestamp" in the extensions goal state and fast_track.json (03 §1).
MIN_TIMESTAMP = "0001-01-01T00:00:00.000000Z"


def format_timestamp(value: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` with a 4-digit year (strftime's %Y drops the leading zeros of year 1)."""
    return f"{value.year:04d}-{value:%m-%dT%H:%M:%S.%f}Z"


def utc_precise(now: Optional[float] = None) -> str:
    """Now (or ``now``, epoch seconds) as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``: log lines, events."""
    return format_timestamp(datetime.fromtimestamp(time.time() if now is None else now, tz=timezone.utc))


def utc_seconds(now: Optional[float] = None) -> str:
    """Now (or ``now``) as ``YYYY-MM-DDTHH:MM:SSZ``: status timestamps, x-ms-date, log-collector lines."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))


def ticks_to_timestamp(ticks: Union[int, str, None]) -> str:
    """.NET ticks → :func:`format_timestamp`, through a float number of seconds as upstream does, so that
    timestamps upstream wrote (fast_track.json) compare equal; anything unreadable is MIN_TIMESTAMP."""
    try:
        value = datetime.min + timedelta(seconds=float(int(ticks or 0)) / 10 ** 7)
    except (TypeError, ValueError, OverflowError):
        return MIN_TIMESTAMP
    return format_timestamp(value)
