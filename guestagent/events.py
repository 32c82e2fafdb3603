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
from typing import TYPE_CHECKING, Any, Optional

from guestagent import log
from guestagent.errors import disk_full
from guestagent.osutil import atomic, system
from guestagent.osutil.osrelease import distro
from guestagent.timestamps import utc_precise

if TYPE_CHECKING:  # types only: events sit below the protocol room
    from guestagent.protocol.goalstate import GoalState
    from guestagent.protocol.imds import ComputeInfo
from guestagent.version import AGENT_LONG_NAME, AGENT_NAME, AGENT_VERSION

PROVIDER_ID = "69B669B9-4AF8-4C50-BDC4-6006FA76E975"
LOG_PROVIDER_ID = "FFF0196F-EE4C-4EAF-9AA5-776F622DEB4F"
MAX_EVENT_FILES = 1000


class WALAEventOperation:
    """Operation names as upstream spells them (the platform queries on them)."""

    ActivateResourceDisk = "ActivateResourceDisk"
    AgentDisabled = "AgentDisabled"
    AgentEnabled = "AgentEnabled"
    AgentMemory = "AgentMemory"
    AgentUpgrade = "AgentUpgrade"
    ArtifactsProfileBlob = "ArtifactsProfileBlob"
    CGroupsCleanUp = "CGroupsCleanUp"
    CGroupsDisabled = "CGroupsDisabled"
    CGroupsInfo = "CGroupsInfo"
    CloudInit = "CloudInit"
    CollectEventErrors = "CollectEventErrors"
    CollectEventUnicodeErrors = "CollectEventUnicodeErrors"
    ConfigurationChange = "ConfigurationChange"
    CustomData = "CustomData"
    DefaultChannelChange = "DefaultChannelChange"
    Deploy = "Deploy"
    Disable = "Disable"
    Downgrade = "Downgrade"
    Download = "Download"
    Enable = "Enable"
    ExtensionHandlerManifest = "ExtensionHandlerManifest"
    ExtensionPolicy = "ExtensionPolicy"
    ExtensionProcessing = "ExtensionProcessing"
    ExtensionResourceGovernance = "ExtensionResourceGovernance"
    ExtensionTelemetryEventProcessing = "ExtensionTelemetryEventProcessing"
    FetchGoalState = "FetchGoalState"
    Firewall = "Firewall"
    GoalState = "GoalState"
    GoalStateCertificates = "GoalStateCertificates"
    GoalStateUnsupportedFeatures = "GoalStateUnsupportedFeatures"
    #: Not upstream's (it does not watch the GPA): the monitor's Guest Proxy Agent health changes.
    GuestProxyAgentHealth = "GuestProxyAgentHealth"
    HealthCheck = "HealthCheck"
    HealthObservation = "HealthObservation"
    HeartBeat = "HeartBeat"
    HostnamePublishing = "HostnamePublishing"
    HostPlugin = "HostPlugin"
    HostPluginHeartbeat = "HostPluginHeartbeat"
    HostPluginHeartbeatExtended = "HostPluginHeartbeatExtended"
    HttpErrors = "HttpErrors"
    HttpGet = "HttpGet"
    ImdsHeartbeat = "ImdsHeartbeat"
    Install = "Install"
    InitializeHostPlugin = "InitializeHostPlugin"
    Log = "Log"
    LogCollection = "LogCollection"
    NoExec = "NoExec"
    OSInfo = "OSInfo"
    OpenSsl = "OpenSsl"
    PersistFirewallRules = "PersistFirewallRules"
    Policy = "Policy"
    ProvisionAfterExtensions = "ProvisionAfterExtensions"
    PluginSettingsVersionMismatch = "PluginSettingsVersionMismatch"
    InvalidExtensionConfig = "InvalidExtensionConfig"
    ProtocolEndpoint = "ProtocolEndpoint"
    Provision = "Provision"
    ProvisionGuestAgent = "ProvisionGuestAgent"
    RemoteAccessHandling = "RemoteAccessHandling"
    ReportEventErrors = "ReportEventErrors"
    ReportEventUnicodeErrors = "ReportEventUnicodeErrors"
    ReportStatus = "ReportStatus"
    ReportStatusExtended = "ReportStatusExtended"
    RequestedStateDisabled = "RequestedStateDisabled"
    RequestedVersionMismatch = "RequestedVersionMismatch"
    ResetFirewall = "ResetFirewall"
    Restart = "Restart"
    SignatureValidation = "SignatureValidation"
    ExtensionSigned = "ExtensionSigned"
    PackageSignatureResult = "PackageSignatureResult"
    PackageSigningInfoResult = "PackageSigningInfoResult"
    SetCGroupsLimits = "SetCGroupsLimits"
    SkipUpdate = "SkipUpdate"
    StatusProcessing = "StatusProcessing"
    UnhandledError = "UnhandledError"
    UnInstall = "UnInstall"
    Unknown = "Unknown"
    Update = "Update"
    VmSettings = "VmSettings"
    VmSettingsSummary = "VmSettingsSummary"
    Partition = "Partition"


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
#: Events a full disk refused, written before the next event (see _save).
_held: list[tuple[dict[str, Any], str]] = []
MAX_HELD_EVENTS = 64
_default_lib_dir = "/var/lib/waagent"
_periodic: dict[tuple, float] = {}
EVENT_STATUS_FILE = "event_status.json"
#: Upstream's event ids (01 §11.2).
EXTENSION_EVENT_ID = 1
METRIC_EVENT_ID = 4
LOG_EVENT_ID = 7


def set_lib_dir(lib_dir: str) -> None:
    """The events directory used when a caller gives no ``lib_dir`` (set once by the daemon/child)."""
    global _default_lib_dir
    _default_lib_dir = lib_dir


def update_common_from_goal_state(goal_state: GoalState) -> None:
    """ContainerId, RoleInstanceName (goal state), TenantName = deployment name, RoleName (HostingEnvironmentConfig)."""
    env = goal_state.hosting_env
    common.container_id = goal_state.container_id or common.container_id
    common.role_instance_name = goal_state.role_instance_id or common.role_instance_name
    if env is not None:
        common.tenant_name = env.deployment_name or common.tenant_name
        common.role_name = env.role_name or common.role_name


def update_common_from_imds(compute: ComputeInfo) -> None:
    common.location = compute.location or common.location
    common.subscription_id = compute.subscription_id or common.subscription_id
    common.resource_group_name = compute.resource_group_name or common.resource_group_name
    common.vm_id = compute.vm_id or common.vm_id
    common.image_origin = compute.image_origin


def _os_version() -> str:
    name, version, codename = distro()
    return f"{platform.system()}:{name}-{version}-{codename}:{platform.release()}"


def _ram_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError):
        return 0


def per_event_parameters(timestamp: Optional[float] = None, pid: Optional[int] = None) -> list[dict[str, Any]]:
    """GAVersion … TaskName: the part of the common set that changes with every event. ``pid``: the process
    the event is written for (the lean supervisor's events are written by a fork); None: this one."""
    return [
        {"name": "GAVersion", "value": AGENT_LONG_NAME},
        {"name": "ContainerId", "value": common.container_id},
        {"name": "OpcodeName", "value": utc_precise(timestamp)},
        {"name": "EventTid", "value": threading.get_ident() & 0xFFFFFFFF},
        {"name": "EventPid", "value": os.getpid() if pid is None else pid},
        {"name": "TaskName", "value": threading.current_thread().name},
    ]


def process_parameters() -> list[dict[str, Any]]:
    """OSVersion … ImageOrigin: the part of the common set that is constant for the process."""
    return [
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


def common_parameters(timestamp: Optional[float] = None, *, event_id: int = EXTENSION_EVENT_ID,
                      provider_id: str = PROVIDER_ID, file_type: str = "",
                      pid: Optional[int] = None) -> list[dict[str, Any]]:
    """The full common set in upstream's order; ExtensionType/IsInternal only for GuestAgentExtensionEvents."""
    params = per_event_parameters(timestamp, pid)
    if event_id == EXTENSION_EVENT_ID and provider_id == PROVIDER_ID:
        params += [{"name": "ExtensionType", "value": file_type}, {"name": "IsInternal", "value": False}]
    return params + process_parameters()


def _event_dir(lib_dir: Optional[str]) -> str:
    return os.path.join(lib_dir or _default_lib_dir, "events")


def event_dir(lib_dir: Optional[str] = None) -> str:
    return _event_dir(lib_dir)


def add_event(op: str, *, is_success: bool = True, message: str = "", duration: int = 0,
              name: str = AGENT_NAME, version: str = AGENT_VERSION, log_event: bool = True,
              lib_dir: Optional[str] = None, pid: Optional[int] = None) -> None:
    """Write a GuestAgentExtensionEvents event (provider 69B669B9…, id 1). Never raises. ``pid``: see
    :func:`per_event_parameters`."""
    message = log.redact(str(message))
    if not is_success and log_event:
        log.error("Event: name={0}, op={1}, message={2}, duration={3}", name, op, message, duration)
    params = [
        {"name": "Name", "value": str(name)},
        {"name": "Version", "value": str(version)},
        {"name": "Operation", "value": str(op)},
        {"name": "OperationSuccess", "value": bool(is_success)},
        {"name": "Message", "value": message},
        {"name": "Duration", "value": int(duration)},
        *common_parameters(pid=pid),
    ]
    _save({"eventId": EXTENSION_EVENT_ID, "providerId": PROVIDER_ID, "parameters": params, "file_type": ""},
          lib_dir)


def add_periodic(delta: float, op: str, *, is_success: bool = True, message: str = "", duration: int = 0,
                 name: str = AGENT_NAME, version: str = AGENT_VERSION, log_event: bool = True,
                 lib_dir: Optional[str] = None, force: bool = False) -> bool:
    """add_event at most once per ``delta`` seconds for the same (name, op, success, message); the
    registry is cleared with the periodic log messages (every 12 h). Returns whether it was written."""
    key = (name, op, bool(is_success), message)
    now = time.monotonic()
    with _lock:
        last = _periodic.get(key)
        if not force and last is not None and now - last < delta:
            return False
        _periodic[key] = now
    add_event(op, is_success=is_success, message=message, duration=duration, name=name, version=version,
              log_event=log_event, lib_dir=lib_dir)
    return True


def reset_periodic() -> None:
    with _lock:
        _periodic.clear()


def add_metric(category: str, counter: str, instance: str, value: float, *, log_event: bool = False,
               lib_dir: Optional[str] = None) -> None:
    """A GuestAgentPerfCounterEvents event (provider 69B669B9…, id 4)."""
    if log_event:
        log.info("Metric {0}/{1} [{2}] = {3}", category, counter, instance, value)
    params = [{"name": "Category", "value": str(category)}, {"name": "Counter", "value": str(counter)},
              {"name": "Instance", "value": str(instance)}, {"name": "Value", "value": float(value)},
              *common_parameters(event_id=METRIC_EVENT_ID)]
    _save({"eventId": METRIC_EVENT_ID, "providerId": PROVIDER_ID, "parameters": params, "file_type": ""}, lib_dir)


def add_log_event(level: str, message: str, *, lib_dir: Optional[str] = None) -> None:
    """A GuestAgentGenericLogs event (provider FFF0196F…, id 7), EventName ``Log``."""
    params = [{"name": "EventName", "value": WALAEventOperation.Log}, {"name": "CapabilityUsed", "value": level},
              {"name": "Context1", "value": log.redact(str(message))}, {"name": "Context2", "value": utc_precise()},
              {"name": "Context3", "value": ""},
              *common_parameters(event_id=LOG_EVENT_ID, provider_id=LOG_PROVIDER_ID)]
    _save({"eventId": LOG_EVENT_ID, "providerId": LOG_PROVIDER_ID, "parameters": params, "file_type": ""}, lib_dir)


# --- ReportStatus de-duplication (06 §9.1) ----------------------------------------------------------------
def _status_path(lib_dir: Optional[str]) -> str:
    return os.path.join(lib_dir or _default_lib_dir, EVENT_STATUS_FILE)


def _load_status(lib_dir: Optional[str]) -> dict[str, bool]:
    try:
        data = json.loads(system.read_text(_status_path(lib_dir), default="{}") or "{}")
    except (OSError, ValueError):
        return {}
    return {str(k): bool(v) for k, v in data.items()} if isinstance(data, dict) else {}


def should_emit_event(name: str, version: str, op: str, status: bool, *, lib_dir: Optional[str] = None) -> bool:
    """ReportStatus events are emitted only when their success value changes for (name, version, op)."""
    key = f"{name}-{version}-{op}"
    statuses = _load_status(lib_dir)
    return key not in statuses or statuses[key] != bool(status)


def mark_event_status(name: str, version: str, op: str, status: bool, *, lib_dir: Optional[str] = None) -> None:
    statuses = _load_status(lib_dir)
    statuses[f"{name}-{version}-{op}"] = bool(status)
    try:
        system.write_file(_status_path(lib_dir), json.dumps(statuses), fsync=False)
    except OSError as e:
        log.periodic(3600, log.WARNING, "Failed to save the event status: {0}", e)


# --- the files ------------------------------------------------------------------------------------------
def _save(event: dict[str, Any], lib_dir: Optional[str]) -> None:
    """Write the events held back by a full disk (oldest first), then this one; on a full disk keep it
    in memory (at most MAX_HELD_EVENTS) so the report of the failure is not lost with the space."""
    directory = lib_dir or _default_lib_dir
    with _lock:
        queue = [*_held, (event, directory)]
        _held.clear()
    for i, (item, where) in enumerate(queue):
        try:
            write_event_file(item, where)
        except OSError as e:
            if disk_full(e):
                with _lock:
                    _held[:0] = queue[i:][-MAX_HELD_EVENTS:]
                    del _held[MAX_HELD_EVENTS:]
            log.periodic(900, log.WARNING, "[PERIODIC] Failed to write event: {0}", e)
            return
        except (TypeError, ValueError) as e:
            log.periodic(900, log.WARNING, "[PERIODIC] Failed to write event: {0}", e)


def write_event_file(event: dict[str, Any], lib_dir: str, suffix: str = ".waagent.tld") -> str:
    """Write one event atomically; keep at most MAX_EVENT_FILES files (the oldest by name go first)."""
    global _last_name
    directory = system.mkdir(_event_dir(lib_dir), mode=0o700)
    existing = sorted(n for n in os.listdir(directory) if n.endswith(".tld"))
    for stale in existing[: max(0, len(existing) - (MAX_EVENT_FILES - 1))]:
        system.remove(directory / stale)
    with _lock:
        stamp = max(int(time.time() * 1_000_000), _last_name + 1)
        _last_name = stamp
    final = str(directory / f"{stamp}{suffix}")
    atomic.write(final, json.dumps(event, ensure_ascii=False).encode("utf-8"), 0o600)
    return final
