"""The agent's own state: configuration, provisioning, processes, goal state, status, cgroups, disk.

Everything is read from files and /proc (and ``systemctl is-enabled``/``service … status`` for
cloud-init, as the agent itself asks); nothing is written.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from typing import Optional

from guestagent.doctor.context import DoctorContext
from guestagent.doctor.report import FAIL, INFO, OK, SKIP, WARN, Finding
from guestagent.osutil import cgroupfs, processes, system
from guestagent.provisioning import cloudinit, marker
from guestagent.version import AGENT_VERSION

#: Free space in the lib dir below which goal states, packages and status cannot be written reliably.
MIN_FREE_MB = 256


def check_config(ctx: DoctorContext) -> list[Finding]:
    out = []
    for level, message in ctx.config.diagnostics:
        if level == "WARNING":
            out.append(Finding("config", WARN, message, "the agent ignores the value and uses the default",
                               f"fix the line in {ctx.config.path}"))
        else:
            out.append(Finding("config", INFO, message))
    return out or [Finding("config", OK, f"{ctx.config.path}: no warnings")]


def _agent_setting(ctx: DoctorContext) -> str:
    legacy = ctx.config.legacy_provisioning_agent
    return legacy if legacy is not None else ctx.config.provisioning_agent


def check_provisioning(ctx: DoctorContext) -> list[Finding]:
    lib = ctx.config.lib_dir
    agent = _agent_setting(ctx)
    ci = cloudinit.cloud_init_is_enabled()
    out = []
    if agent == "waagent" and ci:
        out.append(Finding("provisioning.conflict", FAIL, "Provisioning.Agent=waagent but cloud-init is enabled",
                           "both would provision the VM; the agent refuses and reports ProvisioningFailed",
                           "set Provisioning.Agent=auto (or cloud-init), or disable cloud-init"))
    elif agent == "cloud-init" and not ci:
        out.append(Finding("provisioning.conflict", FAIL, "Provisioning.Agent=cloud-init but cloud-init is not enabled",
                           "the agent waits up to 30 minutes for cloud-init's ovf-env.xml and host keys, then fails",
                           "enable cloud-init, or set Provisioning.Agent=auto"))
    else:
        who = {"auto": "cloud-init (enabled)" if ci else "the agent (cloud-init is not enabled)"}.get(agent, agent)
        out.append(Finding("provisioning.agent", OK, f"Provisioning.Agent={agent}: provisioned by {who}"))
    if not marker.is_provisioned(lib):
        out.append(Finding("provisioning.marker", WARN, f"no {marker.marker_path(lib)}: provisioning has not completed",
                           "the daemon retries provisioning at each start and the VM may stay NotReady",
                           "look for 'Provisioning failed' in /var/log/waagent.log"))
    elif not marker.is_current_instance_id(marker.read_marker(lib)):
        out.append(Finding("provisioning.marker", WARN, "the marker names another VM id (image not generalized?)",
                           "the next daemon start clears cached state and re-reports Ready",
                           "capture images only after 'waagent -deprovision'"))
    else:
        out.append(Finding("provisioning.marker", OK, f"{marker.marker_path(lib)} present, this VM's id"))
    return out


def _pid_from(path: str) -> Optional[int]:
    text = (system.read_text(path, default="") or "").strip()
    return int(text) if text.isdigit() else None


def _describe_process(role: str, pid: Optional[int]) -> tuple[bool, str]:
    if pid is None:
        return False, f"{role}: no pid file"
    if not processes.pid_alive(pid):
        return False, f"{role}: pid {pid} is not running"
    state = (system.read_text(f"/proc/{pid}/stat", default="") or "").rpartition(")")[2].split()[:1]
    if state in (["T"], ["t"], ["Z"]):
        return False, f"{role}: pid {pid} is {'a zombie' if state == ['Z'] else 'stopped'}"
    return True, f"{role} pid {pid} RSS {processes.rss_kb(pid) // 1024} MB"


def child_pids(ctx: DoctorContext) -> list[int]:
    folder = os.path.dirname(ctx.config.pid_file)
    pids = [_pid_from(p) for p in sorted(glob.glob(os.fspath(system.path(os.path.join(folder, "*_waagent.pid")))))]
    return [p for p in pids if p is not None]


def check_processes(ctx: DoctorContext) -> list[Finding]:
    daemon_ok, daemon = _describe_process("daemon", _pid_from(ctx.config.pid_file))
    children = child_pids(ctx)
    child_ok, child = _describe_process("ext-handler", children[-1] if children else None)
    version = f"WALinuxAgent {AGENT_VERSION}"
    if daemon_ok and child_ok:
        return [Finding("processes", OK, f"{daemon}, {child}, {version}")]
    return [Finding("processes", FAIL, f"{daemon}; {child}",
                    "without the daemon and its ext-handler no goal state, extension or status is processed",
                    "systemctl status walinuxagent (or waagent); see /var/log/waagent.log")]


def _history_folders(ctx: DoctorContext) -> list[str]:
    root = system.path(os.path.join(ctx.config.lib_dir, "history"))
    return sorted((p for p in glob.glob(f"{root}/*__*") if os.path.isdir(p)), key=os.path.getmtime)


def check_goal_state(ctx: DoctorContext) -> list[Finding]:
    folders = _history_folders(ctx)
    if not folders:
        return [Finding("goal-state", WARN, "no goal state in the history",
                        "the agent has not processed a goal state (or history is disabled)",
                        "check the endpoint below and /var/log/waagent.log")]
    stamp, _, tag = os.path.basename(folders[-1]).partition("__")
    return [Finding("goal-state", OK, f"last goal state {tag} fetched {stamp} UTC")]


def _last_status(ctx: DoctorContext) -> Optional[str]:
    files = [os.path.join(f, "waagent_status.json") for f in _history_folders(ctx)]
    files = [f for f in files if os.path.isfile(f)]
    return max(files, key=os.path.getmtime) if files else None


def _message(obj: dict) -> str:
    fm = obj.get("formattedMessage")
    return str(fm.get("message", "")) if isinstance(fm, dict) else ""


def _extension_findings(doc: dict) -> list[Finding]:
    out = []
    aggregate = doc.get("aggregateStatus") if isinstance(doc.get("aggregateStatus"), dict) else {}
    for h in aggregate.get("handlerAggregateStatus") or []:
        if not isinstance(h, dict):
            continue
        name = f"{h.get('handlerName')} {h.get('handlerVersion')}"
        settings = (h.get("runtimeSettingsStatus") or {}).get("settingsStatus") or {}
        status = settings.get("status") if isinstance(settings.get("status"), dict) else {}
        state = str(status.get("status") or h.get("status") or "?")
        msg = _message(status) or _message(h)
        code = status.get("code", h.get("code", 0))
        if state.lower() in ("error", "unresponsive", "notready"):
            out.append(Finding(f"extension {name}", WARN, f"{state} (code {code}): {' '.join(msg.split())[:200]}",
                               "the platform reports this extension's failure to the VM's owner",
                               f"read the handler's log under /var/log/azure/{h.get('handlerName')}/"))
        else:
            out.append(Finding(f"extension {name}", OK, f"{state}"))
    return out


def check_status(ctx: DoctorContext) -> list[Finding]:
    path = _last_status(ctx)
    if path is None:
        return [Finding("status", WARN, "no status uploaded yet", "the platform shows the VM agent as not ready",
                        "check the processes and endpoint checks")]
    age = ctx.now - os.path.getmtime(path)
    try:
        doc = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as e:
        return [Finding("status", WARN, f"last status document unreadable: {e}")]
    out = []
    if age > ctx.stale_after:
        out.append(Finding("status", FAIL, f"last status upload {int(age)} s ago (stale after {int(ctx.stale_after)} s)",
                           "the platform marks the VM agent not ready when status stops coming",
                           "the ext-handler is stuck or dead: see the processes check and /var/log/waagent.log"))
    else:
        agent = ((doc.get("aggregateStatus") or {}).get("guestAgentStatus") or {}).get("status", "?")
        out.append(Finding("status", OK, f"last status upload {int(age)} s ago, agent {agent}"))
    return out + _extension_findings(doc)


def check_cgroups(ctx: DoctorContext) -> list[Finding]:
    if not ctx.config.cgroups_enabled:
        return [Finding("cgroups", INFO, "CGroups.Enabled=n: no resource limits for the agent and extensions")]
    hierarchy = cgroupfs.detect_host()
    if not hierarchy.supported:
        return [Finding("cgroups", INFO, f"not used: {hierarchy.reason}")]
    text = f"cgroup {hierarchy.version}"
    children = child_pids(ctx)
    if children:
        proc = system.read_text(f"/proc/{children[-1]}/cgroup", default="") or ""
        path = cgroupfs.process_cgroup_path(proc, hierarchy.version or "")
        if path:
            text += f"; ext-handler in {path}"
    return [Finding("cgroups", OK, text + ("" if hierarchy.can_enforce_cpu() else "; CPU not enforceable"))]


def check_disk(ctx: DoctorContext) -> list[Finding]:
    lib = system.path(ctx.config.lib_dir)
    if not lib.is_dir():
        return [Finding("disk", SKIP, f"{ctx.config.lib_dir} does not exist")]
    free = shutil.disk_usage(lib).free // (1024 * 1024)
    if free < MIN_FREE_MB:
        return [Finding("disk", FAIL, f"{free} MB free in {ctx.config.lib_dir}",
                        "goal states, extension packages and status files cannot be written",
                        "free space on that file system")]
    return [Finding("disk", OK, f"{free} MB free in {ctx.config.lib_dir}")]
