"""System Center VMM detection (spec 05 §8): hand the VM over to the VMM agent when its medium is in.

With ``DetectScvmmEnv=y`` the daemon looks at every CD-like device for ``linuxosconfiguration.xml``.
Found: the medium's ``install`` script is started detached, the daemon waits 300 s and exits 0 (the
VMM agent takes over). Not found: the medium is unmounted and the daemon goes on.

Upstream asks its DVD mounter for one attempt but that loop runs ``range(1, 1)`` times, so it never
mounts anything and finds the file only if the medium happens to be mounted already; we make the one
attempt for real, with the same mounter provisioning uses (:mod:`guestagent.osutil.dvd`).
"""

from __future__ import annotations

import os
import platform
import re
import time
from typing import Callable, Optional

from guestagent import log
from guestagent.conf import Config
from guestagent.errors import CommandError, OSUtilError
from guestagent.osutil import dvd, system

VMM_CONF_FILE_NAME = "linuxosconfiguration.xml"
VMM_STARTUP_SCRIPT_NAME = "install"
CD_DEVICE = re.compile(r"(sr[0-9]|hd[c-z]|cdrom[0-9]?|cd[0-9]+)")
HANDOVER_WAIT = 300.0


def detect_and_handover(config: Config, *, sleep: Callable[[float], None] = time.sleep, dev_dir: str = "/dev") -> bool:
    """True when the VMM agent was started (after the 300 s wait): the daemon must then exit 0."""
    if not config.detect_scvmm_env:
        return False
    try:
        mount_point = detect(config.dvd_mount_point, dev_dir)
    except Exception as e:  # detection must never stop the daemon
        log.warn("SCVMM detection failed: {0}", e)
        return False
    if mount_point is None:
        return False
    start_scvmm_agent(mount_point)
    log.info("Exiting")
    sleep(HANDOVER_WAIT)
    return True


def detect(mount_point: str, dev_dir: str = "/dev") -> Optional[str]:
    """The mount point holding the VMM configuration, or None (nothing left mounted)."""
    log.info("Detecting Microsoft System Center VMM Environment")
    try_load_ata_piix()
    try:
        names = sorted(os.listdir(system.path(dev_dir)))
    except OSError:
        names = []
    for name in names:
        m = CD_DEVICE.match(name)
        if m is None:
            continue
        device = os.path.join(dev_dir, m.group(0))
        try:
            dvd.mount_dvd(device, mount_point, attempts=1)
        except OSUtilError as e:  # mount_dvd warned already; the details for a closer look
            log.verbose("{0}", e)
        if system.exists(os.path.join(mount_point, VMM_CONF_FILE_NAME)):
            return mount_point
        try:
            dvd.umount_dvd(mount_point)
        except OSUtilError:
            pass  # nothing was mounted there
    return None


def try_load_ata_piix() -> None:
    """Load the ATAPI CD driver when it is not there yet (failures only logged)."""
    if system.exists("/sys/module/ata_piix"):
        log.info("Module driver for ATAPI CD-ROM is already present.")
        return
    base = f"/lib/modules/{platform.release()}/kernel/drivers/ata"
    for name in ("ata_piix.ko", "ata_piix.ko.xz", "ata_piix.ko.zst"):
        if system.exists(os.path.join(base, name)):
            try:
                system.run(["modprobe", "ata_piix"], timeout=60)
            except CommandError as e:
                log.warn("Could not load ATAPI driver: {0}", e)
            return
    log.warn("Could not load ATAPI driver: Can't find module file:{0}", os.path.join(base, "ata_piix.ko"))


def start_scvmm_agent(mount_point: str) -> int:
    log.info("Starting Microsoft System Center VMM Initialization Process")
    return system.spawn(["/bin/bash", os.path.join(mount_point, VMM_STARTUP_SCRIPT_NAME), "-p " + mount_point])
