"""What a lab run did: the agent's changes to the sandbox, what the fabric heard, the last VM status.

Reads the uploaded status JSON (spec 04 §12) with its own small accessors: the lab checks the agent,
so it does not reuse the agent's status models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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


def format_summary(*, changes: Mapping[str, str], users: Iterable[str], hostname: tuple[str, str],
                   health: list[dict], status: Optional[VmStatus], requests: Mapping[str, int],
                   lib_files: Iterable[tuple[str, int, int]]) -> str:
    """The text printed at the end of a lab run."""
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
    out.append("")
    out.append("=== what the fabric heard ===")
    out.append("requests: " + (", ".join(f"{k} {n}" for k, n in sorted(requests.items())) or "none"))
    out.append(f"health reports: {len(health)}")
    for h in health[-5:]:
        extra = f" {h.get('substatus')}" if h.get("substatus") else ""
        out.append(f"  {h.get('state')}{extra} [incarnation {h.get('incarnation')}] {h.get('description') or ''}".rstrip())
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
