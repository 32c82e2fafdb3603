"""When did an endpoint last answer? Lets the monitor skip probes the regular traffic already proves.

The HostGAPlugin /health probe is redundant when HGAP answered a /status or /vmSettings request a
moment ago. :func:`install` wraps one HttpClient instance's ``request`` so every answer is recorded
(by port); the protocol client may instead call :func:`record` itself.
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
    """Record every response of this HttpClient instance (idempotent)."""
    if getattr(http, "_activity_installed", False):
        return
    original = http.request

    def request(method, url, *args, **kw):
        resp = original(method, url, *args, **kw)
        try:
            record(url, int(resp.status))
        except Exception:  # never let bookkeeping break a request
            pass
        return resp

    http.request = request
    http._activity_installed = True


def reset() -> None:
    with _lock:
        _last.clear()
