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
from guestagent.errors import CommandError
from guestagent.osutil import system
from guestagent.osutil.processes import pid_alive


def dhcp_client_pids(command: Sequence[str]) -> list[int]:
    """PIDs from ``pidof <client>`` sorted (empty when none runs or the command fails)."""
    try:
        out = system.run(list(command), timeout=60, log=False).stdout
    except CommandError:
        return []
    return sorted(int(p) for p in out.split() if p.isdigit())


def missing_default_route() -> bool:
    for line in (system.read_text("/proc/net/route", default="") or "").splitlines()[1:]:
        cols = line.split()
        if len(cols) > 2 and cols[1] == "00000000":
            return False
    return True


def conf_routes(gateway: Optional[str], routes: Optional[Sequence[tuple[str, int, str]]]) -> list[list[str]]:
    """Add the default gateway (when missing) and the given (net, prefix, gateway) routes; returns
    the commands run. Failures are logged, never raised."""
    log.info("Configure routes")
    log.info("Gateway:{0}", gateway)
    log.info("Routes:{0}", list(routes) if routes is not None else None)
    argvs = []
    if gateway is not None and missing_default_route():
        argvs.append(["ip", "route", "add", "default", "via", gateway])
    for net, prefix, via in routes or ():
        argvs.append(["ip", "route", "add", f"{net}/{prefix}", "via", via])
    for argv in argvs:
        res = system.run(argv, check=False, timeout=60)
        if not res.ok:
            log.warn("Failed to add route {0}: {1}", " ".join(argv[3:]), res.stderr.strip())
    return argvs


class DhcpClientMonitor:
    """State of one ``MonitorDhcpClientRestart`` operation."""

    def __init__(self, pid_command: Sequence[str], gateway: Optional[str] = None,
                 routes: Optional[Sequence[tuple[str, int, str]]] = None):
        self.pid_command = list(pid_command)
        self.gateway = gateway
        self.routes = routes
        self.pids: list[int] = []
        self.warning_enabled = True
        self.restarts = 0
        conf_routes(gateway, routes)

    def _current(self) -> list[int]:
        pids = dhcp_client_pids(self.pid_command)
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
            conf_routes(self.gateway, self.routes)
            self.pids = new
            self.restarts += 1
            return True
        return False
