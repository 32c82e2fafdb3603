"""Resource limits for the agent and its extensions through systemd (spec 06 §10).

Layout: azure.slice ⊃ the agent's service, azure-walinuxagent-logcollector.slice and
azure-vmextensions.slice ⊃ one slice per extension, each command in its own ``<op>_<uuid>.scope``
started by ``systemd-run``. Properties are set with ``systemctl set-property --runtime``; unit files
and the agent's Slice drop-in are written once. When anything required is missing the configurator
stays disabled and the agent runs commands directly — it never fails an operation because of cgroups.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from guestagent import events, log
from guestagent.conf import Config
from guestagent.osutil import cgroupfs, distros, processes, system

AZURE_SLICE = "azure.slice"
VMEXTENSIONS_SLICE = "azure-vmextensions.slice"
EXTENSION_SLICE_PREFIX = "azure-vmextensions"
LOGCOLLECTOR_SLICE = "azure-walinuxagent-logcollector.slice"
LOGCOLLECTOR_CPU_QUOTA = "5%"
LOGCOLLECTOR_MEMORY_HIGH_V2 = "170M"
AGENT_TELEMETRY_NAME = "walinuxagent.service"
HEADER = "# This drop-in unit file was created by the Azure VM Agent.\n# Do not edit.\n"
AZURE_SLICE_CONTENTS = ("\n[Unit]\nDescription=Slice for Azure VM Agent and Extensions\nDefaultDependencies=no\n"
                        "Before=slices.target\n")
VMEXTENSIONS_SLICE_CONTENTS = ("\n[Unit]\nDescription=Slice for Azure VM Extensions\nDefaultDependencies=no\n"
                               "Before=slices.target\n[Slice]\nCPUAccounting=yes\nMemoryAccounting=yes\n")
SLICE_DROP_IN = "10-Slice.conf"
SLICE_DROP_IN_CONTENTS = "\n" + HEADER + "[Service]\nSlice=azure.slice\n"
OLD_DROP_INS = ("11-CPUAccounting.conf", "12-CPUQuota.conf", "13-MemoryAccounting.conf")
OLD_EXTENSIONS_SLICE = "/etc/systemd/system/system-walinuxagent.extensions.slice"

def info(msg: str, send_event: bool = True) -> None:
    log.info("[CGI] {0}", msg)
    if send_event:
        events.add_event(events.WALAEventOperation.CGroupsInfo, message=msg, log_event=False)


def warning(msg: str, send_event: bool = True) -> None:
    log.info("[CGW] {0}", msg)  # upstream logs these at INFO with the [CGW] tag
    if send_event:
        events.add_event(events.WALAEventOperation.CGroupsInfo, message=msg, is_success=False, log_event=False)


def extension_slice_name(extension_name: str, old_slice: bool = False) -> str:
    """``<Handler>[.<Ext>]-<version>`` → ``azure-vmextensions-<Handler>[.<Ext>].slice`` ('-' → '_')."""
    if not old_slice:
        extension_name = extension_name.rsplit("-", 1)[0]
    return f"{EXTENSION_SLICE_PREFIX}-{extension_name.replace('-', '_')}.slice"


def distro_supported(name: str, version: str) -> bool:
    return distros.cgroups_supported(name, version)


def quota_percent(value: str) -> str:
    """systemd's CPUQuotaPerSecUSec (``infinity``, ``500ms``, ``1s``, ``1.5s``) → ``50%`` / ``infinity``."""
    value = value.strip()
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", value)
    if value == "infinity" or m is None:
        return "infinity"
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[m.group(2)]
    return f"{round(float(m.group(1)) * scale * 100)}%"


class Systemd:
    """The few systemctl calls the configurator makes (through the one command runner)."""

    def __init__(self, run: Callable[..., Any] = system.run):
        self.run = run

    @staticmethod
    def running() -> bool:
        return system.exists("/run/systemd/system/")

    def get_property(self, unit: str, prop: str) -> str:
        out = self.run(["systemctl", "show", unit, "--property", prop], timeout=30).stdout
        m = re.match(r"[^=]+=(?P<value>.+)", out)
        if m is None:
            raise ValueError(f"Can't find property {prop} of {unit}")
        return m.group("value").strip()

    def set_properties(self, unit: str, props: Sequence[tuple[str, str]]) -> None:
        self.run(["systemctl", "set-property", unit, *[f"{k}={v}" for k, v in props], "--runtime"], timeout=30)

    def is_loaded(self, unit: str) -> bool:
        try:
            return self.get_property(unit, "LoadState").lower() == "loaded"
        except Exception:
            return False


@dataclass
class Metric:
    category: str
    counter: str
    instance: str
    value: float
    report_period: float = 0.0  # 0: every poll; else at most once per period (max memory, swap: hourly)


class TrackedCgroup:
    def __init__(self, name: str, path: str, version: str, track_throttle: bool = False):
        self.name = name
        self.cpu = cgroupfs.CpuController(path, version)
        self.memory = cgroupfs.MemoryController(path, version)
        self.track_throttle = track_throttle

    def metrics(self) -> list[Metric]:
        out: list[Metric] = []
        usage = self.cpu.cpu_usage()
        if usage is not None:
            out.append(Metric("CPU", "% Processor Time", self.name, usage))
            if self.track_throttle:
                out.append(Metric("CPU", "Throttled Time (s)", self.name, self.cpu.throttled_delta()))
        mem = self.memory.usage()
        out += [Metric("Memory", "Total Memory Usage (B)", self.name, mem.total),
                Metric("Memory", "Anon Memory Usage (B)", self.name, mem.anon),
                Metric("Memory", "Cache Memory Usage (B)", self.name, mem.cache)]
        if mem.max_usage is not None:
            out.append(Metric("Memory", "Max Memory Usage (B)", self.name, mem.max_usage, 3600))
        if mem.swap is not None:
            out.append(Metric("Memory", "Swap Memory Usage (B)", self.name, mem.swap, 3600))
        if mem.throttled_events is not None:
            out.append(Metric("Memory", "Total Memory Throttled Events", self.name, mem.throttled_events))
        return out


class CGroupConfigurator:
    """One per ext-handler process (the child makes it and hands it to its threads and the extensions
    manager); every public method is safe to call when disabled or not initialised."""

    def __init__(self, config: Optional[Config] = None, *, systemd: Optional[Systemd] = None,
                 hierarchy: Optional[cgroupfs.Hierarchy] = None, distro: Optional[distros.Distro] = None):
        self.config = config if config is not None else Config()
        self.systemd = systemd or Systemd()
        self.hierarchy = hierarchy
        self._distro = distro
        self.agent_enabled = False
        self.extensions_enabled = False
        self.initialized = False
        self.disabled_reason = ""
        self.tracked: dict[str, TrackedCgroup] = {}
        self.agent_cgroup: Optional[TrackedCgroup] = None
        self._unexpected: dict[int, int] = {}
        self._systemd_run_pids: set[int] = set()
        self._lock = threading.RLock()

    @property
    def distro(self) -> distros.Distro:
        if self._distro is None:
            self._distro = distros.detect()
        return self._distro

    @property
    def agent_unit(self) -> str:
        return f"{self.distro.service_name}.service"

    @property
    def unit_dir(self) -> str:
        return self.distro.unit_dir

    @property
    def enabled(self) -> bool:
        return self.agent_enabled or self.extensions_enabled

    @property
    def using_v2(self) -> bool:
        return self.hierarchy is not None and self.hierarchy.version == cgroupfs.V2

    def can_enforce_cpu(self) -> bool:
        return self.hierarchy is not None and self.hierarchy.can_enforce_cpu()

    # -- start-up (06 §10.1/10.2) --
    def supported(self) -> tuple[bool, str]:
        name, version = self.distro.name, self.distro.version
        if not distro_supported(name, version):
            return False, f"Cgroups is not currently supported on {name} {version}"
        if not Systemd.running():
            return False, "systemd was not detected; cgroups won't be supported on non-systemd systems"
        if self.hierarchy is None:
            self.hierarchy = cgroupfs.detect_host()
        if not self.hierarchy.supported:
            return False, f"Unable to determine which cgroup version to use: {self.hierarchy.reason}"
        return True, ""

    def initialize(self) -> None:
        with self._lock:
            if self.initialized:
                return
            self.initialized = True
            try:
                ok, why = self.supported()
                if not ok:
                    info(why)
                    self.disabled_reason = why
                    return
                info(f"Using cgroup {self.hierarchy.version} for resource enforcement and monitoring")
                if self.using_v2:
                    info("Only resource monitoring is currently supported on cgroup v2")
                agent_slice = self.systemd.get_property(self.agent_unit, "Slice")
                if agent_slice not in (AZURE_SLICE, "system.slice"):
                    warning(f"The agent is within an unexpected slice: {agent_slice}")
                    return
                self.cleanup_old_setup()
                self.setup_azure_slice()
                controllers = self.log_root_paths()
                if not controllers:
                    warning("Neither the cpu nor the memory controller is usable; will not track the agent")
                    return
                path = self._unit_path(agent_slice, self.agent_unit)
                self.agent_enabled = self.extensions_enabled = True
                self.systemd.set_properties(self.agent_unit, [("CPUAccounting", "yes"), ("MemoryAccounting", "yes")])
                enforce = self.can_enforce_cpu()
                if enforce:
                    quota = self.config.debug_agent_cpu_quota
                    info(f"Setting {self.agent_unit}'s CPUQuota to {quota}%")
                    self.systemd.set_properties(self.agent_unit, [("CPUQuota", f"{quota}%")])
                if path:
                    self.agent_cgroup = TrackedCgroup(AGENT_TELEMETRY_NAME, path, self.hierarchy.version, enforce)
                    self.tracked[AGENT_TELEMETRY_NAME] = self.agent_cgroup
            except Exception as e:
                warning(f"Error initializing cgroups: {e}")
            finally:
                info(f"Agent cgroups enabled: {self.agent_enabled}")
                if self.hierarchy is not None and self.hierarchy.supported and not self.can_enforce_cpu():
                    # a quota left by an earlier run (or by hand) must not outlive enforcement (06 §10.1)
                    info("Reset CPU quota if agent cgroups were not enabled for enforcement")
                    self._reset_cpu_quota(self.agent_unit)

    def log_root_paths(self) -> list[str]:
        """Log where the controllers are (as upstream); return the usable ones among cpu and memory:
        v2 — listed in the root's cgroup.subtree_control; v1 — mounted under /sys/fs/cgroup."""
        h = self.hierarchy
        usable = []
        if h.version == cgroupfs.V2:
            info(f"The root cgroup path is {h.v2_root}")
            for name in ("cpu", "memory"):
                enabled = name in h.v2_root_controllers
                info(f"The {name} controller is {'enabled' if enabled else 'not enabled'} at the root cgroup")
                if enabled:
                    usable.append(name)
        else:
            for name in ("cpu", "memory"):
                mount = (h.v1_mounts or {}).get(name)
                info(f"The {name} controller is mounted at {mount}" if mount else f"The {name} controller is not mounted")
                if mount:
                    usable.append(name)
        return usable

    def _reset_cpu_quota(self, unit: str) -> None:
        """CPUQuota back to none, only when one is set (a no-op costs one systemctl show)."""
        try:
            if quota_percent(self.systemd.get_property(unit, "CPUQuotaPerSecUSec")) == "infinity":
                return
            info(f"Resetting {unit}'s CPUQuota", send_event=False)
            self.systemd.set_properties(unit, [("CPUQuota", "")])
        except Exception as e:
            warning(f"Failed to reset the CPUQuota of {unit}: {e}")

    def _unit_path(self, slice_name: str, unit: str) -> Optional[str]:
        """The unit's cgroup directory (v2 unified or the v1 cpu mount)."""
        h = self.hierarchy
        if h is None:
            return None
        relative = f"{slice_name}/{unit}" if slice_name != "-.slice" else unit
        base = h.v2_root if h.version == cgroupfs.V2 else (h.v1_mounts or {}).get("cpu", "")
        return os.path.join(base, relative) if base else None

    def cleanup_old_setup(self) -> None:
        drop_in_dir = os.path.join(self.unit_dir, f"{self.agent_unit}.d")
        for path in [OLD_EXTENSIONS_SLICE, os.path.join(self.unit_dir, LOGCOLLECTOR_SLICE),
                     *[os.path.join(drop_in_dir, n) for n in OLD_DROP_INS]]:
            if system.remove(path):
                info(f"Removed unit file {path}", send_event=False)

    def setup_azure_slice(self) -> list[str]:
        """Write azure.slice, azure-vmextensions.slice and (if the unit has no Slice=) the 10-Slice.conf drop-in.
        All or nothing: if one file fails, the ones written now are removed. Returns the files written."""
        drop_in = os.path.join(self.unit_dir, f"{self.agent_unit}.d", SLICE_DROP_IN)
        wanted = []
        for name, contents in ((AZURE_SLICE, AZURE_SLICE_CONTENTS), (VMEXTENSIONS_SLICE, VMEXTENSIONS_SLICE_CONTENTS)):
            path = os.path.join(self.unit_dir, name)
            if not system.exists(path):
                wanted.append((path, contents))
        unit_text = system.read_text(os.path.join(self.unit_dir, self.agent_unit), default="") or ""
        if re.search(r"^\s*Slice=", unit_text, re.M):
            system.remove(drop_in)
        elif not system.exists(drop_in):
            wanted.append((drop_in, SLICE_DROP_IN_CONTENTS))
        written = []
        try:
            for path, contents in wanted:
                system.mkdir(os.path.dirname(path))
                system.write_file(path, contents, mode=0o644)
                written.append(path)
                info(f"Created unit file {path}", send_event=False)
        except OSError as e:
            warning(f"Failed to create unit files for the azure slice: {e}")
            for path in written:
                system.remove(path)
            return []
        return written

    def disable(self, reason: str, which: str = "all") -> None:
        """which: "all" (quotas reset, extensions run without systemd-run) or "agent" (agent quota only)."""
        with self._lock:
            if which == "all":
                self.agent_enabled = self.extensions_enabled = False
            message = f"[CGW] Disabling resource usage monitoring. Reason: {reason}"
            log.info("{0}", message)
            events.add_event(events.WALAEventOperation.CGroupsDisabled, message=message, is_success=False,
                             log_event=False)
            self.disabled_reason = reason
            try:
                self.systemd.set_properties(self.agent_unit, [("CPUQuota", "")])
            except Exception as e:
                warning(f"Failed to reset the agent's CPUQuota: {e}")
            if self.agent_cgroup is not None:
                self.agent_cgroup.track_throttle = False

    # -- extensions (06 §10.3) --
    def wrap_extension_command(self, argv: Sequence[str], handler_name: str, ext_name: Optional[str] = None,
                               op: str = "enable", resource_limits: Optional[dict] = None) -> list[str]:
        """The argv that starts an extension command in its own scope under the extension's slice
        (unchanged when cgroups are disabled). ``resource_limits`` (HandlerManifest) sets the slice's quota."""
        if not self.extensions_enabled or not system.which("systemd-run"):
            return list(argv)
        name = handler_name if not ext_name else f"{handler_name}.{ext_name}"
        slice_name = extension_slice_name(name, old_slice=True)
        if resource_limits is not None:
            self.setup_extension_slice(name, (resource_limits or {}).get("cpuQuotaPercentage"))
        scope = f"{op}_{uuid.uuid4()}"
        info(f"Started extension in unit '{scope}.scope'", send_event=False)
        return ["systemd-run", "--property=CPUAccounting=no", "--property=MemoryAccounting=no", f"--unit={scope}",
                "--scope", f"--slice={slice_name}", *argv]

    def extension_command_failed(self, handler_name: str, stderr: str, scope_hint: str = "") -> bool:
        """After a wrapped command failed: was it systemd-run itself? Then cgroups are disabled and the caller
        should run the command again directly (upstream's reaction)."""
        if "systemd-run" not in stderr and "Unit " not in stderr:
            return False
        if scope_hint and scope_hint in stderr and f"Unit {scope_hint} not found." not in stderr:
            return False
        self.disable(f"Failed to start {handler_name} using systemd-run: {stderr.strip()[:200]}")
        return True

    def _properties_to_update(self, unit: str, cpu_quota: str) -> list[tuple[str, str]]:
        props = []
        if self.systemd.get_property(unit, "CPUAccounting") != "yes":
            props.append(("CPUAccounting", "yes"))
        if self.systemd.get_property(unit, "MemoryAccounting") != "yes":
            props.append(("MemoryAccounting", "yes"))
        if quota_percent(self.systemd.get_property(unit, "CPUQuotaPerSecUSec")) != cpu_quota:
            props.append(("CPUQuota", "" if cpu_quota == "infinity" else cpu_quota))
        return props

    def _quota(self, value: Any) -> str:
        return f"{value}%" if value is not None and self.can_enforce_cpu() else "infinity"

    def setup_extension_slice(self, extension_name: str, cpu_quota: Any) -> None:
        """At install and every enable: only the properties that changed are set."""
        if not self.enabled:
            return
        slice_name = extension_slice_name(extension_name, old_slice=True)
        try:
            system.remove(os.path.join(self.unit_dir, slice_name))
            quota = self._quota(cpu_quota)
            props = self._properties_to_update(slice_name, quota)
            if props:
                info(f"CPUQuota not set for {extension_name}" if quota == "infinity"
                     else f"Setting {extension_name}'s CPUQuota to {quota}")
                self.systemd.set_properties(slice_name, props)
            path = self._unit_path(f"{AZURE_SLICE}/{VMEXTENSIONS_SLICE}", slice_name)
            if path and slice_name not in self.tracked:
                self.tracked[slice_name] = TrackedCgroup(slice_name, path, self.hierarchy.version, quota != "infinity")
        except Exception as e:
            warning(f"Failed to set the extension {slice_name} slice and quotas: {e}")

    def reset_extension_quota(self, extension_name: str) -> None:
        if self.enabled:
            slice_name = extension_slice_name(extension_name, old_slice=True)
            try:
                self.systemd.set_properties(slice_name, [("CPUQuota", "")])
            except Exception as e:
                warning(f"Failed to reset for {extension_name}: {e}")
            self.tracked.pop(slice_name, None)

    def set_extension_services_quota(self, services: Optional[list[dict]]) -> None:
        if not self.enabled or not services:
            return
        for service in services:
            name = service.get("name")
            if not name:
                continue
            for old in OLD_DROP_INS:
                system.remove(os.path.join(self.unit_dir, f"{name}.d", old))
            quota = self._quota(service.get("cpuQuotaPercentage"))
            try:
                props = self._properties_to_update(name, quota)
                if props and self.systemd.is_loaded(name):
                    info(f"Setting {name}'s CPUQuota to {quota}" if quota != "infinity" else f"CPUQuota not set for {name}")
                    self.systemd.set_properties(name, props)
            except Exception as e:
                warning(f"Failed to set the quotas for {name}: {e}")

    def reset_extension_services_quota(self, services: Optional[list[dict]]) -> None:
        if not self.enabled or not services:
            return
        for service in services:
            name = service.get("name")
            if name and self.systemd.is_loaded(name):
                try:
                    self.systemd.set_properties(name, [("CPUQuota", "")])
                except Exception as e:
                    warning(f"Failed to reset for {name} : {e}")

    # -- log collector (05 §15.3) --
    def logcollector_command(self, argv: Sequence[str]) -> list[str]:
        props = ["--property=CPUAccounting=yes", "--property=MemoryAccounting=yes",
                 f"--property=CPUQuota={LOGCOLLECTOR_CPU_QUOTA}"]
        if self.using_v2:
            props.append(f"--property=MemoryHigh={LOGCOLLECTOR_MEMORY_HIGH_V2}")
        return ["systemd-run", "--unit=collect-logs.scope", f"--slice={LOGCOLLECTOR_SLICE}", "--scope", *props,
                *argv]

    # -- monitoring and checks (06 §10.4) --
    def poll_metrics(self) -> list[Metric]:
        out: list[Metric] = []
        for name, cgroup in list(self.tracked.items()):
            try:
                out += cgroup.metrics()
            except cgroupfs.CgroupsError as e:
                log.periodic(3600, log.WARNING, "[CGW] Could not collect metrics for {0}: {1}", name, e)
                if not os.path.isdir(cgroup.cpu.path):
                    self.tracked.pop(name, None)
        return out

    def check_cgroups(self, metrics: list[Metric], pids: Optional[list[int]] = None) -> None:
        with self._lock:
            if not self.enabled:
                return
            errors = []
            process_ok = True
            try:
                self.check_processes(pids)
            except cgroupfs.CgroupsError as e:
                process_ok = False
                errors.append(str(e))
            quota_ok = True
            threshold = self.config.debug_agent_cpu_throttled_time_threshold
            for m in metrics:
                if m.instance == AGENT_TELEMETRY_NAME and m.counter == "Throttled Time (s)" and m.value > threshold:
                    quota_ok = False
                    errors.append(f"The agent has been throttled for {m.value} seconds")
            reason = "Check on cgroups failed:\n" + "\n".join(errors)
            if not process_ok and self.config.debug_cgroup_disable_on_process_check_failure:
                self.disable(reason, "all")
            if not quota_ok and self.config.debug_cgroup_disable_on_quota_check_failure:
                self.disable(reason, "agent")

    def track_systemd_run(self, pid: int) -> None:
        self._systemd_run_pids.add(pid)

    def check_processes(self, pids: Optional[list[int]] = None) -> None:
        """Unexpected processes in the agent cgroup in two consecutive checks → CgroupsError (≤ 5 samples)."""
        if self.agent_cgroup is None:
            return
        pids = cgroupfs.procs(self.agent_cgroup.cpu.path) if pids is None else pids
        unexpected = [p for p in pids if not processes.started_by_agent(p, self._systemd_run_pids)]
        seen_before = [p for p in unexpected if p in self._unexpected]
        self._unexpected = {p: 1 for p in unexpected}
        if seen_before:
            samples = [processes.describe(p) for p in seen_before[:5]]
            raise cgroupfs.CgroupsError(f"The agent's cgroup includes unexpected processes: {samples}")

    def agent_memory_exceeded(self) -> Optional[str]:
        """Debug.EnableAgentMemoryUsageCheck: anon+cache + swap over Debug.AgentMemoryQuota → the reason."""
        if not self.enabled or self.agent_cgroup is None:
            return None
        usage = self.agent_cgroup.memory.usage()
        current = usage.total + (usage.swap or 0)
        limit = self.config.debug_agent_memory_quota
        if current > limit:
            return f"The agent memory limit {limit} bytes exceeded. The current reported usage is {current} bytes."
        return None

