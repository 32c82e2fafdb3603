"""When did an endpoint last answer? Lets the monitor skip probes the regular traffic already proves.

The HostGAPlugin /health probe is redundant when HGAP answered a /status or /vmSettings request a
moment ago. ``guestagent.protocol.http.HttpClient.request`` calls :func:`record` for every answer it
receives (by port), so every client of the process feeds this table without any wrapping.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Optional
from urllib.parse import urlsplit

_last: dict[int, float] = {}
_lock = threading.Lock()


def record(url: str, status: int, now: Optional[float] = None) -> None:
    """An answer below 500 from ``url``'s port means the service is up."""
    if status >= 500:
        return
    port = urlsplit(url).port or 80
    with _lock:
        _last[port] = time.monotonic() if now is None else now


def last_answer(port: int) -> Optional[float]:
    with _lock:
        return _last.get(int(port))


def answered_within(port: int, seconds: float, now: Optional[float] = None) -> bool:
    last = last_answer(port)
    now = time.monotonic() if now is None else now
    return last is not None and now - last < seconds


def install(http: Any) -> None:
    """Kept for callers written before HttpClient recorded answers itself: nothing to do any more."""


def reset() -> None:
    with _lock:
        _last.clear()
