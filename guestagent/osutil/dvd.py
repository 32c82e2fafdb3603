"""The one read-only DVD mounter (provisioning's ovf-env.xml medium, SCVMM's VMM medium).

Azure attaches a UDF/ISO9660 medium; upstream mounts with ``-t udf,iso9660,vfat``. When the kernel
has none of those (or the medium is another file system, as in our sandbox) each attempt retries
once without ``-t`` so mount(8) detects the type itself.
"""

from __future__ import annotations

import re
import time
from typing import Callable

from guestagent import log
from guestagent.errors import CommandError, OSUtilError
from guestagent.osutil import disks, system

MOUNT_ATTEMPTS = 5
MOUNT_DELAY = 5.0
FS_TYPES = "udf,iso9660,vfat"


def _mount(argv: list[str]) -> tuple[bool, str]:
    try:
        result = system.run(argv, timeout=60, check=False)
    except CommandError as e:
        return False, str(e)
    return result.ok, f"[{' '.join(argv)}] returned {result.returncode}: {result.stderr.strip()}"


def mount_dvd(device: str, mount_point: str, attempts: int = MOUNT_ATTEMPTS, delay: float = MOUNT_DELAY,
              sleep: Callable[[float], None] = time.sleep) -> bool:
    """Mount ``device`` read-only at ``mount_point``; False when it was already mounted (anywhere: then
    nothing is to be unmounted). OSUtilError after ``attempts`` failed attempts ``delay`` s apart."""
    existing = disks.mount_point_of(device)
    if existing is not None:
        log.info("{0} is already mounted at {1}", device, existing)
        return False
    system.mkdir(mount_point, mode=0o755)
    target = str(system.path(mount_point))
    err = ""
    for attempt in range(1, attempts + 1):
        ok, err = _mount(["mount", "-o", "ro", "-t", FS_TYPES, device, target])
        if not ok:
            ok, err2 = _mount(["mount", "-o", "ro", device, target])  # let mount(8) detect the type
            err = f"{err}\n{err2}"
        if ok:
            log.info("Successfully mounted dvd")
            return True
        log.warn("Mounting dvd failed [retry {0}/{1}, sleeping {2} sec]", attempt, attempts, delay)
        if attempt < attempts:
            sleep(delay)
    raise OSUtilError("Failed to mount dvd device", inner=err)


def umount_dvd(mount_point: str) -> None:
    result = system.run(["umount", str(system.path(mount_point))], timeout=60, check=False)
    if not result.ok:
        raise OSUtilError(f"Failed to unmount dvd device at {mount_point}")


def eject_dvd(device: str) -> None:
    if re.search(r"(vd[b-z])", device.rsplit("/", 1)[-1]):
        return  # not a CD-ROM
    if system.which("eject") is None:
        # Upstream lets the OSError from Popen escape here; one clear line instead of an empty report.
        raise OSUtilError(f"Cannot eject dvd {device}: eject is not installed")
    try:
        system.run(["eject", device], timeout=60)
    except CommandError as e:
        raise OSUtilError(f"Failed to eject dvd: ret={e.returncode}\n[stdout]\n{e.stdout}\n\n[stderr]\n{e.stderr}")
