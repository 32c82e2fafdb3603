"""Other families' network stacks on the tier's Debian 12 guest: package layers from Debian's own archive
and the real os-release texts the scenarios hand the agent (tests/vm/test_vm_netstacks.py)."""

from __future__ import annotations

from pathlib import Path

from . import image

# /etc/os-release of Red Hat Enterprise Linux 9.4 as the release ships it
RHEL94_OS_RELEASE = """NAME="Red Hat Enterprise Linux"
VERSION="9.4 (Plow)"
ID="rhel"
ID_LIKE="fedora"
VERSION_ID="9.4"
PLATFORM_ID="platform:el9"
PRETTY_NAME="Red Hat Enterprise Linux 9.4 (Plow)"
ANSI_COLOR="0;31"
LOGO="fedora-logo-icon"
CPE_NAME="cpe:/o:redhat:enterprise_linux:9::baseos"
HOME_URL="https://www.redhat.com/"
DOCUMENTATION_URL="https://access.redhat.com/documentation/en-us/red_hat_enterprise_linux/9"
BUG_REPORT_URL="https://bugzilla.redhat.com/"

REDHAT_BUGZILLA_PRODUCT="Red Hat Enterprise Linux 9"
REDHAT_BUGZILLA_PRODUCT_VERSION=9.4
REDHAT_SUPPORT_PRODUCT="Red Hat Enterprise Linux"
REDHAT_SUPPORT_PRODUCT_VERSION="9.4"
"""

# /etc/os-release of Azure Linux 3.0 as the release ships it
AZURELINUX3_OS_RELEASE = """NAME="Microsoft Azure Linux"
VERSION="3.0.20240727"
ID=azurelinux
VERSION_ID="3.0"
PRETTY_NAME="Microsoft Azure Linux 3.0"
ANSI_COLOR="1;34"
HOME_URL="https://aka.ms/azurelinux"
BUG_REPORT_URL="https://aka.ms/azurelinux"
SUPPORT_URL="https://aka.ms/azurelinux"
"""

# NetworkManager owns eth0 by DHCP with the tier's static routes (slirp's restricted DHCP sends no
# router; as on Azure, 168.63.129.16/32 goes via the gateway): the same network the base's
# systemd-networkd file gives, now from NetworkManager's keyfile.
NM_KEYFILE = """[connection]
id=eth0
type=ethernet
interface-name=eth0
autoconnect=true

[ipv4]
method=auto
route1=0.0.0.0/0,168.63.129.1
route2=168.63.129.16/32,168.63.129.1

[ipv6]
method=disabled
"""

# after the install (as root in the layer's build VM): systemd-networkd off, NetworkManager and
# firewalld on at boot
NM_FIREWALLD_SCRIPT = f"""
set -eu
systemctl disable --quiet systemd-networkd.service systemd-networkd.socket systemd-networkd-wait-online.service
systemctl enable --quiet NetworkManager.service NetworkManager-wait-online.service firewalld.service
install -d -m 755 /etc/NetworkManager/system-connections
cat > /etc/NetworkManager/system-connections/eth0.nmconnection <<'KEYFILE'
{NM_KEYFILE}KEYFILE
chmod 600 /etc/NetworkManager/system-connections/eth0.nmconnection
echo "$(dpkg-query -W -f='${{Version}}' network-manager) / firewalld $(dpkg-query -W -f='${{Version}}' firewalld)"
"""


def nm_firewalld_images(base: Path) -> tuple:
    """(base, agent layer) for the RHEL 9 shape: Debian's network-manager and firewalld, networkd off."""
    layer = image.package_layer(base, ["network-manager", "firewalld"], script=NM_FIREWALLD_SCRIPT)
    return base, image.agent_image(base, backing=layer)
