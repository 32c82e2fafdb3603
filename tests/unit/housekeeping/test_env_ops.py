"""The env thread's operations on files under a temporary root, and on real processes."""

from __future__ import annotations

import subprocess
import sys
import threading

from guestagent import conf
from guestagent.exthandler import env
from guestagent.osutil import dhcpmonitor, distros, netrules, scsi
from guestagent.osutil.nethelper import Helper


class Ctx:
    def __init__(self, config, lib_dir):
        self.config, self.protocol, self.lib_dir, self.stop_event = config, None, lib_dir, threading.Event()


def test_operations_and_periods_follow_the_config(tmp_root, monkeypatch):
    monkeypatch.setenv("GUESTAGENT_DISTRO", "rhel:9.4")
    lib = str(tmp_root / "var/lib/waagent")
    (tmp_root / "var/lib/waagent").mkdir(parents=True)
    (tmp_root / "var/lib/waagent/published_hostname").write_text("vm1")
    base = env.operations(Ctx(conf.parse(f"Lib.Dir={lib}\n"), lib))
    assert [(o.name, o.period) for o in base] == [("RemovePersistentNetworkRules", 30),
                                                  ("MonitorDhcpClientRestart", 30)]
    full = env.operations(Ctx(conf.parse(
        f"Lib.Dir={lib}\nOS.EnableFirewall=y\nOS.EnableFirewallPeriod=45\nOS.RootDeviceScsiTimeout=300\n"
        "Provisioning.MonitorHostName=y\nProvisioning.MonitorHostNamePeriod=7\n"), lib))
    assert [(o.name, o.period) for o in full] == [
        ("RemovePersistentNetworkRules", 30), ("MonitorDhcpClientRestart", 30), ("EnableFirewall", 45),
        ("SetRootDeviceScsiTimeout", 30), ("MonitorHostNameChanges", 7)]
    # the disabled firewall is reported once per start
    assert "Skipping firewall initialization" in "".join(
        p.read_text() for p in (tmp_root / "var/lib/waagent/events").glob("*.tld"))


def test_persistent_net_rules_are_moved_into_the_lib_dir(tmp_root):
    lib = "/var/lib/waagent"
    (tmp_root / "var/lib/waagent").mkdir(parents=True)
    (tmp_root / "etc/udev/rules.d").mkdir(parents=True)
    (tmp_root / "etc/udev/rules.d/70-persistent-net.rules").write_text("new")
    (tmp_root / "var/lib/waagent/70-persistent-net.rules").write_text("older copy")
    (tmp_root / "var/lib/waagent/75-persistent-net-generator.rules").write_text("older copy")
    assert netrules.remove_rules_files(lib) == ["/etc/udev/rules.d/70-persistent-net.rules"]
    assert not (tmp_root / "etc/udev/rules.d/70-persistent-net.rules").exists()
    assert (tmp_root / "var/lib/waagent/70-persistent-net.rules").read_text() == "new"
    assert not (tmp_root / "var/lib/waagent/75-persistent-net-generator.rules").exists()
    assert netrules.restore_rules_files(lib) == ["/etc/udev/rules.d/70-persistent-net.rules"]
    assert (tmp_root / "etc/udev/rules.d/70-persistent-net.rules").read_text() == "new"
    assert not distros.make("ubuntu", "22.04").remove_net_rules and not distros.make("kali", "2024").remove_net_rules
    assert distros.make("rhel", "9.4").remove_net_rules


def test_scsi_timeout_written_only_where_it_differs(tmp_root):
    for dev, value in (("sda", "30\n"), ("sdb", "300\n"), ("vda", "30\n")):
        (tmp_root / f"sys/block/{dev}/device").mkdir(parents=True)
        (tmp_root / f"sys/block/{dev}/device/timeout").write_text(value)
    (tmp_root / "sys/block/sdc").mkdir(parents=True)  # no device/timeout: skipped
    assert scsi.set_scsi_disks_timeout("300") == ["sda"]
    assert (tmp_root / "sys/block/sda/device/timeout").read_text() == "300"
    assert (tmp_root / "sys/block/vda/device/timeout").read_text() == "30\n"
    assert scsi.set_scsi_disks_timeout("300") == []


def test_hostname_monitor_publishes_a_change_once(tmp_root, monkeypatch):
    lib = "/var/lib/waagent"
    (tmp_root / "var/lib/waagent").mkdir(parents=True)
    (tmp_root / "var/lib/waagent/published_hostname").write_text("vm1")
    monkeypatch.setenv("PATH", "/nonexistent")  # `hostname <name>` cannot run here; the file is written
    names, published = ["vm1"], []
    op = env.MonitorHostNameChanges(conf.parse(f"Lib.Dir={lib}\n"), lib, distros.make("debian", "12"),
                                    gethostname=lambda: names[-1], publish=published.append)
    op()
    assert published == []
    names.append("vm2")
    op()
    op()
    assert published == ["vm2"] and op.changes == 1
    assert (tmp_root / "etc/hostname").read_text() == "vm2"


def test_hostname_publish_failure_is_an_event(tmp_root, monkeypatch):
    lib = "/var/lib/waagent"
    (tmp_root / "var/lib/waagent").mkdir(parents=True)
    monkeypatch.setenv("PATH", "/nonexistent")

    def fail(name):
        raise RuntimeError("ifdown failed")

    op = env.MonitorHostNameChanges(conf.parse(f"Lib.Dir={lib}\n"), lib, distros.make("debian", "12"),
                                    gethostname=lambda: "other", publish=fail)
    op.hostname = "vm1"
    op()
    text = "".join(p.read_text() for p in (tmp_root / "var/lib/waagent/events").glob("*.tld"))
    assert "HostnamePublishing" in text and "ifdown failed" in text
    assert op.hostname == "other"


def test_dhcp_client_restart_detected_with_real_processes(tmp_path):
    pid_file = tmp_path / "pids"
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    first = subprocess.Popen(sleeper)
    try:
        pid_file.write_text(str(first.pid))
        monitor = dhcpmonitor.DhcpClientMonitor(["cat", str(pid_file)], Helper())
        assert monitor.check() is False and monitor.pids == [first.pid]
        assert monitor.check() is False  # still alive
        first.kill()
        first.wait()
        pid_file.write_text("")
        assert monitor.check() is False  # dead, nothing new yet
        second = subprocess.Popen(sleeper)
        try:
            pid_file.write_text(f"{second.pid}")
            assert monitor.check() is True and monitor.pids == [second.pid] and monitor.restarts == 1
        finally:
            second.kill()
            second.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


def test_rdma_is_reported_honestly(tmp_root):
    lib = str(tmp_root / "lib")
    assert env.rdma_report(conf.parse(f"Lib.Dir={lib}\n"), lib) is None
    msg = env.rdma_report(conf.parse(f"Lib.Dir={lib}\nOS.EnableRDMA=y\n"), lib)
    assert "does not configure RDMA" in msg and "none" in msg
