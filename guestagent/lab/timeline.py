"""A readable timeline of a lab run: what the agent logged and what the fabric saw, with relative times.

The agent's log lines are matched against upstream's message texts (the clone writes the same ones),
so the timeline reads the same for the real waagent. Only milestones are printed; everything else
stays in /var/log/waagent.log and the fabric's request log.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, TextIO

#: (pattern on the message part of a waagent.log line, readable text; {0}... are the pattern's groups)
LOG_MILESTONES: list[tuple[re.Pattern, str]] = [(re.compile(p, re.I), t) for p, t in (
    (r"Azure Linux Agent Version:? ?(\S+)", "daemon started (agent {0})"),
    (r"(?:found endpoint|cached endpoint found) \[([\d.]+)\]", "endpoint found in the DHCP lease: {0}"),
    (r"WireServer endpoint ([\d.]+) found in a DHCP lease", "endpoint found in the DHCP lease cache: {0}"),
    (r"Wire server endpoint:? ?\[?([\d.]+)", "WireServer endpoint {0}"),
    (r"Protocol endpoint is ([\d.]+)", "protocol detected, WireServer at {0}"),
    (r"Protocol detection attempt (\d+) failed: (.{0,120})", "protocol detection attempt {0} failed: {1}"),
    (r"Using (waagent|cloud-init) for provisioning", "provisioning by {0}"),
    (r"PPS type: (\w+)", "pre-provisioned VM: PPS type {0}"),
    (r"Reported Ready in the pre-provisioning pool", "pool: Ready reported, reported_ready marker written"),
    (r"In the pre-provisioning pool: waiting for (.+)", "pool: waiting for {0}"),
    (r"Ready was reported in the pool before this start", "pool: restarted in the pool (Unknown): no second Ready"),
    (r"(netlink: RTM_\w+ .+)", "{0}"),
    (r"Pre-provisioning pool: (.+) after ([\d.]+) s", "pool: {0} after {1} s"),
    (r"NIC (\S+) detached; primary NIC (\S+) attached", "pool: NIC {0} detached, primary NIC {1} attached"),
    (r"Polling IMDS reprovisiondata: attempt (\d+): (.+)", "IMDS reprovisiondata attempt {0}: {1}"),
    (r"Polled IMDS reprovisiondata (\d+) time", "customer's ovf-env.xml from IMDS after {0} poll(s)"),
    (r"(Still in the pre-provisioning pool.{0,140})", "{0}"),
    (r"Provisioning is disabled", "provisioning disabled"),
    (r"Wire protocol version:? ?(\S+)", "protocol version {0}"),
    (r"Fetched a new incarnation for the WireServer goal state \[incarnation (\S+?)\]", "goal state {0} (WireServer)"),
    (r"Fetched new vmSettings \[.*?etag: ?(\S+?)[\],]", "vmSettings etag {0} (HostGAPlugin)"),
    (r"Successfully mounted (?:dvd|DVD)", "provisioning DVD mounted"),
    (r"(?:Provisioning (?:complete|succeeded)|Finished provisioning)", "provisioning complete"),
    (r"Provisioning already completed", "already provisioned"),
    (r"Report(?:ing)? (?:VM )?[Rr]eady", "Ready reported"),
    (r"Set hostname:? ?\[?([\w.-]+)", "hostname set to {0}"),
    (r"Create user account if not exists", "creating the user account"),
    (r"Execute custom data", "custom data executed"),
    (r"End of log to /dev/console", "daemon done with provisioning; starting the ext-handler"),
    (r"Agent (\S+) launched with command", "ext-handler child started ({0})"),
    (r"Azure Linux Agent \(Goal State Agent version (\S+?)\)", "ext-handler child running (agent {0})"),
    (r"Agent (\S+) exited with code (\S+)", "ext-handler child exited with code {1}"),
    (r"Goal State Period: (\d+)", "ext-handler main loop (period {0} s)"),
    (r"\[([\w.]+-[\d.]+)\] Target handler state: (\w+)", "{0}: target state {1}"),
    # the command as the manifest names it: the handler directory is cut, arguments stay ("shim.sh -enable")
    (r"\[([\w.]+-[\d.]+)\] Executing command: (?:\S*/\1/)?(.+?) with environment variables", "{0}: {1}"),
    (r"ProcessExtensionsGoalState completed \[(\S+?) ", "goal state {0} processed"),
    (r"The partition is formatted with ntfs", "resource disk: NTFS partition re-typed to 83 (Linux)"),
    (r"Resource disk (\S+) is mounted at (\S+) with (\S+)", "resource disk {0} mounted at {1} ({2})"),
    (r"Enabled (\d+)KB of swap at (\S+)", "swap file {1} ({0} KB) made and handed to swapon"),
    (r"Using (\S+) \[version", "firewall managed with {0}"),
    (r"Created firewall rules for Azure Fabric", "firewall rules for the WireServer created"),
)]
LOG_LINE = re.compile(r"^\S+ (VERBOSE|INFO|WARNING|ERROR) (\S+) (.*)$")

#: Request kinds worth a line the first time they are seen (the agent polls the rest).
FIRST_REQUEST_KINDS = {
    "versions": "asked the WireServer for protocol versions",
    "goalstate": "fetched the goal state",
    "certificates": "fetched the certificates",
    "extensionsconfig": "fetched ExtensionsConfig",
    "hgap_versions": "asked the HostGAPlugin for versions",
    "vmsettings": "fetched vmSettings",
    "manifest": "downloaded an extension manifest",
    "package": "downloaded an extension package",
    "extension_artifact": "downloaded through the HostGAPlugin",
    "imds": "queried IMDS",
    "telemetrydata": "sent telemetry",
    "roleproperties": "reported role properties",
    "vmagentlog": "uploaded the log collector's archive",
}


@dataclass
class Event:
    at: float
    source: str
    text: str


@dataclass
class Timeline:
    """Collects events and prints each one as ``+  12.34s  source  text``."""

    out: Optional[TextIO] = None
    start: float = field(default_factory=time.monotonic)
    events: list[Event] = field(default_factory=list)

    def add(self, source: str, text: str) -> Event:
        ev = Event(time.monotonic() - self.start, source, text)
        self.events.append(ev)
        out = self.out if self.out is not None else sys.stdout
        print(f"+{ev.at:8.2f}s  {source:<8} {text}", file=out, flush=True)
        return ev

    def first(self, text_prefix: str) -> Optional[Event]:
        return next((e for e in self.events if e.text.startswith(text_prefix)), None)


class FileFollower:
    """Returns the complete lines appended to a file since the last call (rotation-safe)."""

    def __init__(self, path_fn: Callable[[], Path]):
        self._path_fn = path_fn
        self._pos = 0
        self._partial = b""

    def read_lines(self) -> list[str]:
        try:
            with open(self._path_fn(), "rb") as f:
                f.seek(0, 2)
                if f.tell() < self._pos:  # truncated or rotated
                    self._pos, self._partial = 0, b""
                f.seek(self._pos)
                data = f.read(4 * 1024 * 1024)
                self._pos = f.tell()
        except OSError:
            return []
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        return [line.decode("utf-8", errors="replace") for line in lines]


def classify_log_line(line: str) -> Optional[str]:
    """A readable milestone for a waagent.log line, or None. Errors are always shown."""
    m = LOG_LINE.match(line)
    if not m:
        return None
    level, thread, message = m.groups()
    if level == "ERROR":
        return f"ERROR ({thread}): {message[:200]}"
    for pattern, text in LOG_MILESTONES:
        found = pattern.search(message)
        if found:
            return text.format(*found.groups())
    return None


def describe_health(report: dict) -> str:
    state = report.get("state", "?")
    sub = report.get("substatus")
    desc = report.get("description")
    extra = f" {sub}" if sub else ""
    extra += f" ({desc})" if desc else ""
    return f"health report: {state}{extra} [incarnation {report.get('incarnation', '?')}]"


def describe_request(req: dict, seen: set) -> Optional[str]:
    """First request of each interesting kind, and every failed request (status >= 400)."""
    kind = str(req.get("kind", "?"))
    status = req.get("status")
    if isinstance(status, int) and status >= 400 and kind not in ("vmsettings",):
        return f"{req.get('method', '?')} {kind} -> {status}"
    if kind in seen or kind not in FIRST_REQUEST_KINDS:
        return None
    seen.add(kind)
    return f"agent {FIRST_REQUEST_KINDS[kind]} ({status})"
