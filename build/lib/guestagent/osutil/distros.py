"""Distribution differences as data (spec 05 §18), not as a tree of OS-util subclasses.

One :class:`Distro` record says, for the running distribution, which service name the agent has, how
the hostname is set and published, how sshd is reloaded and which DHCP lease caches exist. Upstream
picks an OS-util class by (name, version); :func:`detect` makes the same choice for the families
the design targets and falls back to upstream's default behaviour for everything else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from guestagent.osutil.osrelease import distro as _os_release_distro

# How the hostname is set.
HOSTNAME_FILE = "file"                # /etc/hostname + `hostname <name>`
HOSTNAME_HOSTNAMECTL = "hostnamectl"  # `hostnamectl set-hostname <name> --static`, fallback to file
# Where the DHCP client learns the name to send.
DHCP_DHCLIENT = "dhclient"            # send host-name in dhclient.conf
DHCP_IFCFG = "ifcfg"                  # DHCP_HOSTNAME= in ifcfg-<if>
# How the interface is bounced so the DHCP server learns the name.
RESTART_IFUPDOWN = "ifupdown"         # ifdown <if> && ifup <if>
RESTART_NETWORKD = "networkd"         # systemctl restart systemd-networkd
RESTART_IPLINK = "iplink"             # ip link set <if> down && ip link set <if> up
RESTART_NM_IPLINK = "nm-iplink"       # NetworkManager restart if NM_CONTROLLED=n, then ip link
# What -deprovision does with /etc/resolv.conf.
RESOLV_DELETE = "delete"
RESOLV_RESOLVCONF = "resolvconf"      # Ubuntu < 18.04
RESOLV_KEEP = "keep"                  # Ubuntu >= 18.04


@dataclass(frozen=True)
class Distro:
    name: str
    version: str
    service_name: str = "waagent"
    unit_dir: str = "/lib/systemd/system"
    set_hostname: str = HOSTNAME_FILE
    dhcp_hostname: str = DHCP_DHCLIENT
    restart_interface: str = RESTART_IFUPDOWN
    #: argv to reload sshd after provisioning; None = upstream does nothing on this distro.
    restart_ssh: Optional[tuple[str, ...]] = None
    stop_service: tuple[str, ...] = ()
    #: DHCP client PID command (spec 05 §10).
    dhcp_pid_command: tuple[str, ...] = ("pidof", "dhclient")
    lease_globs: tuple[str, ...] = field(default_factory=tuple)
    deprovision_resolv: str = RESOLV_DELETE

    @property
    def family(self) -> str:
        return self.name


def _version_tuple(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def make(name: str, version: str) -> Distro:
    """The record for (os-release ID, VERSION_ID), as upstream's osutil factory chooses."""
    name = (name or "unknown").lower()
    ver = _version_tuple(version)
    if name == "ubuntu":
        modern = ver >= (18, 4)
        return Distro(
            name, version, service_name="walinuxagent",
            restart_interface=RESTART_NETWORKD if modern else RESTART_IPLINK,
            restart_ssh=None,
            stop_service=("systemctl", "stop", "walinuxagent") if modern else ("service", "walinuxagent", "stop"),
            dhcp_pid_command=("pidof", "systemd-networkd") if modern else ("pidof", "dhclient"),
            lease_globs=("/run/systemd/netif/leases/*",) if modern else ("/var/lib/dhcp/dhclient.*.leases",),
            deprovision_resolv=RESOLV_KEEP if modern else RESOLV_RESOLVCONF)
    if name in ("debian", "devuan"):
        modern = not ver or ver >= (8,)
        return Distro(
            name, version, service_name="walinuxagent" if modern else "azurelinuxagent",
            restart_interface=RESTART_IFUPDOWN,
            restart_ssh=("systemctl", "--job-mode=ignore-dependencies", "try-reload-or-restart", "ssh"),
            stop_service=("systemctl", "stop", "walinuxagent") if modern else ("service", "azurelinuxagent", "stop"),
            lease_globs=("/var/lib/dhcp/dhclient.*.leases",))
    if name in ("rhel", "redhat", "centos", "almalinux", "rocky", "ol", "oracle", "cloudlinux") \
            and (not ver or ver >= (7,)):
        return Distro(
            name, version, service_name="waagent", unit_dir="/usr/lib/systemd/system",
            set_hostname=HOSTNAME_HOSTNAMECTL, dhcp_hostname=DHCP_IFCFG, restart_interface=RESTART_NM_IPLINK,
            restart_ssh=("systemctl", "condrestart", "sshd"),
            stop_service=("systemctl", "stop", "waagent"),
            lease_globs=("/var/lib/dhclient/dhclient-*.lease", "/var/lib/NetworkManager/dhclient-*.lease"))
    # Upstream's DefaultOSUtil: no sshd restart, no agent-service stop, dhclient + ifupdown.
    return Distro(name, version, service_name="waagent", restart_ssh=None, stop_service=(),
                  lease_globs=("/var/lib/dhcp/dhclient.*.leases",))


def detect() -> Distro:
    """The running distribution (``GUESTAGENT_DISTRO=name:version`` overrides it, for the lab)."""
    forced = os.environ.get("GUESTAGENT_DISTRO")
    if forced:
        name, _, version = forced.partition(":")
        return make(name, version)
    name, version, _ = _os_release_distro()
    return make(name, version)
