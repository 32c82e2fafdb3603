"""Log collection (05 §15) on a temporary root: manifest, priorities, truncation, caps, secrets."""

from __future__ import annotations

import os
import zipfile

import pytest

from guestagent.conf import Config
from guestagent.exthandler import logcollector
from guestagent.exthandler.logcollector import LogCollector

PASSWORD = "Sup3r-S3cret-P@ss"
PROTECTED = "plaintext-protected-value-42"
SIG = "SASSIGNATUREabc123"


def _write(root, path, data, mtime=None):
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    if mtime:
        os.utime(p, (mtime, mtime))
    return p


@pytest.fixture
def machine(tmp_root):
    _write(tmp_root, "/etc/os-release", "ID=debian\n")
    _write(tmp_root, "/etc/hostname", "vm1\n")
    _write(tmp_root, "/etc/waagent.conf", "Logs.Verbose=n\n")
    _write(tmp_root, "/var/log/waagent.log",
           f"2025-01-01T00:00:00.000000Z INFO ExtHandler fetched https://a.blob.core.windows.net/c?sv=1&sig={SIG}\n")
    _write(tmp_root, "/var/log/waagent.log.1.gz", b"\x1f\x8b binary")
    _write(tmp_root, "/var/log/syslog", "syslog line\n")
    _write(tmp_root, "/var/log/azure/Ext.Handler/CommandExecution.log", "enable ok\n")
    _write(tmp_root, "/var/log/azure/Ext.Handler/events/1.json", "{}")
    _write(tmp_root, "/var/lib/waagent/ovf-env.xml",
           f"<ns1:UserPassword>{PASSWORD}</ns1:UserPassword><UserName>azureuser</UserName>")
    _write(tmp_root, "/var/lib/waagent/waagent_status.json", '{"version": "1.1"}')
    _write(tmp_root, "/var/lib/waagent/Ext.Handler-1.0/config/0.settings",
           '{"runtimeSettings": [{"handlerSettings": {"protectedSettings": "' + PROTECTED + '", '
           '"publicSettings": {"x": 1}}}]}')
    _write(tmp_root, "/var/lib/waagent/Ext.Handler-1.0/status/0.status", '[{"status": {}}]')
    _write(tmp_root, "/var/lib/waagent/Ext.Handler-1.0/config/HandlerState", "Enabled")
    _write(tmp_root, "/var/lib/waagent/history/2025_1.zip", b"PK\x05\x06" + b"\0" * 18)
    _write(tmp_root, "/var/lib/waagent/secret.prv", "never collected")
    return tmp_root


def test_archive_file_by_file_and_no_secrets(machine):
    collector = LogCollector(Config({"Lib.Dir": "/var/lib/waagent", "Extension.LogDir": "/var/log/azure"}))
    archive, total = collector.collect()
    path = machine / archive.lstrip("/")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        assert zf.infolist()[0].compress_type == zipfile.ZIP_DEFLATED
        blobs = {n: zf.read(n) for n in names}
    expected = {
        "etc/os-release", "etc/hostname", "etc/waagent.conf", "var/log/waagent.log", "var/log/waagent.log.1.gz",
        "var/log/syslog", "var/log/azure/Ext.Handler/CommandExecution.log", "var/log/azure/Ext.Handler/events/1.json",
        "var/lib/waagent/ovf-env.xml", "var/lib/waagent/waagent_status.json",
        "var/lib/waagent/Ext.Handler-1.0/config/0.settings", "var/lib/waagent/Ext.Handler-1.0/status/0.status",
        "var/lib/waagent/Ext.Handler-1.0/config/HandlerState", "var/lib/waagent/history/2025_1.zip", "results.txt",
    }
    assert set(names) == expected
    assert names[-1] == "results.txt"
    # must-collect files come first, in upstream's priority order
    assert names[:3] == ["var/log/waagent.log", "var/lib/waagent/waagent_status.json",
                         "var/lib/waagent/history/2025_1.zip"]
    assert blobs["etc/hostname"] == b"vm1\n"
    assert blobs["var/log/waagent.log.1.gz"] == b"\x1f\x8b binary"
    everything = b"".join(blobs.values())
    for secret in (PASSWORD, PROTECTED, SIG):
        assert secret.encode() not in everything, secret
    assert b"azureuser" in blobs["var/lib/waagent/ovf-env.xml"]
    assert b'"publicSettings": {"x": 1}' in blobs["var/lib/waagent/Ext.Handler-1.0/config/0.settings"]
    results = blobs["results.txt"].decode()
    assert "Using /var/lib/waagent as $LIB_DIR" in results and "Output of command [ls -alF /var/log]" in results
    assert "Using log collection mode normal" in results
    assert total == sum(os.path.getsize(machine / n) for n in names if n != "results.txt")  # sizes on disk


def test_truncation_caps_and_full_mode(machine, monkeypatch):
    monkeypatch.setattr(logcollector, "FILE_LIMIT", 100)
    monkeypatch.setattr(logcollector, "TOTAL_LIMIT", 700)
    _write(machine, "/var/log/syslog", "A" * 150 + "TAIL" * 10)
    _write(machine, "/var/log/syslog.2.gz", b"\x1f\x8b" + b"B" * 200)
    _write(machine, "/etc/fstab", "/dev/sda1 / ext4 defaults 0 0\n")
    collector = LogCollector(Config({"Lib.Dir": "/var/lib/waagent"}), full=True)
    archive, total = collector.collect()
    assert total <= 700
    with zipfile.ZipFile(machine / archive.lstrip("/")) as zf:
        names = zf.namelist()
        assert "truncated__var_log_syslog" in names
        data = zf.read("truncated__var_log_syslog")
        assert len(data) == 100 and data.endswith(b"TAIL")
        assert "var/log/syslog.2.gz" not in names
        results = zf.read("results.txt").decode()
    assert "Discarding large binary file /var/log/syslog.2.gz" in results
    cached = machine / "var/lib/waagent/logcollector/truncated/_var_log_syslog"
    assert cached.exists()  # cached; reused while the original is older, removed when no longer collected
    # a budget smaller than the must-collect files stops early
    monkeypatch.setattr(logcollector, "TOTAL_LIMIT", 150)
    _, total = LogCollector(Config({"Lib.Dir": "/var/lib/waagent"}), full=True).collect()
    assert total <= 150
    with zipfile.ZipFile(machine / archive.lstrip("/")) as zf:
        assert "Archive too big, done with adding files." in zf.read("results.txt").decode()
    assert not cached.exists()
    assert "Using log collection mode full" in results


def test_cli_entry_point_prints_paths(machine, capsys):
    class Args:
        full = False

    assert logcollector.run_collect_logs(Args(), Config({"Lib.Dir": "/var/lib/waagent"})) == 0
    out = capsys.readouterr().out
    assert "/var/lib/waagent/logcollector/logs.zip" in out and "results.txt" in out


def test_periodic_command_runs_in_limited_scope():
    from guestagent.exthandler.cgroups import CGroupConfigurator
    from guestagent.osutil import cgroupfs

    conf = CGroupConfigurator(hierarchy=cgroupfs.Hierarchy(cgroupfs.V2, v2_root="/sys/fs/cgroup"))
    argv = conf.logcollector_command(["/usr/bin/python3", "-u", "/usr/sbin/waagent", "-collect-logs"])
    assert argv == ["systemd-run", "--unit=collect-logs.scope", "--slice=azure-walinuxagent-logcollector.slice",
                    "--scope", "--property=CPUAccounting=yes", "--property=MemoryAccounting=yes",
                    "--property=CPUQuota=5%", "--property=MemoryHigh=170M",
                    "/usr/bin/python3", "-u", "/usr/sbin/waagent", "-collect-logs"]
