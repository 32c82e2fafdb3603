"""Agent telemetry events written to ``<Lib.Dir>/events`` in upstream's on-disk format (spec 06 §9.1).

An event is on disk (``<µs since epoch>.waagent.tld``, written as ``.tmp`` then renamed) before
anything tries to send it, so nothing is lost across a restart. The telemetry thread collects
and posts these files.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from guestagent import log
from guestagent.osutil import system
from guestagent.osutil.osrelease import distro
from guestagent.version import AGENT_LONG_NAME, AGENT_NAME, AGENT_VERSION

PROVIDER_ID = "69B669B9-4AF8-4C50-BDC4-6006FA76E975"
LOG_PROVIDER_ID = "FFF0196F-EE4C-4EAF-9AA5-776F622DEB4F"
MAX_EVENT_FILES = 1000


class WALAEventOperation:
    """Operation names as upstream spells them (the platform queries on them)."""

    ActivateResourceDisk = "ActivateResourceDisk"
    AgentDisabled = "AgentDisabled"
    ConfigurationChange = "ConfigurationChange"
    Deploy = "Deploy"
    Download = "Download"
    Enable = "Enable"
    Firewall = "Firewall"
    HeartBeat = "HeartBeat"
    HostPlugin = "HostPlugin"
    HttpErrors = "HttpErrors"
    Install = "Install"
    OSInfo = "OSInfo"
    Partition = "Partition"
    ProcessGoalState = "ProcessGoalState"
    Provision = "Provision"
    ReportStatus = "ReportStatus"
    Restart = "Restart"
    UnhandledError = "UnhandledError"
    Unknown = "Unknown"


@dataclass
class CommonFields:
    """Values filled in from the goal state / IMDS once the protocol is up."""

    container_id: str = "ContainerId_UNINITIALIZED"
    tenant_name: str = "TenantName_UNINITIALIZED"
    role_name: str = "RoleName_UNINITIALIZED"
    role_instance_name: str = "RoleInstanceName_UNINITIALIZED"
    location: str = ""
    subscription_id: str = ""
    resource_group_name: str = ""
    vm_id: str = ""
    image_origin: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


common = CommonFields()
_lock = threading.Lock()
_last_name = 0


def _os_version() -> str:
    name, version, codename = distro()
    return f"{platform.system()}:{name}-{version}-{codename}:{platform.release()}"


def _ram_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError):
        return 0


def common_parameters(timestamp: Optional[float] = None) -> list[dict[str, Any]]:
    ts = log.timestamp(timestamp)
    return [
        {"name": "GAVersion", "value": AGENT_LONG_NAME},
        {"name": "ContainerId", "value": common.container_id},
        {"name": "OpcodeName", "value": ts},
        {"name": "EventTid", "value": threading.get_ident() & 0xFFFFFFFF},
        {"name": "EventPid", "value": os.getpid()},
        {"name": "TaskName", "value": threading.current_thread().name},
        {"name": "OSVersion", "value": _os_version()},
        {"name": "ExecutionMode", "value": "IAAS"},
        {"name": "RAM", "value": _ram_mb()},
        {"name": "Processors", "value": os.cpu_count() or 1},
        {"name": "KeywordName", "value": json.dumps({"CpuArchitecture": platform.machine()})},
        {"name": "TenantName", "value": common.tenant_name},
        {"name": "RoleName", "value": common.role_name},
        {"name": "RoleInstanceName", "value": common.role_instance_name},
        {"name": "Location", "value": common.location},
        {"name": "SubscriptionId", "value": common.subscription_id},
        {"name": "ResourceGroupName", "value": common.resource_group_name},
        {"name": "VMId", "value": common.vm_id},
        {"name": "ImageOrigin", "value": common.image_origin},
    ]


def _event_dir(lib_dir: str) -> str:
    return os.path.join(lib_dir, "events")


def add_event(op: str, *, is_success: bool = True, message: str = "", duration: int = 0,
              name: str = AGENT_NAME, version: str = AGENT_VERSION, log_event: bool = True,
              lib_dir: str = "/var/lib/waagent") -> None:
    """Write a GuestAgentExtensionEvents event (provider 69B669B9…, id 1). Never raises."""
    message = log.redact(message)
    if not is_success and log_event:
        log.error("Event: name={0}, op={1}, message={2}, duration={3}", name, op, message, duration)
    params = [
        {"name": "Name", "value": name},
        {"name": "Version", "value": str(version)},
        {"name": "Operation", "value": op},
        {"name": "OperationSuccess", "value": bool(is_success)},
        {"name": "Message", "value": message},
        {"name": "Duration", "value": int(duration)},
        *common_parameters()[:6],
        {"name": "ExtensionType", "value": ""},
        {"name": "IsInternal", "value": False},
        *common_parameters()[6:],
    ]
    try:
        write_event_file({"eventId": 1, "providerId": PROVIDER_ID, "parameters": params, "file_type": ""},
                         lib_dir)
    except OSError as e:
        log.periodic(3600, log.WARNING, "Failed to write event: {0}", e)


def write_event_file(event: dict[str, Any], lib_dir: str) -> str:
    global _last_name
    directory = system.mkdir(_event_dir(lib_dir), mode=0o700)
    existing = sorted(n for n in os.listdir(directory) if n.endswith(".tld"))
    for stale in existing[: max(0, len(existing) - (MAX_EVENT_FILES - 1))]:
        system.remove(directory / stale)
    with _lock:
        stamp = max(int(time.time() * 1_000_000), _last_name + 1)
        _last_name = stamp
    tmp = directory / f"{stamp}.tmp"
    final = directory / f"{stamp}.waagent.tld"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(event, f)
    os.replace(tmp, final)
    return str(final)
