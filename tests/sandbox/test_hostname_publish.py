"""Publishing the hostname on the two paths Debian does not take: systemd-networkd (Ubuntu ≥ 18.04)
and ifcfg + NetworkManager (RHEL family). The sandbox has no systemd: ``systemctl`` is a stand-in that
records its argv (the boundary that cannot exist here); the ifcfg file, the published-hostname record
and the netlink bounce of the sandbox's own eth0 (run, as in the ext-handler child, by the helper
interpreter) are real."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.sandbox

SYSTEMCTL = '#!/bin/sh\necho "systemctl $*" >> /run/systemctl.log\n'

PUBLISH = r"""
import json, subprocess, sys
from guestagent.osutil import distros, hostname, nethelper
ran = hostname.publish_hostname(NAME, distros.make(DISTRO, VERSION), "/var/lib/waagent", nethelper.Helper(),
                                sleep=lambda s: None)
link = subprocess.run(["ip", "-o", "link", "show", "eth0"], capture_output=True, text=True).stdout
print("RESULT " + json.dumps({"ran": ran, "link_up": ",UP" in link or "<UP" in link,
                              "pyroute2": "pyroute2" in sys.modules}))
"""


def _publish(sb, name: str, distro: str, version: str) -> dict:
    from guestagent.lab.sandbox import DEFAULT_PATH, interpreter

    sb.write_file("/run/stubs/systemctl", SYSTEMCTL, mode=0o755)
    sb.run(["mkdir", "-p", "/var/lib/waagent"])
    code = PUBLISH.replace("NAME", repr(name)).replace("DISTRO", repr(distro)).replace("VERSION", repr(version))
    path = f"/run/stubs:{interpreter().rsplit('/', 1)[0]}:{DEFAULT_PATH}"
    res = sb.python(code, env={"PATH": path}, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout.split("RESULT ", 1)[1])


def test_networkd_path_restarts_systemd_networkd(sandbox):
    sb = sandbox
    sb.write_file("/etc/dhcp/dhclient.conf", "request subnet-mask, routers;\n")
    out = _publish(sb, "pub-networkd", "ubuntu", "22.04")
    # upstream's networkd loop has no exit on success: three restarts
    assert sb.read_text("/run/systemctl.log").splitlines() == ["systemctl restart systemd-networkd"] * 3
    assert out["ran"] == [["systemctl", "restart", "systemd-networkd"]] * 3
    assert sb.read_text("/var/lib/waagent/published_hostname") == "pub-networkd"
    assert 'send host-name "pub-networkd";' in sb.read_text("/etc/dhcp/dhclient.conf")


@pytest.mark.parametrize("nm_controlled", [None, "no"])
def test_ifcfg_and_networkmanager_path(sandbox, nm_controlled):
    sb = sandbox
    ifcfg = "/etc/sysconfig/network-scripts/ifcfg-eth0"
    lines = ["DEVICE=eth0", "BOOTPROTO=dhcp", "DHCP_HOSTNAME=old-name"]
    if nm_controlled:
        lines.append(f'NM_CONTROLLED="{nm_controlled}"')
    sb.write_file(ifcfg, "\n".join(lines) + "\n")
    out = _publish(sb, "pub-rhel", "rhel", "8.8")
    text = sb.read_text(ifcfg)
    assert "DHCP_HOSTNAME=pub-rhel" in text.splitlines() and "old-name" not in text
    assert "DEVICE=eth0" in text and "BOOTPROTO=dhcp" in text
    assert sb.read_text("/var/lib/waagent/published_hostname") == "pub-rhel"
    bounce = [["netlink", "bounce", "eth0"]]
    # RHEL >= 8.6 (upstream's RedhatOSModernUtil): NetworkManager is restarted first whatever
    # NM_CONTROLLED says (the NM_CONTROLLED=n rule is RHEL 7 - 8.5's, tests/unit/provisioning/test_distros.py)
    assert out["ran"] == [["systemctl", "restart", "NetworkManager"], *bounce]
    assert sb.read_text("/run/systemctl.log") == "systemctl restart NetworkManager\n"
    assert out["link_up"], "eth0 must be up again after the bounce"
    assert not out["pyroute2"], "the bounce runs in the helper interpreter, not in the publishing process"
