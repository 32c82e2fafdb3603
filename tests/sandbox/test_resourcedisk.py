"""The resource disk on real tools in a namespace sandbox (spec 05 §9): a loop-backed disk with an MBR
and an NTFS partition, as Azure hands it out, re-typed to 83, formatted ext4 and mounted with the
options; a swap file; a second start that must keep the data; configurations that must fail cleanly.

Two boundaries this host imposes, both stated here rather than hidden:
* the kernel has no MBR partition scanning (CONFIG_MSDOS_PARTITION is off: a partscan loop device
  grows no ``p1``), so ``/dev/sdb1`` is a second loop device over the partition's byte range of the
  same image file — the agent runs sfdisk/parted on ``/dev/sdb`` and mkfs/mount on ``/dev/sdb1``;
* swap is one table for the whole kernel: ``swapon`` in a sandbox would add swap to the host (and pin
  the loop device), which no test may do. ``swapon``/``swapoff`` are therefore stand-ins that record
  their arguments; the test checks what swapon would get (a mkswap'ed, hole-free, 0600 file of the
  configured size). Real swapon is for the VM tier.
"""

from __future__ import annotations

import json
import stat

import pytest

from guestagent.lab.resourcedisk import attach_resource_disk, summary

DISK_MB = 96
SWAP_MB = 16

DRIVER = r"""
import json, sys
from guestagent import conf, log
from guestagent.daemon import resourcedisk
log.setup(log_file="/var/log/waagent.log", file_verbose=True)
resourcedisk.activate(conf.load("/etc/waagent.conf"), sleep=lambda s: None)
"""


@pytest.fixture
def disk(sandbox, tmp_path):
    sandbox.agent_env = attach_resource_disk(sandbox, tmp_path, DISK_MB)
    return sandbox


def configure(sb, **overrides) -> None:
    values = {"ResourceDisk.Format": "y", "ResourceDisk.Filesystem": "ext4", "ResourceDisk.MountPoint":
              "/mnt/resource", "ResourceDisk.MountOptions": "nodev,nosuid", "ResourceDisk.EnableSwap": "y",
              "ResourceDisk.SwapSizeMB": str(SWAP_MB), "Lib.Dir": "/var/lib/waagent"}
    values.update(overrides)
    sb.write_file("/etc/waagent.conf", "".join(f"{k}={v}\n" for k, v in values.items()))


def activate(sb):
    res = sb.python(DRIVER, env=sb.agent_env, timeout=240, check=False)
    assert res.returncode == 0, res.stderr
    return res.stdout


def mounts(sb) -> dict[str, tuple[str, str, str]]:
    out = {}
    for line in sb.run(["cat", "/proc/self/mounts"]).stdout.splitlines():
        f = line.split()
        out[f[1]] = (f[0], f[2], f[3])
    return out


def events(sb) -> list[dict]:
    d = sb.host_path("/var/lib/waagent/events")
    found = []
    for p in sorted(d.glob("*.tld")) if d.exists() else []:
        params = {x["name"]: x["value"] for x in json.loads(p.read_text())["parameters"]}
        found.append(params)
    return found


def test_fresh_ntfs_disk_is_formatted_mounted_and_gets_swap_then_survives_a_restart(disk):
    sb = disk
    configure(sb)
    out = activate(sb)
    assert "The partition is formatted with ntfs, updating partition type to 83" in out
    assert sb.run(["sfdisk", "--part-type", "/dev/sdb", "1"]).stdout.strip() == "83"
    assert sb.run(["blkid", "-p", "-o", "value", "-s", "TYPE", "/dev/sdb1"]).stdout.strip() == "ext4"
    source, fstype, options = mounts(sb)["/mnt/resource"]
    assert (source, fstype) == ("/dev/sdb1", "ext4")
    assert {"nodev", "nosuid"} <= set(options.split(","))
    assert "TEMPORARY DISK" in sb.read_text("/mnt/resource/DATALOSS_WARNING_README.txt")
    # the swap file: mode 0600, exact size, every block allocated, mkswap'ed, handed to swapon
    swap = sb.host_path("/mnt/resource/swapfile")
    st = swap.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_size == SWAP_MB << 20 and st.st_blocks * 512 >= st.st_size
    with open(swap, "rb") as f:
        f.seek(4096 - 10)
        assert f.read(10) == b"SWAPSPACE2"
    assert sb.read_text("/run/swap.log").splitlines() == ["swapon /mnt/resource/swapfile"]
    assert not [e for e in events(sb) if e["Operation"] == "ActivateResourceDisk"]
    assert summary(sb) == ["resource disk: /dev/sdb1 ext4 mounted at /mnt/resource (rw,nosuid,nodev,relatime)",
                           "swap: /mnt/resource/swapfile 16 MiB, mode 600, mkswap signature, swapon called "
                           "(stand-in)"]

    # reboot semantics: data written on the disk, file system unmounted, the daemon starts again
    sb.write_file("/mnt/resource/user-data.txt", "keep me")
    inode = swap.stat().st_ino
    sb.run(["umount", "/mnt/resource"])
    out = activate(sb)
    assert "The partition type is 83" in out and "Format partition" not in out
    assert mounts(sb)["/mnt/resource"][0] == "/dev/sdb1"
    assert sb.read_text("/mnt/resource/user-data.txt") == "keep me"
    assert sb.host_path("/mnt/resource/swapfile").stat().st_ino == inode  # reused, not recreated

    # already mounted: nothing touched; a swap size larger than the disk is a clear error
    configure(sb, **{"ResourceDisk.SwapSizeMB": str(DISK_MB * 4)})
    out = activate(sb)
    assert "is already mounted [/mnt/resource]" in out
    assert "exceeds the free space on /mnt/resource" in out
    assert not sb.host_path("/mnt/resource/swapfile").exists()
    assert sb.read_text("/mnt/resource/user-data.txt") == "keep me"
    failures = [e for e in events(sb) if e["Operation"] == "ActivateResourceDisk"]
    assert failures and failures[-1]["OperationSuccess"] is False


def test_a_file_system_the_agent_did_not_create_is_never_reformatted(disk):
    sb = disk
    sb.run(["sfdisk", "--part-type", "/dev/sdb", "1", "83"])
    sb.run(["mkfs.ext4", "-q", "-F", "/dev/sdb1"])
    sb.run(["mkdir", "-p", "/mnt/x"])
    sb.run(["mount", "/dev/sdb1", "/mnt/x"])
    sb.write_file("/mnt/x/precious.txt", "user data")
    sb.run(["umount", "/mnt/x"])
    configure(sb, **{"ResourceDisk.Filesystem": "ext2"})  # ext4 with extents does not mount as ext2
    out = activate(sb)
    assert "holds a ext4 file system that does not mount as ext2" in out
    assert "/mnt/resource" not in mounts(sb)
    sb.run(["mount", "/dev/sdb1", "/mnt/x"])
    assert sb.read_text("/mnt/x/precious.txt") == "user data"


def test_unknown_file_system_leaves_the_disk_alone(disk):
    sb = disk
    configure(sb, **{"ResourceDisk.Filesystem": "foofs"})
    out = activate(sb)
    assert "ResourceDisk.Filesystem='foofs': mkfs.foofs is not installed" in out
    assert sb.run(["sfdisk", "--part-type", "/dev/sdb", "1"]).stdout.strip() == "7"
    assert sb.run(["blkid", "-p", "-o", "value", "-s", "TYPE", "/dev/sdb1"]).stdout.strip() == "ntfs"
    assert [e["Message"] for e in events(sb) if e["Operation"] == "ActivateResourceDisk"]


def test_no_disk_found_is_reported_and_the_step_returns(sandbox):
    configure(sandbox)
    res = sandbox.python(DRIVER, timeout=60, check=False)
    assert res.returncode == 0
    assert "Failed to mount resource disk [ResourceDiskError] unable to detect disk topology" in res.stdout
    assert "Resource disk step took" in res.stdout
