"""Telling the DHCP client which hostname to send, and bouncing the interface so it does (05 §6, §18).

Three publish paths, chosen by :class:`~guestagent.osutil.distros.Distro`: dhclient.conf + ifupdown
(Debian, default), systemd-networkd restart (Ubuntu >= 18.04), ifcfg ``DHCP_HOSTNAME`` + NetworkManager
/ ``ip link`` (RHEL >= 7).
"""

from __future__ import annotations

import os
import re
import time
from typing import Callable, Optional

from guestagent import log
from guestagent.errors import CommandError
from guestagent.osutil import distros, system

DHCLIENT_FILES = ("/etc/dhcp/dhclient.conf", "/etc/dhcp3/dhclient.conf", "/etc/dhclient.conf")
# Upstream's pattern, literal "<hostname>" included: an uncommented send host-name that sends the
# template or gethostname() means dhclient already sends the current name.
_AUTOSEND = re.compile(r"^[^#]*?send\s*host-name.*?(<hostname>|gethostname[(,)])", re.MULTILINE)
IFCFG = "/etc/sysconfig/network-scripts/ifcfg-{0}"


def update_conf_file(p: str, line_start: str, line: str) -> None:
    """Upstream's update_conf_file: drop lines starting with ``line_start`` and every empty line,
    append ``line``, end with a newline."""
    content = system.read_text(p, default="") or ""
    kept = [x for x in content.split("\n") if x and not x.startswith(line_start)]
    kept.append(line)
    mode = system.path(p).stat().st_mode & 0o777 if system.exists(p) else 0o644
    system.write_file(p, "\n".join(kept) + "\n", mode=mode)


def set_dhclient_hostname(hostname: str) -> list[str]:
    """Write ``send host-name "<name>";`` into each dhclient.conf present, unless one already sends
    the machine's name dynamically. Returns the files changed."""
    changed = []
    for p in DHCLIENT_FILES:
        if not system.path(p).is_file():
            continue
        if _AUTOSEND.search(system.read_text(p, errors="replace") or ""):
            return changed
        update_conf_file(p, "send host-name", f'send host-name "{hostname}";')
        changed.append(p)
    return changed


def set_ifcfg_hostname(hostname: str, ifname: str) -> str:
    p = IFCFG.format(ifname)
    update_conf_file(p, "DHCP_HOSTNAME", f"DHCP_HOSTNAME={hostname}")
    return p


def set_dhcp_hostname(hostname: str, distro: distros.Distro, ifname: Optional[str] = None) -> None:
    if distro.dhcp_hostname == distros.DHCP_IFCFG:
        set_ifcfg_hostname(hostname, ifname or primary_interface())
    else:
        set_dhclient_hostname(hostname)


def primary_interface() -> str:
    """The interface of the default route with the lowest metric (``/proc/net/route``), else the
    first non-loopback interface, else ``eth0``."""
    best: Optional[tuple[int, str]] = None
    for line in (system.read_text("/proc/net/route", default="") or "").splitlines()[1:]:
        cols = line.split()
        if len(cols) > 6 and cols[1] == "00000000":
            try:
                metric = int(cols[6])
            except ValueError:
                continue
            if best is None or metric < best[0]:
                best = (metric, cols[0])
    if best is not None:
        return best[1]
    try:
        names = sorted(os.listdir(system.path("/sys/class/net")))
    except OSError:
        names = []
    for name in names:
        if name != "lo":
            return name
    return "eth0"


def _nm_controlled(ifname: str) -> bool:
    """False only when ifcfg-<if> says NM_CONTROLLED=n/no (upstream's rule)."""
    text = system.read_text(IFCFG.format(ifname), default="") or ""
    for line in text.splitlines():
        if "NM_CONTROLLED=" in line:
            value = line.split("=", 1)[1].replace("'", "").replace('"', "").strip()
            return value not in ("n", "no")
    return True


def _try(argvs: list[list[str]]) -> bool:
    """Run commands in sequence (the shell's ``a && b``); True when all succeed."""
    for argv in argvs:
        if system.which(argv[0]) is None:
            log.warn("Cannot restart the network interface to publish the hostname: {0} is not installed "
                     "(the DHCP client sends the new name when it next starts)", argv[0])
            raise FileNotFoundError(argv[0])
        try:
            system.run(argv, timeout=120)
        except CommandError as e:
            log.warn("failed to restart the interface: {0} returned {1}", " ".join(argv), e.returncode)
            return False
    return True


def restart_interface(ifname: str, distro: distros.Distro, retries: int = 3, wait: float = 5.0,
                      sleep: Callable[[float], None] = time.sleep) -> list[list[str]]:
    """Bounce the network so the DHCP client sends the new name; returns the commands run.
    A missing tool ends the attempt at once (upstream would retry a shell "not found" 3 × 5 s)."""
    style = distro.restart_interface
    ran: list[list[str]] = []
    if style == distros.RESTART_NETWORKD:
        cmds = [["systemctl", "restart", "systemd-networkd"]]
        stop_on_success = False  # upstream's loop has no exit on success: it restarts 3 times
    elif style == distros.RESTART_IFUPDOWN:
        cmds = [["ifdown", ifname], ["ifup", ifname]]
        stop_on_success = True
    else:
        cmds = [["ip", "link", "set", ifname, "down"], ["ip", "link", "set", ifname, "up"]]
        stop_on_success = True
        if style == distros.RESTART_NM_IPLINK and not _nm_controlled(ifname):
            nm = ["systemctl", "restart", "NetworkManager"]
            ran.append(nm)
            try:
                system.run(nm, timeout=120, check=False)
            except CommandError as e:
                log.warn("NetworkManager restart failed: {0}", e)
    for attempt in range(1, retries + 1):
        ran.extend(cmds)
        try:
            ok = _try(cmds)
        except FileNotFoundError:
            return ran
        if ok and stop_on_success:
            return ran
        if not ok:
            if attempt < retries:
                log.info("retrying in {0} seconds", wait)
                sleep(wait)
            else:
                log.warn("exceeded restart retries")
    return ran
