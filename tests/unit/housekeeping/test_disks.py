"""Finding the resource disk in a /sys/bus/vmbus tree laid out as Hyper-V's kernel does."""

from __future__ import annotations

import os

import pytest

from guestagent.osutil import disks

GEN1_GUID = "00000000-0001-8899-0000-000000000000"
OS_DISK_GUID = "00000000-0000-8899-0000-000000000000"


def vmbus_device(root, guid: str, scsi_path: str, dev: str, *, braces: bool = True) -> None:
    base = root / "sys/bus/vmbus/devices" / guid
    base.mkdir(parents=True, exist_ok=True)
    (base / "device_id").write_text("{" + guid + "}\n" if braces else guid + "\n")
    (base / scsi_path / "block" / dev).mkdir(parents=True)


def test_gen1_resource_disk_on_ide_port_1(tmp_root):
    vmbus_device(tmp_root, OS_DISK_GUID, "host0/target0:0:0/0:0:0:0", "sda")
    vmbus_device(tmp_root, GEN1_GUID, "host3/target3:0:1/3:0:1:0", "sdb")
    assert disks.device_for_ide_port(1) == "sdb"
    assert disks.device_for_ide_port(0) == "sda"
    assert disks.device_for_ide_port(4) is None


def test_gen2_resource_disk_is_lun_1_of_the_scsi_controller(tmp_root):
    base = "host0/target0:0:0"
    vmbus_device(tmp_root, disks.GEN2_DEVICE_ID, f"{base}/0:0:0:0", "sda", braces=False)
    (tmp_root / "sys/bus/vmbus/devices" / disks.GEN2_DEVICE_ID / base / "0:0:0:1/block/sdb").mkdir(parents=True)
    (tmp_root / "sys/bus/vmbus/devices" / disks.GEN2_DEVICE_ID / base / "0:0:0:2/block/sr0").mkdir(parents=True)
    assert disks.device_for_ide_port(1) == "sdb"


def test_older_kernels_name_the_device_block_colon_dev(tmp_root):
    base = tmp_root / "sys/bus/vmbus/devices" / GEN1_GUID
    (base / "host1/target1:0:1/1:0:1:0/block:sdc").mkdir(parents=True)
    (base / "device_id").write_text("{" + GEN1_GUID + "}")
    assert disks.device_for_ide_port(1) == "sdc"


def test_no_vmbus_and_no_hint_finds_nothing(tmp_root, monkeypatch):
    monkeypatch.delenv(disks.RESOURCE_DISK_ENV, raising=False)
    assert disks.resource_disk_device() is None
    vmbus_device(tmp_root, OS_DISK_GUID, "host0/target0:0:0/0:0:0:0", "sda")
    assert disks.resource_disk_device() is None


def test_vmbus_wins_over_the_hint(tmp_root, monkeypatch):
    vmbus_device(tmp_root, GEN1_GUID, "host3/target3:0:1/3:0:1:0", "sdb")
    monkeypatch.setenv(disks.RESOURCE_DISK_ENV, "vdc")
    assert disks.resource_disk_device() == "sdb"


def block(root, dev: str, *, serial: str = "", vpd: bytes = b"", hctl: str = "") -> None:
    d = root / "sys/block" / dev
    d.mkdir(parents=True)
    if serial:
        (d / "serial").write_text(serial + "\n")
    if hctl:
        target = root / "sys/devices/pci0000:00/host2/target2:0:0" / hctl
        target.mkdir(parents=True)
        os.symlink(target, d / "device")
        if vpd:
            (target / "vpd_pg80").write_bytes(vpd)


@pytest.mark.parametrize("hint, expected", [
    ("vdb", "vdb"), ("/dev/sdc", "sdc"), ("serial:azure-resource", "vdb"), ("serial:QM00005", "sdc"),
    ("lun:1", "sdc"), ("lun:7", None), ("lun:x", None), ("serial:nope", None), ("../etc", None), ("", None),
])
def test_hint_names_the_disk_in_a_vm_without_vmbus(tmp_root, monkeypatch, hint, expected):
    block(tmp_root, "vda", serial="root")
    block(tmp_root, "vdb", serial="azure-resource")
    block(tmp_root, "sdb", hctl="2:0:0:0")
    block(tmp_root, "sdc", hctl="2:0:0:1", vpd=b"\x00\x80\x00\x07QM00005")
    monkeypatch.setenv(disks.RESOURCE_DISK_ENV, hint)
    assert disks.resource_disk_device() == expected


@pytest.mark.parametrize("dev, part", [("/dev/sdb", "/dev/sdb1"), ("/dev/nvme1n1", "/dev/nvme1n1p1"),
                                       ("/dev/loop3", "/dev/loop3p1"), ("/dev/vdb", "/dev/vdb1")])
def test_partition_names_follow_the_kernel(dev, part):
    assert disks.partition_path(dev) == part


def test_mount_and_swap_tables(tmp_root):
    (tmp_root / "proc/self").mkdir(parents=True)
    (tmp_root / "proc/self/mounts").write_text(
        "/dev/sda1 / ext4 rw,relatime 0 0\n/dev/sdb1 /mnt/resource\\040disk ext4 rw,nosuid 0 0\n"
        "/dev/sdba1 /srv ext4 rw 0 0\n")
    (tmp_root / "proc/swaps").write_text(
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/mnt/resource/swapfile                  file"
        "\t\t2097148\t\t0\t\t-2\n")
    assert disks.mount_point_of("/dev/sdb") == "/mnt/resource disk"
    assert disks.mount_point_of("/dev/sdc") is None
    assert disks.mount_point_of("/dev/sda") == "/"
    assert disks.active_swaps() == {"/mnt/resource/swapfile": 2097148 * 1024}
