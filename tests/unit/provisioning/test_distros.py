"""Each family record (osutil/distros.py) as upstream's factory chooses it, and the commands it runs.

The commands are real processes: PATH holds only recording stand-ins that append their argv to a log,
so each test reads what the agent actually ran. Upstream's samples (distro_versions.txt) are checked in
tests/conformance/test_distros_upstream.py.
"""

from __future__ import annotations

import pytest

from guestagent.conf import Config
from guestagent.osutil import dhcpclient, dhcpmonitor, distros, hostname, ssh, users
from guestagent.provisioning.deprovision import Deprovisioner

# (name, version, code name, full name) -> family, as upstream 2.15's factory and its tests decide.
CHOICES = [
    (("", "", "", ""), "default"),
    (("ubuntu", "10.04", "", ""), "ubuntu"),
    (("ubuntu", "12.04", "", ""), "ubuntu12"),
    (("ubuntu", "14.10", "", ""), "ubuntu14"),
    (("ubuntu", "17.04", "", ""), "ubuntu16"),
    (("ubuntu", "18.04", "", ""), "ubuntu18"),
    (("ubuntu", "24.04", "", ""), "ubuntu18"),
    (("ubuntu", "24.10", "", ""), "ubuntu"),
    (("ubuntu", "10.04", "", "Snappy Ubuntu Core"), "ubuntu-snappy"),
    (("arch", "", "", ""), "arch"),
    (("clear-linux-os", "", "", "Clear Linux OS"), "clearlinux"),
    (("alpine", "3.20", "", ""), "alpine"),
    (("alpaquita", "23", "", ""), "alpine"),
    (("chainguard", "", "", ""), "chainguard"),
    (("kali", "2024.1", "", ""), "debian-base"),
    (("coreos", "", "", ""), "coreos"),
    (("flatcar", "3815.2.0", "", ""), "coreos"),
    (("x", "1", "flatcar", ""), "coreos"),
    (("suse", "10", "", ""), "suse"),
    (("suse", "11", "", "SUSE Linux Enterprise Server"), "suse11"),
    (("opensuse", "12", "", "openSUSE"), "suse11"),
    (("sles", "15.5", "", "SLES"), "suse"),
    (("sle-micro", "5.5", "", "SLE Micro"), "suse"),
    (("sle_hpc", "15.4", "", ""), "suse"),
    (("debian", "7", "", ""), "debian-base"),
    (("debian", "8", "", ""), "debian-modern"),
    (("debian", "bookworm/sid", "", ""), "debian-modern"),
    (("devuan", "4", "", ""), "devuan"),
    (("devuan", "3", "", ""), "default"),
    (("redhat", "6", "", ""), "redhat6"),
    (("centos", "7", "", ""), "redhat"),
    (("almalinux", "8", "", ""), "redhat"),
    (("rhel", "8.5", "", ""), "redhat"),
    (("rhel", "8.6", "", ""), "redhat-modern"),
    (("rocky", "9.4", "", ""), "redhat-modern"),
    (("oracle", "9.3", "", ""), "redhat-modern"),
    (("cloudlinux", "10", "", ""), "redhat-modern"),
    (("euleros", "2.0", "", ""), "redhat"),
    (("uos", "20", "", ""), "redhat"),
    (("mariner", "2.0", "", ""), "mariner"),
    (("azurelinux", "3.0", "", ""), "mariner"),
    (("photonos", "5.0", "", ""), "photonos"),
    (("photon", "5.0", "", ""), "default"),  # upstream needs /etc/photon-release to say photonos
    (("fedora", "40", "", ""), "fedora"),
    (("bigip", "15", "", ""), "bigip"),
    (("gentoo", "2.15", "", ""), "default"),
]


@pytest.mark.parametrize("args,family", CHOICES, ids=[f"{a[0] or 'empty'}-{a[1]}-{f}" for a, f in CHOICES])
def test_upstream_choice(args, family):
    assert distros.make(*args).family == family


def test_version_comparison_is_upstreams_loose_one():
    assert distros.version_key("10.0_RC2") == [10, 0, "_", "RC", 2]
    assert distros.version_key("") == []
    assert distros.version_key("13") < distros.version_key("13.0")
    with pytest.raises(TypeError):  # upstream raises too; the factory's rules then count it as False
        _ = distros.version_key("3.11.2-rc.1") < distros.version_key("3.11.2-rc.a")


def test_identify_normalises_like_the_distro_module(tmp_root):
    assert distros.identify({"ID": "ol", "VERSION_ID": "9.4", "NAME": "Oracle Linux Server"})[0] == "oracle"
    assert distros.identify({"ID": "opensuse-leap", "VERSION_ID": "15.6"})[0] == "opensuse"
    (tmp_root / "etc").mkdir()
    (tmp_root / "etc/photon-release").write_text("VMware Photon OS 5.0\n")
    assert distros.make(*distros.identify({"ID": "photon", "VERSION_ID": "5.0"})).family == "photonos"


def test_cgroups_allow_list_is_by_name_not_family():
    assert distros.make("rhel", "9.4").cgroups_supported and distros.make("azurelinux", "3.0").cgroups_supported
    assert not distros.make("rocky", "9.4").cgroups_supported  # same family as RHEL 9, not on the list
    assert not distros.make("mariner", "2.0").cgroups_supported and distros.make("ubuntu", "16.04").cgroups_supported


RECORD = '#!/bin/sh\necho "${{0##*/}} $*" >> {log}\n'


@pytest.fixture
def recorder(tmp_root, tmp_path, monkeypatch):
    """PATH with recording stand-ins; returns a function giving the argv lines recorded so far."""
    bin_dir, log = tmp_path / "bin", tmp_path / "ran.log"
    bin_dir.mkdir()
    for tool in ("systemctl", "ifup", "ifdown", "hostnamectl", "hostname", "kill", "service", "ip"):
        p = bin_dir / tool
        p.write_text(RECORD.format(log=log))
        p.chmod(0o755)
    for tool, out in (("pidof", "4242"),):
        p = bin_dir / tool
        p.write_text(RECORD.format(log=log) + f"echo {out}\n")
        p.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    (tmp_root / "etc/sysconfig").mkdir(parents=True)

    def ran() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []
    return ran


class NoLink:
    """Netlink stand-in: records bounces (netlink itself is tested in tests/sandbox/test_network.py)."""

    def __init__(self):
        self.bounced = []

    def interface_name(self):
        return "eth0"

    def bounce(self, ifname):
        self.bounced.append(ifname)


# family sample -> (commands recorded for publish_hostname("vm1"), bounces through netlink)
PUBLISH = {
    ("debian", "12"): (["ifdown eth0", "ifup eth0"], []),
    ("ubuntu", "22.04"): (["systemctl restart systemd-networkd"] * 3, []),
    ("ubuntu", "24.10"): ([], ["eth0"]),
    ("rhel", "8.5"): (["ifdown eth0", "ifup eth0"], []),
    ("rhel", "9.4"): (["systemctl restart NetworkManager"], ["eth0"]),
    ("fedora", "40"): ([], ["eth0"]),
    ("azurelinux", "3.0"): (["systemctl restart systemd-networkd"], []),
    ("flatcar", "3815.2.0"): (["systemctl restart systemd-networkd"], []),
    ("chainguard", ""): (["systemctl restart systemd-networkd"] * 3, []),
    ("sles", "15.5"): (["ifup eth0"] * 3, []),
    ("alpine", "3.20"): (["pidof dhcpcd", "kill -HUP 4242"], []),
}


@pytest.mark.parametrize("sample", list(PUBLISH), ids=[f"{n}-{v}" for n, v in PUBLISH])
def test_publish_hostname_commands(recorder, tmp_root, sample):
    net, commands = NoLink(), []
    if sample[0] == "sles":
        (tmp_root / "etc/sysconfig/network").mkdir()
    hostname.publish_hostname("vm1", distros.make(*sample), "/var/lib/waagent", net, sleep=commands.append)
    assert (recorder(), net.bounced) == PUBLISH[sample]
    assert (tmp_root / "var/lib/waagent/published_hostname").read_text() == "vm1"


def test_rhel7_restarts_network_manager_only_when_it_does_not_manage_the_link(recorder, tmp_root):
    (tmp_root / "etc/sysconfig/network-scripts").mkdir(parents=True)
    (tmp_root / "etc/sysconfig/network-scripts/ifcfg-eth0").write_text("NM_CONTROLLED=no\n")
    hostname.publish_hostname("vm1", distros.make("centos", "7.9"), "/var/lib/waagent", NoLink())
    assert recorder() == ["service NetworkManager restart", "ifdown eth0", "ifup eth0"]
    assert (tmp_root / "etc/sysconfig/network-scripts/ifcfg-eth0").read_text() == \
        "NM_CONTROLLED=no\nDHCP_HOSTNAME=vm1\n"


def test_suse_dhcp_hostname_option(recorder, tmp_root):
    (tmp_root / "etc/sysconfig/network").mkdir()
    dhcp = tmp_root / "etc/sysconfig/network/dhcp"
    sles = distros.make("sles", "15.5")
    dhcpclient.set_dhcp_hostname("vm1", sles)
    assert dhcp.read_text() == 'DHCLIENT_HOSTNAME_OPTION="vm1"'
    dhcp.write_text('A=1\nDHCLIENT_HOSTNAME_OPTION="AUTO"\n')
    dhcpclient.set_dhcp_hostname("vm2", sles)
    assert dhcp.read_text() == 'A=1\nDHCLIENT_HOSTNAME_OPTION="AUTO"\n'
    dhcp.write_text('A=1\nDHCLIENT_HOSTNAME_OPTION="old"\n')
    dhcpclient.set_dhcp_hostname("vm2", sles)
    assert dhcp.read_text() == 'A=1\nDHCLIENT_HOSTNAME_OPTION="vm2"\n'


SET_HOSTNAME = {
    ("debian", "12"): (["hostname vm1"], "etc/hostname", "vm1"),
    ("rhel", "9.4"): (["hostnamectl set-hostname vm1 --static"], None, None),
    ("sles", "15.5"): (["hostnamectl set-hostname vm1"], None, None),
    ("sles", "11", "", "SUSE Linux Enterprise Server"): (["hostname vm1"], "etc/HOSTNAME", "vm1"),
    ("redhat", "6.10"): (["hostname vm1"], "etc/sysconfig/network", "HOSTNAME=vm1\n"),
}


@pytest.mark.parametrize("sample", list(SET_HOSTNAME), ids=["-".join(s[:2]) for s in SET_HOSTNAME])
def test_set_hostname_commands(recorder, tmp_root, sample):
    commands, path, text = SET_HOSTNAME[sample]
    hostname.set_hostname("vm1", distros.make(*sample))
    assert recorder() == commands
    if path:
        assert (tmp_root / path).read_text() == text


SSHD = {
    ("debian", "12"): ["systemctl --job-mode=ignore-dependencies try-reload-or-restart ssh"],
    ("ubuntu", "22.04"): [],
    ("rhel", "8.5"): [],  # /sbin/service is not on PATH here: upstream's "/sbin/service sshd condrestart"
    ("rhel", "9.4"): ["systemctl condrestart sshd"],
    ("azurelinux", "3.0"): ["systemctl restart sshd"],
    ("sles", "15.5"): ["systemctl restart sshd.service"],
    ("fedora", "40"): ["systemctl restart sshd"],
    ("photonos", "5.0"): ["systemctl restart sshd"],
    ("flatcar", "1"): [],
    ("arch", ""): [],
}


@pytest.mark.parametrize("sample", list(SSHD), ids=["-".join(s) for s in SSHD])
def test_sshd_restart_after_provisioning(recorder, sample):
    ssh.restart_ssh_service(distros.make(*sample).restart_ssh)
    assert recorder() == SSHD[sample]


def test_rhel_8_5_sshd_and_stop_are_sysv_paths():
    rhel = distros.make("rhel", "8.5")
    assert rhel.restart_ssh == ("/sbin/service", "sshd", "condrestart")
    assert rhel.stop_service == ("/sbin/service", "waagent", "stop")


@pytest.mark.parametrize("sample,stop", [
    (("azurelinux", "3.0"), ("systemctl", "stop", "waagent")),
    (("ubuntu", "22.04"), ("systemctl", "stop", "walinuxagent")),
    (("ubuntu", "24.10"), ("service", "walinuxagent", "stop")),
    (("sles", "15.5"), ("systemctl", "stop", "waagent.service")),
    (("devuan", "5"), ("/usr/sbin/service", "walinuxagent", "stop")),
    (("gentoo", "1"), ()),
])
def test_agent_stop_on_deprovision(sample, stop):
    assert distros.make(*sample).stop_service == stop


@pytest.mark.parametrize("sample,extra", [
    (("flatcar", "3815.2.0"), ["/etc/machine-id"]),
    (("arch", ""), ["/etc/machine-id"]),
    (("azurelinux", "3.0"), []),
])
def test_deprovision_family_specific_files(sample, extra):
    plan = Deprovisioner(Config(), distros.make(*sample)).setup(deluser=False)
    assert [a.args[0] for a in plan.actions if a.what == "delete /etc/machine-id"] == extra
    assert ("WARNING! /etc/machine-id will be removed." in plan.warnings) == bool(extra)


def test_coreos_dhcp_pid_reads_systemctl_main_pid(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text("#!/bin/sh\necho MainPID=777\n")
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    flatcar = distros.make("flatcar", "3815.2.0")
    assert dhcpmonitor.dhcp_client_pids(flatcar.dhcp_pid_command, flatcar.dhcp_pid_prefix) == [777]


def test_coreos_core_account_is_not_a_system_user(tmp_root):
    (tmp_root / "etc").mkdir()
    (tmp_root / "etc/passwd").write_text("core:x:500:500:CoreOS Admin:/home/core:/bin/bash\n")
    (tmp_root / "etc/login.defs").write_text("UID_MIN 1000\n")
    assert users.is_sys_user("core")
    assert not users.is_sys_user("core", regular_users=distros.make("flatcar", "3815.2.0").regular_users)
    assert users.is_sys_user("core", regular_users=distros.make("debian", "12").regular_users)
