"""Distribution differences as data (spec 05 §18), not as a tree of OS-util subclasses.

Upstream's osutil factory picks one of ~25 classes by (name, code name, version, full name); here each
of those classes is one :class:`Distro` record in :data:`FAMILIES`, and :func:`make` applies the same
choice rules (with upstream's loose version comparison, :func:`version_key`). The firewall backend is
not per family upstream (iptables, else nft, firewalld for persistence), so it is not in the record.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Optional, Union

from guestagent.osutil import root
from guestagent.osutil.osrelease import os_release

# How the hostname is set.
HOSTNAME_FILE = "file"                    # /etc/hostname + `hostname <name>`
HOSTNAME_HOSTNAMECTL = "hostnamectl"      # `hostnamectl set-hostname <name> --static`, fallback to file
HOSTNAME_HOSTNAMECTL_ONLY = "hostnamectl-only"  # SUSE: `hostnamectl set-hostname <name>`, no fallback
HOSTNAME_SYSCONFIG = "sysconfig"          # RHEL 6: HOSTNAME= in /etc/sysconfig/network + `hostname`
HOSTNAME_SUSE11 = "suse11"                # /etc/HOSTNAME + `hostname`
# Where the DHCP client learns the name to send.
DHCP_DHCLIENT = "dhclient"                # send host-name in dhclient.conf
DHCP_IFCFG = "ifcfg"                      # DHCP_HOSTNAME= in ifcfg-<if>
DHCP_SUSE = "suse"                        # DHCLIENT_HOSTNAME_OPTION= in /etc/sysconfig/network/dhcp
# How the interface is bounced so the DHCP server learns the name.
RESTART_IFUPDOWN = "ifupdown"             # ifdown <if> && ifup <if>, 3 tries
RESTART_NETWORKD = "networkd"             # systemctl restart systemd-networkd, 3 times (no exit on success)
RESTART_NETWORKD_ONCE = "networkd-once"   # systemctl restart systemd-networkd, once
RESTART_IPLINK = "iplink"                 # ip link set <if> down && up (netlink here), 3 tries
RESTART_IFUP = "ifup"                     # SUSE: `ifup <if>` 3 times (no exit on success)
RESTART_DHCPCD_HUP = "dhcpcd-hup"         # Alpine: SIGHUP to dhcpcd
# When NetworkManager is restarted before the bounce.
NM_NEVER = "never"
NM_UNMANAGED = "unmanaged"                # only when ifcfg-<if> says NM_CONTROLLED=n (RHEL 7 - 8.5)
NM_ALWAYS = "always"                      # RHEL >= 8.6
# What -deprovision does with /etc/resolv.conf.
RESOLV_DELETE = "delete"
RESOLV_RESOLVCONF = "resolvconf"          # Ubuntu < 18.04
RESOLV_KEEP = "keep"                      # Ubuntu >= 18.04

LEASES_DHCLIENT = ("/var/lib/dhcp/dhclient.*.leases",)
LEASES_NETWORKD = ("/run/systemd/netif/leases/*",)
PIDOF_NETWORKD = ("pidof", "systemd-networkd")
USR_UNITS = "/usr/lib/systemd/system"


@dataclass(frozen=True)
class Distro:
    name: str
    version: str
    #: upstream's OS-util class this record stands for (e.g. "redhat-modern" for RedhatOSModernUtil).
    family: str = "default"
    full_name: str = ""
    service_name: str = "waagent"
    unit_dir: str = "/lib/systemd/system"
    set_hostname: str = HOSTNAME_FILE
    dhcp_hostname: str = DHCP_DHCLIENT
    restart_interface: str = RESTART_IFUPDOWN
    network_manager: str = NM_NEVER
    #: argv to reload sshd after provisioning; None = upstream does nothing on this distro.
    restart_ssh: Optional[tuple[str, ...]] = None
    #: argv deprovision runs to stop the agent; () = upstream does nothing.
    stop_service: tuple[str, ...] = ()
    #: argv ``waagent -register-service`` runs before stop and start (enable, unmask, chkconfig…);
    #: () = upstream's OS-util does nothing (Debian, the default).
    register_service: tuple[str, ...] = ()
    #: DHCP client PID command (spec 05 §10) and the prefix its output carries before the PID.
    dhcp_pid_command: tuple[str, ...] = ("pidof", "dhclient")
    dhcp_pid_prefix: str = ""
    #: where upstream looks for a cached WireServer address (option 245); () = it does not.
    lease_globs: tuple[str, ...] = ()
    #: set by :func:`make` from the name (upstream's deprovision factory has its own rule).
    deprovision_resolv: str = RESOLV_DELETE
    #: files deprovision deletes on top of the common list (CoreOS/Flatcar, Arch: /etc/machine-id).
    deprovision_files: tuple[str, ...] = ()
    #: False where upstream's remove_rules_files is a no-op (Ubuntu >= 12, Debian, Kali, Devuan).
    remove_net_rules: bool = True
    #: True where the network-setup unit goes to /etc/systemd/system on image-mode (ostree) hosts.
    ostree_network_setup: bool = False
    #: accounts upstream never treats as system users (CoreOS: ``core``).
    regular_users: tuple[str, ...] = ()

    @property
    def start_service(self) -> tuple[str, ...]:
        """argv to start the agent: upstream's start mirrors its stop in every OS-util that has one."""
        return tuple("start" if a == "stop" else a for a in self.stop_service)

    @property
    def cgroups_supported(self) -> bool:
        return cgroups_supported(self.name, self.version)


def _systemctl(verb: str, unit: str) -> tuple[str, ...]:
    return ("systemctl", verb, unit)


_UNMASK_WALINUXAGENT = ("systemctl", "unmask", "walinuxagent")
_UBUNTU14 = Distro("", "", family="ubuntu14", service_name="walinuxagent",
                   stop_service=("service", "walinuxagent", "stop"), lease_globs=LEASES_DHCLIENT,
                   remove_net_rules=False)
_REDHAT6 = Distro("", "", family="redhat6", set_hostname=HOSTNAME_SYSCONFIG, dhcp_hostname=DHCP_IFCFG,
                  restart_ssh=("/sbin/service", "sshd", "condrestart"), stop_service=("/sbin/service", "waagent", "stop"),
                  register_service=("chkconfig", "--add", "waagent"),
                  lease_globs=("/var/lib/dhclient/dhclient-*.leases",))
_REDHAT = dataclasses.replace(
    _REDHAT6, family="redhat", unit_dir=USR_UNITS, set_hostname=HOSTNAME_HOSTNAMECTL, network_manager=NM_UNMANAGED,
    lease_globs=("/var/lib/dhclient/dhclient-*.lease", "/var/lib/NetworkManager/dhclient-*.lease"),
    ostree_network_setup=True, register_service=_systemctl("enable", "waagent"))
_SUSE11 = Distro("", "", family="suse11", set_hostname=HOSTNAME_SUSE11,
                 restart_ssh=("/sbin/service", "sshd", "restart"), stop_service=("/sbin/service", "waagent", "stop"),
                 register_service=("/sbin/insserv", "waagent"), dhcp_pid_command=("pidof", "dhcpcd"))
_DEBIAN_BASE = Distro("", "", family="debian-base",
                      restart_ssh=("systemctl", "--job-mode=ignore-dependencies", "try-reload-or-restart", "ssh"),
                      stop_service=("service", "azurelinuxagent", "stop"), lease_globs=LEASES_DHCLIENT,
                      remove_net_rules=False)
_NETWORKD_ONCE = Distro("", "", unit_dir=USR_UNITS, restart_interface=RESTART_NETWORKD_ONCE,
                        stop_service=_systemctl("stop", "waagent"), dhcp_pid_command=PIDOF_NETWORKD)

#: One record per upstream OS-util class serving Linux (name and version are filled in by :func:`make`).
FAMILIES: dict[str, Distro] = {
    "default": Distro("", ""),
    "ubuntu12": dataclasses.replace(_UBUNTU14, family="ubuntu12", dhcp_pid_command=("pidof", "dhclient3")),
    "ubuntu14": _UBUNTU14,
    "ubuntu16": dataclasses.replace(_UBUNTU14, family="ubuntu16", register_service=_UNMASK_WALINUXAGENT),
    "ubuntu18": dataclasses.replace(
        _UBUNTU14, family="ubuntu18", restart_interface=RESTART_NETWORKD, stop_service=_systemctl("stop", "walinuxagent"),
        register_service=_UNMASK_WALINUXAGENT,
        dhcp_pid_command=PIDOF_NETWORKD, lease_globs=LEASES_NETWORKD),
    "ubuntu": dataclasses.replace(_UBUNTU14, family="ubuntu", restart_interface=RESTART_IPLINK,
                                  register_service=_UNMASK_WALINUXAGENT),
    "ubuntu-snappy": dataclasses.replace(_UBUNTU14, family="ubuntu-snappy"),
    "alpine": Distro("", "", family="alpine", restart_interface=RESTART_DHCPCD_HUP, dhcp_pid_command=("pidof", "dhcpcd")),
    "chainguard": Distro("", "", family="chainguard", unit_dir=USR_UNITS, restart_interface=RESTART_NETWORKD,
                         stop_service=_systemctl("stop", "waagent"), dhcp_pid_command=PIDOF_NETWORKD,
                         lease_globs=LEASES_NETWORKD),
    "debian-base": _DEBIAN_BASE,
    "debian-modern": dataclasses.replace(_DEBIAN_BASE, family="debian-modern", service_name="walinuxagent",
                                         stop_service=_systemctl("stop", "walinuxagent")),
    "devuan": Distro("", "", family="devuan", restart_ssh=("/usr/sbin/service", "restart", "ssh"),
                     stop_service=("/usr/sbin/service", "walinuxagent", "stop"), lease_globs=LEASES_DHCLIENT,
                     remove_net_rules=False),
    "coreos": dataclasses.replace(
        _NETWORKD_ONCE, family="coreos", unit_dir="/lib/systemd/system",
        dhcp_pid_command=("systemctl", "show", "-p", "MainPID", "systemd-networkd"), dhcp_pid_prefix="MainPID=",
        deprovision_files=("/etc/machine-id",), regular_users=("core",)),
    "suse11": _SUSE11,
    "suse": dataclasses.replace(
        _SUSE11, family="suse", unit_dir=USR_UNITS, set_hostname=HOSTNAME_HOSTNAMECTL_ONLY, dhcp_hostname=DHCP_SUSE,
        restart_interface=RESTART_IFUP, restart_ssh=_systemctl("restart", "sshd.service"),
        stop_service=_systemctl("stop", "waagent.service"), register_service=_systemctl("enable", "waagent.service"),
        dhcp_pid_command=("pidof", "wickedd-dhcp4")),
    "redhat6": _REDHAT6,
    "redhat": _REDHAT,
    "redhat-modern": dataclasses.replace(
        _REDHAT, family="redhat-modern", restart_interface=RESTART_IPLINK, network_manager=NM_ALWAYS,
        restart_ssh=("systemctl", "condrestart", "sshd"), stop_service=_systemctl("stop", "waagent")),
    "fedora": Distro("", "", family="fedora", unit_dir=USR_UNITS, restart_interface=RESTART_IPLINK,
                     restart_ssh=_systemctl("restart", "sshd"), stop_service=_systemctl("stop", "waagent")),
    "mariner": dataclasses.replace(_NETWORKD_ONCE, family="mariner", restart_ssh=_systemctl("restart", "sshd"),
                                   register_service=_systemctl("enable", "waagent")),
    "photonos": dataclasses.replace(_NETWORKD_ONCE, family="photonos", restart_ssh=_systemctl("restart", "sshd")),
    "arch": dataclasses.replace(_NETWORKD_ONCE, family="arch", deprovision_files=("/etc/machine-id",)),
    "clearlinux": dataclasses.replace(_NETWORKD_ONCE, family="clearlinux"),
    # Appliances upstream serves with their own classes; their behaviour is not modelled here (default).
    "bigip": Distro("", "", family="bigip"),
    "gaia": Distro("", "", family="gaia"),
    "iosxe": Distro("", "", family="iosxe"),
    "openwrt": Distro("", "", family="openwrt"),
}

_FRAGMENT = re.compile(r"(\d+|[a-z]+|\.)", re.IGNORECASE)


def version_key(version: str) -> list[Union[int, str]]:
    """Upstream's DistroVersion fragments: runs of digits (as numbers), of letters, and of anything else,
    dots dropped. Comparing a number with text raises TypeError, as upstream's does."""
    return [int(x) if x.isdigit() else x for x in _FRAGMENT.split(version) if x not in ("", ".")]


def _cmp(version: str, op: str, other: str) -> bool:
    """Compare like upstream; a comparison upstream could not make (TypeError) counts as False."""
    a, b = version_key(version), version_key(other)
    try:
        return {"<": a < b, ">": a > b, ">=": a >= b, "<=": a <= b}[op]
    except TypeError:
        return False


_REDHATS = ("redhat", "rhel", "centos", "oracle", "almalinux", "cloudlinux", "rocky")


def choose(name: str, version: str, code_name: str = "", full_name: str = "") -> str:
    """The family upstream's factory picks for (name, code name, version, full name)."""
    if name == "photonos":
        return "photonos"
    if name == "arch":
        return "arch"
    if "Clear Linux" in full_name:
        return "clearlinux"
    if name == "ubuntu":
        key = version_key(version)
        if key in ([12, 4], [12, 10]):
            return "ubuntu12"
        if key in ([14, 4], [14, 10]):
            return "ubuntu14"
        if key in ([16, 4], [16, 10], [17, 4]):
            return "ubuntu16"
        if _cmp(version, ">=", "18.04") and _cmp(version, "<=", "24.04"):
            return "ubuntu18"
        return "ubuntu-snappy" if full_name == "Snappy Ubuntu Core" else "ubuntu"
    if name in ("alpine", "alpaquita"):
        return "alpine"
    if name == "chainguard":
        return "chainguard"
    if name == "kali":
        return "debian-base"
    if name in ("flatcar", "coreos") or code_name in ("flatcar", "coreos"):
        return "coreos"
    if name in ("suse", "sle-micro", "sle_hpc", "sles", "opensuse"):
        old = (full_name == "SUSE Linux Enterprise Server" and _cmp(version, "<", "12")) or \
            (full_name == "openSUSE" and _cmp(version, "<", "13.2"))
        return "suse11" if old else "suse"
    if name == "debian":
        return "debian-modern" if "sid" in version or _cmp(version, ">", "7") else "debian-base"
    if name == "devuan" and _cmp(version, ">=", "4"):
        return "devuan"
    if name in _REDHATS:
        if _cmp(version, "<", "7"):
            return "redhat6"
        return "redhat-modern" if _cmp(version, ">=", "8.6") else "redhat"
    if name in ("euleros", "uos"):
        return "redhat"
    if name in ("bigip", "gaia", "iosxe", "openwrt"):
        return name
    if name in ("mariner", "azurelinux"):
        return "mariner"
    if name == "fedora":
        return "fedora"
    return "default"


def make(name: str, version: str, code_name: str = "", full_name: str = "") -> Distro:
    """The record for the distribution, as upstream's osutil factory chooses it."""
    name = (name or "unknown").lower()
    family = choose(name, version, code_name, full_name)
    resolv = RESOLV_DELETE
    if name == "ubuntu":  # upstream's deprovision factory: by name, >= 18.04 with no upper bound
        resolv = RESOLV_KEEP if _cmp(version, ">=", "18.04") else RESOLV_RESOLVCONF
    return dataclasses.replace(FAMILIES[family], name=name, version=version, full_name=full_name,
                               deprovision_resolv=resolv)


#: os-release IDs the ``distro`` module (upstream's source of names) reports under another name.
_NORMALIZED_ID = {"ol": "oracle", "opensuse-leap": "opensuse"}
#: marker files upstream checks after os-release: (file, name it forces).
_MARKERS = (("/etc/euleros-release", "euleros"), ("/etc/UnionTech-release", "uos"),
            ("/etc/mariner-release", "mariner"), ("/etc/photon-release", "photonos"),
            ("/etc/alpaquita-release", "alpaquita"))


def identify(values: dict[str, str]) -> tuple[str, str, str, str]:
    """(name, version, code name, full name) from os-release values and upstream's marker files."""
    name = values.get("ID", "unknown").lower()
    name = _NORMALIZED_ID.get(name, name)
    version, full_name = values.get("VERSION_ID", ""), values.get("NAME", "")
    code_name = values.get("VERSION_CODENAME", "")
    if os.path.exists(root.mapped("/etc/oracle-release")):
        code_name, full_name = "oracle", "Oracle Linux"
    for marker, forced in _MARKERS:
        if os.path.exists(root.mapped(marker)):
            name = forced
    return name, version, code_name, full_name


def cgroups_supported(name: str, version: str) -> bool:
    """Upstream's allow-list for cgroup enforcement: by os name and major version, not by family."""
    try:
        major = int(version.split(".")[0])
    except ValueError:
        return False
    name = name.lower()
    return (name == "ubuntu" and major >= 16) or (name in ("centos", "redhat") and major == 8) or \
        (name == "rhel" and major == 9) or (name == "azurelinux" and major == 3)


def detect() -> Distro:
    """The running distribution (``GUESTAGENT_DISTRO=name:version[:full name]`` overrides it, for the lab)."""
    forced = os.environ.get("GUESTAGENT_DISTRO")
    if forced:
        name, _, rest = forced.partition(":")
        version, _, full_name = rest.partition(":")
        return make(name, version, full_name=full_name)
    name, version, code_name, full_name = identify(os_release())
    return make(name, version, code_name, full_name)


#: The class upstream's osutil factory instantiates for each family (the OSInfo event names it).
OSUTIL_CLASSES = {
    "default": "DefaultOSUtil", "ubuntu12": "Ubuntu12OSUtil", "ubuntu14": "Ubuntu14OSUtil",
    "ubuntu16": "Ubuntu16OSUtil", "ubuntu18": "Ubuntu18OSUtil", "ubuntu": "UbuntuOSUtil",
    "ubuntu-snappy": "UbuntuSnappyOSUtil", "alpine": "AlpineOSUtil", "chainguard": "ChainguardOSUtil",
    "debian-base": "DebianOSBaseUtil", "debian-modern": "DebianOSModernUtil", "devuan": "DevuanOSUtil",
    "coreos": "CoreOSUtil", "suse11": "SUSE11OSUtil", "suse": "SUSEOSUtil", "redhat6": "Redhat6xOSUtil",
    "redhat": "RedhatOSUtil", "redhat-modern": "RedhatOSModernUtil", "fedora": "FedoraOSUtil",
    "mariner": "MarinerOSUtil", "photonos": "PhotonOSUtil", "arch": "ArchUtil", "clearlinux": "ClearLinuxUtil",
    "bigip": "BigIpOSUtil", "gaia": "GaiaOSUtil", "iosxe": "IosxeOSUtil", "openwrt": "OpenWRTOSUtil",
}


def osutil_name(distro: Distro) -> str:
    """The class name upstream's osutil factory picks for this distribution."""
    return OSUTIL_CLASSES.get(distro.family, "DefaultOSUtil")
