"""The provisioning DVD: find it, mount it (:mod:`guestagent.osutil.dvd`), copy ovf-env.xml without
the password (spec 05 §2).
"""

from __future__ import annotations

import os
import re
import time
from typing import Callable

from guestagent import log
from guestagent.errors import CommandError, OSUtilError, ProtocolError
from guestagent.osutil import system
from guestagent.osutil.dvd import MOUNT_DELAY, eject_dvd, mount_dvd, umount_dvd
from guestagent.provisioning.ovfenv import OvfEnv, parse_ovf_env, redact_password

OVF_FILE_NAME = "ovf-env.xml"
DVD_PATTERN = r"(sr[0-9]|hd[c-z]|cdrom[0-9]|cd[0-9]|vd[b-z])"


def get_dvd_device(dev_dir: str = "/dev") -> str:
    """First entry of ``/dev`` (directory order) whose name starts like a CD/DVD device."""
    try:
        devices = os.listdir(system.path(dev_dir))
    except OSError as e:
        raise OSUtilError(f"Failed to get dvd device from {dev_dir}", inner=e)
    for dev in devices:
        m = re.match(DVD_PATTERN, dev)
        if m is not None:
            return f"/dev/{m.group(0)}"
    raise OSUtilError(f"Failed to get dvd device from {dev_dir}",
                      inner=f"The following devices were found, but none matched the pattern "
                            f"[{DVD_PATTERN}]: {sorted(devices)}")


def copy_ovf_env(lib_dir: str, mount_point: str = "/mnt/cdrom/secure",
                 sleep: Callable[[float], None] = time.sleep, delay: float = MOUNT_DELAY) -> OvfEnv:
    """Mount, parse ``ovf-env.xml``, save it 0600 without the password in ``lib_dir``, unmount, eject.
    Every failure is a ProtocolError naming the step (upstream's "[CopyOvfEnv] …")."""
    try:
        device = get_dvd_device()
        mounted = mount_dvd(device, mount_point, sleep=sleep, delay=delay)
    except OSUtilError as e:
        raise ProtocolError(f"[CopyOvfEnv] Error mounting dvd: {e}")
    try:
        on_dvd = os.path.join(mount_point, OVF_FILE_NAME)
        try:
            raw = system.read_bytes(on_dvd)
        except OSError as e:
            raise ProtocolError(f"[CopyOvfEnv] Error reading file {on_dvd}: {e}")
        text = raw.decode("utf-8", errors="replace").lstrip("\ufeff")
        ovf = parse_ovf_env(text)
        saved = os.path.join(lib_dir, OVF_FILE_NAME)
        try:
            system.write_file(saved, redact_password(text), mode=0o600)
        except OSError as e:
            raise ProtocolError(f"[CopyOvfEnv] Error writing file {saved}: {e}")
    finally:
        _cleanup(device, mount_point, mounted)
    return ovf


def _cleanup(device: str, mount_point: str, mounted: bool) -> None:
    """Unmount (what we mounted) and eject; errors only logged, as upstream."""
    try:
        if mounted:
            umount_dvd(mount_point)
        eject_dvd(device)
    except (OSUtilError, CommandError) as e:
        log.warn("{0}", e)


def load_saved_ovf_env(lib_dir: str, deprovision: bool = False) -> OvfEnv:
    """The copy in ``lib_dir`` (deprovision+user reads the user name from it)."""
    saved = os.path.join(lib_dir, OVF_FILE_NAME)
    if not system.path(saved).is_file():
        raise ProtocolError(f"ovf-env.xml is missing from {saved}")
    return parse_ovf_env(system.read_text(saved, errors="replace") or "", deprovision=deprovision)
