"""The ext-handler's start-up telemetry, worded as upstream 2.15's: OSInfo, ProtocolEndpoint (a WireServer
other than the known address) and ConfigurationChange (each setting that differs from its default)."""

from __future__ import annotations

import platform
import sys

from guestagent import events, log
from guestagent.conf import BY_KEY, Config
from guestagent.errors import CommandError
from guestagent.osutil import system
from guestagent.osutil.distros import Distro, osutil_name
from guestagent.osutil.osrelease import distro_info
from guestagent.version import AGENT_LONG_NAME, AGENT_NAME, AGENT_VERSION

KNOWN_WIRESERVER_IP = "168.63.129.16"
ABSENT, FAILED = "Absent", "Failed"
PERIOD_NOTE = ("Changing this value affects how often extensions are processed and status for the VM is reported. "
               "Too small a value may report the VM as unresponsive")


def _first_line(argv: list[str], empty: str, failed: str) -> str:
    """First line of a tool's version output (upstream's probes); ``empty`` when it prints nothing,
    ``failed`` when it cannot run or fails."""
    try:
        res = system.run(argv, timeout=10, check=False, log=False)
    except CommandError:
        return failed
    if not res.ok:
        return failed
    return res.stdout.split("\n")[0] if res.stdout else empty


def os_info_message(distro: Distro, service_name: str) -> str:
    py = ".".join(str(v) for v in sys.version_info[:3])
    systemd = system.exists("/run/systemd/system")
    return (f"Distro: {distro.name}-{distro.version}; OSUtil: {osutil_name(distro)}; AgentService: {service_name}; "
            f"Python: {py}; Arch: {platform.machine()}; systemd: {systemd}; "
            f"systemd_version: {_first_line(['systemctl', '--version'], '', 'unknown')}; "
            f"LISDrivers: {_first_line(['modinfo', '-F', 'version', 'hv_vmbus'], ABSENT, FAILED)}; "
            f"logrotate: {_first_line(['logrotate', '--version'], ABSENT, ABSENT)};")


def configuration_changes(config: Config) -> list[str]:
    """The ConfigurationChange messages, in upstream's order."""
    out: list[str] = []

    def int_changed(key: str, current: int, note: str = "") -> None:
        default = BY_KEY[key].default if BY_KEY[key].default is not None else BY_KEY[key].shown
        if default != current:
            out.append(f"{key} changed from its default: {default}. New value: {current}. {note}")

    def disabled(key: str, value: bool) -> None:
        if not value:
            out.append(f"{key} is set to False, not processing the operation")

    int_changed("Extensions.GoalStatePeriod", config.extensions_goal_state_period, PERIOD_NOTE)
    int_changed("Extensions.InitialGoalStatePeriod", config.extensions_initial_goal_state_period, PERIOD_NOTE)
    disabled("OS.EnableFirewall", config.os_enable_firewall)
    disabled("Extensions.Enabled", config.extensions_enabled)
    disabled("AutoUpdate.Enabled", config.auto_update_enabled)
    disabled("AutoUpdate.UpdateToLatestVersion", config.auto_update_update_to_latest_version)
    if config.is_present("AutoUpdate.Enabled") and \
            config.auto_update_enabled != config.auto_update_update_to_latest_version:
        out.append("AutoUpdate.Enabled property is **Deprecated** now but it's set to different value from "
                   "AutoUpdate.UpdateToLatestVersion. Please consider removing it if added by mistake")
    if config.os_enable_firewall:
        int_changed("OS.EnableFirewallPeriod", config.os_enable_firewall_period)
    if config.auto_update_enabled:
        int_changed("Autoupdate.Frequency", config.autoupdate_frequency)
    if config.lib_dir != "/var/lib/waagent":
        out.append(f"lib dir is in an unexpected location: {config.lib_dir}")
    return out


def log_start(distro: Distro) -> str:
    """The ext-handler's first lines, as upstream's: agent, OS, Python, CPU, then the OSInfo message naming
    the family's OS-util class and agent service (returned: the OSInfo event sends it later)."""
    log.info("{0} (Goal State Agent version {1})", AGENT_LONG_NAME, AGENT_VERSION)
    log.info("OS: {0}", distro_info())
    log.info("Python: {0}", ".".join(str(v) for v in sys.version_info[:3]))
    log.info("CPU Arch: {0}", platform.machine())
    message = os_info_message(distro, distro.service_name)
    log.info("{0}", message)
    return message


def send_identity(endpoint: str, os_info: str, lib_dir: str) -> None:
    """After the first goal state: ProtocolEndpoint (an unusual WireServer address), then OSInfo (the
    message :func:`log_start` logged)."""
    if endpoint and endpoint != KNOWN_WIRESERVER_IP:
        message = f"Protocol endpoint ({endpoint}) is not known wireserver ip: {KNOWN_WIRESERVER_IP}"
        log.info("{0}", message)
        events.add_event(events.WALAEventOperation.ProtocolEndpoint, message=message, lib_dir=lib_dir)
    events.add_event(events.WALAEventOperation.OSInfo, message=os_info, name=AGENT_NAME, version=AGENT_VERSION,
                     lib_dir=lib_dir)


def send_configuration_changes(config: Config, lib_dir: str) -> None:
    for change in configuration_changes(config):
        log.info("******** {0} ********", change)
        events.add_event(events.WALAEventOperation.ConfigurationChange, message=change, lib_dir=lib_dir)
