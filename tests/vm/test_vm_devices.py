"""The tier's device builders, checked on the host with the same tools (no VM, no loop device)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from vmtier import devices

SBIN = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


def _need(*tools):
    missing = [t for t in tools if not shutil.which(t, path=SBIN)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/ci-vm-deps.sh)")


def _run(*argv) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True, env=dict(os.environ, PATH=SBIN)).stdout


def test_waagent_conf_overrides_replace_in_place_and_append():
    base = "# comment\nResourceDisk.Format=n\n#ResourceDisk.EnableSwap=y\nLogs.Verbose=n\n"
    out = devices.waagent_conf(base, {"ResourceDisk.Format": "y", "ResourceDisk.EnableSwap": "y"})
    assert out.splitlines() == ["# comment", "ResourceDisk.Format=y", "#ResourceDisk.EnableSwap=y",
                                "Logs.Verbose=n", "ResourceDisk.EnableSwap=y"]


def test_resource_disk_is_azure_shaped(tmp_path):
    _need("sfdisk", "mkfs.ntfs", "ntfscp", "ntfscat")
    img = devices.make_resource_disk(tmp_path / "res.img", 64)
    assert img.stat().st_size == 64 << 20
    assert img.stat().st_blocks * 512 < 16 << 20, "sparse"
    table = _run("sfdisk", "-d", str(img))
    assert "label: dos" in table and "start=        2048" in table and "type=7" in table
    part = tmp_path / "part.img"
    _run("dd", f"if={img}", f"of={part}", "bs=512", "skip=2048", "status=none")
    assert "TEMPORARY DISK" in _run("ntfscat", str(part), "DATALOSS_WARNING_README.txt")
    assert "Temporary Storage" in _run("ntfslabel", "--force", str(part))


def test_dvd_holds_ovf_env_as_udf_and_iso9660(tmp_path):
    _need("genisoimage", "isoinfo")
    iso = devices.make_dvd(tmp_path / "ovf.iso", {"ovf-env.xml": "<Environment/>\n"})
    assert _run("isoinfo", "-i", str(iso), "-R", "-x", "/ovf-env.xml") == "<Environment/>\n"
    with open(iso, "rb") as f:
        f.seek(16 * 2048)
        descriptors = f.read(8 * 2048)
    assert b"BEA01" in descriptors and b"NSR02" in descriptors, "UDF volume recognition sequence"
