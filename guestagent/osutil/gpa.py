"""The Guest Proxy Agent (GPA, Azure's Metadata Security Protocol) as this VM shows it: its status file
and the prerequisites its troubleshooting guide names. Read-only; the agent never manages the GPA.

Facts (the GPA troubleshooting guide): the service is ``azure-proxy-agent.service``; it writes its overall
status to ``/var/log/azure-proxy-agent/status.json``: healthy is ``proxyAgentStatus`` "SUCCESS" and
``keyLatchStatus``, ``ebpfProgramStatus``, ``proxyListenerStatus`` "RUNNING" (each a ``status`` and a
``message``). It needs Linux ≥ 5.15 (eBPF) and cgroup v2 listed in /proc/filesystems and mounted (it
hooks ``cgroup/connect4``). The file's layout (Azure/GuestProxyAgent's source): ``{"timestamp",
"proxyAgentStatus": {"version", "status": "SUCCESS"|"ERROR", "monitorStatus", "keyLatchStatus",
"ebpfProgramStatus", "proxyListenerStatus", "telemetryLoggerStatus", "proxyConnectionsCount"},
"proxyConnectionSummary", "failedAuthenticateSummary"}``, rewritten every minute. The reader also
accepts the fields at the top level (the guide shows them without their nesting).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Optional

from guestagent.osutil import system

LOG_DIR = "/var/log/azure-proxy-agent"
STATUS_FILE = f"{LOG_DIR}/status.json"
SERVICE = "azure-proxy-agent.service"
BINARY = "/usr/sbin/azure-proxy-agent"
UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
OVERALL = "proxyAgentStatus"
OVERALL_HEALTHY = "SUCCESS"
COMPONENTS = ("keyLatchStatus", "ebpfProgramStatus", "proxyListenerStatus")
COMPONENT_HEALTHY = "RUNNING"
MIN_KERNEL = (5, 15)
#: The GPA rewrites status.json every minute.
REWRITE_PERIOD = 60.0
#: Messages are the GPA's own text (verifier dumps run to kilobytes): logs and events keep this much.
MESSAGE_CHARS = 300


@dataclass(frozen=True)
class Component:
    name: str
    status: str
    message: str

    @property
    def healthy(self) -> bool:
        return self.status == COMPONENT_HEALTHY


@dataclass(frozen=True)
class GpaStatus:
    overall: str
    components: tuple[Component, ...] = field(default_factory=tuple)
    #: Set when the file exists but cannot be read as the guide describes it.
    error: str = ""

    @property
    def healthy(self) -> bool:
        return not self.error and self.overall == OVERALL_HEALTHY and all(c.healthy for c in self.components)

    def failing(self) -> list[Component]:
        return [c for c in self.components if not c.healthy]

    def summary(self) -> str:
        """One line: healthy, or what fails and the GPA's message (shortened)."""
        if self.error:
            return f"status.json unreadable: {self.error}"
        if self.healthy:
            return f"{OVERALL} {self.overall}; " + ", ".join(f"{c.name} {c.status}" for c in self.components)
        bad = "; ".join(f"{c.name} {c.status or '(missing)'}: {shorten(c.message)}" for c in self.failing())
        return f"{OVERALL} {self.overall or '(missing)'}" + (f"; {bad}" if bad else "")


def shorten(text: str, limit: int = MESSAGE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _status_of(value: object) -> tuple[str, str]:
    if isinstance(value, dict):
        return str(value.get("status") or ""), str(value.get("message") or "")
    return ("" if value is None else str(value)), ""


def _find(doc: dict, key: str) -> object:
    """``key`` at the top level or one object down (the guide shows the fields, not their nesting)."""
    if key in doc:
        return doc[key]
    for value in doc.values():
        if isinstance(value, dict) and key in value:
            return value[key]
    return None


def parse_status(text: str) -> GpaStatus:
    """status.json's text → :class:`GpaStatus` (never raises: an unreadable file is an ``error``)."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        return GpaStatus("", error=f"not JSON ({e})")
    if not isinstance(doc, dict):
        return GpaStatus("", error="not a JSON object")
    overall, _ = _status_of(_find(doc, OVERALL))
    comps = tuple(Component(name, *_status_of(_find(doc, name))) for name in COMPONENTS)
    return GpaStatus(overall, comps)


def read_status(path: str = STATUS_FILE) -> Optional[GpaStatus]:
    """None when the file is absent (the GPA is not installed, or has not written it yet)."""
    try:
        text = system.path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as e:
        return GpaStatus("", error=str(e))
    return parse_status(text)


def installed() -> bool:
    """The binary, a unit file or its log folder: any of them says the image carries the GPA."""
    units = [os.path.join(d, SERVICE) for d in UNIT_DIRS]
    return any(system.exists(p) for p in (BINARY, LOG_DIR, *units))


def kernel_release() -> str:
    return (system.read_text("/proc/sys/kernel/osrelease", default="") or os.uname().release).strip()


def kernel_version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def cgroup2_listed(proc_filesystems: str) -> bool:
    """``nodev cgroup2`` in /proc/filesystems: the kernel supports cgroup v2."""
    return any(line.split() == ["nodev", "cgroup2"] for line in proc_filesystems.splitlines())


def cgroup2_mounts(mountinfo: str) -> list[str]:
    """Mount points of cgroup2 file systems (the fstype follows the `` - `` separator)."""
    out = []
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        parts = head.split()
        if sep and tail.split()[:1] == ["cgroup2"] and len(parts) > 4:
            out.append(parts[4])
    return out
