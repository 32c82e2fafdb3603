"""Two other families' network stacks, real, from Debian's own archive (issue 16): each scenario is Debian 12
with that family's network stack and that family's /etc/os-release, so the agent picks the family's
record (osutil/distros.py) and drives the real daemons. What Debian's archive cannot give (wicked,
dhcpcd's SUSE/Alpine wiring) stays in the unit tier with recording stand-ins.
"""

from __future__ import annotations

import json
import re

from vmtier import netstacks

PASSWORD = "VmTier-Passw0rd!"
WIRESERVER = "168.63.129.16"
UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"   # systemd's journal MESSAGE_ID for "Started <unit>"
# the agent's three rules as firewalld keeps them (upstream's FirewallCmd passthroughs) and as the
# kernel's iptables-nft ruleset lists them
PASSTHROUGHS = {
    f"ipv4 -t security -A OUTPUT -d {WIRESERVER} -p tcp --destination-port 53 -j ACCEPT",
    f"ipv4 -t security -A OUTPUT -d {WIRESERVER} -p tcp -m owner --uid-owner 0 -j ACCEPT",
    f"ipv4 -t security -A OUTPUT -d {WIRESERVER} -p tcp -m conntrack --ctstate INVALID,NEW -j DROP",
}
KERNEL_RULES = {
    f"-A OUTPUT -d {WIRESERVER}/32 -p tcp -m tcp --dport 53 -j ACCEPT",
    f"-A OUTPUT -d {WIRESERVER}/32 -p tcp -m owner --uid-owner 0 -j ACCEPT",
    f"-A OUTPUT -d {WIRESERVER}/32 -p tcp -m conntrack --ctstate INVALID,NEW -j DROP",
}


def _starts(vm, unit: str) -> list:
    """(realtime µs, InvocationID) of each start of ``unit`` in this boot, from systemd's own journal lines."""
    out = vm.run(["journalctl", "-b", "-o", "json", "--no-pager", f"MESSAGE_ID={UNIT_STARTED}", f"UNIT={unit}"]).out
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [(int(e["__REALTIME_TIMESTAMP"]), e.get("INVOCATION_ID", "")) for e in entries]


def _show(vm, unit: str, *props: str) -> dict:
    out = vm.run(["systemctl", "show", unit, *(f"--property={p}" for p in props)]).out
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _cursor(vm) -> str:
    out = vm.run(["journalctl", "-n", "0", "--show-cursor", "-q", "--no-pager"]).out
    return out.strip().split("cursor: ", 1)[1]


def _journal_after(vm, cursor: str, unit: str) -> str:
    return vm.run(["journalctl", f"--after-cursor={cursor}", "-u", unit, "--no-pager", "-o", "short-monotonic"]).out


def _assert_provisioned(vm, user: str, hostname: str) -> None:
    assert vm.exists("/var/lib/waagent/provisioned")
    assert vm.run(["id", "-un", user]).out.strip() == user
    assert vm.run(["hostname"]).out.strip() == hostname
    login = vm.machine.wait_for(f"ssh login as {user}",
                                lambda: (r := vm.ssh(user, "id -un; hostname")).returncode == 0 and r, 120, 3)
    assert login.stdout.split() == [user, hostname], login.stdout + login.stderr


def _wait_osutil(vm, osutil: str) -> None:
    """The ext-handler's start line names the upstream OS-util the agent chose for this os-release."""
    vm.machine.wait_for(f"the ext-handler's OSInfo line naming {osutil}",
                        lambda: f"OSUtil: {osutil}; AgentService: waagent;" in vm.agent_log(), 180, 3)


def _mtime_us(vm, path: str) -> int:
    return int(vm.run(["stat", "-c", "%.6Y", path]).out.strip().replace(".", ""))


def _kernel_rules(vm) -> set:
    out = vm.run(["iptables", "-t", "security", "-S", "OUTPUT"]).out
    return {line for line in out.splitlines() if WIRESERVER in line}


def test_rhel9_networkmanager_firewalld(azure_vm, vm_images):
    """Debian 12 with RHEL 9's network stack (Debian's NetworkManager owning eth0 by DHCP, firewalld;
    systemd-networkd disabled) and RHEL 9.4's os-release: the agent takes upstream's RedhatOSModernUtil
    record. Provisioning completes; a hostname change is published as that record does (NetworkManager
    restarted, then the link bounced, so DHCP renews); the WireServer firewall is kept as firewalld
    permanent direct passthroughs, which firewalld itself re-applies after a reboot. Unlike RHEL, Debian's
    NetworkManager has no ifcfg-rh plugin: it reads the keyfile, not the DHCP_HOSTNAME the agent writes
    to ifcfg-eth0, and sends the system hostname."""
    base, _ = vm_images
    vm = azure_vm(images=netstacks.nm_firewalld_images(base), os_release=netstacks.RHEL94_OS_RELEASE,
                  conf={"Provisioning.MonitorHostNamePeriod": "5", "OS.EnableFirewallPeriod": "10"}).start()
    took = vm.wait_ready()
    print(f"RHEL 9 shape: qemu start -> Ready {took:.1f}s (guest boot {vm.machine.boot_seconds:.1f}s)")
    _assert_provisioned(vm, "azureuser", "vmtier-vm")
    assert vm.run(["systemctl", "is-active", "systemd-networkd.service"], check=False).out.strip() != "active"
    assert _show(vm, "NetworkManager.service", "ActiveState")["ActiveState"] == "active"
    _wait_osutil(vm, "RedhatOSModernUtil")
    assert PASSWORD not in vm.agent_log()

    # provisioning published the name: NetworkManager started at boot, then restarted by the agent
    started = _starts(vm, "NetworkManager.service")
    ovf_copied = _mtime_us(vm, "/var/lib/waagent/ovf-env.xml")
    assert len({i for _, i in started}) >= 2 and started[-1][0] > ovf_copied, started

    # the hostname monitor: a new name is published through NetworkManager restart + link bounce
    nm_before = _show(vm, "NetworkManager.service", "InvocationID", "ExecMainStartTimestampMonotonic", "MainPID")
    cursor = _cursor(vm)
    vm.run("ip -ts monitor link > /run/vmtest-link.log 2>&1", background=True)
    vm.machine.wait_for("ip monitor running", lambda: vm.process_pids("ip -ts monitor link"), 30, 1)
    vm.run(["hostname", "rhel-renamed"])
    nm_after = vm.machine.wait_for(
        "NetworkManager restarted by the agent",
        lambda: (s := _show(vm, "NetworkManager.service", "InvocationID", "ExecMainStartTimestampMonotonic",
                            "MainPID")) and s["InvocationID"] != nm_before["InvocationID"] and s, 120, 2)
    assert int(nm_after["ExecMainStartTimestampMonotonic"]) > int(nm_before["ExecMainStartTimestampMonotonic"])
    print(f"NetworkManager before {nm_before} after {nm_after}")

    def bounced():
        text = vm.run("cat /run/vmtest-link.log").out
        lines = [ln for ln in text.splitlines() if ": eth0: <" in ln]
        down = [i for i, ln in enumerate(lines) if not re.search(r"<[^>]*\bUP\b", ln)]
        up = [i for i, ln in enumerate(lines) if down and i > down[0] and re.search(r"<[^>]*\bUP\b[^>]*LOWER_UP", ln)]
        return up and lines

    links = vm.machine.wait_for("eth0 set down, then up again (netlink)", bounced, 90, 2)
    print("netlink:\n" + "\n".join(links))
    renewed = vm.machine.wait_for(
        "NetworkManager's new DHCP lease after the bounce",
        lambda: re.search(r"dhcp4 \(eth0\): state changed new lease.*", _journal_after(vm, cursor, "NetworkManager")),
        120, 3)
    print(f"DHCP: {renewed.group(0)}")
    assert vm.run(["cat", "/var/lib/waagent/published_hostname"]).out.strip() == "rhel-renamed"
    assert vm.run(["hostnamectl", "--static"]).out.strip() == "rhel-renamed"
    assert "Detected hostname change: vmtier-vm -> rhel-renamed" in vm.agent_log()
    vm.run("pkill -f '^ip -ts monitor link' || true")

    # the firewall: firewalld's permanent direct passthroughs, and the rules in the kernel now
    def permanent():
        out = vm.run(["firewall-cmd", "--permanent", "--direct", "--get-all-passthroughs"], check=False).out
        return set(out.strip().splitlines()) == PASSTHROUGHS and out

    vm.machine.wait_for("the agent's three permanent firewalld passthroughs", permanent, 180, 3)
    vm.machine.wait_for("the agent's three rules in the kernel", lambda: _kernel_rules(vm) == KERNEL_RULES, 120, 3)
    assert "Created permanent firewall rules for Azure Fabric" in vm.agent_log()
    assert not vm.exists("/usr/lib/systemd/system/waagent-network-setup.service"), "firewalld keeps the rules"

    # reboot with the agent disabled: whatever rules the kernel has then came from firewalld's permanent config
    vm.run(["systemctl", "disable", "--quiet", "walinuxagent.service"])
    vm.machine.poweroff()
    vm.boot_again()
    vm.machine.wait_for("firewalld running after the reboot",
                        lambda: vm.run(["firewall-cmd", "--state"], check=False).out.strip() == "running", 180, 3)
    runtime = vm.run(["firewall-cmd", "--direct", "--get-all-passthroughs"]).out
    assert set(runtime.strip().splitlines()) == PASSTHROUGHS, runtime
    assert _kernel_rules(vm) == KERNEL_RULES, vm.run("iptables -t security -S OUTPUT").out
    nft = vm.run(["nft", "list", "table", "ip", "security"]).out
    assert nft.count(f"ip daddr {WIRESERVER}") == 3, nft
    assert vm.run(["systemctl", "is-active", "walinuxagent.service"], check=False).out.strip() == "inactive"
    assert not _starts(vm, "walinuxagent.service"), "the agent did not run in this boot"


def test_azurelinux3_systemd_networkd(azure_vm):
    """Debian 12 with Azure Linux 3's network stack (systemd-networkd owning eth0 by DHCP, the base's own)
    and Azure Linux 3.0's os-release: the agent takes upstream's MarinerOSUtil record. Provisioning
    publishes the name by restarting systemd-networkd once (DHCP renewed); sshd is restarted after
    provisioning; the DHCP-client monitor watches systemd-networkd (no dhclient runs here) and notices
    its restart."""
    vm = azure_vm(os_release=netstacks.AZURELINUX3_OS_RELEASE,
                  conf={"OS.MonitorDhcpClientRestartPeriod": "5"}).start()
    took = vm.wait_ready()
    print(f"Azure Linux 3 shape: qemu start -> Ready {took:.1f}s (guest boot {vm.machine.boot_seconds:.1f}s)")
    _assert_provisioned(vm, "azureuser", "vmtier-vm")
    _wait_osutil(vm, "MarinerOSUtil")

    # hostname publish: systemd-networkd started at boot, restarted exactly once by the agent, DHCP renewed
    ovf_copied = _mtime_us(vm, "/var/lib/waagent/ovf-env.xml")
    networkd = _starts(vm, "systemd-networkd.service")
    assert len(networkd) == 2 and networkd[0][0] < ovf_copied < networkd[1][0], (networkd, ovf_copied)
    leases = re.findall(r"eth0: DHCPv4 address \S+", vm.run(["journalctl", "-b", "-u", "systemd-networkd",
                                                             "--no-pager"]).out)
    assert len(leases) >= 2, leases

    # sshd restarted after provisioning (the record's `systemctl restart sshd`)
    ssh = _starts(vm, "ssh.service")
    assert len(ssh) >= 2 and ssh[-1][0] > ovf_copied, (ssh, ovf_copied)
    assert _show(vm, "ssh.service", "InvocationID")["InvocationID"].replace("-", "") == ssh[-1][1].replace("-", "")

    # the DHCP-client monitor watches systemd-networkd: restarting it is noticed
    assert vm.run(["pidof", "dhclient"], check=False).rc != 0, "no dhclient in this shape"
    first = vm.run(["pidof", "systemd-networkd"]).out.split()
    restarts = 0

    def noticed():
        nonlocal restarts
        if "Detected dhcp client restart" in vm.agent_log():
            return True
        restarts += 1  # the monitor records PIDs on its first run: restart until it has seen one
        vm.run(["systemctl", "restart", "systemd-networkd.service"])
        return False

    vm.machine.wait_for("the agent's DHCP-client monitor noticing systemd-networkd's restart", noticed, 120, 8)
    now = vm.run(["pidof", "systemd-networkd"]).out.split()
    assert now != first and restarts >= 1
    assert "Dhcp client is not running" not in vm.agent_log()
    print(f"systemd-networkd pid {first} -> {now} after {restarts} restart(s) by the test")
