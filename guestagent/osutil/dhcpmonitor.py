"""Watching the DHCP client and restoring the routes it may drop (spec 05 §10, 01 §1.4).

A restarted DHCP client can flush the routes the agent added from its own DHCP exchange (the route
to the WireServer on networks whose DHCP server hands out classless static routes). The monitor
records the client's PIDs; when a recorded PID is gone and a different, non-empty set runs, the
routes are re-applied. As upstream, a fresh ext-handler process knows no gateway or routes of its
own (only the daemon exchanged DHCP), so re-applying adds nothing unless routes were handed in.
"""

from __future__ import annotations

from typing import Optional, Sequence

from guestagent import log
from guestagent.errors import CommandError, OSUtilError
from guestagent.osutil import system
from guestagent.osutil.nethelper import NetOps, RouteSpec
from guestagent.osutil.processes import pid_alive


def dhcp_client_pids(command: Sequence[str], prefix: str = "") -> list[int]:
    """PIDs from ``pidof <client>`` sorted (empty when none runs or the command fails); ``prefix`` is
    dropped first (CoreOS asks systemctl, which answers ``MainPID=<pid>``)."""
    try:
        out = system.run(list(command), timeout=60, log=False).stdout
    except CommandError:
        return []
    if prefix:
        out = out.replace(prefix, "")
    return sorted(int(p) for p in out.split() if p.isdigit())


def conf_routes(net: NetOps, gateway: Optional[str], routes: Optional[Sequence[RouteSpec]]) -> None:
    """Add the default gateway (when missing) and the given (net, prefix, gateway) routes through ``net``.
    Failures are logged, never raised; with nothing to add, netlink is not asked at all."""
    log.info("Configure routes")
    log.info("Gateway:{0}", gateway)
    log.info("Routes:{0}", list(routes) if routes is not None else None)
    if gateway is None and not routes:
        return
    try:
        failures = net.configure_routes(gateway, list(routes or ()))
    except OSUtilError as e:
        failures = [str(e)]
    for failure in failures:
        log.warn("Failed to add route: {0}", failure)


class DhcpClientMonitor:
    """State of one ``MonitorDhcpClientRestart`` operation."""

    def __init__(self, pid_command: Sequence[str], net: NetOps, gateway: Optional[str] = None,
                 routes: Optional[Sequence[RouteSpec]] = None, pid_prefix: str = ""):
        self.pid_command = list(pid_command)
        self.pid_prefix = pid_prefix
        self.net = net
        self.gateway = gateway
        self.routes = routes
        self.pids: list[int] = []
        self.warning_enabled = True
        self.restarts = 0
        conf_routes(net, gateway, routes)

    def _current(self) -> list[int]:
        pids = dhcp_client_pids(self.pid_command, self.pid_prefix)
        if not pids and self.warning_enabled:
            log.warn("Dhcp client is not running.")
        self.warning_enabled = bool(pids)
        return pids

    def check(self) -> bool:
        """One run; True when a restart was detected and the routes re-applied."""
        if not self.pids:
            self.pids = self._current()
            return False
        if all(pid_alive(p) for p in self.pids):
            return False
        new = self._current()
        if new and new != self.pids:
            log.info("EnvMonitor: Detected dhcp client restart. Restoring routing table.")
            conf_routes(self.net, self.gateway, self.routes)
            self.pids = new
            self.restarts += 1
            return True
        return False
