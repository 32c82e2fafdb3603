"""Loop devices and small file system images: the sandbox's disks and DVDs, without mounting anything
on the host.

A loop device lives in the host kernel (there is no loop namespace), so every one is configured with
``LO_FLAGS_AUTOCLEAR``: it detaches when its last file descriptor closes, which the sandbox's keeper
guarantees by holding a copy until it dies. A byte range of an image (``offset``/``size``) stands in
for a partition on kernels without MBR partition scanning.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Union

from guestagent.lab.errors import SandboxError, SandboxUnavailable

PathLike = Union[str, "os.PathLike[str]"]

# linux/loop.h
LOOP_SET_FD, LOOP_CLR_FD, LOOP_SET_STATUS64, LOOP_CONFIGURE = 0x4C00, 0x4C01, 0x4C04, 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY, LO_FLAGS_AUTOCLEAR = 1, 4


def attach(image: PathLike, *, readonly: bool = True, offset: int = 0, size: int = 0) -> tuple[int, int]:
    """Bind bytes [offset, offset+size) of ``image`` (size 0: to the end) to a free loop device with
    auto-clear; returns (loop number, open fd). The device detaches when every copy of fd is closed."""
    backing = os.open(image, os.O_RDONLY if readonly else os.O_RDWR)
    try:
        flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if readonly else 0)
        name = os.fsencode(image)[:63]
        # struct loop_info64: device, inode, rdevice, offset, sizelimit (u64); number, encrypt_type,
        # encrypt_key_size, flags (u32); file name[64], crypt name[64], key[32]; init[2] (u64)
        info = struct.pack("=5Q4I64s64s32s2Q", 0, 0, 0, offset, size, 0, 0, 0, flags, name, b"", b"", 0, 0)
        for _ in range(20):
            ctl = os.open("/dev/loop-control", os.O_RDWR)
            try:
                n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            finally:
                os.close(ctl)
            fd = os.open(f"/dev/loop{n}", os.O_RDWR)
            try:
                config = struct.pack("=II", backing, 0) + info + bytes(64)  # struct loop_config
                try:
                    fcntl.ioctl(fd, LOOP_CONFIGURE, config)
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.ENOTTY):
                        raise
                    fcntl.ioctl(fd, LOOP_SET_FD, backing)  # kernels < 5.8
                    fcntl.ioctl(fd, LOOP_SET_STATUS64, info)
                return n, fd
            except OSError as e:
                os.close(fd)
                if e.errno != errno.EBUSY:  # another process took it between GET_FREE and CONFIGURE
                    raise
        raise SandboxError("no free loop device")
    finally:
        os.close(backing)


def device_numbers(n: int) -> tuple[int, int]:
    major, minor = Path(f"/sys/block/loop{n}/dev").read_text().strip().split(":")
    return int(major), int(minor)


def is_bound(n: int) -> bool:
    return os.path.exists(f"/sys/block/loop{n}/loop/backing_file")


def release(fd: int) -> None:
    """Detach now if nobody else uses the device, else at its last close (auto-clear); close fd."""
    try:
        fcntl.ioctl(fd, LOOP_CLR_FD)
    except OSError:
        pass
    os.close(fd)


def build_image(image: PathLike, files: Mapping[str, Union[str, bytes]], *, fstype: str = "ext4",
                label: Optional[str] = None, size_kb: Optional[int] = None) -> Path:
    """Build a small file system image holding ``files`` ({relative path: content}) without mounting
    anything: ext2/3/4 with ``mkfs.<type> -d <dir>`` (e2fsprogs >= 1.43), vfat with ``mkfs.vfat`` and
    ``mcopy`` (mtools). Raises :class:`SandboxUnavailable` when the tools are missing."""
    image = Path(image)
    total = sum(len(v) for v in files.values())
    size_kb = size_kb or max(1024, 2 * total // 1024 + 512)
    with tempfile.TemporaryDirectory(prefix="guestagent-image-") as staging:
        for rel, data in files.items():
            target = Path(staging) / rel.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data.encode() if isinstance(data, str) else data)
        if fstype in ("ext2", "ext3", "ext4"):
            if not shutil.which("mkfs." + fstype):
                raise SandboxUnavailable(f"{fstype} images need mkfs.{fstype} (e2fsprogs)")
            argv = ["mkfs." + fstype, "-q", "-F", "-d", staging] + (["-L", label] if label else [])
            argvs = [[*argv, str(image), f"{size_kb}k"]]
        elif fstype == "vfat":
            if not (shutil.which("mkfs.vfat") and shutil.which("mcopy")):
                raise SandboxUnavailable("vfat images need mkfs.vfat (dosfstools) and mcopy (mtools)")
            image.unlink(missing_ok=True)
            argvs = [["mkfs.vfat", "-C", *(["-n", label] if label else []), str(image), str(size_kb)]]
            entries = [str(p) for p in Path(staging).iterdir()]
            if entries:
                argvs.append(["mcopy", "-s", "-i", str(image), *entries, "::"])
        else:
            raise ValueError(f"unsupported file system type {fstype!r}")
        for argv in argvs:
            res = subprocess.run(argv, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise SandboxError(f"{argv[0]} failed: {res.stderr.strip()}")
    return image
