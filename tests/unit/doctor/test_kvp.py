"""KVP records: cloud-init's format, read back from the pool file; best effort when the host has no KVP."""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

from guestagent.osutil import kvp

POOL = "/var/lib/hyperv/.kvp_pool_1"


def test_record_layout_is_512_plus_2048_nul_padded():
    rec = kvp.encode_record("PROVISIONING_REPORT", "result=success")
    assert len(rec) == 2560
    assert rec[:19] == b"PROVISIONING_REPORT" and rec[19:512] == b"\0" * 493
    assert rec[512:526] == b"result=success" and rec[526:] == b"\0" * (2560 - 526)


def test_values_are_cut_to_what_azure_reads_on_a_character_boundary():
    rec = kvp.encode_record("k", "é" * 1000)  # 2000 bytes
    value = rec[512:].rstrip(b"\0")
    assert len(value) <= 1023
    value.decode("utf-8")  # no character cut in half


def test_reports_as_cloud_init_encodes_them():
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    ok = kvp.provisioning_report("WALinuxAgent/2.15.0.1", "vm-1", now=now)
    assert ok == "result=success|agent=WALinuxAgent/2.15.0.1|timestamp=2026-01-02T03:04:05+00:00|vm_id=vm-1"
    bad = kvp.provisioning_report("WALinuxAgent/2.15.0.1", "vm-1", "no 'ovf' | found", now=now)
    fields = bad.split("|")
    assert fields[0] == "result=error" and fields[-1] == "documentation_url=https://aka.ms/linuxprovisioningerror"
    assert "'reason=no ''ovf'' " in bad  # csv quoting of a field holding the delimiter and the quote


def _uptime(root, seconds: float = 100.0) -> None:
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/uptime").write_text(f"{seconds} 1.0\n")


def test_write_appends_and_reads_back(tmp_root):
    _uptime(tmp_root)
    (tmp_root / "var/lib/hyperv").mkdir(parents=True)
    assert kvp.report_provisioning("a/1", "vm", None)
    assert kvp.report_provisioning("a/1", "vm", "boom")
    records = kvp.read_pool(POOL)
    assert [k for k, _ in records] == [kvp.REPORT_KEY, kvp.REPORT_KEY]
    assert records[0][1].startswith("result=success|agent=a/1|") and records[1][1].startswith("result=error|reason=boom")
    assert os.path.getsize(tmp_root / POOL.lstrip("/")) == 2 * kvp.RECORD_SIZE


def test_a_pool_from_before_the_boot_is_truncated_once(tmp_root):
    _uptime(tmp_root)
    pool = tmp_root / POOL.lstrip("/")
    pool.parent.mkdir(parents=True)
    pool.write_bytes(kvp.encode_record("OLD", "from the last boot"))
    old = time.time() - 10 * 365 * 86400
    os.utime(pool, (old, old))
    writer = kvp.KvpPool(POOL)
    writer.write("NEW", "1")
    writer.write("NEW", "2")
    assert kvp.read_pool(POOL) == [("NEW", "1"), ("NEW", "2")]
    # a fresh pool (written this boot) is kept
    kvp.KvpPool(POOL).write("NEW", "3")
    assert len(kvp.read_pool(POOL)) == 3


def test_no_kvp_directory_means_no_report_and_no_error(tmp_root, log_lines):
    assert not kvp.report_provisioning("a/1", "vm")
    assert not (tmp_root / "var/lib/hyperv").exists()
    assert log_lines.matching("no KVP daemon")


def test_an_unwritable_pool_never_raises(tmp_root):
    (tmp_root / POOL.lstrip("/")).mkdir(parents=True)  # a directory where the file should be
    assert not kvp.report_provisioning("a/1", "vm")


def test_unknown_uptime_truncates_nothing(tmp_root):
    pool = tmp_root / POOL.lstrip("/")
    pool.parent.mkdir(parents=True)
    pool.write_bytes(kvp.encode_record("OLD", "kept"))
    os.utime(pool, (1, 1))
    kvp.KvpPool(POOL).write("NEW", "1")
    assert [k for k, _ in kvp.read_pool(POOL)] == ["OLD", "NEW"]
