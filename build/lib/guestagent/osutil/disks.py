"""Finding the resource disk and reading the kernel's mount and swap tables (spec 05 §9.1).

On Azure the resource disk is found through Hyper-V's VMBus: a Gen1 VM has it on IDE controller 0
port 1 (device id ``00000000-0001…``), a Gen2 VM on the SCSI controller ``f8b3781a-…`` at LUN 1
(LUN 0 is the OS disk, LUN 2 the DVD). Every path goes through :mod:`osutil.system`, so unit tests
lay out a ``/sys/bus/vmbus`` tree under a temporary root.

QEMU has no VMBus. The smallest seam that lets a test VM name its disk without pretending to be
Hyper-V is the environment variable ``GUESTAGENT_RESOURCE_DISK`` (e.g. set by a systemd drop-in),
consulted only when no VMBus device matches: ``sdb`` or ``/dev/sdb`` (a device name),
``serial:<text>`` (virtio ``serial`` or SCSI VPD page 0x80), or ``lun:<n>`` (the SCSI LUN).
"""

from __future__ import annotations

import os
import re
from typing import Iterator, Optional

from guestagent import log
from guestagent.osutil import system

STORAGE_DEVICE_PATH = "/sys/bus/vmbus/devices"
GEN2_DEVICE_ID = "f8b3781a-1e82-4818-a1c3-63d806ec15bb"
RESOURCE_DISK_ENV = "GUESTAGENT_RESOURCE_DISK"


def enumerate_device_ids() -> Iterator[tuple[str, str]]:
    """(VMBus device directory name, device GUID without braces) for every VMBus device."""
    base = system.path(STORAGE_DEVICE_PATH)
    if not base.is_dir():
        return
    for vmbus in sorted(os.listdir(base)):
        text = system.read_text(f"{STORAGE_DEVICE_PATH}/{vmbus}/device_id", default="") or ""
        yield vmbus, text.strip().strip("{}\n")


def search_for_resource_disk(gen1_device_prefix: str, gen2_device_id: str = GEN2_DEVICE_ID) -> Optional[str]:
    """The block device name under the first VMBus device that matches (upstream's walk)."""
    try:
        for vmbus, guid in enumerate_device_ids():
            if not (guid.startswith(gen1_device_prefix) or guid == gen2_device_id):
                continue
            for root, dirs, _files in os.walk(system.path(f"{STORAGE_DEVICE_PATH}/{vmbus}")):
                parts = root.split("/")
                dirs.sort()
                if parts[-1] == "block" and (guid != gen2_device_id or parts[-2].split(":")[-1] == "1"):
                    if dirs:
                        return dirs[0]
                else:
                    for d in dirs:  # older kernels: an entry named block:<dev>
                        if ":" in d and d.split(":")[0] == "block":
                            return d.split(":")[1]
    except OSError as e:
        log.warn("Error getting device for {0} or {1}: {2}", gen1_device_prefix, gen2_device_id, e)
    return None


def device_for_ide_port(port_id: int) -> Optional[str]:
    """The device on IDE port ``port_id`` (Gen1) or, for port 1, the Gen2 SCSI LUN 1 disk."""
    if port_id > 3:
        return None
    g0 = "00000000"
    if port_id > 1:
        g0 = "00000001"
        port_id -= 2
    prefix = f"{g0}-000{port_id}"
    log.info("Searching gen1 prefix {0} or gen2 {1}", prefix, GEN2_DEVICE_ID)
    device = search_for_resource_disk(prefix, GEN2_DEVICE_ID)
    log.info("Found device: {0}", device)
    return device


# -- the seam for machines without VMBus -----------------------------------------------------------
def _block_devices() -> list[str]:
    try:
        return sorted(os.listdir(system.path("/sys/block")))
    except OSError:
        return []


def _serials(dev: str) -> list[str]:
    out = []
    for rel in ("serial", "device/serial"):
        text = system.read_text(f"/sys/block/{dev}/{rel}", default="", errors="replace") or ""
        if text.strip():
            out.append(text.strip())
    try:
        raw = system.read_bytes(f"/sys/block/{dev}/device/vpd_pg80")
        if len(raw) > 4:
            out.append(raw[4:].decode("ascii", errors="replace").strip("\0 \n"))
    except OSError:
        pass
    return out


def _scsi_lun(dev: str) -> Optional[int]:
    try:
        target = os.readlink(system.path(f"/sys/block/{dev}/device"))
    except OSError:
        return None
    m = re.fullmatch(r"\d+:\d+:\d+:(\d+)", os.path.basename(target))
    return int(m.group(1)) if m else None


def device_from_hint(hint: str) -> Optional[str]:
    """Resolve a ``GUESTAGENT_RESOURCE_DISK`` value to a block device name (or None)."""
    hint = hint.strip()
    if not hint:
        return None
    kind, sep, value = hint.partition(":")
    if sep and kind == "serial":
        return next((d for d in _block_devices() if value in _serials(d)), None)
    if sep and kind == "lun":
        try:
            lun = int(value)
        except ValueError:
            return None
        return next((d for d in _block_devices() if _scsi_lun(d) == lun), None)
    name = hint[len("/dev/"):] if hint.startswith("/dev/") else hint
    return name if re.fullmatch(r"[A-Za-z0-9_.-]+", name) else None


def resource_disk_device() -> Optional[str]:
    """The resource disk's device name (``sdb``), VMBus first, then the documented seam."""
    device = device_for_ide_port(1)
    if device is not None:
        return device
    hint = os.environ.get(RESOURCE_DISK_ENV)
    if hint:
        device = device_from_hint(hint)
        log.info("No VMBus resource disk; {0}={1} names {2}", RESOURCE_DISK_ENV, hint, device)
    return device


def partition_path(device_path: str, number: int = 1) -> str:
    """``/dev/sdb`` → ``/dev/sdb1``; names ending in a digit (nvme0n1, loop3) take a ``p``."""
    return f"{device_path}p{number}" if device_path[-1:].isdigit() else f"{device_path}{number}"


# -- kernel tables ---------------------------------------------------------------------------------
def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts() -> list[tuple[str, str, str, str]]:
    """(source, mount point, type, options) from /proc/self/mounts (what ``mount`` prints)."""
    out = []
    for line in (system.read_text("/proc/self/mounts", default="", errors="replace") or "").splitlines():
        f = line.split()
        if len(f) >= 4:
            out.append((_unescape(f[0]), _unescape(f[1]), f[2], f[3]))
    return out


def mount_point_of(device_path: str) -> Optional[str]:
    """Where ``device_path`` or one of its partitions is mounted (upstream's get_mount_point)."""
    pattern = re.compile(re.escape(device_path) + r"(p?\d+)?")
    for source, point, _fstype, _opts in mounts():
        if pattern.fullmatch(source):
            return point
    return None


def active_swaps() -> dict[str, int]:
    """{file or device: size in bytes} from /proc/swaps (what ``swapon -s`` prints)."""
    out: dict[str, int] = {}
    lines = (system.read_text("/proc/swaps", default="", errors="replace") or "").splitlines()
    for line in lines[1:]:
        f = line.split()
        if len(f) >= 3 and f[2].isdigit():
            out[_unescape(f[0])] = int(f[2]) * 1024
    return out
