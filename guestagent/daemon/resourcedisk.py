"""The resource disk: re-type Azure's fresh NTFS partition, format, mount, add swap (spec 05 §9).

Runs once per daemon start, before provisioning, when ``ResourceDisk.Format=y``. It never stops the
daemon: every failure is a clear error in the log and an ``ActivateResourceDisk`` event.

Where we differ from upstream, on purpose:
* the configuration is checked before anything is touched (``mkfs.<fs>`` installed, swap size
  positive and smaller than the free space), so a typo cannot re-type a partition it cannot format;
* the "mount failed → format and retry" fallback only formats a partition that holds no file
  system (or Azure's NTFS): a disk with data the agent did not create is never reformatted;
* the swap file is written in full (no holes, 0600 from creation) at exactly the configured size
  (upstream's second ``dd`` rewrites the start of the file, so sizes that are not a multiple of
  64 MiB come out short and the file is recreated on every start).
"""

from __future__ import annotations

import os
import stat
import time
from typing import Callable, Optional

from guestagent import events, log
from guestagent.conf import Config
from guestagent.errors import CommandError, ResourceDiskError
from guestagent.osutil import disks, system

DATALOSS_WARNING_FILE_NAME = "DATALOSS_WARNING_README.txt"
DATA_LOSS_WARNING = """\
WARNING: THIS IS A TEMPORARY DISK.

Any data stored on this drive is SUBJECT TO LOSS and THERE IS NO WAY TO RECOVER IT.

Please do not use this disk for storing any personal or application data.

For additional details to please refer to the MSDN documentation at :
http://msdn.microsoft.com/en-us/library/windowsazure/jj672979.aspx
"""
NTFS_TYPE, LINUX_TYPE = "7", "83"
PARTITION_WAIT_ATTEMPTS, PARTITION_WAIT_SECONDS = 5, 5.0
ZERO_CHUNK = 1 << 20
EVENT_OP = "ActivateResourceDisk"


def activate(config: Config, *, sleep: Callable[[float], None] = time.sleep) -> None:
    """The daemon's resource-disk step. Never raises: errors are logged and reported."""
    if not config.resource_disk_format:
        return
    start = time.monotonic()
    lib_dir = config.lib_dir
    try:
        disk = ResourceDisk(config, sleep=sleep)
        mount_point = disk.activate_resource_disk()
        if mount_point is not None and config.resource_disk_enable_swap:
            disk.enable_swap(mount_point)
    except Exception as e:  # the daemon must go on to provisioning whatever happens here
        _report(f"Unexpected error while activating the resource disk: {e}", lib_dir)
    log.info("Resource disk step took {0:.2f} s", time.monotonic() - start)


def _report(message: str, lib_dir: str) -> None:
    log.error("{0}", message)
    events.add_event(EVENT_OP, is_success=False, message=message, log_event=False, lib_dir=lib_dir)


class ResourceDisk:
    def __init__(self, config: Config, *, sleep: Callable[[float], None] = time.sleep):
        self.config = config
        self.fs = config.resource_disk_filesystem.strip()
        self.lib_dir = config.lib_dir
        self.sleep = sleep

    # -- mount -----------------------------------------------------------------------------------
    def activate_resource_disk(self) -> Optional[str]:
        log.info("Activate resource disk")
        try:
            mount_point = self.mount_resource_disk(self.config.resource_disk_mount_point)
        except ResourceDiskError as e:
            _report(f"Failed to mount resource disk {e}", self.lib_dir)
            return None
        try:
            system.write_file(os.path.join(mount_point, DATALOSS_WARNING_FILE_NAME), DATA_LOSS_WARNING)
        except OSError as e:
            log.warn("Failed to write data loss warning:{0}", e)
        return mount_point

    def mkfs_argv(self, partition: str) -> list[str]:
        return [f"mkfs.{self.fs}", "-f" if self.fs in ("btrfs", "xfs") else "-F", partition]

    def mount_argv(self, partition: str, mount_point: str) -> list[str]:
        options = self.config.resource_disk_mount_options
        return ["mount", "-t", self.fs, *(["-o", options] if options else []), partition, mount_point]

    def _check_filesystem(self) -> None:
        if not self.fs or "/" in self.fs or system.which(f"mkfs.{self.fs}") is None:
            raise ResourceDiskError(f"ResourceDisk.Filesystem={self.fs!r}: mkfs.{self.fs} is not installed; "
                                    "the resource disk is left as it is")

    def mount_resource_disk(self, mount_point: str) -> str:
        name = disks.resource_disk_device()
        if name is None:
            raise ResourceDiskError("unable to detect disk topology")
        device = f"/dev/{name}"
        partition = disks.partition_path(device)
        existing = disks.mount_point_of(device)
        if existing:
            log.info("Resource disk [{0}] is already mounted [{1}]", partition, existing)
            return existing
        self._check_filesystem()
        try:
            system.mkdir(mount_point, mode=0o755)
        except OSError as e:
            raise ResourceDiskError(f"Failed to create mount point directory [{mount_point}]: {e}")

        log.info("Examining partition table")
        table = system.run(["parted", device, "print"], check=False, timeout=120)
        if not table.ok:
            raise ResourceDiskError(f"Could not determine partition info for {device}: "
                                    f"{(table.stdout + table.stderr).strip()}")
        if "gpt" in table.stdout:
            self._prepare_gpt(device, partition, table.stdout)
        else:
            self._prepare_mbr(device, partition)

        self._wait_for(partition)
        argv = self.mount_argv(partition, mount_point)
        log.info("Mount resource disk [{0}]", " ".join(argv))
        res = system.run(argv, check=False, timeout=300)
        output = res.stdout + res.stderr
        if res.returncode == 32 and "is already mounted" in output:
            log.warn("Could not mount resource disk: {0}", output.strip())
        elif not res.ok:
            log.warn("Failed to mount resource disk. Retry mounting after re-reading partition info.")
            self.reread_partition_table(device)
            res = system.run(argv, check=False, timeout=300)
            if not res.ok:
                log.warn("Failed to mount resource disk. [{0}]", (res.stdout + res.stderr).strip())
                self._format_if_blank(partition)
                res = system.run(argv, check=False, timeout=300)
                if not res.ok:
                    raise ResourceDiskError(f"Could not mount {partition} after syncing partition table: "
                                            f"[{res.returncode}] {(res.stdout + res.stderr).strip()}")
        log.info("Resource disk {0} is mounted at {1} with {2}", device, mount_point, self.fs)
        return mount_point

    def _prepare_gpt(self, device: str, partition: str, table: str) -> None:
        log.info("GPT detected, finding partitions")
        parts = [line for line in table.split("\n") if line.strip()[:1].isdigit()]
        log.info("Found {0} GPT partition(s).", len(parts))
        if len(parts) > 1:
            log.info("Removing old GPT partitions")
            for i in range(1, len(parts) + 1):
                log.info("Remove partition {0}", i)
                system.run(["parted", device, "rm", str(i)], check=False, timeout=120)
            log.info("Creating new GPT partition")
            system.run(["parted", device, "mkpart", "primary", "0%", "100%"], check=False, timeout=120)
            self._mkfs(partition)

    def _prepare_mbr(self, device: str, partition: str) -> None:
        log.info("GPT not detected, determining filesystem")
        ok, output = self.change_partition_type(device, None)
        ptype = output.strip()
        if ok and ptype == NTFS_TYPE and self.fs != "ntfs":
            log.info("The partition is formatted with ntfs, updating partition type to 83")
            changed, out = self.change_partition_type(device, LINUX_TYPE)
            if not changed:
                raise ResourceDiskError(f"Could not change the type of {partition} to 83: {out.strip()}")
            self.reread_partition_table(device)
            self._wait_for(partition)
            self._mkfs(partition)
        else:
            log.info("The partition type is {0}", ptype)

    def change_partition_type(self, device: str, new_type: Optional[str]) -> tuple[bool, str]:
        """Read (``new_type`` None, ``-n``) or set partition 1's MBR type: ``--part-type``, then ``-c``."""
        last = ""
        for option in ("--part-type", "-c"):
            argv = ["sfdisk", option, *(["-f", device, "1", "-n"] if new_type is None else [device, "1", new_type])]
            res = system.run(argv, check=False, timeout=120)
            if res.ok:
                log.info("{0} succeeded", " ".join(argv))
                return True, res.stdout
            last = (res.stdout + res.stderr).strip()
            log.info("{0} failed [{1}: {2}]", " ".join(argv), res.returncode, last)
        return False, last

    def reread_partition_table(self, device: str) -> None:
        if not system.run(["sfdisk", "-R", device], check=False, timeout=120).ok:
            system.run(["blockdev", "--rereadpt", device], check=False, timeout=120)

    def _wait_for(self, partition: str) -> None:
        attempts = PARTITION_WAIT_ATTEMPTS
        while not system.exists(partition) and attempts > 0:
            log.info("Waiting for partition [{0}], {1} attempts remaining", partition, attempts)
            self.sleep(PARTITION_WAIT_SECONDS)
            attempts -= 1
        if not system.exists(partition):
            raise ResourceDiskError(f"Partition was not created [{partition}]")

    def _mkfs(self, partition: str) -> None:
        argv = self.mkfs_argv(partition)
        log.info("Format partition [{0}]", " ".join(argv))
        res = system.run(argv, check=False, timeout=1800)
        if not res.ok:
            raise ResourceDiskError(f"{' '.join(argv)} failed [{res.returncode}]: {res.stderr.strip()[-512:]}")

    def _format_if_blank(self, partition: str) -> None:
        """The fallback format, refused when the partition holds a file system we did not expect."""
        found = filesystem_type(partition)
        if found and found != "ntfs":
            raise ResourceDiskError(f"{partition} holds a {found} file system that does not mount as "
                                    f"{self.fs}; it was not created by the agent, so it is not reformatted")
        log.warn("Attempting to format and retry mount")
        self._mkfs(partition)

    # -- swap ------------------------------------------------------------------------------------
    def enable_swap(self, mount_point: str) -> None:
        log.info("Enable swap")
        try:
            self.create_swap_space(mount_point, self.config.resource_disk_swap_size_mb)
        except (ResourceDiskError, OSError, CommandError) as e:
            _report(f"Failed to enable swap {e}", self.lib_dir)

    def create_swap_space(self, mount_point: str, size_mb: int) -> None:
        size = size_mb * 1024 * 1024
        if size <= 0:
            raise ResourceDiskError(f"Invalid swap size [{size}]: ResourceDisk.SwapSizeMB={size_mb}")
        swapfile = os.path.join(mount_point, "swapfile")
        target = system.path(swapfile)
        if swapfile in disks.active_swaps() and target.is_file() and target.stat().st_size == size:
            log.info("Swap already enabled")
            mode = stat.S_IMODE(target.stat().st_mode)
            if mode & 0o077:
                log.info("Changing mode of {0} to {1:o}", swapfile, mode & ~0o077)
                os.chmod(target, mode & ~0o077)
            return
        if target.is_file() and target.stat().st_size != size:
            log.info("Remove old swap file")
            system.run(["swapoff", swapfile], check=False, timeout=300)
            target.unlink()
        if not target.is_file():
            free = os.statvfs(system.path(mount_point))
            available = free.f_bavail * free.f_frsize
            if size > available:
                raise ResourceDiskError(f"ResourceDisk.SwapSizeMB={size_mb} ({size} bytes) exceeds the free space "
                                        f"on {mount_point} ({available} bytes)")
            log.info("Create swap file")
            self.mkfile(swapfile, size)
            system.run(["mkswap", swapfile], timeout=300)
        res = system.run(["swapon", swapfile], check=False, timeout=300)
        if not res.ok:
            raise ResourceDiskError(f"swapon {swapfile} failed [{res.returncode}]: {res.stderr.strip()}")
        log.info("Enabled {0}KB of swap at {1}", size // 1024, swapfile)

    def mkfile(self, filename: str, nbytes: int) -> None:
        """A file of exactly ``nbytes`` with every block allocated, mode 0600 from its creation."""
        target = system.path(filename)
        if target.is_file():
            target.unlink()
        fd = os.open(target, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        try:
            if self.fs not in ("xfs", "ext4"):
                try:
                    os.posix_fallocate(fd, 0, nbytes)
                    return
                except OSError as e:
                    log.info("fallocate unsuccessful ({0}), writing zeros", e)
            # xfs/ext4: fallocated (unwritten) extents have been refused by swapon; write real zeros.
            zeros = bytes(ZERO_CHUNK)
            left = nbytes
            while left > 0:
                left -= os.write(fd, zeros[:min(left, ZERO_CHUNK)])
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            fd = -1
            target.unlink()
            raise
        finally:
            if fd >= 0:
                os.close(fd)


def filesystem_type(partition: str) -> Optional[str]:
    """The file system signature ``blkid`` finds on ``partition`` ('' = none, None = unknown)."""
    if system.which("blkid") is None:
        return None
    res = system.run(["blkid", "-p", "-o", "value", "-s", "TYPE", partition], check=False, timeout=60)
    if res.returncode == 2:  # nothing found
        return ""
    return res.stdout.strip() if res.ok else None
