"""Setting, publishing and recording the hostname (spec 05 §6).

Publish = DHCP client configuration + ``published_hostname`` record + interface restart, so that
the DHCP server (and through it Azure DNS) learns the name. The ext-handler's hostname monitor uses
:func:`get_hostname_record` and :func:`publish_hostname` as well.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Callable, Optional

from guestagent import log
from guestagent.errors import CommandError
from guestagent.osutil import dhcpclient, distros, system
from guestagent.osutil.nethelper import NetOps

CLOUD_INIT_HOSTNAME = "/var/lib/cloud/data/set-hostname"


def set_hostname(hostname: str, distro: distros.Distro) -> None:
    style = distro.set_hostname
    if style == distros.HOSTNAME_HOSTNAMECTL_ONLY:
        _quietly(["hostnamectl", "set-hostname", hostname])
        return
    if style == distros.HOSTNAME_HOSTNAMECTL:
        try:
            system.run(["hostnamectl", "set-hostname", hostname, "--static"], timeout=60)
            return
        except CommandError:
            log.warn("[hostnamectl set-hostname {0} --static] failed, attempting fallback", hostname)
    if style == distros.HOSTNAME_SYSCONFIG:
        dhcpclient.update_conf_file("/etc/sysconfig/network", "HOSTNAME", f"HOSTNAME={hostname}")
    else:
        system.write_file("/etc/HOSTNAME" if style == distros.HOSTNAME_SUSE11 else "/etc/hostname",
                          hostname, mode=0o644)
    _quietly(["hostname", hostname])


def _quietly(argv: list[str]) -> None:
    try:
        system.run(argv, timeout=60, check=False)
    except CommandError:
        pass  # upstream ignores errors (tool missing included)


def set_hostname_record(hostname: str, lib_dir: str) -> None:
    system.write_file(os.path.join(lib_dir, "published_hostname"), hostname, mode=0o644)


def _cloud_init_hostname() -> Optional[str]:
    try:
        if system.exists(CLOUD_INIT_HOSTNAME):
            log.info("Retrieving hostname from {0}", CLOUD_INIT_HOSTNAME)
            info = json.loads(system.read_text(CLOUD_INIT_HOSTNAME) or "{}")
            if isinstance(info, dict) and "hostname" in info:
                return str(info["hostname"])
    except (OSError, ValueError) as e:
        log.warn("Error retrieving hostname: {0}", e)
    return None


def get_hostname_record(lib_dir: str) -> str:
    """The last published name; created (cloud-init's name, else gethostname()) when missing."""
    record = os.path.join(lib_dir, "published_hostname")
    if not system.exists(record):
        hostname = _cloud_init_hostname()
        if hostname is None:
            log.info("Retrieving hostname using socket.gethostname()")
            hostname = socket.gethostname()
        log.info("Published hostname record does not exist, creating [{0}] with hostname [{1}]", record, hostname)
        set_hostname_record(hostname, lib_dir)
    return system.read_text(record) or ""


def publish_hostname(hostname: str, distro: distros.Distro, lib_dir: str, net: NetOps,
                     ifname: Optional[str] = None, sleep: Callable[[float], None] = time.sleep) -> list[list[str]]:
    """DHCP hostname, record, interface restart; returns the restart steps taken. ``net``: netlink in this
    process (daemon) or in a helper interpreter (ext-handler child)."""
    ifname = ifname or net.interface_name()
    dhcpclient.set_dhcp_hostname(hostname, distro, ifname)
    set_hostname_record(hostname, lib_dir)
    return dhcpclient.restart_interface(ifname, distro, net, sleep=sleep)
