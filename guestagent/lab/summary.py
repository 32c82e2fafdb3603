"""What a lab run did: the agent's changes to the sandbox, what the fabric heard, the last VM status.

Reads the uploaded status JSON (spec 04 §12) with its own small accessors: the lab checks the agent,
so it does not reuse the agent's status models.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

#: Files the lab itself puts into the sandbox (not the agent's doing).
LAB_FILES = ("/etc/waagent.conf", "/var/lib/dhcp", "/var/lib/guestagent-lab")


@dataclass
class ExtensionStatus:
    handler: str
    version: str
    handler_status: str
    name: Optional[str] = None
    status: Optional[str] = None         # success | error | transitioning | warning
    operation: Optional[str] = None
    code: Any = None
    sequence_number: Any = None
    message: str = ""


@dataclass
class VmStatus:
    agent_version: Optional[str] = None
    agent_status: Optional[str] = None
    agent_message: str = ""
    extensions: list[ExtensionStatus] = field(default_factory=list)
    goal_state: Optional[str] = None     # vmArtifactsAggregateStatus inSvdSeqNo
    goal_state_status: Optional[str] = None
    computer_name: Optional[str] = None


def parse_time(text: str) -> Optional[float]:
    """The fabric's record time (``2026-01-02T03:04:05.123456Z``) as epoch seconds; None if unreadable."""
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping):
            return None
        d = d.get(k)
    return d


def parse_status(blob: Any) -> VmStatus:
    """Tolerant reader of the aggregate status (missing parts stay None)."""
    if isinstance(blob, (str, bytes)):
        try:
            blob = json.loads(blob)
        except ValueError:
            return VmStatus()
    agg = _get(blob, "aggregateStatus") or {}
    ga = _get(agg, "guestAgentStatus") or {}
    st = VmStatus(agent_version=_get(ga, "version"), agent_status=_get(ga, "status"),
                  agent_message=_get(ga, "formattedMessage", "message") or "",
                  goal_state=_get(agg, "vmArtifactsAggregateStatus", "goalStateAggregateStatus", "inSvdSeqNo"),
                  goal_state_status=_get(agg, "vmArtifactsAggregateStatus", "goalStateAggregateStatus", "status"),
                  computer_name=_get(blob, "guestOSInfo", "computerName"))
    for h in _get(agg, "handlerAggregateStatus") or []:
        if not isinstance(h, Mapping):
            continue
        rss = h.get("runtimeSettingsStatus") or {}
        s = _get(rss, "settingsStatus", "status") or {}
        st.extensions.append(ExtensionStatus(
            handler=str(h.get("handlerName")), version=str(h.get("handlerVersion")),
            handler_status=str(h.get("status")), name=rss.get("extensionName") or s.get("name"),
            status=s.get("status"), operation=s.get("operation"), code=s.get("code", h.get("code")),
            sequence_number=rss.get("sequenceNumber"),
            message=str(_get(s, "formattedMessage", "message") or _get(h, "formattedMessage", "message") or "")))
    return st


def expected_extensions(step: Any) -> list[tuple[str, str, int]]:
    """(handler, version, seqNo) the scenario step asks to be enabled (single-config; MC per extension)."""
    out = []
    for ext in getattr(step, "extensions", []) or []:
        if getattr(ext, "state", "enabled") != "enabled":
            continue
        for s in getattr(ext, "settings", []) or [None]:
            if s is not None and getattr(s, "state", "enabled") != "enabled":
                continue
            out.append((ext.name, ext.version, getattr(s, "seq_no", 0) if s is not None else 0))
    return out


def extensions_done(status: VmStatus, step: Any) -> tuple[bool, str]:
    """True when every extension the step enables reports success for its sequence number."""
    for name, version, seq in expected_extensions(step):
        mine = [e for e in status.extensions if e.handler.lower() == name.lower() and e.version == version]
        if not mine:
            return False, f"no status yet for {name} {version}"
        for e in mine:
            if e.status == "error":
                return False, f"{name} {version} failed: {e.message[:200]}"
            if e.status != "success" or (e.sequence_number is not None and int(e.sequence_number) != seq):
                return False, f"{name} {version} is {e.status or e.handler_status} (seqNo {e.sequence_number})"
    return True, "all extensions succeeded"


def agent_changes(change_set: Mapping[str, str]) -> dict[str, str]:
    """The sandbox's overlay changes minus the lab's own files."""
    return {p: k for p, k in change_set.items()
            if not any(p == f or p.startswith(f + "/") for f in LAB_FILES)}


def users_added(passwd_before: str, passwd_after: str) -> list[str]:
    def names(text: str) -> list[str]:
        return [line.split(":", 1)[0] for line in text.splitlines() if ":" in line]

    before = set(names(passwd_before))
    return [n for n in names(passwd_after) if n not in before]


HEARTBEAT_FIELDS = re.compile(r"(HeartbeatCounter|UpdateGSErrors): ?(\d+)")


def queued_events(event_files: Iterable[Path]) -> list[dict]:
    """Events the agent has written but not sent yet (``/var/lib/waagent/events/*.tld``), in the compact
    form the fabric driver reports received ones; unreadable files are skipped (the agent may be
    sending and deleting them right now)."""
    out = []
    for path in sorted(event_files):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            p = {x["name"]: x.get("value") for x in doc.get("parameters", []) if isinstance(x, Mapping)}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        out.append({"event_id": doc.get("eventId"), "op": p.get("Operation"), "ok": p.get("OperationSuccess"),
                    "message": str(p.get("Message") or "")[:300], "time": p.get("OpcodeName"),
                    "task": p.get("TaskName"), "name": p.get("Name"), "version": p.get("Version")})
    return out


#: Operations upstream reports with OperationSuccess=False as a note about the machine, not failed work:
#: the log collector's "is it allowed here" check, the cgroup warnings (the lab has no systemd cgroups) and
#: ExtensionSigned (False: the goal state carries no signature for that extension).
NOT_FAILURES = {
    "ExtensionSigned": "",
    "LogCollection": "Checking if log collection is allowed",
    "CGroupsInfo": "",
    "CGroupsDisabled": "",
}

#: What an operation is, in plain words (the fallback is the operation's name).
OPERATION_WORDS = {
    "Install": "installing the extension", "Enable": "enabling the extension",
    "Disable": "disabling the extension", "Uninstall": "uninstalling the extension",
    "Update": "updating the extension", "Download": "downloading the extension",
    "Provision": "provisioning", "Firewall": "setting up the firewall", "HeartBeat": "the heartbeat",
    "FetchGoalState": "fetching the goal state", "GoalState": "processing the goal state",
    "ReportStatus": "uploading the status", "AgentUpgrade": "updating the agent",
    "LogCollection": "collecting the logs", "ExtensionPolicy": "applying the extension policy",
    "SignatureValidation": "checking the extension's signature", "ResourceDisk": "setting up the resource disk",
    "UnhandledError": "the daemon (unhandled error)", "HostnamePublishing": "publishing the hostname",
    "RemoteAccessHandling": "managing the remote-access users",
}


def is_failure(event: Mapping[str, Any]) -> bool:
    """A real failure: OperationSuccess False and not one of :data:`NOT_FAILURES`."""
    if event.get("ok") is not False:
        return False
    prefix = NOT_FAILURES.get(str(event.get("op")))
    return prefix is None or not str(event.get("message") or "").startswith(prefix)


def first_sentences(text: str, limit: int = 240) -> str:
    """The message's first line, whole sentences up to ``limit`` characters (a longer first sentence
    is cut at a word and marked with "...")."""
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(line) <= limit:
        return line
    cut = max(line.rfind(". ", 0, limit), line.rfind(": ", 0, limit))
    if cut > limit // 3:
        return line[:cut + 1]
    return line[:line.rfind(" ", 0, limit - 3) if " " in line[:limit - 3] else limit - 3] + "..."


def describe_failure(event: Mapping[str, Any]) -> str:
    """``<time> <what> failed (<op>[, <name> <version>]): <message>``."""
    op = str(event.get("op") or f"event {event.get('event_id')}")
    what = OPERATION_WORDS.get(op, op)
    name = event.get("name")
    who = f", {name} {event.get('version')}" if name and name != "WALinuxAgent" else ""
    message = first_sentences(str(event.get("message") or ""))
    return f"{event.get('time')} {what} failed ({op}{who})" + (f": {message}" if message else "")


def _by_operation(events: list[dict]) -> str:
    ops: dict[str, int] = {}
    for e in events:
        op = e.get("op") or ("performance counters" if e.get("event_id") == 4 else f"event {e.get('event_id')}")
        ops[op] = ops.get(op, 0) + 1
    return " (" + ", ".join(f"{op} {n}" for op, n in sorted(ops.items())) + ")" if ops else ""


def telemetry_lines(telemetry: list[dict], healthservice: list[dict], vm_agent_logs: list[dict],
                    queued: Optional[list[dict]] = None, errors: int = 5) -> list[str]:
    """What the fabric received besides requests: events (count by operation, the last errors, the
    last heartbeat), HealthService reports and collected-log uploads; ``queued``: events still waiting
    in the agent's events directory (it sends every 60 s). ``telemetry`` and ``queued`` hold the compact
    records of :func:`guestagent.lab.fabricdriver.telemetry_record` / :func:`queued_events`."""
    queued = queued or []
    out = [f"telemetry events received: {len(telemetry)}{_by_operation(telemetry)}"]
    if queued:
        out.append(f"  not sent yet (queued in /var/lib/waagent/events): {len(queued)}{_by_operation(queued)}")
    beats = [(e, "") for e in telemetry if e.get("op") == "HeartBeat"]
    beats += [(e, ", queued") for e in queued if e.get("op") == "HeartBeat"]
    if beats:
        last, where = beats[-1]
        fields = ", ".join(f"{k} {v}" for k, v in HEARTBEAT_FIELDS.findall(last.get("message") or ""))
        out.append(f"  last heartbeat: {last.get('time')} ({last.get('name')} {last.get('version')}"
                   + (f"; {fields}" if fields else "") + f"{where})")
    else:
        out.append("  last heartbeat: none yet (the agent sends one at start, then every 30 minutes)")
    failed = [e for e in telemetry + queued if is_failure(e)]
    out.append(f"  failed operations: {len(failed)}" + (f" (last {min(errors, len(failed))}):" if failed else ""))
    out.extend(f"    {describe_failure(e)}" for e in failed[-errors:])
    notes = [e for e in telemetry + queued if e.get("ok") is False and not is_failure(e)]
    if notes:
        out.append(f"  reported as unsuccessful but not failures: {len(notes)}{_by_operation(notes)}")
    if healthservice:
        obs = healthservice[-1].get("Observations") or []
        text = ", ".join(f"{o.get('ObservationName')} {'healthy' if o.get('IsHealthy') else 'UNHEALTHY'}"
                         for o in obs if isinstance(o, Mapping))
        out.append(f"HealthService reports: {len(healthservice)}, last at {healthservice[-1].get('time')}: "
                   f"{text or 'no observations'}")
    else:
        out.append("HealthService reports: none")
    if vm_agent_logs:
        out.append(f"collected logs uploaded: {len(vm_agent_logs)}")
        out.extend(f"  {v.get('time')} {v.get('size')} bytes" for v in vm_agent_logs[-5:])
    else:
        out.append("collected logs uploaded: none (the log collector runs 5 minutes after start at the earliest, when enabled)")
    return out


def format_summary(*, changes: Mapping[str, str], users: Iterable[str], hostname: tuple[str, str],
                   health: list[dict], status: Optional[VmStatus], requests: Mapping[str, int],
                   lib_files: Iterable[tuple[str, int, int]], platform: Iterable[str] = (),
                   reported: Iterable[str] = ()) -> str:
    """The text printed at the end of a lab run. ``platform``: lines about the VM's devices and
    firewall; ``reported``: :func:`telemetry_lines`."""
    out = ["", "=== what the agent changed in the sandbox (the host is untouched) ==="]
    before, after = hostname
    out.append(f"hostname: {before} -> {after}" if before != after else f"hostname: unchanged ({after})")
    users = list(users)
    out.append("users added: " + (", ".join(users) if users else "none"))
    etc = [f"  {kind:<8} {p}" for p, kind in changes.items() if p.startswith("/etc/")]
    out.append(f"/etc: {len(etc)} change(s)")
    out.extend(etc[:40])
    lib = list(lib_files)
    out.append(f"/var/lib/waagent: {len(lib)} file(s)")
    out.extend(f"  {mode:04o} {size:>8}  {p}" for p, mode, size in lib[:60])
    other = [p for p in changes if not p.startswith(("/etc/", "/var/lib/waagent"))]
    if other:
        out.append(f"elsewhere: {len(other)} change(s)")
        out.extend(f"  {changes[p]:<8} {p}" for p in other[:30])
    platform = list(platform)
    if platform:
        out.append("")
        out.append("=== the VM's resource disk, firewall, network ===")
        out.extend(platform)
    out.append("")
    out.append("=== what the fabric heard ===")
    out.append("requests: " + (", ".join(f"{k} {n}" for k, n in sorted(requests.items())) or "none"))
    out.append(f"health reports: {len(health)}")
    for h in health[-5:]:
        extra = f" {h.get('substatus')}" if h.get("substatus") else ""
        out.append(f"  {h.get('state')}{extra} [incarnation {h.get('incarnation')}] {h.get('description') or ''}".rstrip())
    out.extend(reported)
    out.append("")
    out.append("=== last status uploaded ===")
    if status is None or status.agent_status is None:
        out.append("none")
    else:
        out.append(f"agent {status.agent_version}: {status.agent_status} ({status.agent_message})")
        if status.goal_state is not None:
            out.append(f"goal state {status.goal_state}: {status.goal_state_status}")
        for e in status.extensions:
            name = f"{e.handler} {e.version}" + (f" [{e.name}]" if e.name and e.name != e.handler else "")
            out.append(f"  {name}: handler {e.handler_status}, {e.operation or '-'} {e.status or '-'} "
                       f"(code {e.code}, seqNo {e.sequence_number}) {e.message[:120]}".rstrip())
    return "\n".join(out)
