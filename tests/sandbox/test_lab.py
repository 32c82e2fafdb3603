"""``guestagent lab``: the real daemon against the fabric in a sandbox, end to end.

The end-to-end test runs the real CLI and FAILS (never skips, except without root) when the daemon,
the ext-handler or the fabric is broken: the lab's exit code and output say why.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from guestagent.lab import main as lab
from guestagent.lab import summary
from guestagent.lab.sandbox import project_root

pytestmark = pytest.mark.sandbox


def _sha(p: str) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _run_lab(*args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(project_root()))
    return subprocess.run([sys.executable, "-m", "guestagent.tools", "lab", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False)


def test_lab_end_to_end_reaches_ready_and_uploads_status():
    host = (socket.gethostname(), _sha("/etc/passwd"), _sha("/etc/shadow"))
    res = _run_lab("--until", "status", "--timeout", "240")
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
    assert (socket.gethostname(), _sha("/etc/passwd"), _sha("/etc/shadow")) == host
    assert "\nazureuser:" not in "\n" + Path("/etc/passwd").read_text()
    assert "guestagent-sandbox-" not in Path("/proc/self/mountinfo").read_text()
    assert "guestagent-lab" not in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout


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
