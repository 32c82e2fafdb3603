"""The provisioning DVD: find it, mount it, copy ovf-env.xml without the password (spec 05 §2).

Azure attaches a UDF/ISO9660 medium; upstream mounts with ``-t udf,iso9660,vfat``. When the kernel
has none of those (or the medium is another file system, as in our sandbox) we retry once without
``-t`` so mount(8) detects the type itself.
"""

from __future__ import annotations

import os
import re
import time
from typing import Callable, Optional

from guestagent import log
from guestagent.errors import CommandError, OSUtilError, ProtocolError
from guestagent.osutil import system
from guestagent.provisioning.ovfenv import OvfEnv, parse_ovf_env, redact_password

OVF_FILE_NAME = "ovf-env.xml"
DVD_PATTERN = r"(sr[0-9]|hd[c-z]|cdrom[0-9]|cd[0-9]|vd[b-z])"
MOUNT_ATTEMPTS = 5
MOUNT_DELAY = 5.0
FS_TYPES = "udf,iso9660,vfat"


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


def get_mount_point(mount_list: str, device: str) -> Optional[str]:
    """Third column of the first ``mount`` output line that mentions ``device`` (upstream's search)."""
    if mount_list and device:
        for entry in mount_list.split("\n"):
            if re.search(device, entry):
                tokens = entry.split()
                return tokens[2] if len(tokens) > 2 else None
    return None


def _mount(argv: list[str]) -> tuple[bool, str]:
    try:
        result = system.run(argv, timeout=60, check=False)
    except CommandError as e:
        return False, str(e)
    return result.ok, f"[{' '.join(argv)}] returned {result.returncode}: {result.stderr.strip()}"


def mount_dvd(device: str, mount_point: str, attempts: int = MOUNT_ATTEMPTS, delay: float = MOUNT_DELAY,
              sleep: Callable[[float], None] = time.sleep) -> bool:
    """Mount read-only; False when it was already mounted (then nothing is to be unmounted)."""
    try:
        mounts = system.run(["mount"], timeout=30, check=False).stdout
    except CommandError:
        mounts = ""
    existing = get_mount_point(mounts, device)
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
