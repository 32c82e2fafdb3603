"""SCSI command timeout of the VM's disks (``OS.RootDeviceScsiTimeout``, spec 05 §10)."""

from __future__ import annotations

import os

from guestagent import log
from guestagent.osutil import system


def set_scsi_disks_timeout(timeout: str) -> list[str]:
    """Write ``timeout`` into ``/sys/block/sd*/device/timeout`` where it differs; returns the disks changed."""
    changed = []
    try:
        names = sorted(os.listdir(system.path("/sys/block")))
    except OSError:
        return changed
    for dev in names:
        if dev.startswith("sd") and set_block_device_timeout(dev, timeout):
            changed.append(dev)
    return changed


def set_block_device_timeout(dev: str, timeout: str) -> bool:
    p = system.path(f"/sys/block/{dev}/device/timeout")
    try:
        lines = p.read_text(encoding="ascii", errors="replace").splitlines()
    except FileNotFoundError:
        return False
    original = lines[0].rstrip() if lines else ""
    if original == str(timeout):
        return False
    # A sysfs attribute: written in place (an atomic rename cannot replace it).
    with open(p, "w", encoding="ascii") as f:
        f.write(str(timeout))
    log.info("Set block dev timeout: {0} with timeout: {1}", dev, timeout)
    return True
