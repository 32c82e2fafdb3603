"""EnvHandler thread: the VM's housekeeping duties (spec 05 §10, 06 §6.2).

Upstream's operations, each with its own period: persistent net rules removal, DHCP client restart
monitor, WireServer firewall check (first run = start-up set-up and persistence), SCSI disk timeout,
hostname monitor. 2.15 has no separate cache-purge timer: goal-state history is purged where it is
written (03 §7). RDMA is the daemon's business (05 §8), not this thread's.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Callable, Optional

from guestagent import events, log
from guestagent.conf import Config
from guestagent.exthandler.firewall import EnableFirewall, initialize_firewall
from guestagent.osutil import dhcpmonitor, distros, hostname, nethelper, netrules, scsi, system
from guestagent.periodic import Operation
from guestagent.protocol import endpoint as ep

if TYPE_CHECKING:  # the context imports these modules
    from guestagent.exthandler.context import ThreadContext

HOSTNAME_PUBLISHING_OP = "HostnamePublishing"


class MonitorHostNameChanges:
    """Notice a hostname change (``hostname x``, ``hostnamectl``) and publish it through DHCP."""

    def __init__(self, config: Config, lib_dir: str, distro=None, gethostname: Callable[[], str] = socket.gethostname,
                 publish: Optional[Callable[[str], None]] = None):
        self.config = config
        self.lib_dir = lib_dir
        self.distro = distro or distros.detect()
        self.gethostname = gethostname
        self._publish = publish
        self.hostname = hostname.get_hostname_record(lib_dir)
        self.changes = 0

    def publish(self, name: str) -> None:
        if self._publish is not None:
            self._publish(name)
        else:  # netlink in a helper interpreter: the child does not keep pyroute2 for this rare action
            hostname.publish_hostname(name, self.distro, self.lib_dir, nethelper.Helper())

    def __call__(self) -> None:
        current = self.gethostname()
        if current == self.hostname:
            return
        log.info("EnvMonitor: Detected hostname change: {0} -> {1}", self.hostname, current)
        self.changes += 1
        hostname.set_hostname(current, self.distro)
        try:
            self.publish(current)
        except Exception as e:
            events.add_event(HOSTNAME_PUBLISHING_OP, is_success=False, message=f"Error while publishing the hostname: "
                             f"{e}", log_event=False, lib_dir=self.lib_dir)
        self.hostname = current


def rdma_report(config: Config, lib_dir: str) -> Optional[str]:
    """OS.EnableRDMA / UpdateRdmaDriver / CheckRdmaDriver: say plainly what this agent does (it detects
    RDMA hardware but does not configure it) instead of pretending. None when RDMA is not enabled."""
    if not config.os_enable_rdma and not config.os_update_rdma_driver:
        return None

    found = [p for p in ("/dev/hvnd_rdma", "/sys/class/infiniband") if system.exists(p)]
    message = (f"RDMA is enabled in the configuration; devices present: {found or 'none'}. This agent does not "
               "configure RDMA devices or drivers (see docs/housekeeping.md)")
    log.warn("{0}", message)
    events.add_event("RDMA", is_success=not found, message=message, log_event=False, lib_dir=lib_dir)
    return message


def _endpoint(ctx: ThreadContext) -> str:
    if ctx.protocol is not None:
        return ctx.protocol.endpoint

    return ep.read_endpoint(ctx.lib_dir)


def operations(ctx: ThreadContext) -> list[Operation]:
    config = ctx.config
    distro = distros.detect()
    rdma_report(config, ctx.lib_dir)
    ops: list[Operation] = []

    def remove_rules() -> None:
        if distro.remove_net_rules:
            netrules.remove_rules_files(ctx.lib_dir)

    ops.append(Operation("RemovePersistentNetworkRules", remove_rules,
                         config.os_remove_persistent_net_rules_period))

    monitor = dhcpmonitor.DhcpClientMonitor(distro.dhcp_pid_command, nethelper.Helper(),
                                            pid_prefix=distro.dhcp_pid_prefix)
    ops.append(Operation("MonitorDhcpClientRestart", monitor.check,
                         config.os_monitor_dhcp_client_restart_period))

    if config.os_enable_firewall:
        ops.append(Operation("EnableFirewall", EnableFirewall(config, lambda: _endpoint(ctx)),
                             config.os_enable_firewall_period))
    else:
        initialize_firewall(config, "")  # logs and reports that the firewall is skipped

    timeout = config.os_root_device_scsi_timeout
    if timeout is not None:
        ops.append(Operation("SetRootDeviceScsiTimeout", lambda: scsi.set_scsi_disks_timeout(str(timeout)),
                             config.os_root_device_scsi_timeout_period))

    if config.provisioning_monitor_host_name:
        ops.append(Operation("MonitorHostNameChanges", MonitorHostNameChanges(config, ctx.lib_dir, distro),
                             config.provisioning_monitor_host_name_period))
    return ops
