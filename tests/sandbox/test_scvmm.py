"""SCVMM detection on a real medium at /dev/sr0 in the sandbox (spec 05 §8): found → the medium's
``install`` script is started with ``-p <mount point>`` and the daemon is told to exit; not found →
the medium is unmounted and the daemon goes on. (The kernel here has no udf/iso9660: the medium is an
ext4 image, which the agent mounts after upstream's ``-t udf,iso9660,vfat`` attempt fails.)"""

from __future__ import annotations

import time

DRIVER = r"""
from guestagent import conf, log
from guestagent.daemon import scvmm
log.setup(log_file=None)
waited = []
print("HANDOVER", scvmm.detect_and_handover(conf.load("/etc/waagent.conf"), sleep=waited.append), waited)
"""
INSTALL = '#!/bin/bash\necho "install $*" > /run/scvmm-started\n'
CONF = "DetectScvmmEnv=y\nDVD.MountPoint=/mnt/cdrom/secure\nLib.Dir=/var/lib/waagent\n"


def test_vmm_medium_hands_the_vm_over(sandbox, fs_image):
    image = fs_image({"linuxosconfiguration.xml": "<LinuxProvisioningConfigurationSet/>", "install": INSTALL},
                     fstype="ext4", label="VMM")
    sandbox.attach_image(image, device="/dev/sr0")
    sandbox.write_file("/etc/waagent.conf", CONF)
    res = sandbox.python(DRIVER, timeout=60)
    assert "HANDOVER True [300.0]" in res.stdout
    assert "Starting Microsoft System Center VMM Initialization Process" in res.stdout
    deadline = time.monotonic() + 10
    while not sandbox.host_path("/run/scvmm-started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox.read_text("/run/scvmm-started").strip() == "install -p /mnt/cdrom/secure"


def test_other_medium_is_unmounted_and_the_daemon_goes_on(sandbox, fs_image):
    image = fs_image({"ovf-env.xml": "<Environment/>"}, fstype="ext4", label="CDROM")
    sandbox.attach_image(image, device="/dev/sr0")
    sandbox.write_file("/etc/waagent.conf", CONF)
    res = sandbox.python(DRIVER, timeout=60)
    assert "HANDOVER False []" in res.stdout
    assert "/mnt/cdrom/secure" not in sandbox.run(["cat", "/proc/self/mounts"]).stdout


def test_switched_off_does_nothing(sandbox):
    sandbox.write_file("/etc/waagent.conf", "Lib.Dir=/var/lib/waagent\n")
    res = sandbox.python(DRIVER, timeout=60)
    assert "HANDOVER False []" in res.stdout and "Detecting" not in res.stdout
