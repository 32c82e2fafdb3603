"""MonitorHandler thread (spec 06 §6.2): periodic log reset, HTTP error counts, cgroup metrics and
checks, system memory, HostGAPlugin and IMDS health, network configuration changes.

Lean on requests: the HGAP ``/health`` probe is skipped while HGAP answered other requests within the
last minute (its status/vmSettings traffic already proves it is up), the goal-state header refresh
upstream does before each probe is left to the main loop (which fetches the goal state anyway), and
the HGAP and IMDS observations of a minute go to HealthService in ONE post (upstream posts twice).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional

from guestagent import events, log
from guestagent.periodic import Operation

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
    from guestagent.protocol.http import take_io_error_counts

    counts = take_io_error_counts()
    if not any(counts.values()):
        return None
    msg = f"hostplugin:{counts['hostplugin']};protocol:{counts['protocol']};other:{counts['other']}"
    events.add_event(events.WALAEventOperation.HttpErrors, message=msg, lib_dir=lib_dir)
    return msg


def system_memory(meminfo: Optional[str] = None) -> tuple[int, int]:
    """(used MB, available MB) as ``free -b`` computes them: used = total − available."""
    if meminfo is None:
        with open("/proc/meminfo", encoding="utf-8") as f:
            meminfo = f.read()
    values = {}
    for line in meminfo.splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[1].isdigit():
            values[parts[0]] = int(parts[1]) * 1024
    total = values.get("MemTotal", 0)
    available = values.get("MemAvailable", values.get("MemFree", 0))
    return (total - available) // (1024 * 1024), available // (1024 * 1024)


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

    def _observe(self, name: str, healthy: bool, description: str = "") -> None:
        self.observations.append({"ObservationName": name, "IsHealthy": bool(healthy),
                                  "Description": description[:128], "Value": ""})
        del self.observations[:-10]
        if not healthy:
            events.add_periodic(3600, events.WALAEventOperation.HealthObservation, is_success=False,
                                message=f"{name}: {description}", log_event=False, lib_dir=self.lib_dir)

    def hgap(self) -> bool:
        from guestagent.protocol import activity

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
            obs = self.imds.heartbeat()
        except Exception as e:
            events.add_periodic(3600, events.WALAEventOperation.ImdsHeartbeat, is_success=False,
                                message=f"{type(e).__name__}: {e}", log_event=False, lib_dir=self.lib_dir)
            return True
        self._observe(obs.get("ObservationName", "InstanceMetadataHeartbeat"), bool(obs.get("IsHealthy", True)),
                      str(obs.get("Description", "")))
        return bool(obs.get("IsHealthy", True))

    def run(self) -> None:
        """One minute: both probes (each isolated), then one post of what they observed."""
        errors = []
        for probe in (self.hgap, self.imds_heartbeat):
            try:
                probe()
            except Exception as e:
                errors.append(f"{probe.__name__}: {e}")
        if self.observations:
            observations, self.observations = self.observations, []
            self.probes["posts"] += 1
            self.protocol.post_health_observations(observations)
        if errors:
            raise RuntimeError("; ".join(errors))


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
    used, available = system_memory()
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


IMDS_PROBE_TIMEOUT = 2.0


def imds_client(protocol: Any = None) -> Any:
    """The IMDS client of the monitor: one attempt with a short timeout per probe, so an unreachable IMDS
    costs the thread 2 s a minute, not six retried 5-s attempts. GUESTAGENT_IMDS_HOST/PORT: lab hooks."""
    from guestagent.protocol.http import HttpClient
    from guestagent.protocol.imds import IMDS_ENDPOINT, ImdsClient

    class OneShot(HttpClient):
        def request(self, *args: Any, **kw: Any):
            kw["max_retry"] = 1
            kw["timeout"] = min(float(kw.get("timeout") or IMDS_PROBE_TIMEOUT), IMDS_PROBE_TIMEOUT)
            return super().request(*args, **kw)

    host = os.environ.get("GUESTAGENT_IMDS_HOST", IMDS_ENDPOINT)
    port = os.environ.get("GUESTAGENT_IMDS_PORT", "80")
    return ImdsClient(host, int(port) if port.isdigit() else 80, http=OneShot())


def operations(ctx) -> list[Operation]:
    from guestagent.exthandler import cgroups
    from guestagent.protocol import activity

    config = ctx.config
    log_metrics = bool(config.get("Debug.CgroupLogMetrics"))
    ops = [Operation("ResetPeriodicLogMessages", _reset_periodic_logs, RESET_LOG_PERIOD,
                     initial_delay=RESET_LOG_PERIOD),
           Operation("ReportNetworkErrors", lambda: report_network_errors(ctx.lib_dir), NETWORK_ERRORS_PERIOD,
                     initial_delay=NETWORK_ERRORS_PERIOD),
           Operation("PollSystemWideResourceUsage", lambda: poll_system_memory(log_metrics, ctx.lib_dir),
                     SYSTEM_MEMORY_PERIOD)]
    configurator = cgroups.get_configurator(config)
    configurator.initialize()
    if config.get("CGroups.Enabled") is not False and configurator.enabled:
        usage = ResourceUsage(configurator, log_metrics, ctx.lib_dir)
        ops.append(Operation("PollResourceUsage", usage.run, float(config.get("Debug.CgroupCheckPeriod") or 300)))
    if ctx.protocol is not None:
        if getattr(ctx.protocol, "http", None) is not None:
            activity.install(ctx.protocol.http)
        health = HealthSignals(ctx.protocol, imds_client(ctx.protocol), ctx.lib_dir)
        ctx.health_signals = health
        ops.append(Operation("SendHealthSignals", health.run, HEALTH_PERIOD, initial_delay=HEALTH_PERIOD))
    network = NetworkConfiguration()
    if config.get("Monitor.NetworkConfigurationChanges"):
        ops.append(Operation("ReportNetworkConfigurationChanges", network.run, NETWORK_CONFIG_PERIOD))
    else:
        ops.append(Operation("LogNetworkConfiguration", network.run, 10 * 365 * 86400.0))
    return ops
