"""``guestagent lab``: the real daemon against the fabric in a sandbox, end to end.

The end-to-end test runs the real CLI and FAILS (never skips, except without root) when the daemon,
the ext-handler or the fabric is broken: the lab's exit code and output say why.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from guestagent.lab import image, summary
from guestagent.lab import main as lab
from guestagent.lab.sandbox import project_root

pytestmark = pytest.mark.sandbox


def _sha(p: str) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _run_lab(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(project_root()))
    return subprocess.run([sys.executable, "-m", "guestagent.tools", "lab", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def _lab_loops() -> set[str]:
    """Loop devices backed by a lab's images (another lab running on this host may hold some)."""
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    return {line for line in out.splitlines() if "guestagent-lab" in line}


def _host_mount_points() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def test_lab_end_to_end_reaches_ready_and_uploads_status():
    host = (socket.gethostname(), _sha("/etc/passwd"), _sha("/etc/shadow"), _host_mount_points())
    loops_before = _lab_loops()
    res = _run_lab("--until", "status", "--timeout", "240", "--swap-mb", "16")
    out = res.stdout
    print(out[-6000:], res.stderr[-2000:])
    assert res.returncode == 0, f"lab failed:\n{out[-4000:]}\n{res.stderr[-2000:]}"
    assert "endpoint found in the DHCP lease" in out  # discovery took the real lease path
    assert "health report: Ready" in out
    assert "status uploaded: agent Ready" in out
    assert "lab success" in out and "wall time" in out
    # the agent provisioned the sandbox, not the host
    assert "users added: azureuser" in out
    assert "hostname: lab-image -> guestagent-vm" in out
    # the resource disk: Azure's NTFS disk re-typed, formatted ext4, mounted, a swap file on it
    assert "ResourceDisk.Format=y, ResourceDisk.EnableSwap=y, ResourceDisk.SwapSizeMB=16" in out
    assert "resource disk: NTFS partition re-typed to 83 (Linux)" in out
    assert "resource disk: /dev/sdb1 ext4 mounted at /mnt/resource (rw,nosuid,nodev,relatime)" in out
    assert "swap: /mnt/resource/swapfile 16 MiB, mode 600, mkswap signature, swapon called (stand-in)" in out
    assert "a real swapon here would add swap to the host" in out
    # the firewall, when this host has the tools
    if lab.firewall_tool() == "iptables":
        assert "OS.EnableFirewall=y" in out
        assert "-A OUTPUT -d 127.63.129.16/32 -p tcp -m owner --uid-owner 0 -j ACCEPT" in out
    # what the fabric received besides requests
    assert "telemetry events received:" in out and "last heartbeat:" in out
    assert "collected logs uploaded:" in out
    assert "interface restart to publish the hostname: ifdown eth0, ifup eth0" in out
    assert (socket.gethostname(), _sha("/etc/passwd"), _sha("/etc/shadow"), _host_mount_points()) == host
    assert "\nazureuser:" not in "\n" + Path("/etc/passwd").read_text()
    assert "guestagent-sandbox-" not in Path("/proc/self/mountinfo").read_text()
    assert not _lab_loops() - loops_before  # this lab's loop devices are detached
    swaps = Path("/proc/swaps").read_text()
    assert "swapfile" not in swaps and "/mnt/resource" not in swaps  # the host got no swap


class _InspectingLab(lab.Lab):
    """Looks inside the sandbox after the run, before it is torn down."""

    seen: dict

    def _summarise(self, sb, passwd_before):
        mounts = sb.run(["findmnt", "-rn", "-o", "TARGET,SOURCE,FSTYPE"]).stdout.splitlines()
        type(self).seen = {
            "mounts": {m.split()[0]: m.split()[1:] for m in mounts},
            "conf": sb.read_text("/etc/waagent.conf"),
            "warning": sb.read_text("/mnt/resource/DATALOSS_WARNING_README.txt"),
            "uptime": float(sb.run(["cat", "/proc/uptime"]).stdout.split()[0]),
        }
        super()._summarise(sb, passwd_before)


def test_lab_resource_disk_is_mounted_inside_the_sandbox_only():
    before = _host_mount_points()
    out = io.StringIO()
    assert _InspectingLab("default", until="ready", timeout=120, out=out).run() == 0, out.getvalue()[-4000:]
    seen = _InspectingLab.seen
    mount_point = next(line.split("=", 1)[1] for line in seen["conf"].splitlines()
                       if line.startswith("ResourceDisk.MountPoint="))
    assert seen["mounts"][mount_point] == ["/dev/sdb1", "ext4"]
    assert "ResourceDisk.Format=y" in seen["conf"] and "ResourceDisk.EnableSwap=n" in seen["conf"]
    assert "TEMPORARY DISK" in seen["warning"]
    assert seen["uptime"] < 120  # the sandbox's boot clock started with it
    assert f"resource disk: /dev/sdb1 ext4 mounted at {mount_point}" in out.getvalue()
    assert "swap:" not in out.getvalue()
    assert _host_mount_points() == before and not Path(mount_point, "DATALOSS_WARNING_README.txt").exists()


def test_lab_options_from_a_scenario_and_the_command_line(tmp_path):
    from guestagent.fabric.scenario import BUILTIN_DIR

    doc = json.loads((BUILTIN_DIR / "default.json").read_text())
    doc["lab"] = {"resource_disk_mb": 64, "swap_mb": 8}
    for h in doc.get("handlers", []):
        h["path"] = str((BUILTIN_DIR / h["path"]).resolve())
    path = tmp_path / "swap.json"
    path.write_text(json.dumps(doc))
    scenario, options = image.load_lab_scenario(str(path))
    assert (options.resource_disk_mb, options.swap_mb) == (64, 8) and scenario.name == doc.get("name", "default")
    assert image.load_lab_scenario("default")[1] == image.LabOptions()
    for bad, msg in (({"swap": 1}, "unknown key(s) swap"), ({"swap_mb": -1}, "non-negative integer"),
                     ([], "expected an object")):
        doc["lab"] = bad
        path.write_text(json.dumps(doc))
        with pytest.raises(image.LabOptionError, match=re.escape(msg)):
            image.load_lab_scenario(str(path))
    with pytest.raises(image.LabOptionError, match="needs a resource disk"):
        image.LabOptions(resource_disk_mb=0, swap_mb=8).validate()
    with pytest.raises(image.LabOptionError, match="does not fit"):
        image.LabOptions(resource_disk_mb=32, swap_mb=30).validate()
    settings = image.conf_settings(provisions=True, verbose=False, resource_disk={"ResourceDisk.Format": "y"},
                                   swap_mb=8, firewall=False)
    assert settings["ResourceDisk.EnableSwap"] == "y" and settings["ResourceDisk.SwapSizeMB"] == "8"
    assert image.conf_settings(provisions=False, verbose=True, resource_disk=None, swap_mb=0, firewall=True) == {
        "Provisioning.Agent": "disabled", "Logs.Verbose": "y", "OS.EnableFirewall": "y", "ResourceDisk.Format": "n"}


def test_lab_swap_option_that_does_not_fit_fails_with_reason(capsys):
    assert lab.main(["--resource-disk-mb", "32", "--swap-mb", "30", "--timeout", "5"]) == 1
    assert "does not fit on a 32 MiB resource disk" in capsys.readouterr().out


def test_telemetry_summary_lines(tmp_path):
    received = [
        {"event_id": 1, "op": "Provision", "ok": True, "message": "Provisioning succeeded (3.1s)", "time": "t1"},
        {"event_id": 4, "op": None, "ok": None, "message": "", "time": "t2"},
        {"event_id": 1, "op": "Enable", "ok": False, "message": "enable failed\nexit code 1", "time": "t3"},
        {"event_id": 1, "op": "HeartBeat", "ok": True, "name": "WALinuxAgent", "version": "2.15.0.1", "time": "t4",
         "message": "[HEARTBEAT] Agent ... [DEBUG HeartbeatCounter: 3;HeartbeatId: X;UpdateGSErrors: 0;]"}]
    (tmp_path / "1.tld").write_text(json.dumps({"eventId": 1, "parameters": [
        {"name": "Operation", "value": "Firewall"}, {"name": "OperationSuccess", "value": False},
        {"name": "Message", "value": "Unable to add firewall rules"}, {"name": "OpcodeName", "value": "t5"}]}))
    (tmp_path / "2.tld").write_text("{torn")  # being written or sent right now: skipped
    queued = summary.queued_events(tmp_path.glob("*.tld"))
    lines = summary.telemetry_lines(received, [{"time": "t6", "Observations": [
        {"ObservationName": "GuestAgentPluginHeartbeat", "IsHealthy": True}]}], [{"time": "t7", "size": 1234}],
        queued)
    assert lines == [
        "telemetry events received: 4 (Enable 1, HeartBeat 1, Provision 1, performance counters 1)",
        "  not sent yet (queued in /var/lib/waagent/events): 1 (Firewall 1)",
        "  last heartbeat: t4 (WALinuxAgent 2.15.0.1; HeartbeatCounter 3, UpdateGSErrors 0)",
        "  failed operations: 2 (last 2):",
        "    t3 enabling the extension failed (Enable): enable failed",
        "    t5 setting up the firewall failed (Firewall): Unable to add firewall rules",
        "HealthService reports: 1, last at t6: GuestAgentPluginHeartbeat healthy",
        "collected logs uploaded: 1",
        "  t7 1234 bytes"]
    assert summary.telemetry_lines([], [], [])[1].startswith("  last heartbeat: none yet")


def test_lab_not_root_exits_2_with_one_sentence(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # "not root" without dropping this process's privileges
    assert lab.main(["--timeout", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs root" in err and err.count("\n") == 0


def test_lab_bad_scenario_fails_with_reason(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert lab.main(["--scenario", str(bad), "--timeout", "5"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and ("invalid JSON" in out or "fabric" in out)


def test_lease_file_is_found_by_the_agent_parser():
    from guestagent.protocol.dhcp import parse_isc_leases

    text = lab.lease_file("127.63.129.16")
    assert "option unknown-245 7f:3f:81:10;" in text
    assert parse_isc_leases(text) == "127.63.129.16"
    old = lab.lease_file("127.63.129.16", now=datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc))
    assert parse_isc_leases(old) is None  # expired leases are ignored


def test_adapt_conf_sets_commented_and_missing_keys():
    text = "# Provisioning.Agent=auto\nResourceDisk.Format=y\nOther=1\n"
    out = lab.adapt_conf(text, {"Provisioning.Agent": "waagent", "ResourceDisk.Format": "n", "OS.EnableFirewall": "n"})
    assert out.splitlines() == ["Provisioning.Agent=waagent", "ResourceDisk.Format=n", "Other=1",
                                "OS.EnableFirewall=n"]


def test_status_reader_and_extension_check():
    blob = {"version": "1.1", "aggregateStatus": {
        "guestAgentStatus": {"version": "2.15.0.1", "status": "Ready",
                             "formattedMessage": {"lang": "en-US", "message": "Guest Agent is running"}},
        "handlerAggregateStatus": [{"handlerName": "A.B", "handlerVersion": "1.0.0", "status": "Ready", "code": 0,
                                    "runtimeSettingsStatus": {"settingsStatus": {"status": {
                                        "name": "A.B", "operation": "Enable", "status": "success", "code": 0,
                                        "formattedMessage": {"message": "done"}}}, "sequenceNumber": 1}}]}}
    st = summary.parse_status(blob)
    assert (st.agent_status, st.extensions[0].status, st.extensions[0].sequence_number) == ("Ready", "success", 1)

    class Ext:
        name, version, state = "A.B", "1.0.0", "enabled"
        settings = [type("S", (), {"seq_no": 1, "state": "enabled"})()]

    step = type("Step", (), {"extensions": [Ext()]})()
    assert summary.extensions_done(st, step) == (True, "all extensions succeeded")
    Ext.settings[0].seq_no = 2
    assert summary.extensions_done(st, step)[0] is False
    assert summary.parse_status("not json").agent_status is None
