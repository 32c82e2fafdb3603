"""Telling the DHCP client which hostname to send, and bouncing the interface so it does (05 §6, §18).

Three publish paths, chosen by :class:`~guestagent.osutil.distros.Distro`: dhclient.conf + ifupdown
(Debian, default), systemd-networkd restart (Ubuntu >= 18.04), ifcfg ``DHCP_HOSTNAME`` + NetworkManager
/ a link bounce (RHEL >= 7; upstream's ``ip link set down/up``, here through netlink via
:class:`~guestagent.osutil.nethelper.NetOps`).
"""

from __future__ import annotations

import re
import time
from typing import Callable, Optional

from guestagent import log
from guestagent.errors import CommandError, NetworkError
from guestagent.osutil import dhcpmonitor, distros, system
from guestagent.osutil.nethelper import Helper, NetOps

DHCLIENT_FILES = ("/etc/dhcp/dhclient.conf", "/etc/dhcp3/dhclient.conf", "/etc/dhclient.conf")
# Upstream's pattern, literal "<hostname>" included: an uncommented send host-name that sends the
# template or gethostname() means dhclient already sends the current name.
_AUTOSEND = re.compile(r"^[^#]*?send\s*host-name.*?(<hostname>|gethostname[(,)])", re.MULTILINE)
IFCFG = "/etc/sysconfig/network-scripts/ifcfg-{0}"
SUSE_DHCP = "/etc/sysconfig/network/dhcp"


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


def set_suse_dhcp_hostname(hostname: str) -> None:
    """SUSE's DHCLIENT_HOSTNAME_OPTION: left alone when AUTO or already the name, else replaced/appended."""
    current = system.read_text(SUSE_DHCP, default="") or ""  # upstream raises when missing: SUSE ships it
    lines = current.split("\n")
    setting = next((x for x in lines if x.startswith("DHCLIENT_HOSTNAME_OPTION")), None)
    wanted = f'DHCLIENT_HOSTNAME_OPTION="{hostname}"'
    if setting is None:
        system.write_file(SUSE_DHCP, current + wanted, mode=0o644)
        return
    if setting.split("=")[-1] in ('"AUTO"', "'AUTO'", "AUTO", f'"{hostname}"'):
        return
    text = "\n".join(wanted if x.startswith("DHCLIENT_HOSTNAME_OPTION") else x for x in lines)
    system.write_file(SUSE_DHCP, text, mode=0o644)


def set_dhcp_hostname(hostname: str, distro: distros.Distro, ifname: Optional[str] = None,
                      net: Optional[NetOps] = None) -> None:
    """The DHCP client's hostname; the ifcfg path needs the interface (asked of ``net`` when not given)."""
    if distro.dhcp_hostname == distros.DHCP_SUSE:
        set_suse_dhcp_hostname(hostname)
    elif distro.dhcp_hostname == distros.DHCP_IFCFG:
        set_ifcfg_hostname(hostname, ifname or (net or Helper()).interface_name())
    else:
        set_dhclient_hostname(hostname)


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


def bounce_step(ifname: str) -> list[str]:
    """How a link bounce through netlink reads in the steps :func:`restart_interface` returns."""
    return ["netlink", "bounce", ifname]


def _bounce(net: NetOps, ifname: str) -> bool:
    try:
        net.bounce(ifname)
        return True
    except NetworkError as e:
        log.warn("failed to restart {0}: {1}", ifname, e)
        return False


def restart_interface(ifname: str, distro: distros.Distro, net: NetOps, retries: int = 3, wait: float = 5.0,
                      sleep: Callable[[float], None] = time.sleep) -> list[list[str]]:
    """Bounce the network so the DHCP client sends the new name; returns the steps taken (argv lists, and
    :func:`bounce_step` for a link bounce through netlink). A missing tool ends the attempt at once
    (upstream would retry a shell "not found" 3 × 5 s)."""
    style = distro.restart_interface
    ran: list[list[str]] = []
    if distro.network_manager == distros.NM_ALWAYS or \
            (distro.network_manager == distros.NM_UNMANAGED and not _nm_controlled(ifname)):
        nm = ["systemctl", "restart", "NetworkManager"] if distro.network_manager == distros.NM_ALWAYS \
            else ["service", "NetworkManager", "restart"]
        ran.append(nm)
        try:
            system.run(nm, timeout=120, check=False)
        except CommandError as e:
            log.warn("NetworkManager restart failed: {0}", e)
    if style == distros.RESTART_DHCPCD_HUP:
        return ran + _hup_dhcpcd(distro)
    stop_on_success = style in (distros.RESTART_IFUPDOWN, distros.RESTART_IPLINK)
    cmds: Optional[list[list[str]]] = None  # the link bounce: netlink, no `ip link set` process
    if style in (distros.RESTART_NETWORKD, distros.RESTART_NETWORKD_ONCE):
        cmds = [["systemctl", "restart", "systemd-networkd"]]
        if style == distros.RESTART_NETWORKD_ONCE:
            retries = 1  # upstream runs it once, result ignored
    elif style == distros.RESTART_IFUPDOWN:
        cmds = [["ifdown", ifname], ["ifup", ifname]]
    elif style == distros.RESTART_IFUP:
        cmds = [["ifup", ifname]]  # SUSE: upstream's loop has no exit on success either
    for attempt in range(1, retries + 1):
        if cmds is None:
            ran.append(bounce_step(ifname))
            ok = _bounce(net, ifname)
        else:
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


def _hup_dhcpcd(distro: distros.Distro) -> list[list[str]]:
    """Alpine: the "restart" is a SIGHUP to the first dhcpcd (none running: nothing to do)."""
    pids = dhcpmonitor.dhcp_client_pids(distro.dhcp_pid_command, distro.dhcp_pid_prefix)
    if not pids:
        log.warn("Cannot restart the network interface to publish the hostname: dhcpcd is not running")
        return []
    argv = ["kill", "-HUP", str(pids[0])]
    try:
        system.run(argv, timeout=60, check=False)
    except CommandError as e:
        log.warn("{0} failed: {1}", " ".join(argv), e)
    return [argv]
