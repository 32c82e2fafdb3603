"""MonitorHandler thread (spec 06 §6.2): periodic log reset, HTTP error counts, cgroup metrics and
checks, system memory, HostGAPlugin and IMDS health, network configuration changes, the IMDS compute
fields of telemetry; and the main loop's agent memory check (06 §6.1 step 5).

Lean on requests: the HGAP ``/health`` probe is skipped while HGAP answered other requests within the
last minute (its status/vmSettings traffic already proves it is up), the goal-state header refresh
upstream does before each probe is left to the main loop (which fetches the goal state anyway), and
the HGAP and IMDS observations of a minute go to HealthService in ONE post (upstream posts twice).
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from guestagent import events, log
from guestagent.conf import Config
from guestagent.exthandler.cgroups import CGroupConfigurator
from guestagent.osutil import gpa, processes
from guestagent.periodic import Operation
from guestagent.protocol import activity
from guestagent.protocol.http import take_io_error_counts
from guestagent.protocol.imds import IMDS_ENDPOINT, ImdsClient
from guestagent.version import AGENT_LONG_NAME

if TYPE_CHECKING:  # the context imports these modules
    from guestagent.exthandler.context import ThreadContext

RESET_LOG_PERIOD = 12 * 3600.0
NETWORK_ERRORS_PERIOD = 30 * 60.0
SYSTEM_MEMORY_PERIOD = 3600.0
HEALTH_PERIOD = 60.0
HGAP_UNHEALTHY_AFTER = 5 * 60.0
NETWORK_CONFIG_PERIOD = 60.0
ROUTE_LINES = 100


def _reset_periodic_logs() -> None:
    log.reset_periodic()
    events.reset_periodic()


def report_network_errors(lib_dir: Optional[str] = None) -> Optional[str]:
    counts = take_io_error_counts()
    if not any(counts.values()):
        return None
    msg = f"hostplugin:{counts['hostplugin']};protocol:{counts['protocol']};other:{counts['other']}"
    events.add_event(events.WALAEventOperation.HttpErrors, message=msg, lib_dir=lib_dir)
    return msg


class HealthSignals:
    """The minute's HGAP and IMDS observations → one HealthService post."""

    def __init__(self, protocol: Any, imds: Any, lib_dir: Optional[str] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.protocol = protocol
        self.imds = imds
        self.lib_dir = lib_dir
        self.clock = clock
        self.hgap_last_ok: Optional[float] = None
        self.hgap_extended_reported = False
        self.observations: list[dict[str, Any]] = []
        self.probes = {"hgap_health": 0, "hgap_skipped": 0, "imds": 0, "posts": 0}

    def _observe(self, name: str, healthy: bool, value: str = "") -> None:
        self.observations.append({"ObservationName": name, "IsHealthy": bool(healthy), "Description": "",
                                  "Value": value})
        del self.observations[:-10]

    def hgap(self) -> bool:
        now = self.clock()
        hp = self.protocol.host_plugin
        if activity.answered_within(hp.port, HEALTH_PERIOD):
            self.probes["hgap_skipped"] += 1
            ok = True
        else:
            self.probes["hgap_health"] += 1
            try:
                ok = bool(hp.ensure_initialized()) and bool(hp.health())
            except Exception as e:
                events.add_event(events.WALAEventOperation.HostPluginHeartbeat, is_success=False,
                                 message=f"{type(e).__name__}: {e}", log_event=False, lib_dir=self.lib_dir)
                ok = False
        if ok or self.hgap_last_ok is None:
            self.hgap_last_ok = now if ok else (self.hgap_last_ok or now)
            self.hgap_extended_reported = False if ok else self.hgap_extended_reported
        failing_for = now - self.hgap_last_ok
        healthy = ok or failing_for < HGAP_UNHEALTHY_AFTER
        if not healthy and not self.hgap_extended_reported:
            self.hgap_extended_reported = True
            events.add_event(events.WALAEventOperation.HostPluginHeartbeatExtended, is_success=False,
                             message=f"{int(failing_for)} s since successful heartbeat", log_event=False,
                             lib_dir=self.lib_dir)
        self._observe("GuestAgentPluginHeartbeat", healthy)
        return healthy

    def imds_heartbeat(self) -> bool:
        self.probes["imds"] += 1
        try:
            obs = self.imds.heartbeat(single_attempt=True)
        except Exception as e:
            events.add_periodic(3600, events.WALAEventOperation.ImdsHeartbeat, is_success=False,
                                message=f"{type(e).__name__}: {e}", log_event=False, lib_dir=self.lib_dir)
            return True
        self._observe(obs["ObservationName"], bool(obs["IsHealthy"]), str(obs["Value"]))
        return bool(obs["IsHealthy"])

    def run(self) -> None:
        """One minute: what HGAP's calls observed since the last post (/versions, /status), both probes (each
        isolated), then one post of them all; every unhealthy one also goes to telemetry (as upstream)."""
        errors = []
        for probe in (self.hgap, self.imds_heartbeat):
            try:
                probe()
            except Exception as e:
                errors.append(f"{probe.__name__}: {e}")
        self.observations[:0] = self.protocol.host_plugin.take_observations()
        del self.observations[:-10]
        if self.observations:
            observations, self.observations = self.observations, []
            self.probes["posts"] += 1
            try:
                self.protocol.post_health_observations(observations)
            finally:
                self._report_failures(observations)
        if errors:
            raise RuntimeError("; ".join(errors))


    def _report_failures(self, observations: list[dict[str, Any]]) -> None:
        for o in observations:
            if not o["IsHealthy"]:
                events.add_event(events.WALAEventOperation.HealthObservation, is_success=False,
                                 message=json.dumps({"ObservationName": o["ObservationName"][:64],
                                                     "IsHealthy": False, "Description": o["Description"][:128],
                                                     "Value": o["Value"][:128]}),
                                 lib_dir=self.lib_dir)


class ResourceUsage:
    """PollResourceUsage: cgroup metrics → perf-counter events (hourly ones at most hourly) + checks."""

    def __init__(self, configurator: Any, log_metrics: bool = False, lib_dir: Optional[str] = None):
        self.configurator = configurator
        self.log_metrics = log_metrics
        self.lib_dir = lib_dir
        self._last_reported: dict[str, float] = {}

    def run(self) -> list:
        metrics = self.configurator.poll_metrics()
        now = time.monotonic()
        for m in metrics:
            key = m.category + m.counter + m.instance
            last = self._last_reported.get(key)
            if last is None or now - last >= m.report_period:
                events.add_metric(m.category, m.counter, m.instance, m.value, log_event=self.log_metrics,
                                  lib_dir=self.lib_dir)
                self._last_reported[key] = now
        self.configurator.check_cgroups(metrics)
        return metrics


def poll_system_memory(log_metrics: bool = False, lib_dir: Optional[str] = None) -> None:
    used, available = processes.system_memory_mb()
    events.add_metric("Memory", "Used Memory (MB)", "", used, log_event=log_metrics, lib_dir=lib_dir)
    events.add_metric("Memory", "Available Memory (MB)", "", available, log_event=log_metrics, lib_dir=lib_dir)


class NetworkConfiguration:
    """Route table and NIC state, logged when they change (or once, when monitoring is off)."""

    def __init__(self):
        self.routes: Optional[str] = None
        self.nics: Optional[dict[str, str]] = None

    @staticmethod
    def _nic_state() -> dict[str, str]:
        base = "/sys/class/net"
        out = {}
        for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            def read(f: str, name: str = name) -> str:
                try:
                    with open(os.path.join(base, name, f)) as fh:
                        return fh.read().strip()
                except OSError:
                    return ""
            out[name] = f"{name} (mac: {read('address')}, state: {read('operstate')})"
        return out

    def run(self) -> None:
        try:
            with open("/proc/net/route", encoding="utf-8") as f:
                lines = f.read().splitlines()[:ROUTE_LINES]
        except OSError:
            lines = []
        routes = "\n".join(lines)
        if routes != self.routes:
            entries = [" ".join(line.split()[:3]) for line in lines[1:] if line.strip()]
            log.info("Route table: [{0}]", ", ".join(entries))
            self.routes = routes
        nics = self._nic_state()
        if nics != self.nics:
            log.info("{0} NIC state: [{1}]", "Initial" if self.nics is None else "Updated", ", ".join(nics.values()))
            self.nics = nics


class GpaHealth:
    """The Guest Proxy Agent's health from its status.json: logged and sent as an event when it changes
    (the first reading counts as a change only when the GPA is there), never otherwise. An absent file
    is "not installed", not an error."""

    def __init__(self, lib_dir: Optional[str] = None, path: str = gpa.STATUS_FILE):
        self.lib_dir = lib_dir
        self.path = path
        #: The last state reported: None before the first reading, "" while the GPA is absent.
        self.last: Optional[str] = None
        self.changes = 0

    def run(self) -> None:
        status = gpa.read_status(self.path)
        state = "" if status is None else status.summary()
        if state == self.last or (self.last is None and status is None):
            self.last = state
            return
        self.last = state
        self.changes += 1
        if status is None:
            message = f"Guest Proxy Agent status is gone ({self.path} removed)"
            healthy = False
        else:
            healthy = status.healthy
            message = f"Guest Proxy Agent is {'healthy' if healthy else 'unhealthy'}: {state}"
        (log.info if healthy else log.warn)("{0}", message)
        events.add_event(events.WALAEventOperation.GuestProxyAgentHealth, is_success=healthy, message=message,
                         log_event=False, lib_dir=self.lib_dir)


IMDS_FIELDS_RETRY_MIN = 15.0
IMDS_FIELDS_RETRY_MAX = 3600.0
MEMORY_CHECK_FIRST_DELAY = 5 * 60.0
MEMORY_ERROR_REPORT_PERIOD = 6 * 3600.0


def imds_client() -> Any:
    """The monitor's IMDS client (its calls use ImdsClient's single-attempt mode, so an unreachable IMDS
    costs this thread 2 s a probe and never touches the main loop). GUESTAGENT_IMDS_HOST/PORT: lab hooks."""
    host = os.environ.get("GUESTAGENT_IMDS_HOST", IMDS_ENDPOINT)
    port = os.environ.get("GUESTAGENT_IMDS_PORT", "80")
    return ImdsClient(host, int(port) if port.isdigit() else 80)


class ImdsCommonFields:
    """Telemetry's Location/SubscriptionId/ResourceGroupName/VMId from IMDS compute info: fetched once, in the
    monitor thread; a failure raises so the periodic operation retries with back-off (15 s doubling to 1 h)."""

    def __init__(self, imds: Any):
        self.imds = imds
        self.done = False
        self.attempts = 0

    def run(self) -> None:
        if self.done:
            return
        self.attempts += 1
        compute = self.imds.get_compute(single_attempt=True)
        events.update_common_from_imds(compute)
        self.done = True
        log.info("Telemetry common fields updated from IMDS (vmId {0})", compute.vm_id or "?")


class AgentMemoryCheck:
    """06 §6.1 step 5 (Debug.EnableAgentMemoryUsageCheck): once the goal state converged, first after 5 min,
    then every Debug.CgroupCheckPeriod, ask the cgroup configurator whether the agent exceeds
    Debug.AgentMemoryQuota; if so write an AgentMemory event and tell the main loop to exit (code 0: the
    daemon starts a fresh child). The child owns one; its loop calls :meth:`exceeded`."""

    def __init__(self, config: Config, configurator: CGroupConfigurator, lib_dir: str,
                 clock: Callable[[], float] = time.monotonic):
        self.enabled = config.debug_enable_agent_memory_usage_check
        self.period = config.debug_cgroup_check_period
        self.config = config
        self.configurator = configurator
        self.lib_dir = lib_dir
        self.clock = clock
        self.next_check = clock() + MEMORY_CHECK_FIRST_DELAY
        self.checks = 0
        self._last_error_report: Optional[float] = None

    def exceeded(self, extensions: Any) -> bool:
        """True: the limit is exceeded (event written) and the child must exit now."""
        if not self.enabled:
            return False
        now = self.clock()
        if now < self.next_check:
            return False
        try:
            if extensions is None or not extensions.converged():
                return False
            self.next_check = now + self.period
            self.checks += 1
            reason = self.configurator.agent_memory_exceeded()
        except Exception as e:
            if self._last_error_report is None or now - self._last_error_report >= MEMORY_ERROR_REPORT_PERIOD:
                self._last_error_report = now
                msg = (f"Error checking the agent's memory usage: {e} --- [NOTE: Will not log the same error for "
                       f"the 6 hours]")
                log.warn("{0}", msg)
                events.add_event(events.WALAEventOperation.AgentMemory, is_success=False, message=msg,
                                 log_event=False, lib_dir=self.lib_dir)
            return False
        if not reason:
            return False
        msg = f"Check on agent memory usage:\n{reason}"
        log.info("{0}", msg)
        events.add_event(events.WALAEventOperation.AgentMemory, is_success=True, message=msg, log_event=False,
                         lib_dir=self.lib_dir)

        log.info("Agent {0} is reached memory limit -- exiting", AGENT_LONG_NAME)
        return True


def operations(ctx: ThreadContext) -> list[Operation]:
    config = ctx.config
    log_metrics = config.debug_cgroup_log_metrics
    ops = [Operation("ResetPeriodicLogMessages", _reset_periodic_logs, RESET_LOG_PERIOD,
                     initial_delay=RESET_LOG_PERIOD),
           Operation("ReportNetworkErrors", lambda: report_network_errors(ctx.lib_dir), NETWORK_ERRORS_PERIOD,
                     initial_delay=NETWORK_ERRORS_PERIOD),
           Operation("PollSystemWideResourceUsage", lambda: poll_system_memory(log_metrics, ctx.lib_dir),
                     SYSTEM_MEMORY_PERIOD)]
    configurator = ctx.cgroups
    configurator.initialize()
    if config.cgroups_enabled and configurator.enabled:
        usage = ResourceUsage(configurator, log_metrics, ctx.lib_dir)
        ops.append(Operation("PollResourceUsage", usage.run, config.debug_cgroup_check_period))
    imds = imds_client()
    fields = ImdsCommonFields(imds)
    ctx.imds_common_fields = fields
    ops.append(Operation("UpdateImdsCommonFields", fields.run, IMDS_FIELDS_RETRY_MAX,
                         min_backoff=IMDS_FIELDS_RETRY_MIN))
    if ctx.protocol is not None:
        health = HealthSignals(ctx.protocol, imds, ctx.lib_dir)
        ctx.health_signals = health
        ops.append(Operation("SendHealthSignals", health.run, HEALTH_PERIOD, initial_delay=HEALTH_PERIOD))
    ops.append(Operation("ReportGuestProxyAgentHealth", GpaHealth(ctx.lib_dir).run, HEALTH_PERIOD))
    network = NetworkConfiguration()
    if config.monitor_network_configuration_changes:
        ops.append(Operation("ReportNetworkConfigurationChanges", network.run, NETWORK_CONFIG_PERIOD))
    else:
        ops.append(Operation("LogNetworkConfiguration", network.run, 10 * 365 * 86400.0))
    return ops
