"""Fault injection: per request kind, a queue of misbehaviours the fabric applies to the next requests.

A fault can change the status (with an optional raw body), delay the answer, reset the connection
before answering, or damage the real body ("truncated": the declared length is longer than what is
sent; "malformed": a cut-off body with a consistent length), or make it hostile ("huge": 200 MB
declared and sent; "endless": a chunked body that never ends; "trickle": the real body one byte a
second). ``count`` faults fire that many times
(``count <= 0``: forever). Faults of one kind fire in the order they were added.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

KINDS = (
    "versions", "goalstate", "hostingenv", "sharedconfig", "certificates", "extensionsconfig", "remoteaccess",
    "health", "roleproperties", "telemetrydata", "healthservice", "hgap_versions", "vmsettings",
    "extension_artifact", "hgap_status", "hgap_health", "vmagentlog", "manifest", "package", "artifacts_profile",
    "status_blob", "imds", "fullconfig",
)
BODY_MODES = ("truncated", "malformed", "huge", "endless", "trickle")
#: Body modes the HTTP writer applies while sending (the others change the body before).
SEND_MODES = ("truncated", "huge", "endless", "trickle")


@dataclass
class Fault:
    kind: str
    status: Optional[int] = None
    delay: Optional[float] = None
    reset: bool = False
    body: Optional[str] = None
    count: int = 1
    fired: int = 0

    @property
    def exhausted(self) -> bool:
        return self.count > 0 and self.fired >= self.count

    def to_dict(self) -> dict:
        return asdict(self)


class FaultSet:
    """Thread-safe registry consulted once per request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: Dict[str, List[Fault]] = {}
        self.history: List[dict] = []

    def add(self, kind: str, status: Optional[int] = None, delay: Optional[float] = None, reset: bool = False,
            body: Optional[str] = None, count: int = 1) -> Fault:
        if kind not in KINDS and kind != "*":
            raise ValueError(f"unknown request kind {kind!r}; known kinds: {', '.join(KINDS)}")
        if status is not None and not 100 <= int(status) <= 599:
            raise ValueError(f"fault status must be an HTTP status code, got {status!r}")
        if delay is not None and float(delay) < 0:
            raise ValueError("fault delay must be >= 0")
        if status is None and delay is None and not reset and body is None:
            raise ValueError("a fault needs at least one of status, delay, reset, body")
        fault = Fault(kind, None if status is None else int(status), None if delay is None else float(delay),
                      bool(reset), body, int(count))
        with self._lock:
            self._faults.setdefault(kind, []).append(fault)
        return fault

    def take(self, kind: str) -> Optional[Fault]:
        """The fault to apply to this request (marked as fired), or None."""
        with self._lock:
            for key in (kind, "*"):
                queue = self._faults.get(key) or []
                while queue and queue[0].exhausted:
                    queue.pop(0)
                if queue:
                    fault = queue[0]
                    fault.fired += 1
                    self.history.append({"kind": kind, **fault.to_dict()})
                    if fault.exhausted:
                        queue.pop(0)
                    return fault
        return None

    def clear(self, kind: Optional[str] = None) -> None:
        with self._lock:
            if kind is None:
                self._faults.clear()
            else:
                self._faults.pop(kind, None)

    def pending(self) -> List[Fault]:
        with self._lock:
            return [f for queue in self._faults.values() for f in queue if not f.exhausted]
