"""An Azure-like resource disk for a sandbox (lab and sandbox tests), and what to say about it after.

Azure hands a VM a disk with an MBR and one NTFS partition (type 7) labelled "Temporary Storage"; the
agent re-types it to 83, formats it with ``ResourceDisk.Filesystem`` and mounts it. The image here is
built on the host without mounting anything.

Two limits of a namespace sandbox, handled here so callers need not know them:
* a kernel without MBR partition scanning grows no partition node on a loop device, so ``/dev/sdb1``
  is a second loop device over the partition's byte range of the same image (coherent: both go
  through the image file's page cache; the whole-disk device is only used for the partition table);
* swap is kernel-global, so ``swapon``/``swapoff`` in the sandbox are stand-ins that record their
  arguments (``/run/swap.log``) — enabling swap for real is for the VM tier.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any, Union

PathLike = Union[str, "os.PathLike[str]"]
PART_START = 2048  # sectors, as Azure's disks
STUB_DIR = "/run/stubs"
SWAP_STUB = '#!/bin/sh\necho "$(basename "$0") $*" >> /run/swap.log\n'
#: waagent.conf settings a lab scenario with a resource disk uses (swap only when asked).
SETTINGS = {"ResourceDisk.Format": "y", "ResourceDisk.Filesystem": "ext4", "ResourceDisk.MountPoint": "/mnt/resource",
            "ResourceDisk.MountOptions": "nodev,nosuid"}


def make_azure_resource_disk(path: PathLike, size_mb: int = 96) -> int:
    """Write a sparse image: MBR, one type-7 partition from sector 2048, NTFS "Temporary Storage".
    Returns the partition's size in bytes."""
    path = Path(path)
    with open(path, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["sfdisk", "-q", str(path)], input=f"label: dos\nstart={PART_START}, type=7\n", text=True,
                   check=True, capture_output=True)
    size = (size_mb << 20) - PART_START * 512
    part = path.with_name(path.name + ".part")
    try:
        with open(part, "wb") as f:
            f.truncate(size)
        subprocess.run(["mkfs.ntfs", "-q", "-F", "-Q", "-p", str(PART_START), "-H", "255", "-S", "63", "-L",
                        "Temporary Storage", str(part)], check=True, capture_output=True)
        subprocess.run(["dd", f"if={part}", f"of={path}", "bs=1M", f"seek={PART_START * 512}", "oflag=seek_bytes",
                        "conv=notrunc,sparse", "status=none"], check=True, capture_output=True)
    finally:
        part.unlink(missing_ok=True)
    return size


def attach_range(sb: Any, image: PathLike, device: str, offset: int = 0, size: int = 0) -> str:
    """Attach bytes [offset, offset+size) of ``image`` read-write as block device ``device`` inside the
    sandbox (auto-clear loop held by the sandbox's keeper, detached when the sandbox closes)."""
    return sb.attach_image(image, device=device, readonly=False, offset=offset, size=size)


def attach_resource_disk(sb: Any, workdir: PathLike, size_mb: int = 96, device: str = "sdb") -> dict[str, str]:
    """Build the disk, expose ``/dev/<device>`` and its partition, install the swap stand-ins.
    Returns the environment the agent needs in this sandbox (merge it into the daemon's env)."""
    image = Path(workdir) / "resource.img"
    size = make_azure_resource_disk(image, size_mb)
    attach_range(sb, image, f"/dev/{device}")
    attach_range(sb, image, f"/dev/{device}1", PART_START * 512, size)
    for name in ("swapon", "swapoff"):
        sb.write_file(f"{STUB_DIR}/{name}", SWAP_STUB, mode=0o755)
    from guestagent.lab.sandbox import DEFAULT_PATH, interpreter

    return {"GUESTAGENT_RESOURCE_DISK": device,
            "PATH": f"{STUB_DIR}:{os.path.dirname(interpreter())}:{DEFAULT_PATH}"}


def summary(sb: Any, mount_point: str = "/mnt/resource") -> list[str]:
    """Lines for the lab summary: what is mounted at the mount point, and the swap file."""
    lines = []
    found = None
    for line in sb.read_text("/proc/1/mounts").splitlines():
        f = line.split()
        if len(f) >= 4 and f[1] == mount_point:
            found = f
    if found is None:
        lines.append(f"resource disk: nothing mounted at {mount_point}")
    else:
        lines.append(f"resource disk: {found[0]} {found[2]} mounted at {mount_point} ({found[3]})")
    swap = sb.host_path(f"{mount_point}/swapfile")
    if found is not None and swap.is_file():
        st = swap.stat()
        with open(swap, "rb") as f:
            f.seek(4086)
            signed = f.read(10) == b"SWAPSPACE2"
        enabled = ""
        log = sb.host_path("/run/swap.log")
        if log.is_file() and f"swapon {mount_point}/swapfile" in log.read_text():
            enabled = ", swapon called (stand-in)"
        lines.append(f"swap: {mount_point}/swapfile {st.st_size >> 20} MiB, mode {stat.S_IMODE(st.st_mode):o}, "
                     f"{'mkswap signature' if signed else 'NO swap signature'}{enabled}")
    return lines
